"""Trainer callbacks shared by every stage."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from transformers import EarlyStoppingCallback, TrainerCallback
from transformers.trainer_callback import ProgressCallback

from tunesmith.config.schema import TrainConfig
from tunesmith.runs.folder import RunFolder, is_main_process, read_jsonl
from tunesmith.runs.plots import plot_metrics
from tunesmith.train.monitor import TREND_WINDOW, loss_trend, memory_record
from tunesmith.utils.console import console
from tunesmith.utils.errors import ConfigError

_EVAL_SPEED = {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}  # not metrics
# trainer-specific training logs, written when present (grpo/ppo: rewards, KL, entropy)
_EXTRA = ("l2_penalty", "reward", "reward_std", "kl", "entropy", "value_loss", "policy_loss")
_EXTRA_PREFIXES = ("rewards/",)  # grpo: each reward function's mean and std


class MetricsCallback(TrainerCallback):
    """Writes loss, lr, grad norm, tokens/s, memory and the loss trend of every logging step to
    metrics.jsonl, and redraws the plots every `plot_every` logs (0: at the end only)."""

    def __init__(self, run: RunFolder, plot_every: int = 50):
        self.run, self.plot_every = run, plot_every
        self._last_time: float | None = None
        self._last_tokens = 0
        self._losses: deque[float] = deque(maxlen=TREND_WINDOW)
        self._logs = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time = time.perf_counter()
        self._last_tokens = state.num_input_tokens_seen
        # on resume the trend window continues from the losses logged before the checkpoint
        logged = (m.get("loss") for m in read_jsonl(self.run.metrics_path))
        self._losses.extend(x for x in logged if x is not None and math.isfinite(x))

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        evals = {k: v for k, v in logs.items() if k.startswith("eval_") and k not in _EVAL_SPEED}
        if evals:
            self.run.append_metrics({"step": state.global_step, **evals})
        if "loss" not in logs:  # the end-of-training summary has its own keys
            return
        now = time.perf_counter()
        tokens = state.num_input_tokens_seen - self._last_tokens
        elapsed = now - (self._last_time or now)
        self._last_time, self._last_tokens = now, state.num_input_tokens_seen
        if math.isfinite(logs["loss"]):
            self._losses.append(logs["loss"])
        trend = loss_trend(self._losses)
        self.run.append_metrics(
            {
                "step": state.global_step,
                "epoch": round(state.epoch or 0.0, 4),
                "loss": logs.get("loss"),
                "learning_rate": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"),
                "tokens": state.num_input_tokens_seen,
                "tokens_per_s": round(tokens / elapsed, 1) if elapsed > 0 else None,
                "loss_trend": None if trend is None else round(trend, 6),
                **{k: v for k, v in logs.items() if k in _EXTRA or k.startswith(_EXTRA_PREFIXES)},
                **memory_record(),
                "time": round(time.time(), 3),
            }
        )
        self._logs += 1
        if self.plot_every and self._logs % self.plot_every == 0:
            plot_metrics(self.run)
            self._last_time = time.perf_counter()  # drawing is not training time

    def on_train_end(self, args, state, control, **kwargs):
        plot_metrics(self.run)


def check_eval_needs(cfg: TrainConfig, has_eval: bool) -> None:
    """Early stopping and reduce_on_plateau act on eval metrics; fail before the model loads."""
    if has_eval:
        return
    if cfg.early_stopping is not None:
        raise ConfigError(
            "train.early_stopping needs eval data: set data.eval=[file] (evaluation and "
            "checkpoints both run every train.save_steps, so the best checkpoint can be kept)"
        )
    if cfg.lr_scheduler == "reduce_on_plateau":
        raise ConfigError(
            "train.lr_scheduler: reduce_on_plateau lowers the rate when the eval loss stalls; "
            "set data.eval=[file], or use cosine, linear or constant"
        )


def schedule_arguments(cfg: TrainConfig) -> dict:
    """TrainingArguments for the lr schedule, early stopping and the best checkpoint.
    Evaluation runs at every save (eval_steps == save_steps), which load_best_model_at_end needs."""
    stopping = cfg.early_stopping
    mode = stopping.mode if stopping else "min"
    arguments = {"lr_scheduler_type": cfg.lr_scheduler}
    if cfg.lr_scheduler == "reduce_on_plateau":
        # the seed's plateau settings: halve the rate after 2 evaluations without improvement
        arguments |= {
            "lr_scheduler_type": "reduce_lr_on_plateau",
            "lr_scheduler_kwargs": {"mode": mode, "factor": 0.5, "patience": 2},
        }
    if stopping:
        arguments |= {
            "load_best_model_at_end": True,
            "metric_for_best_model": stopping.metric,
            "greater_is_better": mode == "max",
        }
    return arguments


def early_stopping_callbacks(cfg: TrainConfig) -> list[TrainerCallback]:
    stopping = cfg.early_stopping
    if stopping is None:
        return []
    return [EarlyStoppingCallback(stopping.patience, stopping.min_delta)]


def best_checkpoint(cfg: TrainConfig, state) -> dict | None:
    """The best eval metric and its checkpoint, for summary.json; None without early stopping."""
    if cfg.early_stopping is None or state.best_model_checkpoint is None:
        return None
    return {
        "metric": cfg.early_stopping.metric,
        "value": state.best_metric,
        "step": state.best_global_step,
        "checkpoint": state.best_model_checkpoint,
    }


class CompactProgressCallback(ProgressCallback):
    """The trainer's progress bar with loss and lr in its postfix instead of a printed dict per
    log step (those numbers are in metrics.jsonl)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is None or not logs or "loss" not in logs:
            return
        self.training_bar.set_postfix(
            loss=f"{logs['loss']:.4f}", lr=f"{logs.get('learning_rate', 0):.2e}", refresh=False
        )


