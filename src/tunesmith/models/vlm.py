"""Vision-language models (image-text-to-text): which models are one, how they load (the
processor stands where a text model's tokenizer does), and which of their parts train.

Everything here is generic over transformers' image-text-to-text models: the model type is
looked up in transformers' own image-text-to-text mapping, the language model is
`get_decoder()`, the vision side is what sits beside it (Qwen2-VL's `visual`, LLaVA's
`vision_tower` and `multi_modal_projector`, Idefics3's `vision_model` and `connector`), and
the projector is found by the few names the libraries give it. Tokens, image placeholders and
pixel values are the processor's business (data/multimodal.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.config.schema import ModelConfig
from tunesmith.models.load import from_hub_or_local, pick_dtype
from tunesmith.models.resolve import ResolvedModel, resolve_model
from tunesmith.utils.errors import ModelError

# what the libraries call the layer that maps image features into the language model
PROJECTOR_NAMES = ("multi_modal_projector", "merger", "connector", "mm_projector", "aligner")


def is_vision_language(model: ModelConfig | ResolvedModel | str) -> bool:
    """Whether the model is an image-text-to-text model (its config says so; no weights read)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    config = _config_of(model)
    if config is None:
        return False
    return config.get("model_type") in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def _config_of(model) -> dict | None:
    if isinstance(model, ModelConfig):
        model = model.name_or_path
    try:
        resolved = model if isinstance(model, ResolvedModel) else resolve_model(str(model))
    except ModelError:
        return None
    path = Path(resolved.path) / "config.json"
    if resolved.source != "hub":
        try:
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, json.JSONDecodeError):
            return None
    try:  # a hub id the user asked for: its config only
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(resolved.path).to_dict()
    except Exception:
        return None


def is_processor(tokenizer) -> bool:
    """A multimodal processor (it holds an image processor beside its tokenizer)."""
    return getattr(tokenizer, "image_processor", None) is not None


def text_tokenizer(tokenizer):
    """The tokenizer inside a processor; a tokenizer itself."""
    return getattr(tokenizer, "tokenizer", tokenizer) if is_processor(tokenizer) else tokenizer


def load_vlm(resolved: ResolvedModel, cfg: ModelConfig, quantization=None):
    """The image-text-to-text model (`quantization`: qlora's bitsandbytes config)."""
    from transformers import AutoModelForImageTextToText

    quantized = {"quantization_config": quantization} if quantization is not None else {}
    return from_hub_or_local(
        AutoModelForImageTextToText,
        resolved,
        cfg,
        dtype=pick_dtype(cfg.dtype),
        trust_remote_code=cfg.trust_remote_code,
        **quantized,
    )


def load_processor(resolved: ResolvedModel, cfg: ModelConfig):
    """The model's processor, with model.chat_template applied and a pad token set."""
    from transformers import AutoProcessor

    processor = from_hub_or_local(
        AutoProcessor, resolved, cfg, trust_remote_code=cfg.trust_remote_code
    )
    if not is_processor(processor):
        raise ModelError(
            f"'{resolved.ref}' has no image processor (its AutoProcessor is "
            f"{type(processor).__name__}); a vision-language model needs one"
        )
    tokenizer = processor.tokenizer
    if cfg.chat_template:
        template = Path(cfg.chat_template)
        is_file = len(cfg.chat_template) < 256 and template.is_file()
        processor.chat_template = template.read_text() if is_file else cfg.chat_template
    if not processor.chat_template:
        processor.chat_template = getattr(tokenizer, "chat_template", None)
    if not processor.chat_template:
        raise ModelError(
            f"the processor of '{resolved.ref}' has no chat template; "
            "set model.chat_template to a Jinja template or a file holding one"
        )
    if tokenizer.pad_token is None:  # padding is masked out of the loss
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def load_vlm_and_processor(cfg: ModelConfig, quantization=None):
    resolved = resolve_model(cfg.name_or_path)
    return load_vlm(resolved, cfg, quantization), load_processor(resolved, cfg), resolved


# --- the parts of the model -------------------------------------------------------------


@dataclass(frozen=True)
class VlmParts:
    """Module name prefixes (as in model.named_modules()) of a vision-language model."""

    language: str  # the language model (decoder)
    vision: tuple[str, ...]  # everything beside it: the vision tower and the projector
    projector: tuple[str, ...]  # the projector (inside or beside the vision tower)

    def is_vision(self, name: str) -> bool:
        return any(_under(name, prefix) for prefix in self.vision)

    def is_projector(self, name: str) -> bool:
        return any(_under(name, prefix) for prefix in self.projector)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def vlm_parts(model) -> VlmParts:
    """Where the language model, the vision tower and the projector are in `model`."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    names = {id(module): name for name, module in model.named_modules()}
    language = names.get(id(decoder))
    if not language:
        raise ModelError(
            f"{type(model).__name__}: cannot find its language model (get_decoder); "
            "not a vision-language model tunesmith can train"
        )
    parent = language.rpartition(".")[0]
    holder = model.get_submodule(parent) if parent else model
    vision = tuple(
        f"{parent}.{child}" if parent else child
        for child, _ in holder.named_children()
        if (f"{parent}.{child}" if parent else child) != language
    )
    projector = tuple(
        name
        for name, _ in model.named_modules()
        if name.rpartition(".")[2] in PROJECTOR_NAMES and any(_under(name, v) for v in vision)
    )
    return VlmParts(language, vision, projector)


def lora_targets(model, target_modules: str | list[str], train_vision: bool) -> list[str]:
    """The full names of the linear layers LoRA adapts in a vision-language model: those of the
    language model (all of them, or those ending in a name of `target_modules`), and of the
    vision tower too with train_vision (its projector is trained whole: train_projector)."""
    parts = vlm_parts(model)
    wanted = None if target_modules == "all-linear" else _as_list(target_modules)
    chosen = []
    for name, module in model.named_modules():
        if not _is_linear(module):
            continue
        in_scope = _under(name, parts.language) or (
            train_vision and parts.is_vision(name) and not parts.is_projector(name)
        )
        last = name.rpartition(".")[2]
        if in_scope and (wanted is None or last in wanted or name in wanted):
            chosen.append(name)
    if not chosen:
        raise ModelError(
            f"method.target_modules: {target_modules} matches no linear layer of the language "
            f"model ({parts.language})"
        )
    return chosen


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _is_linear(module) -> bool:
    if isinstance(module, torch.nn.Linear):
        return True
    # bitsandbytes' 4/8-bit layers (qlora) are Linear subclasses in recent versions; by name
    # otherwise, so this module needs no bitsandbytes import
    return type(module).__name__ in ("Linear4bit", "Linear8bitLt")


def projector_modules(model) -> list[str]:
    """The projector modules (trained whole by LoRA's modules_to_save with train_projector)."""
    return list(vlm_parts(model).projector)


def freeze_vision(model, cfg) -> None:
    """The vision tower frozen unless method.train_vision, the projector unless
    method.train_projector (full fine-tuning trains the language model and the output layer)."""
    parts = vlm_parts(model)
    for name, param in model.named_parameters():
        if parts.is_projector(name):
            param.requires_grad_(bool(cfg.train_projector))
        elif parts.is_vision(name):
            param.requires_grad_(bool(cfg.train_vision))


def vision_parameters(model) -> int:
    """Parameters of the vision tower and projector (the planner's extra weights)."""
    parts = vlm_parts(model)
    return sum(p.numel() for n, p in model.named_parameters() if parts.is_vision(n))
