"""`train.precision: auto` on the CPU: bf16 autocast only where this machine runs it faster.

CPUs with bf16 units (AMX on Intel Sapphire Rapids and later, AVX-512 BF16 on AMD Zen 4 and
later) multiply bf16 matrices 2-4x faster than fp32 ones, but a training step is more than its
matmuls: autocast casts every frozen weight to bf16 on every forward (autograd keeps the copy for
the backward), norms, softmax and the loss stay in fp32, and of tunesmith's kernels
(models/speed.py) the fused LoRA and the fused loss run in bf16 under autocast while the frozen
linears become autocast's own bf16 linear. So the CPU name decides nothing: a probe times it.

The probe (`probe_seconds`) times the model's own shapes, forward and backward as LoRA trains
them (frozen weights, a gradient for the inputs): one decoder layer built from the model's config
(random weights, sdpa attention, `tokens` positions) and the output layer with its loss (a slice
of the vocabulary, scaled to the whole). A training step is predicted as layers x layer + head, in
fp32 and in bf16 autocast (with tunesmith's kernels where train.optimize is on, as training runs
them), REPEATS rounds of the two back to back; the speedup is the median of the rounds'
ratios (a burst of load elsewhere hits both timings of a round). bf16 is chosen when it is at
least MARGIN faster and a loss check holds: the real model's loss on a fixed text in bf16
autocast within LOSS_TOLERANCE (relative) of its fp32 loss. 1% is the tolerance the project
holds two tools' final losses to (issue 20): bf16 must not move the loss more than a different
framework may. The timings are cached per host (node, CPU model and flags, torch
version, threads) and shape in ~/.cache/tunesmith/precision.json (delete it to probe again);
the loss check (two forwards of the real model) runs every time bf16 is in question. On a
machine shared with other jobs the timings swing (2 cores under a load of 4-8 gave 1.3x-2.4x
for the same probe of SmolLM2), so probe on a quiet machine: later runs trust the cached one.

Off: `train.precision: fp32` (or bf16 to force it), or TUNESMITH_PRECISION_PROBE=0. Models with a
hidden size under MIN_HIDDEN skip the probe (fp32): their matmuls are too small for bf16 units to
pay for the casts. A run in several processes does not probe (each would time on its own and
could choose apart): it takes a cached decision, else fp32. CUDA keeps the trainer's rule: bf16
where the GPU supports it.

Generation (`generation_choice`): bf16 weights where greedy replies to the given prompts equal the
fp32 ones and decoding is at least MARGIN faster; otherwise fp32, with the reason. Eval and serve
are not switched to it: on SmolLM2 (AMD EPYC with AVX-512 BF16, 2 cores under a load of 5-9, one
timing each, 4 chat prompts, 24 greedy tokens) bf16 weights gave 2 of 4 replies different from
fp32's, and decoded at 0.28x fp32's speed at batch 1 (1.41x at batch 4); bf16 autocast over fp32
weights 0.24x (0.66x at batch 4), the same 2 of 4 replies different. Greedy output equality, the
condition, fails, so `model.dtype: auto` stays float32 on the CPU for generation.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

MARGIN = 1.15  # bf16 must be this much faster: below it, a loaded host's noise could decide
LOSS_TOLERANCE = 0.01  # relative loss difference bf16 vs fp32 on the check text
MIN_HIDDEN = 256  # smaller models stay fp32 without a probe
PROBE_TOKENS = 512  # positions the probe's layer runs (fewer when a step has fewer)
HEAD_COLUMNS = 8192  # vocabulary rows the probe's output layer multiplies (scaled to the whole)
REPEATS = 5
ENV = "TUNESMITH_PRECISION_PROBE"
CACHE_FILE = "precision.json"
CACHE_VERSION = 1
CHECK_TEXT = (
    "The water cycle moves water between the oceans, the air and the land. Heat from the sun "
    "evaporates water from the sea; the vapour rises, cools and condenses into clouds, and the "
    "clouds return it as rain or snow. Rivers carry it back to the sea, and the cycle begins "
    "again. Question: what makes the vapour condense? Answer: it cools as it rises."
)


@dataclass
class Choice:
    """What `auto` chose and why, as printed at train start and kept in the run folder."""

    precision: str  # what the trainer runs: "bf16" (autocast on the CPU) or "fp32"
    reason: str  # one line
    requested: str = "auto"
    speedup: float | None = None  # predicted step time fp32 / bf16
    seconds: dict | None = None  # {"fp32": s, "bf16": s}: a predicted forward + backward step
    # (medians), and the probe's "speedup": the median of its rounds' paired ratios
    loss: dict | None = None  # {"fp32", "bf16", "relative_diff"} on the check text
    cached: bool = False  # the timings came from the cache

    def line(self) -> str:
        return f"train.precision {self.requested}: {self.precision} ({self.reason})"

    def as_dict(self) -> dict:
        return asdict(self)


# --- training ---------------------------------------------------------------------------------


def choose(
    model,
    tokenizer,
    requested: str,
    tokens: int,
    optimize: bool = True,
    task: str = "causal_lm",
    processes: int = 1,
) -> Choice:
    """The precision a run trains in. `tokens`: positions per step (batch x cutoff)."""
    if requested != "auto":
        return Choice(requested, "set in the config", requested)
    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
        return Choice("bf16" if bf16 else "fp32", f"CUDA GPU {'with' if bf16 else 'without'} bf16")
    if os.environ.get(ENV, "1").lower() in ("0", "off", "false", "no"):
        return Choice("fp32", f"{ENV}={os.environ[ENV]} turns the bf16 probe off")
    if task != "causal_lm":
        return Choice("fp32", f"the bf16 probe covers causal LMs, not a {task} model")
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    if dtype != torch.float32:
        return Choice("fp32", f"the weights are {str(dtype).removeprefix('torch.')} already")
    shape = probe_shape(model.config, tokens, optimize)
    if shape["hidden"] < MIN_HIDDEN:
        return Choice("fp32", f"hidden size {shape['hidden']} < {MIN_HIDDEN}: too small to gain")
    if not bf16_supported():
        return Choice("fp32", "this CPU's oneDNN has no bf16 kernels")
    seconds, cached = cached_seconds(shape), True
    if seconds is None and processes > 1:
        return Choice(
            "fp32",
            f"{processes} processes do not probe apart; run one process once to cache the "
            "probe, or set train.precision=bf16",
        )
    if seconds is None:
        from tunesmith.utils.console import console

        console.print("train.precision auto: timing bf16 against fp32 (once per host and shape)")
        try:
            seconds, cached = probe_seconds(model.config, shape), False
        except Exception as exc:  # an architecture the probe cannot build: say so, train fp32
            return Choice("fp32", f"the bf16 probe could not run ({type(exc).__name__}: {exc})")
        store_seconds(shape, seconds)
    return decide(seconds, cached, lambda: loss_check(model, tokenizer))


def decide(seconds: dict, cached: bool, check: Callable[[], dict]) -> Choice:
    """bf16 where the probe finds it MARGIN faster and `check()`'s loss holds."""
    speedup = seconds.get("speedup") or seconds["fp32"] / seconds["bf16"]
    timed = f"probe{' (cached)' if cached else ''}: bf16 autocast {speedup:.2f}x fp32"
    base = dict(speedup=round(speedup, 3), seconds=seconds, cached=cached)
    if speedup < MARGIN:
        return Choice("fp32", f"{timed} < {MARGIN}x", **base)
    loss = check()
    diff = loss["relative_diff"]
    tolerance = f"{100 * LOSS_TOLERANCE:g}%"
    if not diff <= LOSS_TOLERANCE:  # NaN fails too
        moved = f"{timed}, but the loss moves {100 * diff:.2f}% > {tolerance}"
        return Choice("fp32", moved, loss=loss, **base)
    held = f"{timed}, loss within {100 * diff:.2f}% (<= {tolerance})"
    return Choice("bf16", held, loss=loss, **base)


