"""`make_plan(config)`: parameters, memory (CPU and GPU), time and advice for one run config."""

from __future__ import annotations

from tunesmith.config.schema import RunConfig
from tunesmith.plan.advice import advise
from tunesmith.plan.cls_time import estimate_cls_time
from tunesmith.plan.data import UNKNOWN, data_stats
from tunesmith.plan.estimate import GOALS, Goal, Plan, estimate, model_facts
from tunesmith.plan.hardware import Hardware, detect_hardware
from tunesmith.plan.memory import GB
from tunesmith.plan.time import estimate_time

__all__ = ["GOALS", "Plan", "make_plan", "plan_summary"]


def make_plan(
    config: RunConfig,
    goal: Goal = "quality",
    probe: bool = True,
    hardware: Hardware | None = None,
    read_data: bool = True,
) -> Plan:
    classifier = config.train.stage == "cls"
    facts = model_facts(config.model.name_or_path, classifier)
    hardware = hardware or detect_hardware()
    tokenizer = _tokenizer(config) if read_data else None
    data = data_stats(config, tokenizer, facts.shapes.positions) if read_data else UNKNOWN
    memory = {d: estimate(facts, config, d, data) for d in ("cpu", "cuda")}
    plan = Plan(config, facts, hardware, data, memory)
    plan.time = (estimate_cls_time if classifier else estimate_time)(plan, probe=probe)
    plan.advice = advise(plan, goal)
    return plan


def _tokenizer(config: RunConfig):
    """The model's tokenizer when it is on this machine (no download for planning): a
    classifier's needs no chat template."""
    from tunesmith.models.classifier import classifier_tokenizer
    from tunesmith.models.load import load_tokenizer
    from tunesmith.models.resolve import resolve_model
    from tunesmith.plan.count import known_key
    from tunesmith.utils.errors import TunesmithError

    if known_key(config.model.name_or_path):
        return None
    try:
        resolved = resolve_model(config.model.name_or_path)
        if resolved.source == "hub":
            return None
        from tunesmith.models.vlm import is_vision_language, load_processor

        if is_vision_language(resolved):  # its processor: image tokens counted in the data
            return load_processor(resolved, config.model)
        load = classifier_tokenizer if config.train.stage == "cls" else load_tokenizer
        return load(resolved, config.model)
    except TunesmithError:
        return None


def plan_summary(config: RunConfig) -> str:
    """A few lines for the start of a training run: parameters and peak memory (no probe)."""
    try:
        return _summary(config)
    except Exception as exc:  # advisory output must never stop a training run
        return f"plan: no estimate for this run ({type(exc).__name__}: {exc})"


def _summary(config: RunConfig) -> str:
    facts = model_facts(config.model.name_or_path, config.train.stage == "cls")
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