def resume_checkpoint(run: RunFolder, resume: bool) -> Path | None:
    """The checkpoint to resume from (None: start afresh); what a killed run logged after it is
    dropped, so metrics.jsonl tells one history."""
    checkpoint = run.last_checkpoint() if resume else None
    if resume and checkpoint is None:
        console.print(f"[yellow]no checkpoint in {run.checkpoints}; training from the start")
    run.drop_metrics_after(int(checkpoint.name.split("-")[-1]) if checkpoint else 0)
    return checkpoint


# --- stopping on a signal -------------------------------------------------------------------

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # docker stop / schedulers, Ctrl-C


def exit_code(signum: int) -> int:
    """The shell's code for a process ended by `signum`: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + signum


class TrainingInterrupted(Exception):
    """Training stopped by SIGTERM or SIGINT: after a checkpoint of its last step was written,
    or before its first step (checkpoint: the one it would have resumed from, or None)."""

    def __init__(
        self, signum: int, step: int, run_root: Path, checkpoint: Path | None, before=False
    ):
        self.signum, self.step, self.run_root, self.checkpoint = signum, step, run_root, checkpoint
        self.exit_code = exit_code(signum)
        name = signal.Signals(signum).name
        if not before:
            message = (
                f"training stopped by {name} after step {step}; checkpoint saved to {checkpoint}"
            )
        elif checkpoint is not None:
            message = f"training stopped by {name} before its first step; {checkpoint} is unchanged"
        else:
            message = f"training stopped by {name} before its first step; nothing was trained"
        again = (
            f"Resume with: tunesmith train --resume {run_root}"
            if checkpoint is not None
            else "Start it again with the same command"
        )
        super().__init__(f"{message}. {again}")


def _exit_now(signum: int) -> None:
    """The second signal: the default action (the process ends by that signal, no cleanup)."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


class StopOnSignal(TrainerCallback):
    """The first SIGTERM or SIGINT lets the current optimizer step finish, then asks the Trainer
    to save a checkpoint (AtomicCheckpoints: complete or absent) and stop; `train` then raises
    TrainingInterrupted. A second signal ends the process at once. The handlers are installed
    for the whole run (`installed`, in the main thread; elsewhere signals keep their default
    action): a signal while the model loads stops the run before its first step, cleanly, and
    one while the artifact is saved waits for the save."""

    def __init__(self):
        self.signum: int | None = None
        self.stopped_at: int | None = None  # the step whose checkpoint the signal asked for
        self._previous: dict[int, object] = {}

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopOnSignal]:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        try:
            yield self
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
            self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            _exit_now(signum)
            return
        self.signum = signum
        if is_main_process():
            name = signal.Signals(signum).name
            # one write to stderr, not print or the console: the handler may run in the middle
            # of a write to them, and a buffered stream refuses to be entered twice
            message = (
                f"\n{name}: stopping after this step and saving a checkpoint "
                "(send it again to stop at once, without saving)\n"
            )
            os.write(2, message.encode())

    def on_step_end(self, args, state, control, **kwargs):
        if self._stop_everywhere(args):
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True

    def _stop_everywhere(self, args) -> bool:
        """Whether any process got a signal: under torchrun they stop and save at one step."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self.signum is not None
        import torch

        flag = torch.tensor([self.signum or 0], device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if self.signum is None and flag.item():
            self.signum = int(flag.item())
        return bool(flag.item())
