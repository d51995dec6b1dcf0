"""GGUF types and architectures: every type the gguf package writes holds exactly the weights
its quantizer makes (read back by transformers' GGUF loader), smaller types make smaller files,
1-D tensors stay float32; Qwen2, Qwen3, Gemma 2 and Gemma 3 besides Llama; k-quants need
llama.cpp's llama-quantize and say so. llama.cpp itself reads these files in
benchmarks/gguf_llamacpp.py, and here for Gemma where its tools are built."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import typing
from pathlib import Path

import pytest
import torch

from tunesmith.config.serve import GgufType
from tunesmith.export.gguf import GGUF_TYPES, gguf_name, write_gguf
from tunesmith.utils.errors import ConfigError, ModelError

PROMPTS = ["What is the capital of France?", "hello who are you"]
WRITTEN = ["f32", "f16", "bf16", "q8_0", "q5_0", "q4_0"]


def _save(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _tiny(kind: str, vocab: int):
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

    torch.manual_seed(0)
    shape = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    config = Qwen2Config(**shape) if kind == "qwen2" else Qwen3Config(head_dim=32, **shape)
    return AutoModelForCausalLM.from_config(config)


def _copy(model_dir, tmp_path):
    """GGUF files are written beside the weights: a copy, not the shared test model."""
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


def test_every_written_type_holds_its_quantized_weights(tmp_path, tiny_model_dir, one_thread):
    from gguf import GGMLQuantizationType, GGUFReader

    tiny_model_dir = _copy(tiny_model_dir, tmp_path)
    facts = {f["type"]: f for f in write_gguf(tiny_model_dir, WRITTEN, PROMPTS)}
    assert list(facts) == WRITTEN
    assert all(f["max_abs_diff"] <= 1e-4 for f in facts.values()), facts
    assert facts["f32"]["top1"] == 1.0 and facts["f16"]["relative_rms"] < 0.01
    sizes = [facts[k]["bytes"] for k in ("f32", "f16", "q8_0", "q5_0", "q4_0")]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 5
    tensors = {
        t.name: t.tensor_type for t in GGUFReader(tiny_model_dir / gguf_name("q4_0")).tensors
    }
    assert tensors["blk.0.attn_q.weight"] == GGMLQuantizationType.Q4_0
    assert tensors["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32  # 1-D stays float32
    assert tensors["output.weight"] == GGMLQuantizationType.Q8_0  # low-bit: output at q8_0


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_qwen_models_export_exactly(arch, tmp_path, tiny_tokenizer, one_thread):
    from gguf import GGUFReader

    folder = _save(_tiny(arch, len(tiny_tokenizer)), tiny_tokenizer, tmp_path / arch)
    facts = write_gguf(folder, ["f32", "q8_0"], PROMPTS)
    assert [f["max_abs_diff"] <= 1e-4 for f in facts] == [True, True], facts
    reader = GGUFReader(folder / gguf_name("f32"))
    assert reader.fields["general.architecture"].contents() == arch
    assert reader.fields["tokenizer.ggml.pre"].contents() == "qwen2"
    names = {t.name for t in reader.tensors}
    assert ("blk.0.attn_q.bias" in names) == (arch == "qwen2")  # Qwen2 has q/k/v biases
    assert ("blk.0.attn_q_norm.weight" in names) == (arch == "qwen3")


def test_k_quants_need_llama_quantize(tiny_model_dir, monkeypatch, tmp_path):
    tiny_model_dir = _copy(tiny_model_dir, tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no llama-quantize anywhere
    monkeypatch.delenv("TUNESMITH_LLAMA_CPP", raising=False)
    with pytest.raises(ConfigError, match=r"made by llama\.cpp's llama-quantize, which was not"):
        write_gguf(tiny_model_dir, ["q4_k_m"], PROMPTS)
    with pytest.raises(ConfigError, match=r"export\.llama_cpp: no llama-quantize at"):
        write_gguf(tiny_model_dir, ["q4_k_m"], PROMPTS, llama_cpp=str(tmp_path))
    assert set(typing.get_args(GgufType)) == set(GGUF_TYPES)  # the config offers what we write


def test_other_architectures_are_one_sentence(tmp_path, tiny_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tiny_tokenizer), n_embd=32, n_layer=1, n_head=2)
    )
    folder = _save(model, tiny_tokenizer, tmp_path / "gpt2")
    expected = "supports llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text models; this one"
    with pytest.raises(ModelError, match=expected):
        write_gguf(folder, ["f16"], PROMPTS)


# --- Gemma 1 / 2 / 3: (1 + w) norms, SentencePiece vocabulary, softcapping, sliding window ---

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + ('model' if "
    "message['role'] == 'assistant' else message['role']) + '\n' + message['content'] + "
    "'<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<start_of_turn>model\n' }}{% endif %}"
)
GEMMA_SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
GEMMA_CORPUS = [
    "hello who are you? I am a small assistant built for tests.",
    "What is the capital of France? The capital of France is Paris.",
    "user model system: answer briefly and kindly, please.",
]


def _gemma_tokenizer():
    """Gemma's tokenizer in small: SentencePiece-style BPE (byte fallback, '▁' for spaces, no
    prefix space) over ids pad/eos/bos/unk/mask, turn markers, 256 byte tokens, then pieces;
    merges derived from the vocabulary as transformers derives them from a SentencePiece model."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GemmaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    fixed = GEMMA_SPECIAL + [f"<0x{i:02X}>" for i in range(256)]
    core = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    core.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=fixed, show_progress=False)
    core.train_from_iterator(GEMMA_CORPUS * 4, trainer)
    vocab = core.get_vocab()
    order = {token: -index for token, index in vocab.items()}
    merges = generate_merges(vocab, order, skip_tokens=fixed)
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": GEMMA_SPECIAL[5:]})
    tokenizer.add_bos_token = True  # as Gemma's: text starts with <bos>
    tokenizer.chat_template = GEMMA_TEMPLATE
    return tokenizer


