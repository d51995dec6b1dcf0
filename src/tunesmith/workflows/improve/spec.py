"""improve.yaml: one improvement cycle's project file (server, logs, current run, check sets,
and the settings of each step), checked and read.

Paths in it are relative to its folder. `load_spec` gives the spec and that folder; a bad key
or value is one sentence naming the file and the dotted key.

    server: {url: http://127.0.0.1:8000, route: assistant, api_key: null}
    logs: serve-logs/                # the server's log_dir (requests.jsonl, feedback.jsonl)
    current: runs/assistant-v1       # the trained run in production
    original_data: null              # default: the current run's data.train
    regression: regression.jsonl     # quick-check set (validate.py: load_checks)
    guard: guard.jsonl               # general-ability set (forgetting)
    teacher: null                    # writes targeted data (a make_client spec; null: none)
    work_dir: improve/
    mine: {...}  data: {...}  train: {...}  validate: {...}  deploy: {...}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tunesmith.config.base import Section
from tunesmith.config.load import closest, describe_error, read_yaml_mapping
from tunesmith.utils.errors import ConfigError


def _settings(module: str, name: str) -> type[BaseModel] | None:
    """M's section model (MineSettings / TargetedDataSettings), when its module is there."""
    from importlib import import_module

    try:
        return getattr(import_module(f"tunesmith.workflows.improve.{module}"), name)
    except (ImportError, AttributeError):
        return None


MineSettings = _settings("mine", "MineSettings")
TargetedDataSettings = _settings("targeted", "TargetedDataSettings")


class ServerSection(Section):
    url: str = "http://127.0.0.1:8000"
    route: str = Field("assistant", min_length=1)
    api_key: str | None = None
    timeout_s: float = Field(30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL such as http://127.0.0.1:8000, got {value}")
        return value.rstrip("/").removesuffix("/v1")


class TrainSection(Section):
    """How the candidate is trained from the current adapter (retrain.py)."""

    overrides: list[str] = Field(
        default_factory=list, description="key=value run-config overrides, applied last."
    )
    name: str | None = Field(None, description="The candidate run's folder name (default: dated).")


class ValidateSection(Section):
    """The staged gates (validate.py)."""

    quick_size: int = Field(20, ge=1, description="Regression items in the quick check.")
    eval: list[str] = Field(
        default_factory=list, description="Full-evaluation check files ([]: the regression set)."
    )
    pass_rouge: float = Field(
        0.5,
        ge=0,
        le=1,
        description="An item without `contains` passes when ROUGE-L F1 to `expected` reaches this.",
    )
    significant: bool = Field(
        True,
        description="Full evaluation: the 95% paired-bootstrap "
        "interval of the gain must lie above zero (false: mean gain > 0).",
    )
    min_gain: float = Field(0.0, ge=0, description="The mean gain must exceed this too.")
    max_guard_drop: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest allowed drop of the guard set's mean score (forgetting).",
    )
    ab_prompts: int = Field(30, ge=0, description="Logged prompts replayed (0: no A/B stage).")
    ab_min_win_rate: float = Field(
        0.5,
        ge=0,
        le=1,
        description="The candidate's pairwise win rate (ties half) must reach this.",
    )
    judge: str | None = Field(
        None,
        description="Pairwise judge (local:<ref> or an "
        "OpenAI-compatible URL); null: the reference-based judge.",
    )
    judge_tie: float = Field(
        0.02, ge=0, description="Reference judge: ROUGE-L differences below this are ties."
    )
    max_new_tokens: int = Field(48, ge=1)
    bootstrap: int = Field(2000, ge=100)
    seed: int = 0


