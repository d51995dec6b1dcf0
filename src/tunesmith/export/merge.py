"""Load a trained artifact as it was trained, and fold an adapter into its base weights.

The merge runs in float32 on a base loaded without quantization: a QLoRA adapter is merged into
dequantized weights (merging into 4-bit weights would round the update away).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from tunesmith.config.schema import ModelConfig
from tunesmith.models.load import load_causal_lm, load_tokenizer
from tunesmith.models.methods import METHODS
from tunesmith.models.resolve import ResolvedModel, resolve_model
from tunesmith.models.tuned import find_artifact
from tunesmith.utils.errors import ModelError

# PEFT adapter type -> tunesmith method, for adapter folders found outside a run folder
_PEFT_TO_METHOD = {
    "LORA": "lora",
    "IA3": "ia3",
    "PREFIX_TUNING": "prefix",
    "PROMPT_TUNING": "prompt",
    "P_TUNING": "ptuning",
}
# Used only when the method module does not say (no MERGEABLE flag): the maths of these allows it.
_PEFT_MERGEABLE = {"LORA", "ADALORA", "IA3", "LOHA", "LOKR"}


@dataclass
class Trained:
    """A trained model as it was trained: the adapter attached and not merged."""

    model: Any
    tokenizer: Any
    method: str
    artifact: Path  # adapter/ or model/ folder
    model_cfg: ModelConfig
    base_ref: str
    is_adapter: bool
    mergeable: bool
    quantized: bool  # the base was trained quantized (QLoRA) or stored quantized
    run_folder: Path | None


def load_trained(path: str | Path, fallback_cfg: ModelConfig | None = None) -> Trained:
    """Load a run folder or an adapter / model folder in float32, adapter unmerged."""
    artifact, run_cfg = find_artifact(path)
    cfg = run_cfg or fallback_cfg
    if cfg is None:
        raise ModelError(f"'{path}' is an adapter outside a run folder: set model.name_or_path")
    cfg = cfg.model_copy(update={"dtype": "float32"})
    run_folder = Path(path) if (Path(path) / "config.yaml").is_file() else None
    adapter_cfg = _read_json(artifact / "adapter_config.json")
    method = _method_name(run_folder, adapter_cfg)
    tokenizer = load_tokenizer(_local(artifact), cfg)  # the run's saved template wins
    common = {
        "tokenizer": tokenizer,
        "method": method,
        "artifact": artifact,
        "model_cfg": cfg,
        "base_ref": cfg.name_or_path,
        "run_folder": run_folder,
    }
    if adapter_cfg is None:  # a full or freeze run: the folder is the whole model
        model = _dequantized(load_causal_lm(_local(artifact), cfg))
        return Trained(model, is_adapter=False, mergeable=True, quantized=False, **common)
    base = load_causal_lm(resolve_model(cfg.name_or_path), cfg)
    quantized = method == "qlora" or getattr(base, "hf_quantizer", None) is not None
    model = _attach(_dequantized(base), artifact, method)
    model.eval()
    mergeable = is_mergeable(method, adapter_cfg)
    return Trained(model, is_adapter=True, mergeable=mergeable, quantized=quantized, **common)


def is_mergeable(method: str, adapter_cfg: dict | None) -> bool:
    """The method module's MERGEABLE flag; PEFT's adapter type when the module is unknown."""
    module = METHODS.get(method)
    if module is not None and hasattr(module, "MERGEABLE"):
        return bool(module.MERGEABLE)
    if adapter_cfg is None:
        return True  # a full model has nothing to merge
    return adapter_cfg.get("peft_type") in _PEFT_MERGEABLE


def merge(trained: Trained):
    """The merged plain transformers model (in place: `trained.model` is consumed)."""
    if not trained.is_adapter:
        return trained.model
    module = METHODS.get(trained.method)
    merged = module.merge(trained.model) if hasattr(module, "merge") else None
    if merged is None:
        merged = trained.model.merge_and_unload()
    if hasattr(merged, "peft_config"):
        raise ModelError(f"merging the {trained.method} adapter left a PEFT model behind")
    return merged


def base_logits_context(model):
    """A context manager that switches an attached PEFT adapter off (the base model answers)."""
    if hasattr(model, "disable_adapter"):
        return model.disable_adapter()
    import contextlib

    return contextlib.nullcontext()


def _attach(base, artifact: Path, method: str):
    module = METHODS.get(method)
    if module is not None and hasattr(module, "load") and method != "qlora":
        return module.load(base, artifact)
    from peft import PeftModel  # qlora and unknown PEFT types: PEFT reads the type itself

    return PeftModel.from_pretrained(base, artifact)


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


def _method_name(run_folder: Path | None, adapter_cfg: dict | None) -> str:
    if run_folder is not None:
        saved = yaml.safe_load((run_folder / "config.yaml").read_text(encoding="utf-8")) or {}
        return (saved.get("method") or {}).get("type", "lora")
    if adapter_cfg is None:
        return "full"
    peft_type = adapter_cfg.get("peft_type", "LORA")
    return _PEFT_TO_METHOD.get(peft_type, peft_type.lower())


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _local(folder: Path) -> ResolvedModel:
    return ResolvedModel(str(folder), str(folder), "local")