def _tiny_gemma(kind: str, tokenizer, **overrides):
    """A 2-layer Gemma, Gemma 2 or Gemma 3 (2 and 3: one sliding layer, one global) with random
    norms, so a missing or doubled (1 + w) shift shows in the logits; tied embeddings."""
    from transformers import AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, GemmaConfig

    torch.manual_seed(0)
    shape = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        query_pre_attn_scalar=32,
        max_position_embeddings=256,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if kind == "gemma3":
        local = {"rope_type": "default", "rope_theta": 10000.0}
        full = {"rope_type": "default", "rope_theta": 1000000.0}
        shape["rope_parameters"] = {"sliding_attention": local, "full_attention": full}
    if kind == "gemma":  # no sliding window, query scalar or layer types; its own rope base
        for key in ("query_pre_attn_scalar", "sliding_window", "layer_types"):
            del shape[key]
        shape["rope_parameters"] = {"rope_type": "default", "rope_theta": 5000.0}
    configs = {"gemma": GemmaConfig, "gemma2": Gemma2Config, "gemma3": Gemma3TextConfig}
    config = configs[kind](**(shape | overrides))
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():  # norms too: (1 + w) with w != 0
            p.normal_(0, 0.2)
        # a small embedding (Gemma scales it by sqrt(hidden)), or greedy decoding repeats the
        # last token; byte and special tokens score 0, so it is plain text llama.cpp prints
        embedding = model.get_input_embeddings().weight
        embedding.mul_(0.1)
        embedding[[i for t, i in tokenizer.get_vocab().items() if t.startswith("<")]] = 0.0
    model.generation_config.eos_token_id = [
        tokenizer.eos_token_id,
        tokenizer.convert_tokens_to_ids("<end_of_turn>"),
    ]
    return model


def _gemma_folder(kind: str, tmp_path, **overrides) -> Path:
    tokenizer = _gemma_tokenizer()
    return _save(_tiny_gemma(kind, tokenizer, **overrides), tokenizer, tmp_path / kind)


