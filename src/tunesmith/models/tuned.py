"""Load a trained model for inference from a run folder or an adapter / model folder."""

from __future__ import annotations

from pathlib import Path

import yaml

from tunesmith.config.schema import ModelConfig
from tunesmith.models.load import load_causal_lm, load_tokenizer
from tunesmith.models.methods import METHODS
from tunesmith.models.resolve import ResolvedModel, resolve_model
from tunesmith.utils.errors import ModelError


def find_artifact(path: str | Path) -> tuple[Path, ModelConfig | None]:
    """The adapter/ or model/ folder, and the run's model section when `path` is a run folder."""
    path = Path(path)
    model_cfg = None
    if (path / "config.yaml").is_file():
        saved = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
        model_cfg = ModelConfig.model_validate(saved.get("model", {}))
        for method in METHODS.values():
            if (path / method.ARTIFACT).is_dir():
                return path / method.ARTIFACT, model_cfg
        raise ModelError(f"run folder '{path}' has no trained adapter/ or model/ yet")
    if (path / "adapter_config.json").is_file() or (path / "config.json").is_file():
        return path, model_cfg
    raise ModelError(f"'{path}' is neither a run folder nor an adapter or model folder")


def load_for_inference(model_cfg: ModelConfig | None, adapter: str | Path | None = None):
    """(model, tokenizer) in eval mode; the tokenizer and template saved with the run win."""
    artifact, run_model_cfg = find_artifact(adapter) if adapter else (None, None)
    cfg = model_cfg or run_model_cfg
    if cfg is None:
        raise ModelError("no base model: pass --model, or an adapter inside a run folder")
    is_adapter = artifact is not None and (artifact / "adapter_config.json").is_file()
    if artifact is not None and not is_adapter:
        weights = ResolvedModel(str(artifact), str(artifact), "local")  # a full tuned model
    else:
        weights = resolve_model(cfg.name_or_path)
    model = load_causal_lm(weights, cfg)
    if is_adapter:
        model = METHODS["lora"].load(model, artifact)  # PEFT reads the adapter type itself
    tokenizer_source = ResolvedModel(str(artifact), str(artifact), "local") if artifact else weights
    model.eval()
    return model, load_tokenizer(tokenizer_source, cfg)
