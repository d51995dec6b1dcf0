"""The form every fine-tuning method fills, and the registry of methods.

A method is one config class (config/methods.py) and one module here holding a `Method`
subclass decorated with `@register`. The form holds everything the rest of tunesmith asks of a
method, so no other module keeps a per-method table:

- apply / save / load / merge: train it, write its artifact, rebuild it, fold it into the base;
- count: trainable parameters on a meta-device model (by default: apply it and count, so the
  planner cannot drift from what trains);
- the planner's memory terms (activations a frozen block keeps, trained blocks);
- packing, default learning rate, the advice text, what PEFT adapter types it saves as.

Every artifact folder gets `tunesmith_method.json` (the method config and the task), so an
adapter folder copied out of its run folder still says what it is.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from tunesmith.utils.errors import ModelError

Task = Literal["causal_lm", "seq_cls", "vlm"]  # vlm: an image-text-to-text model (models/vlm.py)
MARKER = "tunesmith_method.json"
LEGACY_MARKER = "tunesmith_adapter.json"  # written by adapter / hybrid before MARKER existed
# Weights a trainer checkpoint must hold beyond what the Trainer saves: PEFT checkpoints keep
# LoRA only (not hybrid's bottleneck adapters) and a prompt encoder's output, not the encoder
# (P-tuning's MLP / LSTM, prefix projection), so a resumed run would train a fresh encoder.
CHECKPOINT_EXTRA = "_tunesmith_checkpoint_extra"  # model attribute: name parts of those weights
EXTRA_WEIGHTS = "method_weights.safetensors"  # in each checkpoint folder


class Method:
    """Defaults fit a PEFT adapter; a method overrides what differs."""

    name: ClassVar[str]
    config: ClassVar[type]  # its section in config/methods.py
    artifact: ClassVar[str] = "adapter"  # the run sub-folder: "adapter" or "model"
    packing: ClassVar[bool] = True  # False: virtual tokens cannot be shared by a packed row
    not_mergeable: ClassVar[str | None] = None  # why it cannot merge; None: it merges
    shares_base: ClassVar[bool] = True  # served as a PEFT adapter switched on one shared base
    peft_type: ClassVar[str | None] = None  # the PEFT adapter type it writes (adapter_config)
    trains_base_weights: ClassVar[bool] = False  # full / freeze: the base weights themselves
    vision_language: ClassVar[bool] = False  # applies to a vision-language model (task vlm)
    learning_rate: ClassVar[float]  # a starting point for the planner's advice
    why: ClassVar[str]  # one line for the planner's advice

    # --- training --------------------------------------------------------------------------

    def apply(self, model, cfg, task: Task = "causal_lm"):
        """Make the chosen parameters trainable; return the model to train."""
        raise NotImplementedError

    def quantization_config(self, cfg) -> object | None:
        """What the base model must be loaded with (qlora: 4/8-bit); None: as it is."""
        return None

    def quantized_base(self, cfg) -> tuple[int, int] | None:
        """(bits per base weight, bytes per compute value) of a quantized base; None: none."""
        return None

    def callbacks(self, model) -> list:
        """Trainer callbacks the applied method needs while training."""
        return []

    # --- artifact --------------------------------------------------------------------------

    def save(self, model, tokenizer, out_dir: Path, cfg, task: Task = "causal_lm") -> None:
        """Write what inference needs, the tokenizer with its chat template, and the marker."""
        out_dir = Path(out_dir)
        self.write(model, out_dir)
        tokenizer.save_pretrained(out_dir)
        write_marker(out_dir, cfg, task, **self.marker_fields(model))

    def write(self, model, out_dir: Path) -> None:
        model.save_pretrained(out_dir)  # PEFT: adapter weights and adapter_config.json only

    def marker_fields(self, model) -> dict:
        return {}

    def load(self, base_model, folder: Path):
        """The tuned model: the base with the saved artifact attached."""
        from peft import PeftModel

        from tunesmith.models.methods._peft import peft_quietly

        with peft_quietly():
            return PeftModel.from_pretrained(base_model, folder)  # PEFT reads the adapter type

    @property
    def mergeable(self) -> bool:
        return self.not_mergeable is None

    def merge(self, model):
        """The plain transformers model with the adapter folded into the weights."""
        if not self.mergeable:
            raise ModelError(f"method {self.name}: {self.not_mergeable}")
        return model.merge_and_unload()

    # --- planning --------------------------------------------------------------------------

    def count(self, model, cfg, task: Task = "causal_lm") -> int:
        """Trainable parameters on `model` (shapes on the meta device): applied to a copy."""
        with torch.device("meta"):
            applied = self.apply(copy.deepcopy(model), self.countable(cfg), task)
        return count_parameters(applied)[0]

    def countable(self, cfg):
        """The config to count with: options that read weights or files, with the same shapes
        without them (PiSSA's SVD, a prompt's init text) are dropped."""
        return cfg

    def frozen_block_activations(self, shapes, cfg) -> float:
        """Elements per token the method adds inside a frozen decoder block (see plan/memory)."""
        return 0.0

    def checkpointed_activations(self, shapes, cfg) -> float:
        """Elements per token a checkpointed block still keeps on CPU because of the method."""
        return 0.0

    def trained_blocks(self, cfg, layers: int) -> int:
        """Decoder blocks whose own weights train."""
        return 0

    def trains_embeddings(self, cfg) -> bool:
        return False

    def advised(self, scale: str, layers: int, parameters: int) -> dict:
        """Settings the planner's advice suggests beside the learning rate, as key=value
        overrides, for data of this scale (small | medium | large) and model size."""
        return {}


METHODS: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    """Add a method to the registry under its `name` (one instance: methods hold no state)."""
    if cls.name in METHODS:
        raise ValueError(f"method '{cls.name}' is registered twice")
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ModelError(f"method.type: unknown method '{name}'; known: {', '.join(METHODS)}")
    return METHODS[name]


def method_for_peft_type(peft_type: str) -> Method:
    """The method that writes PEFT adapters of this type (for folders without a marker)."""
    for method in METHODS.values():
        if method.peft_type == peft_type:
            return method  # the first registered: lora before qlora
    known = sorted({m.peft_type for m in METHODS.values() if m.peft_type})
    raise ModelError(
        f"PEFT adapter type {peft_type} is not one tunesmith trains or serves ({', '.join(known)})"
    )


def write_marker(out_dir: Path, cfg, task: Task, **fields: Any) -> None:
    marker = {"method": cfg.model_dump(), "task": task, **fields}
    (Path(out_dir) / MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")


def read_marker(folder: Path) -> dict | None:
    """The marker of an artifact folder, or None for a folder written without one."""
    for name in (MARKER, LEGACY_MARKER):
        path = Path(folder) / name
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ModelError(f"{path}: damaged ({exc}); train the run again") from None
    return None


def keep_in_checkpoints(model, *name_parts: str) -> None:
    """Trainer checkpoints of `model` also hold the parameters whose name has one of the parts."""
    setattr(model, CHECKPOINT_EXTRA, name_parts)


def checkpoint_extra(model) -> dict[str, torch.Tensor]:
    """The weights keep_in_checkpoints named, by their name in `model`; {} when none."""
    parts = getattr(model, CHECKPOINT_EXTRA, ())
    return {
        name: param.detach().contiguous()
        for name, param in model.named_parameters()
        if any(part in f".{name}" for part in parts)
    }


def save_checkpoint_extra(model, folder: Path) -> None:
    from safetensors.torch import save_file

    extra = checkpoint_extra(model)
    if extra:
        save_file(extra, Path(folder) / EXTRA_WEIGHTS)


def load_checkpoint_extra(model, folder: Path) -> None:
    from safetensors.torch import load_file

    path = Path(folder) / EXTRA_WEIGHTS
    if path.is_file():
        unexpected = model.load_state_dict(load_file(path), strict=False).unexpected_keys
        if unexpected:
            raise ModelError(f"{path}: weights this model does not have: {unexpected[:3]}")


def extra_covers_training(model) -> bool:
    """True when the extra weights are everything that trains: a checkpoint is then restored
    from them alone (PEFT cannot load its own prefix-projection checkpoints back)."""
    trained = {name for name, param in model.named_parameters() if param.requires_grad}
    extra = checkpoint_extra(model)
    return bool(extra) and trained <= set(extra)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total
