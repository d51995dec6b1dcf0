"""GGUF for Gemma, Gemma 2 and Gemma 3 (text), following llama.cpp's convert_hf_to_gguf.py (its
GemmaModel / Gemma2Model / Gemma3Model): what differs from the Llama path in export/gguf.py.

- Norms: Gemma's RMSNorm scales by (1 + w); llama.cpp multiplies by the stored weight, so every
  `*norm.weight` (q/k norms too) is stored as w + 1 (`NORM_SHIFT`).
- The embedding is scaled by sqrt(hidden) at run time by llama.cpp itself: no weight changes.
- Hyper-parameters: head_dim as attention.key_length/value_length, the softcapping values, the
  sliding window and which layers use it (one flag per layer), the local rope base (Gemma 3).
  Gemma 1 has none of these: llama.cpp's graph for it is Llama's with the scaled embedding,
  tanh GELU and the (1 + w) norms, and output = token_embd (tied only).
  llama.cpp scales queries by 1/sqrt(head_dim) (by 1/sqrt(hidden/heads) for the 27B shapes), so
  a `query_pre_attn_scalar` it cannot express is one sentence, not a silently different model.
- The tokenizer: Gemma's is SentencePiece BPE (byte fallback, no prefix space), written as
  llama.cpp's `llama` (SPM) vocabulary with scores and token types (`write_spm_vocab`); a
  byte-level BPE tokenizer goes through the gpt2 path as for the other architectures.
"""

from __future__ import annotations

import json
import re

from tunesmith.utils.errors import ModelError

NORM_SHIFT = 1.0  # stored norm weight = HF weight + 1
# llama.cpp's Gemma 27B shapes scale queries by 1/sqrt(hidden/heads) (gemma2.cpp, gemma3.cpp);
# Gemma 1 has no query_pre_attn_scalar: both scale by 1/sqrt(head_dim) (gemma.cpp)
_WIDE_SCALE_LAYERS = {"gemma2": 46, "gemma3_text": 62}
_BYTE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def check_config(config) -> None:
    """One sentence for a Gemma config llama.cpp's graph would compute differently."""
    kind = config.model_type
    act = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None)
    if act != "gelu_pytorch_tanh":
        raise ModelError(f"GGUF export ({kind}): llama.cpp uses tanh GELU; this model uses '{act}'")
    if getattr(config, "use_bidirectional_attention", False):
        raise ModelError(f"GGUF export ({kind}): bidirectional attention is not a GGUF LLM")
    if kind == "gemma":
        if not config.tie_word_embeddings:
            raise ModelError("GGUF export (gemma): llama.cpp reads tied embeddings only")
        _default_rope(config.rope_parameters, kind)
        return
    heads, layers = config.num_attention_heads, config.num_hidden_layers
    scale_dim = (
        config.hidden_size // heads if layers == _WIDE_SCALE_LAYERS[kind] else config.head_dim
    )
    if config.query_pre_attn_scalar != scale_dim:
        raise ModelError(
            f"GGUF export ({kind}): llama.cpp scales queries by 1/sqrt({scale_dim}); this model's "
            f"query_pre_attn_scalar is {config.query_pre_attn_scalar}"
        )
    if kind == "gemma2":
        if not config.tie_word_embeddings:
            raise ModelError("GGUF export (gemma2): llama.cpp reads tied embeddings only")
        if config.attn_logit_softcapping is None or config.final_logit_softcapping is None:
            raise ModelError(
                "GGUF export (gemma2): llama.cpp always softcaps attention and final logits; "
                "this model sets attn_logit_softcapping or final_logit_softcapping to None"
            )
        _default_rope(config.rope_parameters, kind)
    else:
        if config.attn_logit_softcapping is not None:
            raise ModelError("GGUF export (gemma3): llama.cpp has no attention softcapping")
        _default_rope(config.rope_parameters["sliding_attention"], kind)
        full = config.rope_parameters["full_attention"]
        if full.get("rope_type", "default") not in ("default", "linear"):
            _default_rope(full, kind)


