"""A trained run, read back: the one place that opens a run folder or an artifact folder.

`open_run(path)` reads config.yaml, the method marker and the artifact folder, and knows the
base model, the method, the task, whether it merges and how to load it for inference. Plan,
export, evaluation, serving, chat, distillation and classifier prediction all go through it.

It accepts a run folder (config.yaml + adapter/ or model/), the artifact folder inside one, or
an artifact folder on its own: a tunesmith adapter (its marker says the method and the task), a
PEFT adapter written by another tool (adapter_config.json says the type), or a whole model
(config.json). An unknown or damaged folder is one sentence saying what is missing.

Layering: runs/folder.py (the writer) sits at the bottom; this reader loads models, so it sits
on models/ (docs/architecture.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from tunesmith.config.methods import FullMethod, MethodConfig
from tunesmith.config.schema import ModelConfig, RunConfig
from tunesmith.models.methods import Method, Task, get_method, method_for_peft_type, read_marker
from tunesmith.models.resolve import ResolvedModel, resolve_model
from tunesmith.runs.folder import CONFIG, LABELS
from tunesmith.utils.errors import ConfigError, ModelError

PEFT_CONFIG = "adapter_config.json"
SEQ_CLS_STAGES = ("cls", "rm")  # stages whose model is a sequence classifier
ARTIFACTS = ("adapter", "model")


@dataclass(frozen=True)
class TrainedRun:
    artifact: Path  # adapter/ or model/ folder (or a bare artifact folder)
    method_cfg: Any  # the method's config section (config/methods.py)
    task: Task
    model_cfg: ModelConfig | None  # the base model; None: a bare adapter given no base
    root: Path | None = None  # the run folder; None for an artifact folder on its own
    config: RunConfig | None = None
    labels: list[str] | None = None  # seq_cls: label names in id order

    @property
    def method(self) -> Method:
        return get_method(self.method_cfg.type)

    @property
    def stage(self) -> str | None:
        return self.config.train.stage if self.config else None

    @property
    def is_adapter(self) -> bool:
        """True: the artifact goes onto a base model; False: it is the whole model."""
        return self.method.artifact == "adapter"

    @property
    def base_ref(self) -> str:
        return self._model_cfg().name_or_path

    # --- loading ---------------------------------------------------------------------------

    def load(self, dtype: str | None = None):
        """(model in eval mode, tokenizer): the tuned model as it was trained, unmerged."""
        model = self.attach(self.load_base(dtype))
        model.eval()
        return model, self.load_tokenizer()

    def load_base(self, dtype: str | None = None):
        """The weights the artifact goes onto: the base model for an adapter (unquantized:
        inference and merging work in full precision), the tuned model itself otherwise."""
        cfg = self._model_cfg(dtype)
        weights = resolve_model(cfg.name_or_path) if self.is_adapter else _local(self.artifact)
        if self.task == "seq_cls":
            from tunesmith.models.classifier import load_classifier
            from tunesmith.models.load import no_load_report

            # the head is not in these weights (a base under an adapter, or the seed head's
            # layers under other names): attach loads it, so no "newly initialized" report
            with no_load_report():
                model, _, _ = load_classifier(cfg, self._labels(), self._cls_cfg(), weights=weights)
            return model
        if self.task == "vlm":
            from tunesmith.models.vlm import load_vlm

            return load_vlm(weights, cfg)
        from tunesmith.models.load import load_causal_lm

        return load_causal_lm(weights, cfg)

    def attach(self, base):
        """The tuned model from what load_base gave (a whole model: itself)."""
        if self.is_adapter:
            return self.method.load(base, self.artifact)
        if self.task == "seq_cls" and self._cls_cfg().head == "seed":
            from tunesmith.models.classifier import load_head

            load_head(base, self.artifact)  # from_pretrained built a Linear in its place
        return base

    def load_tokenizer(self):
        """The tokenizer and chat template saved with the run (they win over the base's)."""
        if self.task == "seq_cls":
            from tunesmith.models.classifier import classifier_tokenizer

            return classifier_tokenizer(_local(self.artifact), self._model_cfg())
        if self.task == "vlm":  # the processor stands where the tokenizer does
            from tunesmith.models.vlm import load_processor

            return load_processor(_local(self.artifact), self._model_cfg())
        from tunesmith.models.load import load_tokenizer

        return load_tokenizer(_local(self.artifact), self._model_cfg())

    def load_untrained(self, dtype: str | None = None):
        """The model the run started from, in eval mode (to compare before with after)."""
        if self.is_adapter:
            model = self.load_base(dtype)
        elif self.task == "seq_cls":
            from tunesmith.models.classifier import load_classifier

            cfg = self._model_cfg(dtype)
            model = load_classifier(cfg, self._labels(), self._cls_cfg())[0]
        elif self.task == "vlm":
            from tunesmith.models.vlm import load_vlm

            cfg = self._model_cfg(dtype)
            model = load_vlm(resolve_model(cfg.name_or_path), cfg)
        else:
            from tunesmith.models.load import load_causal_lm

            cfg = self._model_cfg(dtype)
            model = load_causal_lm(resolve_model(cfg.name_or_path), cfg)
        model.eval()
        return model

    def _model_cfg(self, dtype: str | None = None) -> ModelConfig:
        cfg = self.model_cfg
        if cfg is None and not self.is_adapter:  # a whole model stands alone
            cfg = ModelConfig(name_or_path=str(self.artifact))
        if cfg is None:
            raise ModelError(
                f"'{self.artifact}' is an adapter outside a run folder: name its base model "
                "(model.name_or_path=... or --model)"
            )
        return cfg.model_copy(update={"dtype": dtype}) if dtype else cfg

    def _labels(self) -> list[str]:
        if self.labels is None:
            raise ModelError(f"'{self.root or self.artifact}' has no {LABELS}: not a finished run")
        return self.labels

    def _cls_cfg(self):
        from tunesmith.config.cls import ClsConfig

        return self.config.train.cls if self.config else ClsConfig()


def open_run(path: str | Path, model_cfg: ModelConfig | None = None) -> TrainedRun:
    """The trained run at `path`; `model_cfg` is the base for an artifact outside a run folder."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"'{path}' does not exist")
    if path.name in ARTIFACTS and (path.parent / CONFIG).is_file():
        path = path.parent  # the artifact folder inside a run folder: the run knows its base
    if (path / CONFIG).is_file():
        return _open_run_folder(path)
    return _open_artifact(path, model_cfg)


def is_trained_run(path: str | Path) -> bool:
    """True for a folder open_run reads without complaint."""
    try:
        open_run(path)
    except (ModelError, ConfigError):
        return False
    return True


def _open_run_folder(root: Path) -> TrainedRun:
    from tunesmith.config.load import load_config

    try:
        config = load_config(root / CONFIG, saved=True)
    except ConfigError as exc:
        raise ModelError(f"run folder '{root}': {CONFIG} is damaged ({exc})") from None
    method = get_method(config.method.type)
    artifact = root / method.artifact
    if not _complete(artifact, method):
        raise ModelError(
            f"run folder '{root}' has no trained {method.artifact}/ yet (training did not "
            f"finish; resume it with tunesmith train --resume {root})"
        )
    task: Task = "seq_cls" if config.train.stage in SEQ_CLS_STAGES else "causal_lm"
    if task == "causal_lm" and (read_marker(artifact) or {}).get("task") == "vlm":
        task = "vlm"  # sft on a vision-language model (train/vlm.py)
    labels = _read_labels(root) if task == "seq_cls" else None
    return TrainedRun(artifact, config.method, task, config.model, root, config, labels)


def _open_artifact(folder: Path, model_cfg: ModelConfig | None) -> TrainedRun:
    marker = read_marker(folder)
    if marker is not None:
        try:
            method_cfg = TypeAdapter(MethodConfig).validate_python(marker["method"])
        except (ValidationError, KeyError, TypeError) as exc:
            raise ModelError(f"'{folder}': its method marker is damaged ({exc})") from None
        return TrainedRun(folder, method_cfg, marker.get("task", "causal_lm"), model_cfg)
    if (folder / PEFT_CONFIG).is_file():  # a PEFT adapter from another tool
        peft_type = _read_json(folder / PEFT_CONFIG).get("peft_type", "LORA")
        method = method_for_peft_type(peft_type)
        return TrainedRun(folder, method.config(), "causal_lm", model_cfg)
    if (folder / "config.json").is_file():  # a whole model
        from tunesmith.models.vlm import is_vision_language

        task = "vlm" if is_vision_language(_local(folder)) else "causal_lm"
        return TrainedRun(folder, FullMethod(), task, model_cfg)
    raise ModelError(
        f"'{folder}' is neither a run folder (config.yaml), an adapter folder "
        f"({PEFT_CONFIG} or a tunesmith method marker) nor a model folder (config.json)"
    )


def _complete(artifact: Path, method: Method) -> bool:
    if not artifact.is_dir():
        return False
    if method.artifact == "model":
        return (artifact / "config.json").is_file()
    return read_marker(artifact) is not None or (artifact / PEFT_CONFIG).is_file()


def _read_labels(root: Path) -> list[str] | None:
    path = root / LABELS
    return _read_json(path) if path.is_file() else None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: damaged ({exc})") from None


def _local(folder: Path) -> ResolvedModel:
    return ResolvedModel(str(folder), str(folder), "local")


def load_for_inference(path: str | Path | None = None, model_cfg: ModelConfig | None = None):
    """(model in eval mode, tokenizer): the trained run at `path`, else model_cfg's base model.
    `model_cfg` is also the base of an adapter folder outside a run folder."""
    if path is not None:
        return open_run(path, model_cfg).load()
    if model_cfg is None:
        raise ModelError("no model: name a base model (--model) or a run folder")
    from tunesmith.models.load import load_model_and_tokenizer
    from tunesmith.models.vlm import is_vision_language, load_vlm_and_processor

    load = load_vlm_and_processor if is_vision_language(model_cfg) else load_model_and_tokenizer
    model, tokenizer, _ = load(model_cfg)
    model.eval()
    return model, tokenizer
