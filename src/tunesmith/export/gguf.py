"""GGUF export of a merged model (Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2, Gemma 3 text) in
f32/f16/bf16/q8_0/q4_0/... written by the `gguf` package's own quantizers, and k-quants (q4_k_m,
...) made from the f16 file by llama.cpp's llama-quantize where the user has it. Each file is
checked by loading it back.

Weights are renamed with gguf's own tensor map; for Llama-layout models q/k projections are
permuted into the rotary layout llama.cpp expects (the inverse of what transformers' GGUF loader
undoes); Qwen and Gemma models keep theirs (llama.cpp's converter does the same). Gemma's
(1 + w) norms are stored as w + 1, and its hyper-parameters and SentencePiece vocabulary are
written by export/gguf_gemma.py. 1-D tensors (norms, biases) stay float32 and a matrix whose
rows do not split into the type's blocks falls back to f16, as llama.cpp's convert_hf_to_gguf.py
does. The tokenizer (byte-level BPE tokens and merges, or a SentencePiece vocabulary with
scores; special ids, chat template) goes into the metadata. The check: transformers' GGUF loader
reads the file (gguf's own reader for Gemma 1, which transformers' loader does not know); the
prompt must tokenize alike, and the logits must equal those of the merged model with each tensor
quantized and dequantized by gguf's own code (so names, layout, norm shifts and permutations are
exact whatever the type loses); the loss of the type itself is measured and reported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.export import gguf_gemma
from tunesmith.utils.errors import ConfigError, ModelError


@dataclass(frozen=True)
class Arch:
    name: str  # gguf.MODEL_ARCH member
    permute: bool  # q/k rows into llama.cpp's rotary layout
    pre: str  # llama.cpp's pre-tokenizer name (byte-level BPE tokenizers)
    norm_shift: float = 0.0  # added to every *norm.weight (Gemma's (1 + w) norms)
    hf_reads: bool = True  # transformers' GGUF loader knows the architecture

    @property
    def gemma(self) -> bool:
        return self.name.startswith("GEMMA")


ARCHS = {
    "llama": Arch("LLAMA", True, "default"),
    "mistral": Arch("LLAMA", True, "default"),  # llama.cpp converts Mistral as Llama
    "qwen2": Arch("QWEN2", False, "qwen2"),
    "qwen3": Arch("QWEN3", False, "qwen2"),
    "gemma": Arch("GEMMA", False, "default", gguf_gemma.NORM_SHIFT, hf_reads=False),
    "gemma2": Arch("GEMMA2", False, "default", gguf_gemma.NORM_SHIFT),
    "gemma3_text": Arch("GEMMA3", False, "default", gguf_gemma.NORM_SHIFT),
}
# type -> (GGML tensor type, llama file type), written by the gguf package itself
WRITTEN = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
    "q5_1": ("Q5_1", "MOSTLY_Q5_1"),
    "q5_0": ("Q5_0", "MOSTLY_Q5_0"),
    "q4_1": ("Q4_1", "MOSTLY_Q4_1"),
    "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
}
# k-quants: llama-quantize's type names, made from the f16 file
QUANTIZED = {"q6_k": "Q6_K", "q5_k_m": "Q5_K_M", "q4_k_m": "Q4_K_M", "q3_k_m": "Q3_K_M"}
GGUF_TYPES = (*WRITTEN, *QUANTIZED)


def gguf_name(kind: str) -> str:
    """The file name of one type, as llama.cpp names them (model-Q8_0.gguf)."""
    return f"model-{kind.upper()}.gguf"


def write_gguf(
    model_dir: Path,
    types: list[str],
    prompts: list[str],
    tolerance: float = 1e-3,
    llama_cpp: str | None = None,
) -> list[dict]:
    """Write a GGUF file per type into `model_dir` (an HF folder); each checked by loading it
    back (`_check`). Returns per type: file, bytes, max_abs_diff (against the weights the file
    should hold), relative_rms and top1 (the quantization loss against the merged model)."""
    gguf = _gguf()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    arch = ARCHS.get(config.model_type)
    if arch is None:
        raise ModelError(
            f"GGUF export supports {', '.join(ARCHS)} models; this one is '{config.model_type}'"
        )
    if arch.gemma:
        gguf_gemma.check_config(config)
    else:
        _check_rope(config)
    quantize = _llama_quantize(llama_cpp) if set(types) & set(QUANTIZED) else None
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    written, results = {}, []
    with tempfile.TemporaryDirectory(dir=model_dir) as scratch:
        for kind in types:
            path, exact = model_dir / gguf_name(kind), None
            if kind in WRITTEN:
                _write(model, config, arch, model_dir, path, kind, gguf)
                exact = model if kind == "f32" else _as_written(model, config, arch, kind, gguf)
            else:  # a k-quant from an f16 file (the one written, or a scratch one)
                f16 = written.get("f16") or Path(scratch) / gguf_name("f16")
                if not f16.exists():
                    _write(model, config, arch, model_dir, f16, "f16", gguf)
                _run_quantize(quantize, f16, path, QUANTIZED[kind])
            written[kind] = path
            loaded, tokenize = _read_back(model, tokenizer, arch, path, gguf)
            results.append(
                _check(model, exact, tokenizer, loaded, tokenize, path, kind, prompts, tolerance)
            )
    return results


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ModelError("GGUF export needs the 'gguf' package: pip install gguf") from None
    return gguf


def _check_rope(config) -> None:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    kind = (params or {}).get("rope_type", "default")
    if kind not in ("default", None):
        raise ModelError(
            f"GGUF export: rope scaling '{kind}' is not written by tunesmith's GGUF writer; "
            "use llama.cpp's convert_hf_to_gguf.py on the exported folder"
        )


def _write(model, config, arch: Arch, model_dir: Path, out: Path, kind: str, gguf) -> None:
    model_arch = gguf.MODEL_ARCH[arch.name]
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[model_arch])
    if arch.gemma:
        gguf_gemma.write_hparams(writer, config, gguf)
    else:
        _hparams(writer, config, gguf)
    writer.add_file_type(gguf.LlamaFileType[WRITTEN[kind][1]])
    _tokenizer(writer, model_dir, arch, config.vocab_size, gguf)
    for name, tensor, target, qtype in _tensors(model, config, arch, kind, gguf):
        data = tensor.float() + _shift(name, arch)
        if arch.permute and name.endswith("q_proj.weight"):
            data = _permute(data, config.num_attention_heads)
        elif arch.permute and name.endswith("k_proj.weight"):
            data = _permute(data, config.num_key_value_heads)
        data = data.numpy()
        if qtype.name in ("F32", "F16"):
            writer.add_tensor(target, gguf.quants.quantize(data, qtype))
        else:
            writer.add_tensor(target, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# below 8 bits the output projection (token_embd when tied) keeps q8_0, as llama-quantize keeps
# it at a higher type
LOW_BIT = ("Q5_1", "Q5_0", "Q4_1", "Q4_0")


def _tensors(model, config, arch: Arch, kind: str, gguf):
    """(HF name, tensor, GGUF name, tensor type) of every tensor the file holds: 1-D tensors
    float32, a matrix whose rows do not split into the type's blocks f16 (as
    convert_hf_to_gguf.py)."""
    qtype = gguf.GGMLQuantizationType[WRITTEN[kind][0]]
    for name, tensor, target in _named(model, config, arch, gguf):
        chosen = qtype
        if tensor.ndim <= 1:
            chosen = gguf.GGMLQuantizationType.F32
        elif qtype.name in LOW_BIT and target in ("token_embd.weight", "output.weight"):
            chosen = gguf.GGMLQuantizationType.Q8_0
        block = gguf.GGML_QUANT_SIZES[chosen][0]
        if tensor.shape[-1] % block:
            chosen = gguf.GGMLQuantizationType.F16
        yield name, tensor, target, chosen


def _named(model, config, arch: Arch, gguf):
    """(HF name, tensor, GGUF name) of every tensor a file of this architecture holds."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.name], config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ModelError(f"GGUF export: no GGUF name for tensor '{name}'")
        yield name, tensor, target


