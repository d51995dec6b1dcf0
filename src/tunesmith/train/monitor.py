"""The training monitor: alerts with an action each, and a diagnosis of the run at the end.

Checks (thresholds in `train.monitor`, each can be turned off with null):
    nan        non-finite gradients, i.e. a NaN/Inf loss or overflow  (every step)
    loss_high  logged loss above max_loss                              (every log)
    spike      logged loss above spike_threshold of the last 20       (every log)
    vanishing  grad norm below min_grad_norm                           (every log)
    exploding  grad norm (before clipping) above max_grad_norm_alert   (every log)
    memory     process RSS above max_rss_mb                            (every log)
    stalled    one training step slower than stall_seconds             (every step)
Actions: warn (record it and go on), skip (nan only: the optimizer step is dropped), stop (save
a resumable checkpoint and stop; a NaN step is dropped first, so the checkpoint is finite).
A condition that persists is reported once, when it starts; every skipped step is reported.
Alerts go to alerts.jsonl and the console.

`loss_trend` and the diagnosis follow the seed's TrainingMetrics (least-squares slope over the
last 20 logged losses) and chapter 3's curve rules; see `diagnose`.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import torch
from rich.markup import escape
from transformers import TrainerCallback

from tunesmith.config.schema import MonitorConfig
from tunesmith.runs.folder import RunFolder, read_jsonl
from tunesmith.utils.console import console

TREND_WINDOW = 20  # logged losses in the trend and spike window (seed: TrainingMetrics)
MIN_POINTS = 5  # fewer logged losses than this: no trend, no spike check
# A spike is beyond the batch-to-batch noise of the recent losses, not just above their mean:
# small batches make a healthy loss jump around (a cls run of batch 8 had 59 alerts under the
# old 3 x mean rule), by a factor rather than by an amount, so the noise is measured on log
# losses. Robust z-score: (log loss - median) / (1.4826 x MAD), the MAD scaled to a normal's
# standard deviation, so a few earlier outliers move neither the centre nor the spread.
SPIKE_Z = 5.0
FLAT = 0.05  # a relative change below 5% over the trend window is a plateau
UNHEALTHY_SHARE = 0.1  # gradient trouble on more than 10% of logged steps names the verdict

MESSAGES = {
    "nan": "non-finite gradients (NaN/Inf loss or overflow)",
    "loss_high": "loss {value:.4g} above {threshold:g}",
    "spike": "loss {value:.4g} above {threshold:.4g} (spike_factor x the median of recent "
    "losses and beyond their batch-to-batch noise)",
    "vanishing": "gradient norm {value:.3g} below {threshold:g} (vanishing)",
    "exploding": "gradient norm {value:.3g} above {threshold:g} (exploding)",
    "memory": "process memory {value:.0f} MB above {threshold:g} MB",
    "stalled": "a training step took {value:.0f} s (limit {threshold:g} s)",
}
ADVICE = {
    "decreasing": "normal: the loss falls",
    "plateau": "flat loss: converged, or the learning rate is too small",
    "increasing": "rising loss: the learning rate may be too high, or the data has changed",
    "diverged": "diverged: lower the learning rate and check the data for broken records",
    "insufficient_data": "too few logged losses to judge",
}


# --- measurements (cheap: no extra forward, no softmax) --------------------------------------


def slope(values: Sequence[float]) -> float:
    """Least-squares slope of values against 0, 1, 2, ... (numpy.polyfit degree 1)."""
    n = len(values)
    if n < 2:
        return 0.0
    x_mean, y_mean = (n - 1) / 2, sum(values) / n
    covariance = sum((i - x_mean) * (y - y_mean) for i, y in enumerate(values))
    return covariance / sum((i - x_mean) ** 2 for i in range(n))


def loss_trend(losses: Sequence[float]) -> float | None:
    """The slope over the last TREND_WINDOW logged losses; None below MIN_POINTS."""
    window = list(losses)[-TREND_WINDOW:]
    return slope(window) if len(window) >= MIN_POINTS else None


@cache
def _process():
    try:
        import psutil  # installed with accelerate; the fallbacks cover its absence
    except ImportError:
        return None
    return psutil.Process()


def rss_mb() -> float | None:
    """Resident memory of this process in MB (psutil, else /proc/self/statm)."""
    process = _process()
    if process is not None:
        return process.memory_info().rss / 2**20
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """The highest resident memory of this process so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs kB