def _default_rope(params: dict, kind: str) -> None:
    rope = params.get("rope_type", "default")
    if rope != "default":
        raise ModelError(
            f"GGUF export ({kind}): rope scaling '{rope}' is not written by tunesmith's GGUF "
            "writer; use llama.cpp's convert_hf_to_gguf.py on the exported folder"
        )


def write_hparams(writer, config, gguf) -> None:
    """llama.cpp's Gemma/Gemma2/Gemma3 keys, from the HF config."""
    head_dim = config.head_dim
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    _write_rope(writer, config, gguf)
    if config.model_type == "gemma":
        return
    if config.attn_logit_softcapping is not None:
        writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
    if config.final_logit_softcapping is not None:
        writer.add_final_logit_softcapping(config.final_logit_softcapping)
    sliding = [kind == "sliding_attention" for kind in config.layer_types]
    if any(sliding) and config.sliding_window:
        writer.add_sliding_window(config.sliding_window)
        writer.add_sliding_window_pattern(sliding)  # one flag per layer, not a period


def _write_rope(writer, config, gguf) -> None:
    params = config.rope_parameters
    if config.model_type in ("gemma", "gemma2"):
        writer.add_rope_freq_base(float(params["rope_theta"]))
        return
    full, local = params["full_attention"], params["sliding_attention"]
    writer.add_rope_freq_base(float(full["rope_theta"]))  # global layers
    writer.add_rope_freq_base_swa(float(local["rope_theta"]))  # sliding layers
    if full.get("rope_type") == "linear":  # Gemma 3 4B and up: global layers only
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(full["factor"]))


def is_spm(spec: dict) -> bool:
    """A SentencePiece-style BPE tokenizer.json (byte fallback, '▁' for spaces), as Gemma's."""
    return spec["model"]["type"] == "BPE" and bool(spec["model"].get("byte_fallback"))


def write_spm_vocab(writer, spec: dict, n_vocab: int, gguf) -> None:
    """The tokenizer as llama.cpp's `llama` (SPM) vocabulary: every id's text, a score per
    token and a type (byte, control, user-defined, unknown, normal); ids the model has past the
    tokenizer are [PADn] and unused, as convert_hf_to_gguf.py pads them.

    llama.cpp's SPM tokenizer merges the adjacent pair whose joined text has the highest score,
    so a token made by a merge scores minus the rank of its first merge in tokenizer.json: the
    same order as the BPE merges transformers applies."""
    model, types = spec["model"], gguf.TokenType
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores = [-1000.0] * n_vocab
    kinds = [types.UNUSED] * n_vocab
    ranks: dict[str, int] = {}
    for rank, merge in enumerate(model.get("merges", [])):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        ranks.setdefault(left + right, rank)
    for token, index in model["vocab"].items():
        _check_id(index, n_vocab, token)
        tokens[index] = token
        scores[index] = -float(ranks[token]) if token in ranks else 0.0
        kinds[index] = types.BYTE if _BYTE.fullmatch(token) else types.NORMAL
    if model.get("unk_token") in model["vocab"]:
        kinds[model["vocab"][model["unk_token"]]] = types.UNKNOWN
    for added in spec.get("added_tokens", []):
        index, text = added["id"], added["content"]
        _check_id(index, n_vocab, text)
        if added.get("special"):
            kinds[index] = types.CONTROL
        else:  # llama.cpp matches user-defined tokens in the raw text, where spaces are spaces
            text, kinds[index] = text.replace("\u2581", " "), types.USER_DEFINED
        tokens[index], scores[index] = text, -1000.0
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(kinds)
    writer.add_add_space_prefix(_adds_prefix_space(spec))


def _check_id(index: int, n_vocab: int, token: str) -> None:
    if index >= n_vocab:
        raise ModelError(
            f"GGUF export: tokenizer.json gives token {token!r} id {index}, past the model's "
            f"vocab_size {n_vocab}"
        )


def _adds_prefix_space(spec: dict) -> bool:
    """Whether the tokenizer puts '▁' before the text (Llama 2 does; Gemma does not)."""
    parts = [spec.get("normalizer"), spec.get("pre_tokenizer")]
    text = json.dumps(parts)
    prepends = '"type": "Prepend"' in text
    metaspace = re.search(r'"prepend_scheme": "(always|first)"', text) is not None
    return prepends or metaspace
