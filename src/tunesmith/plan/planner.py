"""`make_plan(config)`: parameters, memory (CPU and GPU), time and advice for one run config."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from tunesmith.config.schema import RunConfig
from tunesmith.plan.count import (
    Shapes,
    load_model_config,
    meta_model,
    shapes_of,
    total_parameters,
    trainable_parameters,
)
from tunesmith.plan.data import UNKNOWN, DataStats, data_stats
from tunesmith.plan.hardware import Hardware, detect_hardware
from tunesmith.plan.memory import GB, PEFT_TYPES, MemoryEstimate, Precision, Workload
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

    def trainable(self, method) -> int:
        count = trainable_parameters(self.meta, method)
        if method.type in PEFT_TYPES:  # a new classifier head trains with any method
            heads = [m for n, m in self.meta.named_children() if n in ("classifier", "score")]
            count += sum(p.numel() for h in heads for p in h.parameters())
        return count


def model_facts(ref: str, classifier: bool = False) -> ModelFacts:
    config = load_model_config(ref)
    meta = meta_model(config, classifier)
    linears = sum(
        m.weight.numel()
        for n, m in meta.named_modules()
        if isinstance(m, nn.Linear) and ".layers." in f".{n}."
    )
    return ModelFacts(ref, shapes_of(config), total_parameters(meta), linears, meta)


def precision_for(config: RunConfig, device: str, method=None) -> Precision:
    """The bytes tunesmith will use: models/load.pick_dtype and train/sft.precision_flags."""
    method = method or config.method
    dtype, precision = config.model.dtype, config.train.precision
    if device == "cuda":
        param = 4 if dtype == "float32" else 2
        compute = 4 if precision == "fp32" and param == 4 else 2
    else:
        param = 2 if dtype in ("bfloat16", "float16") else 4
        compute = 2 if precision == "bf16" or param == 2 else 4
    quant = None
    if method.type == "qlora":
        quant = method.bits
        param = 4 if method.compute_dtype == "float32" else 2
    deepspeed = config.train.distributed.strategy == "deepspeed" and device == "cuda"
    return Precision(param, compute, quant, getattr(method, "double_quant", True), deepspeed)


def workload_for(config: RunConfig, data: DataStats, method=None) -> Workload:
    from tunesmith.models.methods import supports_packing

    method = method or config.method
    longest = min(data.longest or config.data.cutoff_len, config.data.cutoff_len)
    return Workload(
        batch=config.train.batch_size,
        seq=longest,
        packed=config.train.packing and supports_packing(method.type),
        gradient_checkpointing=config.train.gradient_checkpointing,
        # a classifier's head has a few outputs, not a vocabulary: no LM logits
        trained_fraction=0.0 if config.train.stage == "cls" else data.trained_fraction,
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
        workload_for(config, data, method),
        device,
        precision_for(config, device, method),
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
            "data": {**self.data.__dict__, "tokens": self.data.tokens},
            "memory": {k: v.as_dict() for k, v in self.memory.items()},
            "fits": self.fits,
            "time": self.time.as_dict() if self.time else None,
            "advice": self.advice.as_dict() if self.advice else None,
        }


def make_plan(
    config: RunConfig,
    goal: Goal = "quality",
    probe: bool = True,
    hardware: Hardware | None = None,
    read_data: bool = True,
) -> Plan:
    from tunesmith.plan.advice import advise
    from tunesmith.plan.time import estimate_time

    facts = model_facts(config.model.name_or_path, config.train.stage == "cls")
    hardware = hardware or detect_hardware()
    tokenizer = _tokenizer(config) if read_data else None
    data = data_stats(config, tokenizer) if read_data else UNKNOWN
    memory = {d: estimate(facts, config, d, data) for d in ("cpu", "cuda")}
    plan = Plan(config, facts, hardware, data, memory)
    plan.time = estimate_time(plan, probe=probe)
    plan.advice = advise(plan, goal)
    return plan


def _tokenizer(config: RunConfig):
    """The model's tokenizer when it is on this machine (no download for planning)."""
    from tunesmith.models.load import load_tokenizer
    from tunesmith.models.resolve import resolve_model
    from tunesmith.plan.count import known_key
    from tunesmith.utils.errors import TunesmithError

    if known_key(config.model.name_or_path):
        return None
    try:
        resolved = resolve_model(config.model.name_or_path)
        return None if resolved.source == "hub" else load_tokenizer(resolved, config.model)
    except TunesmithError:
        return None


def plan_summary(config: RunConfig) -> str:
    """A few lines for the start of a training run: parameters and peak memory (no probe)."""
    try:
        return _summary(config)
    except Exception as exc:  # advisory output must never stop a training run
        return f"plan: no estimate for this run ({type(exc).__name__}: {exc})"


def _summary(config: RunConfig) -> str:
    facts = model_facts(config.model.name_or_path)
    hardware = detect_hardware()
    mem = estimate(facts, config, hardware.device)
    trainable = facts.trainable(config.method)
    verdict = "fits" if mem.total <= hardware.memory else "[red]may NOT fit[/red]"
    lines = [
        f"plan: {config.method.type} trains {trainable:,} of {facts.total:,} base parameters "
        f"({100 * trainable / facts.total:.2f}%)",
        f"plan: peak memory ~{mem.total / GB:.2f} GB on {hardware.device} "
        f"(weights {mem.weights / GB:.2f}, grads+optimizer "
        f"{(mem.gradients + mem.optimizer + mem.master_weights) / GB:.2f}, activations+logits "
        f"{(mem.activations + mem.logits) / GB:.2f}); {hardware.describe()} available: {verdict}",
    ]
    return "\n".join(lines)


def is_peft(method) -> bool:
    return method.type in PEFT_TYPES
