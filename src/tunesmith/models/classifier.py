"""Sequence classifiers: load one over a label set, with the standard or the seeds' head.

Any model AutoModelForSequenceClassification loads works: an encoder (BERT-style: the pooled
output feeds the head) or a decoder (Llama-style: the last non-padding token feeds `score`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from tunesmith.config.cls import ClsConfig
from tunesmith.config.schema import ModelConfig
from tunesmith.models.load import from_hub_or_local, pick_dtype
from tunesmith.models.methods import HEADS  # classifier (BERT family), score (Llama)
from tunesmith.models.resolve import ResolvedModel, resolve_model
from tunesmith.utils.errors import ModelError


class SeedHead(nn.Sequential):
    """The seeds' classifier: Dropout, Linear H -> H/2, ReLU, Dropout, Linear H/2 -> labels."""

    def __init__(self, hidden: int, num_labels: int, dropout: float = 0.1):
        super().__init__(
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden // 2, num_labels),
        )


def head_name(model) -> str:
    """The attribute holding the classification head (`classifier` or `score`)."""
    for name in HEADS:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ModelError(
        f"{type(model).__name__} has no `classifier` or `score` head; "
        "train.stage=cls supports models with one of them (BERT, RoBERTa, Llama, Qwen, ...)"
    )


def use_seed_head(model, dropout: float) -> SeedHead:
    """Replace a single-Linear head (on the pooled output, or on every position for Llama-style
    models, which pick the last token afterwards) with the seed head."""
    name = head_name(model)
    old = getattr(model, name)
    if not isinstance(old, nn.Linear):
        raise ModelError(
            f"train.cls.head=seed replaces a single Linear head; {type(model).__name__}.{name} is "
            f"a {type(old).__name__}: use train.cls.head=standard"
        )
    head = SeedHead(old.in_features, old.out_features, dropout)
    setattr(model, name, head.to(old.weight.device, old.weight.dtype))
    return head


def classifier_tokenizer(resolved: ResolvedModel, model_cfg: ModelConfig):
    """The tokenizer with a pad token (no chat template needed: encoders have none)."""
    from transformers import AutoTokenizer

    tokenizer = from_hub_or_local(
        AutoTokenizer, resolved, model_cfg, trust_remote_code=model_cfg.trust_remote_code
    )
    if tokenizer.pad_token is None:  # decoders: the last real token is found by the pad id
        if tokenizer.eos_token is None:
            raise ModelError(f"the tokenizer of '{resolved.ref}' has no pad or eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_classifier(
    model_cfg: ModelConfig,
    labels: Sequence[str],
    cfg: ClsConfig,
    quantization=None,
    weights: ResolvedModel | None = None,
):
    """(model, tokenizer, resolved): a sequence classifier over `labels` with the chosen head.
    `quantization`: qlora's 4/8-bit config; `weights`: a tuned full model to load instead of
    model_cfg's base model."""
    from transformers import AutoModelForSequenceClassification

    resolved = weights or resolve_model(model_cfg.name_or_path)
    tokenizer = classifier_tokenizer(resolved, model_cfg)
    model = from_hub_or_local(
        AutoModelForSequenceClassification,
        resolved,
        model_cfg,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        problem_type=(
            "multi_label_classification" if cfg.multi_label else "single_label_classification"
        ),
        dtype=pick_dtype(model_cfg.dtype),
        trust_remote_code=model_cfg.trust_remote_code,
        **({"quantization_config": quantization} if quantization is not None else {}),
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    cap_to_positions(tokenizer, model)
    if cfg.head == "seed":
        use_seed_head(model, cfg.dropout)
    return model, tokenizer, resolved


def cap_to_positions(tokenizer, model) -> None:
    """An encoder's learned position table is its hard limit; a tokenizer saved without a
    model_max_length (transformers reports ~1e30) would let longer inputs through to an index
    error, so texts are cut to the table (data.classification.cls_max_length reads this).
    RoBERTa-style tables reserve the padding index and the one before it."""
    embeddings = getattr(getattr(model, "base_model", model), "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    if not isinstance(table, nn.Embedding):
        return  # rotary or relative positions: no table to run past
    reserved = table.padding_idx + 1 if table.padding_idx is not None else 0
    tokenizer.model_max_length = min(tokenizer.model_max_length, table.num_embeddings - reserved)


def load_head(model, folder: Path) -> None:
    """The trained head's weights from a whole saved model (from_pretrained builds the seed
    head's place as one Linear)."""
    from safetensors import safe_open

    name = head_name(model)
    prefix = f"{name}."
    state = {}
    for file in folder.glob("*.safetensors"):  # one file, or the shards of a large model
        with safe_open(file, "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (a safetensors handle is not iterable)
                if key.startswith(prefix):
                    state[key.removeprefix(prefix)] = handle.get_tensor(key)
    getattr(model, name).load_state_dict(state)
