"""Load a trained artifact as it was trained, and fold an adapter into its base weights.

The merge runs in float32 on a base loaded without quantization: a QLoRA adapter is merged into
dequantized weights (merging into 4-bit weights would round the update away). What a method can
merge, and how, is the method's own answer (models/methods/).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunesmith.config.schema import ModelConfig
from tunesmith.runs.trained import TrainedRun, open_run
from tunesmith.utils.errors import ModelError


@dataclass
class Trained:
    """A trained model as it was trained: the adapter attached and not merged."""

    run: TrainedRun
    model: Any
    tokenizer: Any
    quantized: bool  # the base was trained quantized (QLoRA) or stored quantized

    method = property(lambda self: self.run.method.name)
    artifact = property(lambda self: self.run.artifact)
    is_adapter = property(lambda self: self.run.is_adapter)
    mergeable = property(lambda self: self.run.method.mergeable)
    base_ref = property(lambda self: self.run.base_ref)
    run_folder = property(lambda self: self.run.root)


def load_trained(path: str | Path, fallback_cfg: ModelConfig | None = None) -> Trained:
    """Load a run folder or an adapter / model folder in float32, adapter unmerged."""
    run = open_run(path, fallback_cfg)
    base = run.load_base("float32")
    quantized = run.method.name == "qlora" or getattr(base, "hf_quantizer", None) is not None
    model = run.attach(_dequantized(base))
    model.eval()
    return Trained(run, model, run.load_tokenizer(), quantized)


def merge(trained: Trained):
    """The merged plain transformers model (in place: `trained.model` is consumed)."""
    merged = trained.run.method.merge(trained.model)
    if hasattr(merged, "peft_config"):
        raise ModelError(f"merging the {trained.method} adapter left a PEFT model behind")
    return merged


def base_logits_context(model):
    """A context manager that switches an attached PEFT adapter off (the base model answers)."""
    if hasattr(model, "disable_adapter"):
        return model.disable_adapter()
    import contextlib

    return contextlib.nullcontext()


def _dequantized(model):
    if getattr(model, "hf_quantizer", None) is None:
        return model
    try:
        return model.dequantize(dtype=torch.float32)
    except (ValueError, NotImplementedError, RuntimeError) as exc:
        raise ModelError(
            f"the base model is stored quantized and cannot be dequantized here ({exc}); "
            "export from the unquantized base model"
        ) from None
