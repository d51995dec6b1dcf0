"""Padding-free classification batches for first-token encoders (BERT, RoBERTa, XLM-R, ELECTRA).

A padded batch of B texts costs B x L_max tokens in every linear layer and B x L_max^2 scores
in attention, however short most texts are; with random batches (what train.sampling auto picks
when the label sets the length) 40% of that is padding on real corpora. Here the batch's texts
run end to end as one row: position ids restart for each text (as each would count alone), the
per-token layers see real tokens only, and attention runs per text in both directions
(models/speed.py's packed attention reads the boundaries from `cu_seq_lens_q`, transformers'
name for them). The encoder's output is then cut down to each text's first token, laid out as
(texts, 1, hidden), which is all a first-token head reads ([CLS] pooler, RoBERTa's and ELECTRA's
classification heads), so the model's own head and loss run unchanged. The maths is the padded
batch's: logits and gradients agree to float rounding; attention-dropout draws differ in order.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from tunesmith.models.speed import PACKED_ATTENTION, per_text_row

# row lengths are rounded up to a multiple of this by a filler text (its own attention block,
# its output unread): the CPU's oneDNN kernels cache a primitive per shape, and rows of every
# length grew memory step after step (MiniLM, 40 steps: 0.29 GB more); <= 63 tokens a step
ROW_MULTIPLE = 64

# encoders whose classification head reads the first token of the encoder's output
FIRST_TOKEN_ENCODERS = ("bert", "roberta", "xlm-roberta", "electra")


# methods that put virtual tokens in front of each text's row
VIRTUAL_TOKEN_METHODS = ("prompt", "prefix", "ptuning")


def packs_run(model_type: str, optimize: bool, method: str) -> bool:
    """What `packs` will say of a run's model, from its config (the planner prices it)."""
    return model_type in FIRST_TOKEN_ENCODERS and optimize and method not in VIRTUAL_TOKEN_METHODS


def packs(model) -> bool:
    """Whether classification batches of `model` can run padding-free: a first-token encoder
    whose attention goes through the packed attention (train.optimize; models/speed.py), and
    no virtual tokens (prompt, prefix, p-tuning) put in front of each text's row."""
    hf = _transformers_model(model)
    config = getattr(hf, "config", None)
    method = getattr(model, "active_peft_config", None)
    return (
        config is not None
        and not getattr(method, "is_prompt_learning", False)
        and config.model_type in FIRST_TOKEN_ENCODERS
        and not config.is_decoder
        and config._attn_implementation == PACKED_ATTENTION
        and _encoder(hf) is not None
    )


def packed_forward(model, inputs: dict, inner=None):
    """The model's output for a padded batch (input_ids, attention_mask, token_type_ids), run
    as one padding-free row: logits of shape (texts, labels) as the padded call gives them.
    `inner`: the model `model` wraps (a distributed wrapper hides its modules)."""
    mask = inputs["attention_mask"].bool()
    texts = mask.sum(dim=1)
    hf = _transformers_model(inner if inner is not None else model)
    filler = -int(texts.sum()) % ROW_MULTIPLE
    lengths = torch.cat([texts, texts.new_tensor([filler])]) if filler else texts
    row = {"input_ids": _with_filler(inputs["input_ids"][mask], filler, _pad_id(hf))}
    if inputs.get("token_type_ids") is not None:
        row["token_type_ids"] = _with_filler(inputs["token_type_ids"][mask], filler, 0)
    row["position_ids"] = _positions(lengths, _position_offset(hf))[None]
    ends = lengths.cumsum(0)
    bounds = torch.cat([ends.new_zeros(1), ends]).to(torch.int32)
    starts = bounds[: len(texts)].long()
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", *row)}
    with _first_tokens(_encoder(hf), starts), per_text_row():
        return model(**row, **extra, cu_seq_lens_q=bounds, cu_seq_lens_k=bounds)


def _with_filler(tokens: torch.Tensor, filler: int, value: int) -> torch.Tensor:
    """The row (1, tokens + filler): a filler text of `value` rounds its length up."""
    return torch.cat([tokens, tokens.new_full((filler,), value)])[None]


def _pad_id(hf) -> int:
    return hf.config.pad_token_id if hf.config.pad_token_id is not None else 0


def _positions(lengths: torch.Tensor, offset: int) -> torch.Tensor:
    """0, 1, ..., n-1 for each text (plus the model's offset), end to end."""
    starts = torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
    return torch.arange(int(lengths.sum()), device=lengths.device) - starts + offset


def _position_offset(hf) -> int:
    # RoBERTa-style embeddings count positions from padding_idx + 1, as they would for an
    # unpadded text; BERT-style ones from 0
    embeddings = hf.base_model.embeddings
    if hasattr(embeddings, "create_position_ids_from_input_ids"):
        return embeddings.padding_idx + 1
    return 0


@contextmanager
def _first_tokens(encoder: torch.nn.Module, starts: torch.Tensor):
    """While open, the encoder returns each text's first token as (texts, 1, hidden)."""

    def cut(module, args, output):
        output.last_hidden_state = output.last_hidden_state[0, starts].unsqueeze(1)
        return output

    handle = encoder.register_forward_hook(cut)
    try:
        yield
    finally:
        handle.remove()


def _transformers_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _encoder(hf) -> torch.nn.Module | None:
    base = getattr(hf, "base_model", None)
    return getattr(base, "encoder", None) if base is not None else None
