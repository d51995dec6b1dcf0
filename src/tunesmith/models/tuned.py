"""Load a trained model for inference from a run folder or an adapter / model folder."""

from __future__ import annotations

from pathlib import Path

import yaml

from tunesmith.config.schema import ModelConfig
from tunesmith.models.load import load_causal_lm, load_tokenizer
from tunesmith.models.methods import METHODS, load_adapter
from tunesmith.models.methods.adapter import MARKER
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
    if _is_adapter(path) or (path / "config.json").is_file():
        return path, model_cfg
    raise ModelError(f"'{path}' is neither a run folder nor an adapter or model folder")


def load_for_inference(model_cfg: ModelConfig | None, adapter: str | Path | None = None):
    """(model, tokenizer) in eval mode; the tokenizer and template saved with the run win."""
    artifact, run_model_cfg = find_artifact(adapter) if adapter else (None, None)
    cfg = model_cfg or run_model_cfg
    if cfg is None:
        raise ModelError("no base model: pass --model, or an adapter inside a run folder")
    is_adapter = artifact is not None and _is_adapter(artifact)
    if artifact is not None and not is_adapter:
        weights = ResolvedModel(str(artifact), str(artifact), "local")  # a full tuned model
    else:
        weights = resolve_model(cfg.name_or_path)
    model = load_causal_lm(weights, cfg)
    if is_adapter:
        model = load_adapter(model, artifact)  # any PEFT adapter, our adapter and hybrid
    tokenizer_source = ResolvedModel(str(artifact), str(artifact), "local") if artifact else weights
    model.eval()
    return model, load_tokenizer(tokenizer_source, cfg)


def _is_adapter(folder: Path) -> bool:
    """A PEFT adapter folder, or ours (bottleneck adapters) with its marker file."""
    return (folder / "adapter_config.json").is_file() or (folder / MARKER).is_file()
