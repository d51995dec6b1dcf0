"""The run configuration: one YAML file with model, method, data, train and output sections."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tunesmith.config.align import DistillConfig, PreferenceConfig
from tunesmith.config.base import Section
from tunesmith.config.cls import ClsConfig
from tunesmith.config.eval import EvalConfig
from tunesmith.config.methods import LoraMethod, MethodConfig
from tunesmith.config.rl import GrpoConfig, PpoConfig
from tunesmith.config.serve import ExportConfig, ServeConfig


class ModelConfig(Section):
    name_or_path: str = Field(
        "smollm2-135m-instruct",
        description="Local HF folder, hub id, .gguf file, or embedded alias.",
    )
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    chat_template: str | None = Field(
        None, description="Jinja template (or a path to one) replacing the tokenizer's own."
    )


def _split_names(value: object) -> object:
    # LLaMA-Factory's convention: one string may list several names, comma-separated.
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    return value


# train.report_to's names: the Trainer's integrations that log offline into the run folder
TRACKERS = ("tensorboard", "mlflow", "wandb", "trackio")

PathList = Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)]
NameList = Annotated[list[str], BeforeValidator(_split_names)]


class ReplayConfig(Section):
    """General data mixed into training against catastrophic forgetting (replay)."""

    files: PathList = Field(default_factory=list, description="General SFT data files.")
    dataset: NameList = Field(default_factory=list, description="Dataset names of data.registry.")
    ratio: float = Field(
        0.2, gt=0, lt=1, description="Share of replay examples in the final training set."
    )
    format: Literal["auto", "alpaca", "sharegpt", "openai"] = "auto"
    columns: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _has_data(self) -> ReplayConfig:
        if not (self.files or self.dataset):
            raise ValueError("set data.replay.files=[general.jsonl] or data.replay.dataset=[name]")
        return self


class DataConfig(Section):
    train: PathList = Field(
        default_factory=list, description="Data files (json/jsonl/csv/parquet; txt for pt)."
    )
    eval: PathList = Field(default_factory=list)
    format: Literal["auto", "alpaca", "sharegpt", "openai"] = "auto"
    columns: dict[str, str] = Field(
        default_factory=dict, description="Canonical field name -> column name in the file."
    )
    cutoff_len: int = Field(
        1024,
        ge=8,
        description="Maximum tokens per training example, the one such key of every stage (chat, "
        "pt, preference, distill, cls: per text or pair, capped at the tokenizer's "
        "model_max_length); longer examples are cut. train.cls.max_length is its deprecated "
        "alias.",
    )
    train_on_prompt: bool = False
    media_dir: str | None = Field(
        None,
        description="Folder that relative image paths of vision-language data are read from "
        "(LLaMA-Factory's media_dir); None: beside the data file (a registry: its folder).",
    )
    on_error: Literal["stop", "skip"] = "stop"
    max_samples: int | None = Field(None, ge=1)
    registry: str | None = Field(
        None, description="LLaMA-Factory dataset_info.json or a tunesmith YAML registry."
    )
    dataset: NameList = Field(
        default_factory=list,
        description="Dataset names from data.registry, read with their own format and columns.",
    )
    replay: ReplayConfig | None = Field(
        None, description="General data mixed in against forgetting; None: off."
    )


Action = Literal["warn", "skip", "stop"]


class AlertActions(Section):
    """What the training monitor does per alert kind: warn (record and go on), skip (drop this
    optimizer step; NaN/Inf only) or stop (save a resumable checkpoint and stop)."""

    nan: Action = "stop"
    loss_high: Action = "warn"
    spike: Action = "warn"
    vanishing: Action = "warn"
    exploding: Action = "warn"
    memory: Action = "stop"
    stalled: Action = "warn"

    @field_validator("loss_high", "spike", "vanishing", "exploding", "memory", "stalled")
    @classmethod
    def _skip_is_for_nan_only(cls, value: str) -> str:
        if value == "skip":  # these checks see the step only after the optimizer has taken it
            raise ValueError(
                "'skip' applies to nan only (this check runs after the step); use warn or stop"
            )
        return value


class MonitorConfig(Section):
    """Alert thresholds of the training monitor; None turns a check off."""

    max_loss: float | None = Field(100.0, gt=0, description="Loss above this is an alert.")
    spike_factor: float | None = Field(
        3.0,
        gt=1,
        description="Loss above factor x the median of the last 20 logged losses and 5 robust "
        "standard deviations (MAD of log losses) above it: beyond batch-to-batch noise.",
    )
    min_grad_norm: float | None = Field(1e-7, ge=0, description="Vanishing gradient below this.")
    max_grad_norm_alert: float | None = Field(
        1e3, gt=0, description="Exploding gradient above this (pre-clipping norm)."
    )
    max_rss_mb: float | None = Field(None, gt=0, description="Process memory limit in MB.")
    stall_seconds: float | None = Field(
        600.0, gt=0, description="A training step slower than this is stalled throughput."
    )
    plot_every: int = Field(50, ge=0, description="Redraw plots every N logs; 0: at the end.")
    actions: AlertActions = Field(default_factory=AlertActions)


class EarlyStoppingConfig(Section):
    """Stop when an eval metric has not improved for `patience` evaluations; the best checkpoint
    is kept and becomes the saved model. Evaluation runs every train.save_steps."""

    metric: str = Field("eval_loss", description="Any eval metric (the eval_ prefix is optional).")
    mode: Literal["min", "max"] = "min"
    patience: int = Field(3, ge=1)
    min_delta: float = Field(0.0, ge=0)

    @field_validator("metric")
    @classmethod
    def _eval_prefix(cls, value: str) -> str:
        return value if value.startswith("eval_") else f"eval_{value}"


class ForgettingEvalConfig(Section):
    """Perplexity on general text with the base model before training and the tuned model
    after; both and the relative change go to summary.json["forgetting"]."""

    data: list[str] = Field(
        ..., min_length=1, description="General-text files: .txt, or records with a text column."
    )
    text_column: str = "text"
    max_docs: int = Field(50, ge=1, description="Score the first N documents.")
    max_length: int | None = Field(
        None,
        ge=2,
        description="Tokens scored per document (rest cut): the perplexity window on general "
        "text, not the training cutoff; None: data.cutoff_len (resolved when the config is "
        "loaded, so the run's config.yaml holds the number used).",
    )
    batch_size: int = Field(4, ge=1)

    @field_validator("data", mode="before")
    @classmethod
    def _one_path_is_a_list(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


class DistributedConfig(Section):
    """How `tunesmith train --nproc N` shares the work; batch_size stays per process, so the
    global batch is batch_size x processes x gradient_accumulation_steps."""

    strategy: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp",
        description="ddp: a full copy per process; fsdp: FSDP2, each process holds a shard of "
        "the weights, gradients and optimizer state (CPU or CUDA); deepspeed: ZeRO (CUDA only).",
    )
    deepspeed_config: str | None = Field(
        None,
        description="DeepSpeed JSON config, checked against the run's settings; None: ZeRO "
        "zero_stage with 'auto' values the Trainer fills in (written to RUN/deepspeed.json).",
    )
    zero_stage: Literal[2, 3] = Field(
        2,
        description="DeepSpeed ZeRO stage: 2 shards gradients and optimizer state; 3 also weights.",
    )
    zero_offload: bool = Field(
        False, description="DeepSpeed: optimizer state (ZeRO-3: weights too) kept in CPU RAM."
    )


# stage -> the train.<section> holding its own settings (the web workshop shows a section's
# fields for its stages only); a stage with settings of its own adds its entry here
STAGE_SETTINGS: dict[str, str] = {
    "cls": "cls",
    **{stage: "preference" for stage in ("dpo", "orpo", "simpo", "kto", "rm")},
    "distill": "distill",
    "grpo": "grpo",
    "ppo": "ppo",
}


class TrainConfig(Section):
    stage: Literal[
        "sft", "pt", "cls", "dpo", "orpo", "simpo", "kto", "rm", "distill", "grpo", "ppo"
    ] = Field(
        "sft",
        description="sft: chat data; pt: continued pre-training on plain text; cls: text "
        "classification; dpo/orpo/simpo/kto/rm: preference alignment; distill: from a teacher; "
        "grpo/ppo: online RL on prompts with reward functions.",
    )
    epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(-1, description="Overrides epochs when > 0.")
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: int = Field(4, ge=1, description="Per process; see train.distributed.")
    gradient_accumulation_steps: int = Field(1, ge=1)
    lr_scheduler: Literal[
        "linear", "cosine", "constant", "constant_with_warmup", "reduce_on_plateau"
    ] = "cosine"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 on a CUDA GPU that has it; on the CPU bf16 autocast where a "
        "probe finds it faster and the loss holds (models/precision.py), else fp32.",
    )
    gradient_checkpointing: bool = False
    optimize: bool = Field(
        True,
        description="Same maths, less work (models/speed.py): per-example attention on packed "
        "rows, LoRA updates added inside the matmul.",
    )
    compile: bool = Field(
        False, description="torch.compile the decoder layers (inductor); compile time counts."
    )
    packing: bool = Field(
        True, description="Concatenate each batch into one row without padding (same loss)."
    )
    sampling: Literal["auto", "random", "group_by_length", "sequential"] = Field(
        "auto",
        description="group_by_length: batches of similar lengths (less padding); "
        "sequential: file order, no shuffling; auto: for stage cls (padded batches) "
        "group_by_length unless the label sets the length (then random: grouped batches would "
        "hold one label each; settled on the data at train start), random for the others.",
    )
    seed: int = 42
    logging_steps: int = Field(1, ge=1)
    report_to: NameList = Field(
        default_factory=list,
        description="Experiment trackers the Trainer also logs to (" + ", ".join(TRACKERS) + "), "
        "offline, under the run folder's tracking/; metrics.jsonl stays the record.",
    )
    save_steps: int = Field(100, ge=1)
    save_total_limit: int | None = Field(2, ge=1)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    early_stopping: EarlyStoppingConfig | None = Field(
        None, description="Early stopping on an eval metric (needs data.eval); None: off."
    )
    forgetting_eval: ForgettingEvalConfig | None = Field(
        None, description="Perplexity on general text before/after training; None: off."
    )
    l2_to_pretrained: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="L2-SP: lambda of ||theta - theta_pre||^2."
    )
    layerwise_lr_decay: float = Field(
        1.0, gt=0, le=1, description="Layer i from the top trains at lr x decay^i; 1.0: off."
    )
    cls: ClsConfig = Field(default_factory=ClsConfig, description="Settings of stage cls.")
    preference: PreferenceConfig = Field(
        default_factory=PreferenceConfig, description="Settings of stages dpo/orpo/simpo/kto/rm."
    )
    distill: DistillConfig | None = Field(None, description="Settings of stage distill.")
    grpo: GrpoConfig | None = Field(None, description="Settings of stage grpo.")
    ppo: PpoConfig | None = Field(None, description="Settings of stage ppo.")

    @field_validator("warmup_ratio")
    @classmethod
    def _plateau_has_no_warmup(cls, value: float, info: ValidationInfo) -> float:
        # transformers' ReduceLROnPlateau takes no warmup; ignoring the setting would mislead
        if value > 0 and info.data.get("lr_scheduler") == "reduce_on_plateau":
            raise ValueError(
                "reduce_on_plateau has no warmup; set train.warmup_ratio=0 or use "
                "cosine, linear or constant_with_warmup"
            )
        return value

    @field_validator("report_to")
    @classmethod
    def _known_trackers(cls, value: list[str]) -> list[str]:
        if value == ["none"]:  # transformers' spelling of no tracker
            return []
        for name in value:
            if name not in TRACKERS:
                raise ValueError(
                    f"unknown tracker '{name}'; allowed: {', '.join(TRACKERS)} (or none)"
                )
        return list(dict.fromkeys(value))

    @property
    def sampler(self) -> str:
        """train.sampling resolved: `auto` groups lengths where batches are padded (cls); the
        cls recipe settles it on the data first (data/classification.batch_sampling)."""
        if self.sampling != "auto":
            return self.sampling
        return "group_by_length" if self.stage == "cls" else "random"


class OutputConfig(Section):
    dir: str = Field("runs", description="Parent folder of run folders.")
    name: str | None = Field(None, description="Run folder name; default: stage-method-timestamp.")
    overwrite: bool = False


class RunConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=LoraMethod)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)

    @field_validator("method", mode="before")
    @classmethod
    def _method_defaults_to_lora(cls, value: object) -> object:
        if isinstance(value, dict) and "type" not in value:
            return {"type": "lora", **value}
        return value

    @model_validator(mode="after")
    def _forgetting_window_follows_cutoff(self) -> RunConfig:
        forgetting = self.train.forgetting_eval
        if forgetting is not None and forgetting.max_length is None:
            forgetting.max_length = self.data.cutoff_len
        return self