def memory_record() -> dict[str, float]:
    """RSS (and CUDA allocated/peak when CUDA is in use) in MB, rounded for metrics.jsonl."""
    record = {"rss_mb": rss_mb(), "rss_peak_mb": peak_rss_mb()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        record["cuda_mb"] = torch.cuda.memory_allocated() / 2**20
        record["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return {key: round(value, 1) for key, value in record.items() if value is not None}


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def spike_threshold(window: Sequence[float], factor: float) -> float:
    """The loss above which a logged loss is a spike: at least `factor` x the median of the
    recent losses (a minimum relative jump) and SPIKE_Z robust standard deviations of their log
    above it (beyond the batch-to-batch noise)."""
    logs = sorted(math.log(max(x, 1e-12)) for x in window)
    centre = _median(logs)
    mad = _median(sorted(abs(x - centre) for x in logs))
    return math.exp(centre + max(math.log(factor), SPIKE_Z * 1.4826 * mad))


def _median(ordered: Sequence[float]) -> float:
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _grads_finite(params) -> bool:
    grads = [p.grad for p in params if p.grad is not None]
    # One fused norm over all gradients: NaN/Inf anywhere makes it non-finite.
    return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))


# --- the callback -------------------------------------------------------------------------------


class TrainingMonitor(TrainerCallback):
    """Checks every step and every log against `train.monitor` and acts on what it finds."""

    def __init__(self, cfg: MonitorConfig, run: RunFolder):
        self.cfg, self.run = cfg, run
        self.stopped_by: dict | None = None
        self._losses: deque[float] = deque(maxlen=TREND_WINDOW)
        self._active: set[str] = set()  # conditions reported and still true
        self._clock = time.monotonic()
        self._writes = True  # only the main process writes alerts
        self._nan_in_window = False  # a non-finite step since the last log
        self._trained: list | None = None  # the optimizer's parameters, from on_train_begin

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        # after a resume, the spike window continues from what the run logged before
        self._losses.extend(_logged_losses(self.run))  # the deque keeps the last 20
        # every parameter that can get a gradient (progressive unfreezing included), listed once
        groups = getattr(optimizer, "param_groups", None) or []
        self._trained = [p for group in groups for p in group["params"]] or None
        self._writes = state.is_world_process_zero
        self._restart_clock()

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        params = self._trained or (model.parameters() if model is not None else [])
        if _grads_finite(params):
            self._active.discard("nan")
            return
        self._nan_in_window = True
        action = self.cfg.actions.nan
        if action == "warn" and "nan" in self._active:
            return  # the weights are NaN by now: said once is enough
        self._active.add("nan")
        self._alert(control, "nan", state.global_step + 1, math.nan, None)  # the step being taken
        if action != "warn":  # skip, or stop with the last finite weights in the checkpoint
            for param in model.parameters():
                param.grad = None  # torch optimizers leave parameters without a grad alone

    def on_step_end(self, args, state, control, **kwargs):
        took = time.monotonic() - self._clock
        self._restart_clock()
        self._check(control, "stalled", state.global_step, took, self.cfg.stall_seconds)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:  # an eval or end-of-run log
            self._restart_clock()
            return
        if self._nan_in_window:
            # The trainer logs a NaN step's loss as the mean of the other steps of the window
            # (its logging_nan_inf_filter keeps the running sum finite); put the truth back for
            # the callbacks after this one, metrics.jsonl included.
            logs["loss"], self._nan_in_window = math.nan, False
        cfg, step, loss, window = self.cfg, state.global_step, logs["loss"], self._losses
        self._check(control, "loss_high", step, loss, cfg.max_loss)
        if cfg.spike_factor is not None and len(window) >= MIN_POINTS:
            self._check(control, "spike", step, loss, spike_threshold(window, cfg.spike_factor))
        if _finite(loss):
            window.append(loss)
        norm = logs.get("grad_norm")
        self._check(control, "vanishing", step, norm, cfg.min_grad_norm, below=True)
        self._check(control, "exploding", step, norm, cfg.max_grad_norm_alert)
        if cfg.max_rss_mb is not None:
            self._check(control, "memory", step, rss_mb(), cfg.max_rss_mb)
        self._restart_clock()  # logging, evaluation and saving are not training steps

    def on_evaluate(self, args, state, control, **kwargs):
        self._restart_clock()

    def on_save(self, args, state, control, **kwargs):
        self._restart_clock()

    def on_train_end(self, args, state, control, **kwargs):
        if self.stopped_by and self._writes:
            kind, step = self.stopped_by["kind"], self.stopped_by["step"]
            console.print(
                f"[red]stopped by the {kind} alert at step {step}; "
                f"continue with: tunesmith train --resume {escape(str(self.run.root))}"
            )

    def summary(self) -> dict:
        """What summary.json records: alerts per kind, skipped steps, the stop, a diagnosis."""
        alerts = self.run.read_alerts()
        return {
            "alerts": dict(Counter(a["kind"] for a in alerts)),
            "skipped_steps": len({a["step"] for a in alerts if a["action"] == "skip"}),
            "stopped_by": self.stopped_by,
            "diagnosis": diagnose(read_jsonl(self.run.metrics_path), self.cfg),
        }

    def _restart_clock(self) -> None:
        self._clock = time.monotonic()

    def _check(self, control, kind, step, value, threshold, below=False) -> None:
        """Report a threshold crossed when it starts; forget it once it is over."""
        crossed = (
            threshold is not None
            and _finite(value)
            and (value < threshold if below else value > threshold)
        )
        if not crossed:
            self._active.discard(kind)
        elif kind not in self._active:
            self._active.add(kind)
            self._alert(control, kind, step, value, threshold)

    def _alert(self, control, kind, step, value, threshold) -> None:
        action = getattr(self.cfg.actions, kind)
        message = MESSAGES[kind].format(value=value, threshold=threshold)
        if self._writes:
            self.run.append_alert(
                {
                    "step": step,
                    "kind": kind,
                    "value": value if _finite(value) else str(value),  # JSON has no NaN
                    "threshold": threshold,
                    "action": action,
                    "message": message,
                    "time": round(time.time(), 3),
                }
            )
            colour = "red" if action == "stop" else "yellow"
            console.print(f"[{colour}]alert at step {step}: {escape(message)} -> {action}")
        if action == "stop" and self.stopped_by is None:
            self.stopped_by = {"kind": kind, "step": step}
            control.should_save = True  # a checkpoint to resume from
            control.should_training_stop = True


