"""Which method, with which rank / lr / batch / epochs, for this model, data, hardware and goal;
and, when the configured job does not fit, the concrete changes that make it fit.

Every candidate is priced with the same memory estimator as the plan itself, so advice and
estimate never disagree. The rules of thumb (rates, ranks, epochs) are the usual starting
points of the PEFT / LLaMA-Factory / QLoRA literature, not tuned values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tunesmith.config.methods import LoraMethod, QLoraMethod
from tunesmith.models.methods import get_method
from tunesmith.plan.estimate import Plan, estimate
from tunesmith.plan.memory import GB

HEADROOM = 0.9  # leave 10% of the memory for what no estimate sees


@dataclass
class Option:
    method: str
    overrides: list[str]  # key=value, ready for the command line
    memory: int  # peak bytes on the planned device
    fits: bool
    why: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Advice:
    goal: str
    recommended: Option
    alternatives: list[Option]
    reasons: list[str]
    warnings: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)  # overrides that make the configured job fit

    def as_dict(self) -> dict:
        return {
            "goal": self.goal,
            "recommended": self.recommended.as_dict(),
            "alternatives": [a.as_dict() for a in self.alternatives],
            "reasons": self.reasons,
            "warnings": self.warnings,
            "fixes": self.fixes,
        }


def data_scale(plan: Plan) -> str:
    """small / medium / large by trained tokens (records when tokens are unknown)."""
    tokens = plan.data.tokens
    if tokens is None:
        return "unknown"
    return "small" if tokens < 200_000 else "medium" if tokens < 20_000_000 else "large"


def advise(plan: Plan, goal: str = "quality") -> Advice:
    if goal not in ("quality", "speed", "memory"):
        from tunesmith.utils.errors import ConfigError

        raise ConfigError(f"--goal: expected quality, speed or memory, got '{goal}'")
    budget = plan.hardware.memory * HEADROOM
    scale, size = data_scale(plan), plan.facts.total
    options = {o.method: o for o in _candidates(plan, scale, budget)}
    reasons = [
        f"model: {size / 1e9:.2f}B parameters; data: {_describe_data(plan, scale)}; "
        f"hardware: {plan.hardware.describe()}"
    ]
    order = _preference(goal, scale, size)
    fitting = [m for m in order if m in options and options[m].fits]
    best = options[fitting[0]] if fitting else min(options.values(), key=lambda o: o.memory)
    reasons.append(_reason(goal, best.method, scale))
    if not fitting:
        reasons.append(f"nothing fits on {plan.hardware.describe()}; {best.method} needs the least")
        reasons += _bigger_hardware(plan)
    alternatives = [options[m] for m in order if m in options and m != best.method][:3]
    advice = Advice(goal, best, alternatives, reasons)
    if plan.here.total > budget:
        advice.warnings.append(
            f"the configured job needs ~{plan.here.total / GB:.1f} GB; "
            f"{plan.hardware.describe()} leaves ~{budget / GB:.1f} GB for it: it will not fit"
        )
        advice.fixes = fixes(plan, budget)
        if not advice.fixes:
            advice.warnings.append("no combination of the usual changes fits on this hardware")
    elif plan.here.total > 0.7 * budget:
        advice.warnings.append("the job uses over 70% of memory: longer examples may not fit")
    return advice


def _bigger_hardware(plan: Plan) -> list[str]:
    """What a GPU would need: QLoRA at batch 1 with checkpointing, its smallest job."""
    config = _with_train(plan.config, 1, 1, True)
    method = QLoraMethod(r=16)
    need = estimate(plan.facts, config, "cuda", plan.data, method).total / HEADROOM
    return [f"QLoRA (r=16, batch 1, gradient checkpointing) fits a GPU with {need / GB:.0f} GB"]


def _describe_data(plan: Plan, scale: str) -> str:
    if plan.data.records is None:
        return "not read"
    return f"{plan.data.records:,} records, ~{plan.data.tokens:,} tokens ({scale})"


def _preference(goal: str, scale: str, size: int) -> list[str]:
    """Methods in order of preference; the first that fits is recommended."""
    if goal == "memory":
        return ["qlora", "lora", "ia3", "prompt", "freeze", "full"]
    if goal == "speed":
        return ["lora", "freeze", "qlora", "full", "ia3"]
    if scale == "large" or (scale == "medium" and size < 1e9):
        return ["full", "lora", "freeze", "qlora"]
    return ["lora", "full", "qlora", "freeze", "adapter"]


def _reason(goal: str, method: str, scale: str) -> str:
    return f"goal {goal}, data {scale}: {get_method(method).why}"


def _settings(plan: Plan, method: str, scale: str) -> dict:
    cfg = plan.config.train
    epochs = {"small": 3, "medium": 2, "large": 1}.get(scale, cfg.epochs)
    form = get_method(method)
    settings: dict = {"method.type": method, "train.learning_rate": form.learning_rate}
    settings |= form.advised(scale, plan.facts.shapes.layers, plan.facts.total)
    settings["train.epochs"] = epochs
    return settings


def _method_section(settings: dict):
    fields = {k.split(".", 1)[1]: v for k, v in settings.items() if k.startswith("method.")}
    return get_method(fields["type"]).config(**fields)


def _candidates(plan: Plan, scale: str, budget: float) -> list[Option]:
    gpu = plan.hardware.device == "cuda"
    methods = ["full", "freeze", "lora", "ia3", "prompt", "adapter"] + (["qlora"] if gpu else [])
    if plan.facts.task == "vlm":  # the methods that apply to a vision-language model
        methods = [m for m in methods if get_method(m).vision_language]
    options = []
    for method in methods:
        settings = _settings(plan, method, scale)
        section = _method_section(settings)
        config, extra = _fit_batch(plan, section, budget)
        mem = estimate(plan.facts, config, plan.hardware.device, plan.data, section)
        overrides = [f"{k}={v}" for k, v in settings.items()] + extra
        options.append(
            Option(method, overrides, mem.total, mem.total <= budget, get_method(method).why)
        )
    return options


def _fit_batch(plan: Plan, method, budget: float):
    """The config with the largest micro-batch (same effective batch through gradient
    accumulation) that fits; gradient checkpointing when even batch 1 does not."""
    config = plan.config
    effective = config.train.batch_size * config.train.gradient_accumulation_steps
    device = plan.hardware.device
    for gc in (config.train.gradient_checkpointing, True):
        batch = config.train.batch_size
        while batch >= 1:
            trial = _with_train(config, batch, -(-effective // batch), gc)
            if estimate(plan.facts, trial, device, plan.data, method).total <= budget:
                extra = []
                if batch != config.train.batch_size:
                    extra += [
                        f"train.batch_size={batch}",
                        f"train.gradient_accumulation_steps={-(-effective // batch)}",
                    ]
                if gc and not config.train.gradient_checkpointing:
                    extra.append("train.gradient_checkpointing=true")
                return trial, extra
            batch //= 2
        if gc:
            break
    # nothing fits: compare the candidates at their smallest (batch 1, checkpointing)
    extra = ["train.batch_size=1", f"train.gradient_accumulation_steps={effective}"]
    return _with_train(config, 1, effective, True), [*extra, "train.gradient_checkpointing=true"]


def _with_train(config, batch: int, accumulation: int, gc: bool, cutoff: int | None = None):
    train = config.train.model_copy(
        update={
            "batch_size": batch,
            "gradient_accumulation_steps": accumulation,
            "gradient_checkpointing": gc,
        }
    )
    data = config.data.model_copy(update={"cutoff_len": cutoff or config.data.cutoff_len})
    return config.model_copy(update={"train": train, "data": data})


def fixes(plan: Plan, budget: float) -> list[str]:
    """Cumulative changes, cheapest first, until the configured job fits: smaller micro-batch
    with gradient accumulation, gradient checkpointing, no LoRA dropout, LoRA instead of full,
    QLoRA on a GPU, a shorter cutoff_len. Returns the overrides of the first combination that
    fits."""
    config, method, device = plan.config, plan.config.method, plan.hardware.device
    effective = config.train.batch_size * config.train.gradient_accumulation_steps
    steps: list[tuple[list[str], dict]] = [
        (["train.batch_size=1", f"train.gradient_accumulation_steps={effective}"], {"batch": 1}),
        (["train.gradient_checkpointing=true"], {"gc": True}),
    ]
    if getattr(method, "dropout", 0) > 0:  # LoRA dropout copies every adapted layer's input
        steps.append((["method.dropout=0"], {"method": method.model_copy(update={"dropout": 0.0})}))
    if method.type in ("full", "freeze"):
        lora = ["method.type=lora", "method.r=16", "method.alpha=32", "method.dropout=0"]
        steps.append(([*lora, f"train.learning_rate={get_method('lora').learning_rate}"],
                      {"method": LoraMethod(r=16, alpha=32, dropout=0.0)}))  # fmt: skip
    if device == "cuda" and method.type != "qlora":
        qlora = ["method.type=qlora", "method.r=16", "method.dropout=0"]
        steps.append((qlora, {"method": QLoraMethod(r=16, dropout=0.0)}))
    state = {"batch": config.train.batch_size, "gc": config.train.gradient_checkpointing,
             "method": method, "cutoff": config.data.cutoff_len}  # fmt: skip
    changes: list[str] = []

    def fits() -> bool:
        trial = _with_train(config, state["batch"], effective, state["gc"], state["cutoff"])
        return estimate(plan.facts, trial, device, plan.data, state["method"]).total <= budget

    for overrides, update in steps:
        state |= update
        changes = [c for c in changes if c.split("=")[0] not in _keys(overrides)] + overrides
        if fits():
            return changes
    while state["cutoff"] > 256:
        state["cutoff"] //= 2
        if fits():
            return [*changes, f"data.cutoff_len={state['cutoff']}"]
    return []


def _keys(overrides: list[str]) -> set[str]:
    return {o.split("=")[0] for o in overrides}
