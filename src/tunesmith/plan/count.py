"""Parameter counts from a model's config alone: no weights are read or downloaded.

The model is built on torch's meta device (shapes without storage), so a 70B config costs a
second. Trainable counts come from the method itself, applied on that meta model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tunesmith.utils.errors import ModelError

# Well-known architectures, so planning them works offline: family and
# (hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings[, head dim]).
_FAMILIES = {
    "llama": {"model_type": "llama", "rms_norm_eps": 1e-5},
    "mistral": {"model_type": "mistral", "rms_norm_eps": 1e-5},
    "qwen2": {"model_type": "qwen2", "rms_norm_eps": 1e-6},
    "gemma": {"model_type": "gemma"},
}
_SHAPES = {
    "llama-2-7b": ("llama", 4096, 11008, 32, 32, 32, 32000, False),
    "llama-2-13b": ("llama", 5120, 13824, 40, 40, 40, 32000, False),
    "llama-2-70b": ("llama", 8192, 28672, 80, 64, 8, 32000, False),
    "llama-3-8b": ("llama", 4096, 14336, 32, 32, 8, 128256, False),
    "llama-3-70b": ("llama", 8192, 28672, 80, 64, 8, 128256, False),
    "mistral-7b": ("mistral", 4096, 14336, 32, 32, 8, 32768, False),
    "qwen2.5-0.5b": ("qwen2", 896, 4864, 24, 14, 2, 151936, True),
    "qwen2.5-1.5b": ("qwen2", 1536, 8960, 28, 12, 2, 151936, True),
    "qwen2.5-3b": ("qwen2", 2048, 11008, 36, 16, 2, 151936, True),
    "qwen2.5-7b": ("qwen2", 3584, 18944, 28, 28, 4, 152064, False),
    "qwen2.5-14b": ("qwen2", 5120, 13824, 48, 40, 8, 152064, False),
    "qwen2.5-32b": ("qwen2", 5120, 27648, 64, 40, 8, 152064, False),
    "qwen2.5-72b": ("qwen2", 8192, 29568, 80, 64, 8, 152064, False),
    "gemma-2b": ("gemma", 2048, 16384, 18, 8, 1, 256000, True, 256),
    "gemma-7b": ("gemma", 3072, 24576, 28, 16, 16, 256000, True, 256),
}
_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "tie_word_embeddings",
    "head_dim",
)
KNOWN_ARCHITECTURES: dict[str, dict] = {
    name: _FAMILIES[family] | dict(zip(_FIELDS, numbers, strict=False))
    for name, (family, *numbers) in _SHAPES.items()
}


@dataclass(frozen=True)
class Shapes:
    """The architecture numbers the memory and time formulas need."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    model_type: str
    positions: int | None = None  # the position table (an encoder's 512): the longest input
    bidirectional: bool = False  # an encoder: every token attends to every other
    attention_dropout: float = 0.0  # dropout on the attention probabilities while training
    hidden_dropout: float = 0.0  # an encoder's dropout on the residual stream (BERT family)

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def known_key(ref: str) -> str | None:
    """The table key of a well-known model name or hub id (`Qwen/Qwen2.5-7B-Instruct`)."""
    name = ref.rstrip("/").split("/")[-1].lower()
    name = re.sub(r"^meta-", "", name)
    name = re.sub(r"-(instruct|chat|hf|it|base)(-.*)?$", "", name)
    name = re.sub(r"-v0\.\d+$", "", name)
    name = re.sub(r"^llama-?3(\.\d)?-", "llama-3-", name)
    name = re.sub(r"^llama-?2-", "llama-2-", name)
    return name if name in KNOWN_ARCHITECTURES else None


def load_model_config(ref: str):
    """A transformers config for a model reference: the known table first, else config.json of
    a local folder / embedded alias / .gguf file, else the hub (network)."""
    from transformers import CONFIG_MAPPING, AutoConfig

    key = known_key(ref)
    if key is not None:
        fields = dict(KNOWN_ARCHITECTURES[key])
        return CONFIG_MAPPING[fields.pop("model_type")](**fields)
    from tunesmith.models.resolve import resolve_model

    resolved = resolve_model(ref)
    try:
        return AutoConfig.from_pretrained(resolved.path)
    except OSError:
        if resolved.source != "hub":
            raise ModelError(
                f"model '{ref}': cannot read {Path(resolved.path) / 'config.json'}"
            ) from None
        raise ModelError(
            f"model '{ref}' is not a local folder or embedded alias, its config could not be "
            f"downloaded, and it is not one of the known architectures: "
            f"{', '.join(KNOWN_ARCHITECTURES)}"
        ) from None


def meta_model(config, classifier: bool = False) -> nn.Module:
    """The model with every tensor on the meta device: shapes only, no memory, no download.
    classifier: with a sequence-classification head (train.stage cls) instead of the LM head."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    with torch.device("meta"):
        if classifier:
            return AutoModelForSequenceClassification.from_config(config)
        if is_vision_language_config(config):  # the vision tower and projector included
            from transformers import AutoModelForImageTextToText

            return AutoModelForImageTextToText.from_config(config)
        try:
            return AutoModelForCausalLM.from_config(config)
        except ValueError:  # an encoder without an LM head: its body
            return AutoModel.from_config(config)


def is_vision_language_config(config) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def shapes_of(config) -> Shapes:
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    config = getattr(config, "text_config", None) or config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return Shapes(
        hidden=config.hidden_size,
        intermediate=getattr(config, "intermediate_size", None) or 4 * config.hidden_size,
        layers=config.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        vocab=config.vocab_size,
        tied=bool(getattr(config, "tie_word_embeddings", False)),
        model_type=config.model_type,
        positions=getattr(config, "max_position_embeddings", None),
        # masked-LM families (BERT, RoBERTa, DeBERTa, ...) are encoders; decoders are causal
        bidirectional=config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        attention_dropout=float(
            getattr(config, "attention_probs_dropout_prob", None)  # BERT family
            or getattr(config, "attention_dropout", None)
            or 0.0
        ),
        hidden_dropout=float(getattr(config, "hidden_dropout_prob", None) or 0.0),
    )


def total_parameters(model: nn.Module) -> int:
    """All parameters; a tied embedding / output matrix counts once."""
    from tunesmith.models.methods import count_parameters

    return count_parameters(model)[1]


def embedding_parameters(model: nn.Module) -> int:
    """Parameters of embedding tables: looked up, not multiplied, for each token."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))


def trainable_parameters(model: nn.Module, method, task: str = "causal_lm") -> int:
    """Parameters `method` (a config/methods.py section) trains on this (meta) model: the
    method itself applied to a copy and counted, so plan and training cannot disagree."""
    from tunesmith.models.methods import get_method

    return get_method(method.type).count(model, method, task)