def bf16_supported() -> bool:
    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else torch.backends.mkldnn.is_available()
    except RuntimeError:
        return False


def probe_shape(config, tokens: int, optimize: bool = True) -> dict:
    """The numbers the probe's timing depends on (its cache key, with the host's)."""
    config = getattr(config, "text_config", None) or config
    heads = config.num_attention_heads
    return {
        "model_type": config.model_type,
        "hidden": config.hidden_size,
        "intermediate": getattr(config, "intermediate_size", None) or 4 * config.hidden_size,
        "layers": config.num_hidden_layers,
        "heads": heads,
        "kv_heads": getattr(config, "num_key_value_heads", None) or heads,
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // heads,
        "vocab": config.vocab_size,
        "tokens": max(1, min(tokens, PROBE_TOKENS)),
        "optimize": bool(optimize),
    }


def probe_seconds(config, shape: dict, repeats: int = REPEATS) -> dict:
    """Predicted seconds of a forward + backward step in fp32 and in bf16 autocast."""
    from tunesmith.models.speed import fuse_frozen_linear, keep_freed_memory

    layers = {"fp32": _one_layer(config), "bf16": _one_layer(config)}
    if shape["optimize"]:  # as training runs: freed blocks kept, the faster fp32 kernel
        keep_freed_memory()
        fuse_frozen_linear(layers["fp32"])
    g = torch.Generator().manual_seed(0)
    tokens, hidden = shape["tokens"], shape["hidden"]
    columns = min(shape["vocab"], HEAD_COLUMNS)
    x = torch.randn(1, tokens, hidden, generator=g).requires_grad_()
    h = torch.randn(tokens, hidden, generator=g).requires_grad_()
    w = torch.randn(columns, hidden, generator=g) * hidden**-0.5
    targets = torch.randint(columns, (tokens,), generator=g)
    positions = torch.arange(tokens)[None]

    def layer_step(name: str) -> None:
        with torch.autocast("cpu", torch.bfloat16, enabled=name == "bf16"):
            out = layers[name](inputs_embeds=x, position_ids=positions).last_hidden_state
        out.float().square().mean().backward()
        x.grad = None

    def head_step(name: str) -> None:
        with torch.autocast("cpu", torch.bfloat16, enabled=name == "bf16"):
            if shape["optimize"]:  # the fused loss, as training runs it
                from tunesmith.models.speed import linear_cross_entropy

                loss = linear_cross_entropy(h, w, targets) / tokens
            else:
                loss = F.cross_entropy(F.linear(h, w).float(), targets)
        loss.backward()
        h.grad = None

    samples: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for r in range(repeats + 1):  # round 0 warms up
        for name in ("fp32", "bf16") if r % 2 else ("bf16", "fp32"):
            step = _seconds(layer_step, name) * shape["layers"]
            step += _seconds(head_step, name) * shape["vocab"] / columns
            if r:
                samples[name].append(step)
    # the speedup: the median of each round's own ratio (its two timings taken back to back, so
    # a burst of load elsewhere hits both); steadier on a shared machine than a ratio of medians
    ratios = [a / b for a, b in zip(samples["fp32"], samples["bf16"], strict=True)]
    seconds = {name: round(statistics.median(s), 5) for name, s in samples.items()}
    return seconds | {"speedup": round(statistics.median(ratios), 4)}