def _shift(name: str, arch: Arch) -> float:
    """What the file adds to this tensor: 1 to Gemma's norms (llama.cpp multiplies by w, Gemma
    by 1 + w), as convert_hf_to_gguf.py does; transformers' GGUF loader subtracts it again."""
    return arch.norm_shift if name.endswith("norm.weight") else 0.0


def _as_written(model, config, arch: Arch, kind: str, gguf):
    """A copy of the model holding the weights the file holds (each tensor quantized and
    dequantized by gguf's own code): what the file must reproduce exactly."""
    import copy

    written = copy.deepcopy(model)
    state = written.state_dict()
    with torch.no_grad():
        for name, tensor, _, qtype in _tensors(model, config, arch, kind, gguf):
            shift = _shift(name, arch)
            data = (tensor.float() + shift).numpy()
            back = gguf.quants.dequantize(gguf.quants.quantize(data, qtype), qtype) - shift
            state[name].copy_(torch.from_numpy(back.reshape(data.shape).copy()))
    return written


def _hparams(writer, config, gguf) -> None:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    if head_dim != config.hidden_size // heads:  # Qwen3 and others set it apart
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope or getattr(config, "rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)


def _tokenizer(writer, model_dir: Path, arch: Arch, n_vocab: int, gguf) -> None:
    """Byte-level BPE (gpt2) tokens and merges; for Gemma a SentencePiece-style BPE as an SPM
    vocabulary with scores. Then special ids, add-BOS flags and the chat template."""
    spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    if arch.gemma and gguf_gemma.is_spm(spec):
        gguf_gemma.write_spm_vocab(writer, spec, n_vocab, gguf)
        _special_vocab(writer, model_dir, n_vocab, False, gguf)
        return
    if spec["model"]["type"] != "BPE" or spec["model"].get("byte_fallback"):
        raise ModelError(
            "GGUF export supports byte-level BPE tokenizers (gpt2 style), and SentencePiece BPE "
            "for Gemma, only"
        )
    vocab = dict(spec["model"]["vocab"])
    special = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    vocab.update(special)
    tokens = [None] * (max(vocab.values()) + 1)
    for token, index in vocab.items():
        tokens[index] = token
    tokens = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    control, normal = gguf.TokenType.CONTROL, gguf.TokenType.NORMAL
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(arch.pre)
    writer.add_token_list(tokens)
    writer.add_token_types([control if t in special else normal for t in tokens])
    _special_vocab(writer, model_dir, len(tokens), True, gguf)


def _special_vocab(writer, model_dir: Path, n_vocab: int, merges: bool, gguf) -> None:
    """Merges, bos/eos/pad ids, the chat template, and whether BOS/EOS are added: what the
    tokenizer does (llama.cpp adds BOS to an SPM vocabulary that does not say otherwise)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    special_vocab = gguf.SpecialVocab(model_dir, load_merges=merges, n_vocab=n_vocab)
    if special_vocab.chat_template is None:  # transformers 5 keeps it in chat_template.jinja
        special_vocab.chat_template = tokenizer.chat_template
    probe = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    special_vocab.add_special_token["bos"] = bos is not None and probe[0] == bos
    special_vocab.add_special_token["eos"] = eos is not None and probe[-1] == eos
    special_vocab.add_to_gguf(writer, quiet=True)


def _permute(weights: torch.Tensor, heads: int) -> torch.Tensor:
    # llama.cpp's rotary layout: within each head, interleave the two halves
    rows = weights.shape[0]
    return (
        weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _llama_quantize(llama_cpp: str | None) -> str:
    """llama.cpp's quantize tool: in export.llama_cpp (the tool or its folder), in
    $TUNESMITH_LLAMA_CPP, or on PATH."""
    for place in filter(None, [llama_cpp, os.environ.get("TUNESMITH_LLAMA_CPP")]):
        candidate = Path(place)
        tool = candidate / "llama-quantize" if candidate.is_dir() else candidate
        if tool.is_file() and os.access(tool, os.X_OK):
            return str(tool)
        raise ConfigError(f"export.llama_cpp: no llama-quantize at '{place}'")
    found = shutil.which("llama-quantize")
    if found is None:
        raise ConfigError(
            "export.gguf_types: k-quants (" + ", ".join(QUANTIZED) + ") are made by llama.cpp's "
            "llama-quantize, which was not found; build llama.cpp and set "
            "export.llama_cpp=/path/to/llama.cpp/build/bin (or put llama-quantize on PATH), "
            "or choose q8_0/q4_0 which tunesmith writes itself"
        )
    return found


def _run_quantize(tool: str, source: Path, out: Path, kind: str) -> None:
    done = subprocess.run([tool, str(source), str(out), kind], capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelError(f"llama-quantize {kind} failed ({done.returncode}): {tail[0]}")


def _read_back(model, tokenizer, arch: Arch, path: Path, gguf):
    """The file as a model and a tokenize function (text -> ids): transformers' GGUF loader where
    it knows the architecture, else gguf's own reader (`_read_tensors`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not arch.hf_reads:
        return _read_tensors(model, tokenizer, arch, path, gguf)
    config = model.config
    loaded_tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # transformers' GGUF loader reads no head_dim for qwen3 (it assumes 128; llama.cpp reads
    # attention.key_length), nor Gemma's softcapping, query scale, layer types or local rope
    # base: there the model's own config; elsewhere the file's hparams
    own_config = config.model_type in ("qwen3", "gemma2", "gemma3_text")
    own = {"config": config} if own_config else {}
    loaded = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, **own
    ).eval()
    return loaded, lambda text: loaded_tok(text, add_special_tokens=False)["input_ids"]