class DeploySection(Section):
    """Risk rules and the canary's watch (deploy.py)."""

    risk: Literal["auto", "low", "medium", "high"] = "auto"
    candidate_name: str | None = Field(
        None,
        description="The name the server serves the "
        "candidate under (default: its run folder's name).",
    )
    adapters_dir: str | None = Field(
        None,
        description="The server's adapters folder: the "
        "candidate run is copied there before the canary starts.",
    )
    check_every_s: float = Field(60.0, gt=0, description="Seconds between metric checks.")
    min_requests: int = Field(20, ge=1, description="Canary requests a rate is judged on.")
    min_latency_requests: int = Field(
        20,
        ge=1,
        description="Requests each arm needs before its p95 latency is compared (a p95 of a "
        "handful of requests is noise).",
    )
    max_error_rate_increase: float = Field(0.02, ge=0)
    max_latency_ratio: float = Field(1.5, ge=1, description="Canary p95 over stable p95.")
    latency_slack_ms: float = Field(
        50.0,
        ge=0,
        description="p95 increases below this are never a breach (timer noise on tiny latencies).",
    )
    min_feedback: int = Field(5, ge=1, description="Canary votes the feedback rule needs.")
    max_down_share_increase: float = Field(0.15, ge=0)
    time_scale: float = Field(
        1.0,
        gt=0,
        description="Multiplies every plan duration (a demo "
        "or a test runs the plan in seconds with 1/3600).",
    )


class ImproveSpec(Section):
    server: ServerSection = Field(default_factory=ServerSection)
    logs: str = Field(..., min_length=1)
    current: str = Field(..., min_length=1)
    original_data: str | None = None
    regression: str = Field(..., min_length=1)
    guard: str | None = None
    teacher: str | None = None
    work_dir: str = "improve"
    mine: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    train: TrainSection = Field(default_factory=TrainSection)
    validate_: ValidateSection = Field(default_factory=ValidateSection, alias="validate")
    deploy: DeploySection = Field(default_factory=DeploySection)

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @property
    def validation(self) -> ValidateSection:
        return self.validate_

    def mine_settings(self):
        """M's MineSettings of the `mine:` section (validated at load time)."""
        return MineSettings.model_validate(self.mine) if MineSettings else dict(self.mine)

    def data_settings(self):
        return (
            TargetedDataSettings.model_validate(self.data)
            if TargetedDataSettings
            else dict(self.data)
        )


def load_spec(path: str | Path) -> tuple[ImproveSpec, Path]:
    """The spec and its project folder; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such improve file (see README: Continuous improvement)")
    data = read_yaml_mapping(path, "improve file")
    try:
        spec = ImproveSpec.model_validate(data)
        for key, model in (("mine", MineSettings), ("data", TargetedDataSettings)):
            if model is not None:
                _check_section(model, key, data.get(key) or {})
    except ValidationError as exc:
        lines = [_describe(err, data) for err in exc.errors()]
        raise ConfigError(f"{path}: invalid improve file\n  " + "\n  ".join(lines)) from None
    return spec, path.resolve().parent


def _check_section(model: type[BaseModel], key: str, value: dict) -> None:
    try:
        model.model_validate(value)
    except ValidationError as exc:
        raise ConfigError(
            "; ".join(
                f"{key}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                for err in exc.errors()
            )
        ) from None


def _describe(err: dict, data: dict) -> str:
    """describe_error's sentence; unknown keys are listed against ImproveSpec's own sections."""
    if err["type"] != "extra_forbidden":
        return describe_error(err, data)
    loc = [str(p) for p in err["loc"]]
    model: type[BaseModel] = ImproveSpec
    for part in loc[:-1]:
        field = model.model_fields.get(part) or model.model_fields.get(f"{part}_")
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    allowed = [f.alias or name for name, f in model.model_fields.items()]
    prefix = ".".join(loc[:-1])
    return (
        f"unknown key '{'.'.join(loc)}'{closest(loc[-1], allowed, prefix)}; "
        f"allowed here: {', '.join(allowed)}"
    )


def source(root: Path, name: str) -> Path:
    """A path named in improve.yaml, relative to its folder."""
    path = Path(name).expanduser()
    return path if path.is_absolute() else root / path