def test_gemma3_every_written_type_holds_its_quantized_weights(tmp_path, one_thread):
    from gguf import GGUFReader, TokenType
    from safetensors.torch import load_file

    from tunesmith.export.gguf import WRITTEN as ALL_WRITTEN

    folder = _gemma_folder("gemma3", tmp_path)
    facts = {f["type"]: f for f in write_gguf(folder, list(ALL_WRITTEN), PROMPTS)}
    assert all(f["max_abs_diff"] <= 1e-4 for f in facts.values()), facts
    assert facts["f32"]["top1"] == 1.0 and facts["f32"]["relative_rms"] < 1e-5

    reader = GGUFReader(folder / gguf_name("f32"))
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.architecture"] == "gemma3"
    assert fields["gemma3.attention.key_length"] == 32  # head_dim, not hidden / heads (16)
    assert fields["gemma3.attention.sliding_window"] == 8
    assert fields["gemma3.attention.sliding_window_pattern"] == [True, False]
    assert fields["gemma3.rope.freq_base"] == 1e6 and fields["gemma3.rope.freq_base_swa"] == 1e4
    assert "gemma3.attention.attn_logit_softcapping" not in fields
    assert fields["tokenizer.ggml.model"] == "llama"  # SentencePiece, with scores
    assert fields["tokenizer.ggml.add_space_prefix"] is False
    assert fields["tokenizer.ggml.add_bos_token"] is True
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert types[tokens.index("<0x0A>")] == TokenType.BYTE
    assert types[tokens.index("<start_of_turn>")] == TokenType.CONTROL
    # llama.cpp merges the pair whose joined text scores highest: minus its first merge's rank
    scores = dict(zip(tokens, fields["tokenizer.ggml.scores"], strict=True))
    first: dict[str, int] = {}
    merges = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"]
    for rank, (left, right) in enumerate(m.split(" ") if isinstance(m, str) else m for m in merges):
        first.setdefault(left + right, rank)
    assert len(first) > 50 and all(scores[token] == -rank for token, rank in first.items())
    # norms are stored as w + 1; the embedding is stored unscaled (llama.cpp scales it)
    hf = load_file(folder / "model.safetensors")
    stored = {t.name: torch.from_numpy(t.data.copy()) for t in reader.tensors}
    for gguf_tensor, hf_tensor in [
        ("blk.0.attn_q_norm.weight", "model.layers.0.self_attn.q_norm.weight"),
        ("blk.1.post_ffw_norm.weight", "model.layers.1.post_feedforward_layernorm.weight"),
        ("output_norm.weight", "model.norm.weight"),
    ]:
        assert torch.equal(stored[gguf_tensor], hf[hf_tensor] + 1), gguf_tensor
    assert torch.equal(stored["token_embd.weight"], hf["model.embed_tokens.weight"])
    assert "output.weight" not in stored  # tied: llama.cpp reuses token_embd


def test_gemma2_exports_exactly_with_its_softcapping(tmp_path, one_thread):
    from gguf import GGUFReader

    folder = _gemma_folder("gemma2", tmp_path)
    facts = write_gguf(folder, ["f32", "q8_0"], PROMPTS)
    assert [f["max_abs_diff"] <= 1e-4 for f in facts] == [True, True], facts
    reader = GGUFReader(folder / gguf_name("q8_0"))
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.architecture"] == "gemma2"
    assert fields["gemma2.attn_logit_softcapping"] == 50.0
    assert fields["gemma2.final_logit_softcapping"] == 30.0
    assert fields["gemma2.attention.sliding_window_pattern"] == [True, False]
    names = {t.name for t in reader.tensors}
    assert {"blk.0.post_attention_norm.weight", "blk.0.post_ffw_norm.weight"} <= names


def test_gemma1_every_type_holds_its_quantized_weights_read_by_gguf(tmp_path, one_thread):
    """Gemma 1: transformers' GGUF loader does not know it, so the check reads the file with
    gguf's own reader; the file is Llama's layout with (1 + w) norms stored as w + 1."""
    from gguf import GGUFReader
    from safetensors.torch import load_file

    folder = _gemma_folder("gemma", tmp_path)
    facts = {f["type"]: f for f in write_gguf(folder, ["f32", "f16", "q8_0", "q4_0"], PROMPTS)}
    assert all(f["max_abs_diff"] <= 1e-4 for f in facts.values()), facts
    assert facts["f32"]["top1"] == 1.0 and facts["f32"]["relative_rms"] < 1e-5
    assert facts["q4_0"]["relative_rms"] > facts["q8_0"]["relative_rms"] > 0  # what types lose
    reader = GGUFReader(folder / gguf_name("f32"))
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.architecture"] == "gemma"
    assert fields["gemma.attention.key_length"] == 32  # head_dim, not hidden / heads (16)
    assert fields["gemma.rope.freq_base"] == 5000.0
    assert not [key for key in fields if "softcapping" in key or "sliding" in key]
    hf = load_file(folder / "model.safetensors")
    stored = {t.name: torch.from_numpy(t.data.copy()) for t in reader.tensors}
    assert torch.equal(
        stored["blk.1.ffn_norm.weight"], hf["model.layers.1.post_attention_layernorm.weight"] + 1
    )
    assert "output.weight" not in stored and len(stored) == 2 * 9 + 2


def test_gemma1_file_with_a_wrong_weight_fails_its_check(tmp_path, monkeypatch):
    """The gguf-reader check is a check: a norm written without its + 1 is caught."""
    from tunesmith.export import gguf as gguf_export

    folder = _gemma_folder("gemma", tmp_path)
    real_write, real_shift = gguf_export._write, gguf_export._shift

    def write_unshifted(*args):  # the read-back still subtracts the 1
        monkeypatch.setattr(gguf_export, "_shift", lambda name, arch: 0.0)
        real_write(*args)
        monkeypatch.setattr(gguf_export, "_shift", real_shift)

    monkeypatch.setattr(gguf_export, "_write", write_unshifted)
    with pytest.raises(ModelError, match=r"logits differ from the f32 weights'"):
        write_gguf(folder, ["f32"], PROMPTS)