def _read_tensors(model, tokenizer, arch: Arch, path: Path, gguf):
    """The file read by gguf's own reader (llama.cpp's Python package): every tensor
    dequantized by gguf's code, renamed back to the model's names and unshifted, into a copy
    of the model; every file tensor must be used and every model tensor found. Tokenizing is
    the model's tokenizer mapped through the file's token list (so a shifted or renamed id
    fails the prompt check)."""
    import copy

    reader = gguf.GGUFReader(str(path))
    stored = {t.name: t for t in reader.tensors}
    loaded = copy.deepcopy(model).eval()
    with torch.no_grad():
        for name, tensor, target in _named(loaded, loaded.config, arch, gguf):
            if target not in stored:
                raise ModelError(f"GGUF export ({path.name}): no tensor '{target}' for '{name}'")
            found = stored.pop(target)
            data = gguf.quants.dequantize(found.data, found.tensor_type)
            back = torch.from_numpy(data.reshape(tensor.shape).copy()) - _shift(name, arch)
            tensor.copy_(back)
    if stored:
        raise ModelError(f"GGUF export ({path.name}): tensors no weight maps to: {sorted(stored)}")
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    kinds = reader.fields["tokenizer.ggml.token_type"].contents()
    user = gguf.TokenType.USER_DEFINED  # written with spaces where the tokenizer has '▁'
    file_ids = {
        (text.replace(" ", "\u2581") if kind == user else text): index
        for index, (text, kind) in enumerate(zip(tokens, kinds, strict=True))
    }
    return loaded, lambda text: [file_ids.get(t, -1) for t in tokenizer.tokenize(text)]


