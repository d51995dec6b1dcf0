"""GGUF export of a merged Llama-family model (float32), checked by loading it back.

Weights are renamed with gguf's own tensor map; q/k projections are permuted into the rotary
layout llama.cpp expects (the inverse of what transformers' GGUF loader undoes). The tokenizer
(BPE tokens, merges, special ids, chat template) goes into the metadata. The file is verified
with transformers' GGUF loader: its logits and prompt tokens must match the merged model's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunesmith.utils.errors import ModelError


def write_gguf(model_dir: Path, out: Path, prompts: list[str], tolerance: float = 1e-3) -> float:
    """Write `out` from the HF folder `model_dir`; returns the max |logit difference|."""
    try:
        import gguf
    except ImportError:
        raise ModelError("GGUF export needs the 'gguf' package: pip install gguf") from None
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    if config.model_type != "llama":
        raise ModelError(
            f"GGUF export supports Llama-family models; this one is '{config.model_type}'"
        )
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    writer = gguf.GGUFWriter(str(out), "llama")
    _hparams(writer, config, gguf)
    _tokenizer(writer, model_dir, gguf)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ModelError(f"GGUF export: no GGUF name for tensor '{name}'")
        data = tensor.float()
        if name.endswith("q_proj.weight"):
            data = _permute(data, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            data = _permute(data, config.num_key_value_heads)
        writer.add_tensor(target, data.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return _verify(model, model_dir, out, prompts, tolerance)


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
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope or getattr(config, "rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)


def _tokenizer(writer, model_dir: Path, gguf) -> None:
    spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    if spec["model"]["type"] != "BPE":
        raise ModelError("GGUF export supports byte-level BPE tokenizers (gpt2 style) only")
    vocab = dict(spec["model"]["vocab"])
    special = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    vocab.update(special)
    tokens = [None] * (max(vocab.values()) + 1)
    for token, index in vocab.items():
        tokens[index] = token
    tokens = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    control, normal = gguf.TokenType.CONTROL, gguf.TokenType.NORMAL
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([control if t in special else normal for t in tokens])
    special_vocab = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    if special_vocab.chat_template is None:  # transformers 5 keeps it in chat_template.jinja
        from transformers import AutoTokenizer

        special_vocab.chat_template = AutoTokenizer.from_pretrained(model_dir).chat_template
    special_vocab.add_to_gguf(writer, quiet=True)  # merges, bos/eos/pad ids, chat template


def _permute(weights: torch.Tensor, heads: int) -> torch.Tensor:
    # llama.cpp's rotary layout: within each head, interleave the two halves
    rows = weights.shape[0]
    return (
        weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


@torch.inference_mode()
def _verify(model, model_dir: Path, out: Path, prompts: list[str], tolerance: float) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.data.render import prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    loaded_tok = AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        out.parent, gguf_file=out.name, dtype=torch.float32
    ).eval()
    worst = 0.0
    for prompt in prompts:
        conv = [{"role": "user", "content": prompt}]
        ids = prompt_ids(tokenizer, conv)
        if loaded_tok(tokenizer.decode(ids), add_special_tokens=False)["input_ids"] != ids:
            raise ModelError("GGUF export: the GGUF tokenizer tokenizes the prompt differently")
        batch = torch.tensor([ids])
        diff = (model(input_ids=batch).logits - loaded(input_ids=batch).logits).abs().max()
        worst = max(worst, float(diff))
    if not worst <= tolerance:
        raise ModelError(f"GGUF export: logits differ by {worst:.3g} (tolerance {tolerance:.3g})")
    return worst
