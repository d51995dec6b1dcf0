"""Trainer callbacks shared by every stage."""

from __future__ import annotations

import time

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from tunesmith.runs.folder import RunFolder


class MetricsCallback(TrainerCallback):
    """Writes loss, lr, grad norm and tokens/s of every logging step to metrics.jsonl."""

    def __init__(self, run: RunFolder):
        self.run = run
        self._last_time: float | None = None
        self._last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time = time.perf_counter()
        self._last_tokens = state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "eval_loss" in logs:
            self.run.append_metrics({"step": state.global_step, "eval_loss": logs["eval_loss"]})
        if "loss" not in logs:  # the end-of-training summary has its own keys
            return
        now = time.perf_counter()
        tokens = state.num_input_tokens_seen - self._last_tokens
        elapsed = now - (self._last_time or now)
        self._last_time, self._last_tokens = now, state.num_input_tokens_seen
        self.run.append_metrics(
            {
                "step": state.global_step,
                "epoch": round(state.epoch or 0.0, 4),
                "loss": logs.get("loss"),
                "learning_rate": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"),
                "tokens": state.num_input_tokens_seen,
                "tokens_per_s": round(tokens / elapsed, 1) if elapsed > 0 else None,
                "time": round(time.time(), 3),
            }
        )


class CompactProgressCallback(ProgressCallback):
    """The trainer's progress bar with loss and lr in its postfix instead of a printed dict per
    log step (those numbers are in metrics.jsonl)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is None or not logs or "loss" not in logs:
            return
        self.training_bar.set_postfix(
            loss=f"{logs['loss']:.4f}", lr=f"{logs.get('learning_rate', 0):.2e}", refresh=False
        )