@torch.inference_mode()
def _check(model, written, tokenizer, loaded, tokenize, path: Path, kind: str, prompts, tol):
    """The file read back (`_read_back`): the prompt tokenizes alike; its logits equal those
    of the weights it should hold (`written`; k-quants: not known here) within `tol`; the
    quantization loss against the merged model is reported (RMS logit error over the logits'
    spread, and how often the top token stays the same)."""
    from tunesmith.data.render import prompt_ids

    worst, squared, spread, agree, positions = 0.0, 0.0, 0.0, 0, 0
    for prompt in prompts:
        ids = prompt_ids(tokenizer, [{"role": "user", "content": prompt}])
        if tokenize(tokenizer.decode(ids)) != ids:
            raise ModelError(
                f"GGUF export ({path.name}): the GGUF tokenizer tokenizes the prompt differently"
            )
        batch = torch.tensor([ids])
        want, got = model(input_ids=batch).logits[0], loaded(input_ids=batch).logits[0]
        if written is not None:
            exact = written(input_ids=batch).logits[0]
            worst = max(worst, float((exact - got).abs().max()))
        squared += float(((want - got) ** 2).sum())
        spread += float(((want - want.mean(-1, keepdim=True)) ** 2).sum())
        agree += int((want.argmax(-1) == got.argmax(-1)).sum())
        positions += len(ids)
    if written is not None and not worst <= tol:
        raise ModelError(
            f"GGUF export ({path.name}): logits differ from the {kind} weights' by {worst:.3g} "
            f"(tolerance {tol:.3g})"
        )
    return {
        "type": kind,
        "file": path.name,
        "bytes": path.stat().st_size,
        "max_abs_diff": worst if written is not None else None,
        "relative_rms": (squared / spread) ** 0.5 if spread else 0.0,
        "top1": agree / positions,
    }
