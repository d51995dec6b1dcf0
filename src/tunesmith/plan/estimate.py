"""What a plan is made of: the model's facts (meta device), the workload and precision a run
config implies, its memory estimate, and the Plan the planner fills. Advice and time build on
this module; planner.py puts them together."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from tunesmith.config.schema import RunConfig
from tunesmith.plan.count import (
    Shapes,
    embedding_parameters,
    is_vision_language_config,
    load_model_config,
    meta_model,
    shapes_of,
    total_parameters,
    trainable_parameters,
)
from tunesmith.plan.data import UNKNOWN, DataStats
from tunesmith.plan.hardware import Hardware
from tunesmith.plan.memory import MemoryEstimate, Precision, Workload
from tunesmith.plan.memory import estimate_memory as _estimate

Goal = str  # "quality" | "speed" | "memory"
GOALS = ("quality", "speed", "memory")


@dataclass
class ModelFacts:
    """Everything the planner reads from a model config (meta device: no weights)."""

    ref: str
    shapes: Shapes
    total: int
    quantizable: int  # block linear weights: what a 4/8-bit base stores quantized
    meta: nn.Module = field(repr=False)
    task: str = "causal_lm"  # seq_cls: the model has a new classifier head, which trains too
    embeddings: int = 0  # embedding-table parameters (lookups: no FLOPs per token)
    vision: int = 0  # a vision-language model's vision tower and projector (run per image)
    patches_per_image_token: int = 1  # patches the tower reads per image token (Qwen2-VL: 2x2)
    _counts: dict = field(default_factory=dict, repr=False)

    def trainable(self, method) -> int:
        key = method.model_dump_json()
        if key not in self._counts:  # advice prices many candidates
            self._counts[key] = trainable_parameters(self.meta, method, self.task)
        return self._counts[key]


def model_facts(ref: str, classifier: bool = False) -> ModelFacts:
    config = load_model_config(ref)
    meta = meta_model(config, classifier)
    linears = sum(
        m.weight.numel()
        for n, m in meta.named_modules()
        if isinstance(m, nn.Linear) and ".layers." in f".{n}."
    )
    task = "seq_cls" if classifier else "causal_lm"
    vision, patches = 0, 1
    if is_vision_language_config(config):  # the method applies to its language model
        from tunesmith.models.vlm import vision_parameters

        task, vision = "vlm", vision_parameters(meta)
        # patches merged into one image token: Qwen2-VL's spatial merge, Idefics3's shuffle
        vision_config = getattr(config, "vision_config", None)
        merge = getattr(vision_config, "spatial_merge_size", None) or getattr(
            config, "scale_factor", 1
        )
        patches = merge**2 if isinstance(merge, int) else 1
    total, embeddings = total_parameters(meta), embedding_parameters(meta)
    return ModelFacts(
        ref, shapes_of(config), total, linears, meta, task, embeddings, vision, patches
    )


def precision_for(config: RunConfig, device: str, method=None, model_config=None) -> Precision:
    """The bytes tunesmith will use: models/load.pick_dtype and train/arguments.precision_flags;
    `auto` on the CPU as this host's cached bf16 probe chose it for the model (`model_config`),
    fp32 where it has not probed (models/precision.py)."""
    method = method or config.method
    dtype, precision = config.model.dtype, config.train.precision
    if precision == "auto" and device == "cpu" and model_config is not None:
        precision = cpu_auto_precision(config, model_config)
    if device == "cuda":
        param = 4 if dtype == "float32" else 2
        compute = 4 if precision == "fp32" and param == 4 else 2
    else:
        param = 2 if dtype in ("bfloat16", "float16") else 4
        compute = 2 if precision == "bf16" or param == 2 else 4
    from tunesmith.models.methods import get_method

    quant = None
    quantized = get_method(method.type).quantized_base(method)
    if quantized is not None:
        quant, param = quantized
    deepspeed = config.train.distributed.strategy == "deepspeed" and device == "cuda"
    # CPU autocast over fp32 weights: each linear's bf16 weight copy is kept for the backward
    copies = device == "cpu" and param == 4 and compute == 2 and quant is None
    return Precision(
        param, compute, quant, getattr(method, "double_quant", True), deepspeed, copies
    )


def cpu_auto_precision(config: RunConfig, model_config) -> str:
    """What train.precision auto trains in on this CPU: the cached probe's choice, else fp32."""
    from tunesmith.models.precision import planned

    if config.train.stage == "cls":  # the probe covers causal LMs
        return "fp32"
    tokens = config.train.batch_size * config.data.cutoff_len
    try:
        choice = planned(model_config, tokens, config.train.optimize)
    except (AttributeError, TypeError):  # a config without the probe's numbers: no probe
        return "fp32"
    return choice.precision if choice else "fp32"


def workload_for(
    config: RunConfig, data: DataStats, method=None, positions: int | None = None
) -> Workload:
    """positions: the model's position table; a classifier's inputs are cut to it."""
    from tunesmith.models.methods import get_method

    method = method or config.method
    cls = config.train.stage == "cls"
    limit = config.data.cutoff_len
    if cls and positions:
        limit = min(limit, positions)
    return Workload(
        batch=config.train.batch_size,
        seq=min(data.longest or limit, limit),
        # cls pads each batch to its longest example (train/cls.py never packs)
        packed=not cls and config.train.packing and get_method(method.type).packing,
        gradient_checkpointing=config.train.gradient_checkpointing,
        # a classifier's head has a few outputs, not a vocabulary: no LM logits
        trained_fraction=0.0 if cls else data.trained_fraction,
        optimize=config.train.optimize,
    )


def estimate(
    facts: ModelFacts, config: RunConfig, device: str, data: DataStats = UNKNOWN, method=None
) -> MemoryEstimate:
    """Peak memory of `config` (or the same run with another `method`) on `device`."""
    method = method or config.method
    return _estimate(
        facts.shapes,
        facts.total,
        facts.trainable(method),
        method,
        workload_for(config, data, method, facts.shapes.positions),
        device,
        precision_for(config, device, method, facts.meta.config),
        facts.quantizable,
    )


@dataclass
class Plan:
    config: RunConfig
    facts: ModelFacts
    hardware: Hardware
    data: DataStats
    memory: dict[str, MemoryEstimate]  # "cpu" and "cuda"
    time: object | None = None  # plan.time.TimeEstimate
    advice: object | None = None  # plan.advice.Advice

    @property
    def trainable(self) -> int:
        return self.facts.trainable(self.config.method)

    @property
    def here(self) -> MemoryEstimate:
        return self.memory[self.hardware.device]

    @property
    def fits(self) -> bool:
        return self.here.total <= self.hardware.memory

    def as_dict(self) -> dict:
        s = self.facts.shapes
        return {
            "model": self.facts.ref,
            "architecture": s.__dict__,
            "method": self.config.method.model_dump(),
            "parameters": {"total": self.facts.total, "trainable": self.trainable},
            "hardware": self.hardware.__dict__,
            "data": self.data.as_dict(),
            "memory": {k: v.as_dict() for k, v in self.memory.items()},
            "fits": self.fits,
            "time": self.time.as_dict() if self.time else None,
            "advice": self.advice.as_dict() if self.advice else None,
        }


def is_peft(method) -> bool:
    from tunesmith.models.methods import get_method

    return not get_method(method.type).trains_base_weights