def _one_layer(config):
    """A one-layer base model of `config`'s architecture (random weights, frozen, sdpa)."""
    from transformers import AutoModel

    config = copy.deepcopy(getattr(config, "text_config", None) or config)
    config.num_hidden_layers = 1
    if isinstance(getattr(config, "layer_types", None), list):  # per-layer kinds (Qwen3, Gemma)
        config.layer_types = config.layer_types[:1]
    config.vocab_size = 128  # inputs come as embeddings: the table is never read
    config.tie_word_embeddings = False
    with torch.random.fork_rng(devices=[]):  # the run's seeded RNG (its LoRA init) untouched
        torch.manual_seed(0)
        model = AutoModel.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    return model.requires_grad_(False).train()


def _seconds(work: Callable[..., None], *args) -> float:
    start = time.perf_counter()
    work(*args)
    return time.perf_counter() - start


def loss_check(model, tokenizer) -> dict:
    """The model's loss on CHECK_TEXT in fp32 and in bf16 autocast (no gradient)."""
    ids = tokenizer(CHECK_TEXT, return_tensors="pt")["input_ids"][:, :256]
    device = next(model.parameters()).device
    ids = ids.to(device)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            fp32 = model(input_ids=ids, labels=ids).loss.item()
            with torch.autocast("cpu", torch.bfloat16):
                bf16 = model(input_ids=ids, labels=ids).loss.item()
    finally:
        model.train(training)
    diff = abs(bf16 - fp32) / max(abs(fp32), 1e-6)
    return {"fp32": round(fp32, 5), "bf16": round(bf16, 5), "relative_diff": round(diff, 6)}