def _logged_losses(run: RunFolder) -> list[float]:
    return [m["loss"] for m in read_jsonl(run.metrics_path) if _finite(m.get("loss"))]


# --- diagnosis ----------------------------------------------------------------------------------


def diagnose(metrics: list[dict], cfg: MonitorConfig) -> dict:
    """The seed's gradient-health check and chapter 3's loss-curve rules, on metrics.jsonl."""
    losses = [m["loss"] for m in metrics if m.get("loss") is not None]
    norms = [m["grad_norm"] for m in metrics if m.get("grad_norm") is not None]
    return {"loss": classify_loss(losses), "gradients": gradient_health(norms, cfg)}


def classify_loss(losses: Sequence[float]) -> dict:
    """decreasing / plateau / increasing over the last TREND_WINDOW finite logged losses, by the
    relative change the fitted line makes across the window (|change| < 5%: plateau).
    diverged: most of the last 5 losses are non-finite, or the finite ones average more than
    twice the first 5 (a NaN step skipped now and then is not divergence)."""
    if len(losses) < MIN_POINTS:
        return {"trend": "insufficient_data", "advice": ADVICE["insufficient_data"]}
    finite = [x for x in losses if math.isfinite(x)]
    tail = [x for x in losses[-MIN_POINTS:] if math.isfinite(x)]
    head = finite[:MIN_POINTS]
    if len(tail) <= MIN_POINTS // 2 or sum(tail) / len(tail) > 2 * sum(head) / len(head):
        return {"trend": "diverged", "advice": ADVICE["diverged"]}
    window = finite[-TREND_WINDOW:]
    mean = sum(window) / len(window)
    change = slope(window) * (len(window) - 1) / mean if mean > 0 else 0.0
    trend = "decreasing" if change < -FLAT else "increasing" if change > FLAT else "plateau"
    return {"trend": trend, "relative_change": round(change, 4), "advice": ADVICE[trend]}


def gradient_health(norms: Sequence[float], cfg: MonitorConfig) -> dict:
    """Shares of logged steps whose (pre-clipping) gradient norm was vanishing, exploding or
    non-finite; the verdict names the largest share above 10%, else 'healthy'."""
    if not norms:
        return {"verdict": "insufficient_data"}
    low, high = cfg.min_grad_norm, cfg.max_grad_norm_alert
    shares = {
        "non_finite": sum(not math.isfinite(n) for n in norms) / len(norms),
        "vanishing": sum(low is not None and n < low for n in norms) / len(norms),
        "exploding": sum(high is not None and n > high for n in norms) / len(norms),
    }
    worst = max(shares, key=shares.get)
    finite = sorted(n for n in norms if math.isfinite(n))
    return {
        "verdict": worst if shares[worst] > UNHEALTHY_SHARE else "healthy",
        "median_norm": round(finite[len(finite) // 2], 6) if finite else None,
        **{f"{kind}_share": round(share, 4) for kind, share in shares.items()},
    }