def test_gemma_configs_llama_cpp_computes_otherwise_are_one_sentence(tmp_path):
    folder = _gemma_folder("gemma3", tmp_path, query_pre_attn_scalar=256)
    with pytest.raises(ModelError, match=r"scales queries by 1/sqrt\(32\); this model's query"):
        write_gguf(folder, ["f16"], PROMPTS)
    folder = _gemma_folder("gemma2", tmp_path / "untied", tie_word_embeddings=False)
    with pytest.raises(ModelError, match=r"\(gemma2\): llama.cpp reads tied embeddings only"):
        write_gguf(folder, ["f16"], PROMPTS)
    folder = _gemma_folder("gemma", tmp_path / "untied1", tie_word_embeddings=False)
    with pytest.raises(ModelError, match=r"\(gemma\): llama.cpp reads tied embeddings only"):
        write_gguf(folder, ["f16"], PROMPTS)
    folder = _gemma_folder("gemma", tmp_path / "silu", hidden_act="silu")
    with pytest.raises(ModelError, match=r"\(gemma\): llama.cpp uses tanh GELU"):
        write_gguf(folder, ["f16"], PROMPTS)


def _llama_cpp_tools() -> Path:
    """llama.cpp's tools as benchmarks/gguf_llamacpp.py builds them into the cache (or
    $TUNESMITH_LLAMA_CPP); the calling test is skipped where they are absent (CI)."""
    from tunesmith.models.resolve import cache_dir

    place = os.environ.get("TUNESMITH_LLAMA_CPP")
    bin_dir = Path(place) if place else cache_dir() / "llamacpp" / "build" / "bin"
    if not all((bin_dir / t).is_file() for t in ("llama-tokenize", "llama-simple")):
        pytest.skip(f"no llama.cpp tools in {bin_dir} (benchmarks/gguf_llamacpp.py --build)")
    return bin_dir


def _piece_bytes(tokenizer, ids: list[int]) -> bytes:
    """What llama.cpp prints for these SentencePiece tokens with special pieces shown (as
    llama-simple does): byte tokens as raw bytes, '▁' as a space, control tokens as their
    text."""
    out = b""
    for token in tokenizer.convert_ids_to_tokens(ids):
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            out += bytes([int(token[3:5], 16)])
        else:
            out += token.replace("\u2581", " ").encode("utf-8")
    return out


@pytest.mark.parametrize("kind", ["gemma", "gemma2", "gemma3"])
def test_llama_cpp_reads_gemma_alike(kind, tmp_path, one_thread):
    """llama.cpp itself (where its tools are built) tokenizes the chat prompt as transformers
    does and its greedy continuation of a random Gemma is transformers' (f32 file)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.data.render import prompt_ids

    bin_dir = _llama_cpp_tools()
    folder = _gemma_folder(kind, tmp_path)
    write_gguf(folder, ["f32"], PROMPTS)
    path = folder / gguf_name("f32")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    # llama.cpp stops at any end-of-generation token: Gemma's <eos> and <end_of_turn>
    end_of_generation = set(tokenizer.convert_tokens_to_ids(["<eos>", "<end_of_turn>"]))
    for prompt in PROMPTS:
        ids = prompt_ids(tokenizer, [{"role": "user", "content": prompt}])
        text = tokenizer.decode(ids)
        assert text.startswith("<bos>")
        (tmp_path / "prompt.txt").write_text(text, encoding="utf-8")
        tokenize = [str(bin_dir / "llama-tokenize"), "-m", str(path)]
        tokenized = subprocess.run(
            [*tokenize, "-f", str(tmp_path / "prompt.txt"), "--ids", "--no-bos", "--log-disable"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(tokenized.stdout.strip().splitlines()[-1]) == ids
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)
        answer = out[0, len(ids) :].tolist()
        ends = [i for i, t in enumerate(answer) if t in end_of_generation]
        answer = answer[: ends[0] if ends else None]
        assert answer, "the random model ends at once: nothing to compare"
        want = _piece_bytes(tokenizer, ids + answer) + b"\n"
        # llama-simple (greedy) echoes the prompt it tokenized, adding the BOS itself, then its
        # answer; it prints with printf, not through llama.cpp's logger, whose last lines can
        # be lost at exit (llama.cpp issue 22142)
        simple = [str(bin_dir / "llama-simple"), "-m", str(path), "-n", "16"]
        done = subprocess.run(
            [*simple, text.removeprefix("<bos>")],
            capture_output=True,
            check=True,
            stdin=subprocess.DEVNULL,
        )
        assert done.stdout == want, (done.stdout, want)
