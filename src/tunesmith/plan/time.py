"""Training time: a short measured probe of the actual model and method on this machine, or a
FLOPs estimate when probing is impossible (no local weights, planning for other hardware,
or --no-probe).

FLOPs per trained token: the forward pass is 2 x N (N parameters) plus attention; the backward
pass computes gradients with respect to activations (2 x N, through every block above the
lowest trained parameter) and with respect to trained weights (2 x trainable). Full
fine-tuning: the familiar 6 x N. LoRA: about 4 x N, not the 2 x N + 4 x trainable sometimes
quoted: the activation gradients still cross every frozen layer. Gradient checkpointing runs
the forward pass twice.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from tunesmith.utils.errors import TunesmithError

# Dense bf16 tensor-core TFLOPs (fp16 for cards without bf16), by a substring of the name.
GPU_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "A10": 125.0,
    "L4": 121.0,
    "4090": 165.0,
    "3090": 71.0,
    "V100": 125.0,
    "T4": 65.0,
}
GPU_MFU = 0.35  # eager PyTorch training without fused kernels reaches about a third of peak
CPU_MFU = 0.5  # share of a large fp32 matmul's rate that training reaches on CPU
PROBE_STEPS = 3  # the first warms up and is not timed
SPEED_STAGES = {"sft", "pt", "distill", "cls", "dpo", "kto", "orpo", "simpo", "rm"}  # speed=True


@dataclass
class TimeEstimate:
    method: str  # "probe" or "flops"
    tokens_per_second: float
    tokens: int  # trained over the whole run
    steps: int
    seconds: float
    note: str
    parts: dict[str, float] | None = None  # cls: seconds of training steps, evaluation, setup

    def as_dict(self) -> dict:
        return asdict(self)


def flops_per_token(
    total: int,
    trainable: int,
    peft: bool,
    gc: bool,
    layers: int,
    q_dim: int,
    seq: int,
    causal: bool = True,
) -> float:
    """Training FLOPs per token: weights (N, trainable) plus attention over `seq` positions
    (causal: a token attends to those before it, half of them on average; an encoder: all)."""
    attention = (2 if causal else 4) * layers * seq * q_dim  # QK^T and AV, forward
    forward = 2 * total + attention
    backward = 2 * total + 2 * attention + (2 * trainable if peft else 2 * total)
    return forward * (2 if gc else 1) + backward


def device_flops(hardware) -> float:
    """Sustained training FLOP/s of the planned device."""
    if hardware.device == "cuda":
        peak = next((v for k, v in GPU_TFLOPS.items() if k in hardware.name), 100.0)
        return peak * 1e12 * GPU_MFU * max(hardware.gpus, 1)
    return cpu_matmul_flops() * CPU_MFU


def cpu_matmul_flops(size: int = 768, repeats: int = 4) -> float:
    """The fp32 matmul rate of this CPU, measured (a fraction of a second)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def run_tokens(plan) -> tuple[int, int]:
    """(tokens trained over the run, optimizer steps)."""
    cfg, data = plan.config.train, plan.data
    per_step = cfg.batch_size * cfg.gradient_accumulation_steps
    mean = data.mean_tokens or plan.config.data.cutoff_len
    if cfg.max_steps > 0:
        return int(cfg.max_steps * per_step * mean), cfg.max_steps
    records = data.records if data.records is not None else 1000
    steps = max(1, int(-(-records // per_step) * cfg.epochs))
    return int(records * cfg.epochs * mean), steps


def estimate_time(plan, probe: bool = True) -> TimeEstimate:
    tokens, steps = run_tokens(plan)
    unknown = "" if plan.data.records is not None else " (data not read: 1000 records assumed)"
    if probe and plan.hardware.here:
        try:
            rate = probe_rate(plan)
            return TimeEstimate(
                "probe",
                rate,
                tokens,
                steps,
                tokens / rate,
                f"measured {PROBE_STEPS - 1} steps" + unknown,
            )
        except (TunesmithError, OSError, RuntimeError, TypeError, ValueError) as exc:
            unknown += f" (probe impossible: {str(exc).splitlines()[0][:120]})"
    s = plan.facts.shapes
    work_seq = min(plan.data.longest or plan.config.data.cutoff_len, plan.config.data.cutoff_len)
    per_token = flops_per_token(
        plan.facts.total - plan.facts.vision,  # the vision tower runs per image patch
        plan.trainable,
        _base_frozen(plan),
        plan.config.train.gradient_checkpointing,
        s.layers,
        s.q_dim,
        work_seq,
    )
    note = f"{per_token / 1e9:.2f} GFLOPs per token" + unknown
    if plan.facts.vision:  # image tokens are in the sequence; their patches pass the tower
        per_token += vision_flops_per_token(plan)
        note += (
            f"; vision tower {plan.facts.vision:,} parameters, "
            f"{2 * plan.facts.vision / 1e9:.2f} GFLOPs forward per image patch, "
            f"{100 * plan.data.image_share:.0f}% of positions image tokens"
        )
    rate = device_flops(plan.hardware) / per_token
    return TimeEstimate("flops", rate, tokens, steps, tokens / rate, note)


def vision_flops_per_token(plan) -> float:
    """The vision tower's FLOPs averaged over the run's tokens: each image token's patches
    through the tower, forward only while it is frozen (no weight or input gradients)."""
    facts, method = plan.facts, plan.config.method
    trained = getattr(method, "train_vision", False) or getattr(method, "train_projector", False)
    per_patch = 2 * facts.vision * (3 if trained else 1)
    return plan.data.image_share * facts.patches_per_image_token * per_patch


def _this_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def probe_rate(plan) -> float:
    """Trained tokens per second over a few real steps of the model with its method."""
    import torch.nn.functional as F

    from tunesmith.models.load import enable_checkpointing, load_causal_lm
    from tunesmith.models.methods import get_method
    from tunesmith.models.resolve import resolve_model
    from tunesmith.models.speed import optimize_for_training
    from tunesmith.plan.count import known_key
    from tunesmith.plan.estimate import workload_for

    config = plan.config
    if plan.facts.vision:  # text-only probe batches do not run its vision tower
        raise TunesmithError("a vision-language model is priced from its FLOPs")
    resolved = resolve_model(config.model.name_or_path)
    if resolved.source == "hub" or known_key(config.model.name_or_path):
        raise TunesmithError("no local weights")
    model = load_causal_lm(resolved, config.model)
    model = get_method(config.method.type).apply(model, config.method)
    if config.train.gradient_checkpointing:
        enable_checkpointing(model)
    if config.train.stage in SPEED_STAGES:  # the levers the stage's training applies
        model = optimize_for_training(model, config.train.optimize)
    device = _this_device()
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    work = workload_for(config, plan.data)
    rows, width = (1, work.tokens) if work.packed else (work.batch, work.seq)
    ids = torch.randint(0, plan.facts.shapes.vocab, (rows, width), device=device)
    keep = torch.arange(max(1, int((width - 1) * work.trained_fraction)), device=device)
    elapsed = 0.0
    for step in range(PROBE_STEPS):
        start = time.perf_counter()
        logits = model(input_ids=ids, logits_to_keep=keep, use_cache=False).logits
        targets = ids[:, 1:][:, keep]
        F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed += time.perf_counter() - start if step else 0.0
    return (PROBE_STEPS - 1) * rows * width / elapsed


def _base_frozen(plan) -> bool:
    """True when some base weights stay frozen (no weight gradients for them): every method
    but one that trains every block (full, or freeze over all layers)."""
    from tunesmith.models.methods import get_method

    method = plan.config.method
    layers = plan.facts.shapes.layers
    return get_method(method.type).trained_blocks(method, layers) < layers
