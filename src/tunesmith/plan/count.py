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

# Well-known architectures as config dicts, so planning them works offline.
_LLAMA = {"model_type": "llama", "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
_QWEN = {"model_type": "qwen2", "rms_norm_eps": 1e-6}
KNOWN_ARCHITECTURES: dict[str, dict] = {
    "llama-2-7b": _LLAMA
    | dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
           num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
    "llama-2-13b": _LLAMA
    | dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
           num_attention_heads=40, num_key_value_heads=40, vocab_size=32000),
    "llama-2-70b": _LLAMA
    | dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
           num_attention_heads=64, num_key_value_heads=8, vocab_size=32000),
    "llama-3-8b": _LLAMA
    | dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
           num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    "llama-3-70b": _LLAMA
    | dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
           num_attention_heads=64, num_key_value_heads=8, vocab_size=128256),
    "mistral-7b": _LLAMA
    | dict(model_type="mistral", hidden_size=4096, intermediate_size=14336,
           num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
           vocab_size=32768),
    "qwen2.5-0.5b": _QWEN
    | dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
           num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
           tie_word_embeddings=True),
    "qwen2.5-1.5b": _QWEN
    | dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
           num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
           tie_word_embeddings=True),
    "qwen2.5-3b": _QWEN
    | dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
           num_attention_heads=16, num_key_value_heads=2, vocab_size=151936,
           tie_word_embeddings=True),
    "qwen2.5-7b": _QWEN
    | dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
           num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
           tie_word_embeddings=False),
    "qwen2.5-14b": _QWEN
    | dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
           num_attention_heads=40, num_key_value_heads=8, vocab_size=152064,
           tie_word_embeddings=False),
    "qwen2.5-32b": _QWEN
    | dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
           num_attention_heads=40, num_key_value_heads=8, vocab_size=152064,
           tie_word_embeddings=False),
    "qwen2.5-72b": _QWEN
    | dict(hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
           num_attention_heads=64, num_key_value_heads=8, vocab_size=152064,
           tie_word_embeddings=False),
    "gemma-2b": dict(model_type="gemma", hidden_size=2048, intermediate_size=16384,
                     num_hidden_layers=18, num_attention_heads=8, num_key_value_heads=1,
                     head_dim=256, vocab_size=256000, tie_word_embeddings=True),
    "gemma-7b": dict(model_type="gemma", hidden_size=3072, intermediate_size=24576,
                     num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=16,
                     head_dim=256, vocab_size=256000, tie_word_embeddings=True),
}  # fmt: skip


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
        try:
            return AutoModelForCausalLM.from_config(config)
        except ValueError:  # an encoder without an LM head: its body
            return AutoModel.from_config(config)


def shapes_of(config) -> Shapes:
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
    )


def total_parameters(model: nn.Module) -> int:
    """All parameters; a tied embedding / output matrix counts once."""
    from tunesmith.models.methods import count_parameters

    return count_parameters(model)[1]


def trainable_parameters(model: nn.Module, method, task: str = "causal_lm") -> int:
    """Parameters `method` (a config/methods.py section) trains on this (meta) model: the
    method itself applied to a copy and counted, so plan and training cannot disagree."""
    from tunesmith.models.methods import get_method

    return get_method(method.type).count(model, method, task)