# --- the cache --------------------------------------------------------------------------------


def host() -> dict:
    """What the timings depend on besides the shape: machine, CPU, torch, threads."""
    model_name, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model_name:
                model_name = value.strip()
            if key.strip() == "flags" and not flags:
                flags = value.strip()
    except OSError:
        model_name = platform.processor()
    return {
        "node": platform.node(),
        "cpu": model_name,
        "cpu_flags": hashlib.sha256(flags.encode()).hexdigest()[:12],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def cache_key(shape: dict) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "host": host(), "shape": shape}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _cache_path() -> Path:
    from tunesmith.models.resolve import cache_dir

    return cache_dir() / CACHE_FILE


def _read_cache() -> dict:
    try:
        return json.loads(_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def cached_seconds(shape: dict) -> dict | None:
    entry = _read_cache().get(cache_key(shape))
    return entry["seconds"] if entry else None


def store_seconds(shape: dict, seconds: dict) -> None:
    entries = _read_cache()
    entries[cache_key(shape)] = {
        "seconds": seconds,
        "shape": shape,
        "host": host(),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = _cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)  # a reader sees the old file or the new one, never half


def planned(config, tokens: int, optimize: bool = True) -> Choice | None:
    """What `auto` would choose on this CPU from the cached probe alone (the planner's view;
    the loss check is left to the run); None when this host has not probed this shape."""
    shape = probe_shape(config, tokens, optimize)
    if shape["hidden"] < MIN_HIDDEN or os.environ.get(ENV, "1").lower() in ("0", "off", "false"):
        return Choice("fp32", "no probe for this model")
    seconds = cached_seconds(shape)
    if seconds is None:
        return None
    return decide(seconds, True, lambda: {"relative_diff": 0.0})


# --- generation -------------------------------------------------------------------------------


def generation_choice(
    model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 32, batch_size: int = 1
) -> Choice:
    """bf16 weights for generation where greedy replies to `prompts` equal fp32's and decoding
    is at least MARGIN faster (best of two timings each); `model` is left in fp32."""
    from tunesmith.models.engine import GenerationParams, TransformersEngine

    params = GenerationParams(max_new_tokens=max_new_tokens)
    replies: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    low = copy.deepcopy(model).to(torch.bfloat16)
    for name, m in (("fp32", model), ("bf16", low)):
        engine = TransformersEngine(m, tokenizer, batch_size)

        def run(name=name, engine=engine) -> None:
            replies[name] = [c.text for c in engine.generate(prompts, params)]

        seconds[name] = round(min(_seconds(run) for _ in range(2)), 4)
    del low
    speedup = seconds["fp32"] / seconds["bf16"]
    same = sum(a == b for a, b in zip(replies["fp32"], replies["bf16"], strict=True))
    base = dict(requested="auto", speedup=round(speedup, 3), seconds=seconds)
    if same < len(prompts):
        reason = f"greedy replies differ from fp32 on {len(prompts) - same}/{len(prompts)} prompts"
        return Choice("fp32", reason, **base)
    if speedup < MARGIN:
        return Choice("fp32", f"bf16 decoding {speedup:.2f}x fp32 < {MARGIN}x", **base)
    return Choice("bf16", f"bf16 decoding {speedup:.2f}x fp32, replies equal", **base)
