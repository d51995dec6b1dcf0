"""Parameter counts from a model's config alone: no weights are read or downloaded.

The model is built on torch's meta device (shapes without storage), so a 70B config costs a
second. Trainable counts per method are computed from the module shapes, the same arithmetic
PEFT and models/methods/ do when they build their layers (tests check them against the real
thing on a tiny model).
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

# Decoder blocks are `...layers.<i>.` (Llama), `h.<i>` (GPT-2), `layer.<i>` (BERT).
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks)\.(\d+)\.")
_OUTPUT_LAYERS = ("lm_head", "embed_out", "output_layer", "classifier", "score")


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
    return sum(p.numel() for p in _unique(model.parameters()))


def layer_index(name: str) -> int | None:
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def trainable_parameters(model: nn.Module, method) -> int:
    """Parameters `method` (a config/methods.py section) trains on this (meta) model."""
    counters = {
        "full": lambda: total_parameters(model),
        "freeze": lambda: _freeze(model, method),
        "lora": lambda: _lora(model, method),
        "qlora": lambda: _lora(model, method),
        "ia3": lambda: _ia3(model, method),
        "prefix": lambda: _prefix(model, method),
        "prompt": lambda: method.num_virtual_tokens * _config(model).hidden_size,
        "ptuning": lambda: _ptuning(model, method),
        "adapter": lambda: _adapters(model, method, _sites(method.placement)),
        "hybrid": lambda: _hybrid(model, method),
    }
    if method.type not in counters:
        raise ModelError(f"method.type: the planner cannot count '{method.type}'")
    return counters[method.type]()


def _config(model):
    return model.config


def _unique(params):
    seen: set[int] = set()
    for param in params:
        if id(param) not in seen:
            seen.add(id(param))
            yield param


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def _matches(name: str, targets: str | list[str]) -> bool:
    """PEFT's rule: a list matches the name or its last dotted parts; a string is a regex."""
    if isinstance(targets, str):
        if targets == "all-linear":
            return name.split(".")[-1] not in _OUTPUT_LAYERS
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith(f".{t}") for t in targets)


def _lora(model: nn.Module, cfg) -> int:
    # A (r x in) and B (out x r) per target; DoRA adds a magnitude per output feature.
    total = 0
    for name, layer in _linears(model).items():
        if _matches(name, cfg.target_modules):
            total += cfg.r * (layer.in_features + layer.out_features)
            total += layer.out_features if getattr(cfg, "use_dora", False) else 0
    return total + _saved_modules(model, getattr(cfg, "modules_to_save", []))


def _saved_modules(model: nn.Module, names: list[str]) -> int:
    """modules_to_save: a trained copy of each named module."""
    if not names:
        return 0
    mods = [m for n, m in model.named_modules() if n.split(".")[-1] in names]
    return sum(p.numel() for p in _unique(p for m in mods for p in m.parameters()))


def _ia3(model: nn.Module, cfg) -> int:
    # One vector per target: over the input features for feedforward targets, else the output.
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD,
    )
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS,
    )

    kind = _config(model).model_type
    targets = cfg.target_modules or TARGETS.get(kind)
    feedforward = cfg.feedforward_modules or FEEDFORWARD.get(kind, [])
    if targets is None:
        raise ModelError(f"method ia3: no default target modules for '{kind}'; set them")
    total = 0
    for name, layer in _linears(model).items():
        if _matches(name, targets):
            ff = _matches(name, feedforward)
            total += layer.in_features if ff else layer.out_features
    return total


def prefix_token_dim(config) -> int:
    """PEFT stores a prefix per layer for keys and values: kv heads x head dim wide."""
    if getattr(config, "num_key_value_heads", None):
        head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        return config.num_key_value_heads * head_dim
    return config.hidden_size


def _prefix(model: nn.Module, cfg) -> int:
    config = _config(model)
    width, layers, n = prefix_token_dim(config), config.num_hidden_layers, cfg.num_virtual_tokens
    if not cfg.projection:
        return n * layers * 2 * width
    enc = cfg.encoder_hidden_size or config.hidden_size
    # embedding (n x width), Linear(width, enc), Linear(enc, layers * 2 * width), with biases
    return n * width + (width + 1) * enc + (enc + 1) * layers * 2 * width


def _ptuning(model: nn.Module, cfg) -> int:
    hidden = _config(model).hidden_size
    enc = cfg.encoder_hidden_size or hidden
    embedding = cfg.num_virtual_tokens * hidden
    if cfg.encoder == "mlp":  # Linear(h, e), Linear(e, e), Linear(e, h), with biases
        return embedding + (hidden + 1) * enc + (enc + 1) * enc + (enc + 1) * hidden
    # a 2-layer bidirectional LSTM (4 gates, 2 bias vectors), then an MLP from 2e to h
    lstm = sum(2 * (4 * enc * (inp + enc) + 8 * enc) for inp in (hidden, 2 * enc))
    head = (2 * enc + 1) * 2 * enc + (2 * enc + 1) * hidden
    return embedding + lstm + head


def _sites(placement: str) -> tuple[str, ...]:
    return ("attention", "ffn") if placement == "both" else (placement,)


def _adapters(model: nn.Module, cfg, sites: tuple[str, ...]) -> int:
    # Each: down (h x s + s) and up (s x h + h).
    from tunesmith.models.methods.adapter import adapter_targets

    hidden = _config(model).hidden_size
    size = hidden // cfg.reduction_factor if cfg.reduction_factor else cfg.adapter_size
    return len(adapter_targets(model, sites)) * (2 * hidden * size + size + hidden)


def _hybrid(model: nn.Module, cfg) -> int:
    from tunesmith.models.methods.hybrid import allocate_parameters, attention_linears

    if cfg.budget:
        r, size = allocate_parameters(cfg.budget, model)
        cfg = cfg.model_copy(update={"r": r, "adapter_size": size, "reduction_factor": None})
    lora = sum(cfg.r * (m.in_features + m.out_features) for m in attention_linears(model).values())
    return lora + _adapters(model, cfg, ("ffn",))


def _freeze(model: nn.Module, cfg) -> int:
    names = dict(model.named_parameters())  # named_parameters() already skips tied duplicates
    layers = sorted({i for n in names if (i := layer_index(n)) is not None})
    top = set(layers[len(layers) - cfg.trainable_layers :]) if cfg.trainable_layers else set()
    modules = cfg.trainable_modules
    return sum(
        p.numel()
        for n, p in names.items()
        if layer_index(n) in top or any(f".{m}." in f".{n}" for m in modules)
    )


def trainable_layers(method, shapes: Shapes) -> int:
    """How many decoder blocks hold trained weights (the rest only pass gradients, or none)."""
    if method.type == "full":
        return shapes.layers
    if method.type == "freeze":
        return min(method.trainable_layers, shapes.layers)
    return 0
