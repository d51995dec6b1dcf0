"""Checkpoints written atomically: a checkpoint folder either is complete or does not exist.

transformers' Trainer writes `checkpoint-N` in place, file by file; a run killed mid-save leaves a
half-written folder that looks like a checkpoint. `AtomicCheckpoints` (first base of every
stage's trainer) lets the Trainer write everything (weights, optimizer, scheduler, RNG states,
trainer state, and the method weights PEFT does not save) into a staging folder,
then renames it into place: a rename within one filesystem is atomic. Older checkpoints are
rotated only after the new one is in place, so keep-last-N never leaves fewer complete ones.

Each checkpoint also holds the run's totals up to its step (`RunTotals`: the sum of the training
losses of every step and the seconds spent), so that a run resumed once or many times reports
its whole mean loss and time, not the last segment's.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from tunesmith.models.methods.base import (
    extra_covers_training,
    load_checkpoint_extra,
    save_checkpoint_extra,
)

STAGING = ".staging"  # inside the checkpoints folder; never matches `checkpoint-*`
TOTALS = "run_totals.json"  # in each checkpoint: the run's totals up to its step


@dataclass
class RunTotals:
    """What the segments before this one trained (from the checkpoint it resumed from), and when
    this segment started: the whole run's loss and time are these plus this segment's."""

    step: int = 0  # the step this segment started from
    loss_sum: float = 0.0  # the sum of every step's training loss up to `step`
    seconds: float = 0.0  # wall time of the earlier segments, up to their checkpoints
    segments: int = 0  # earlier segments (starts before this one)
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def resumed_from(cls, checkpoint: Path | None, started: float) -> RunTotals:
        if checkpoint is None:
            return cls(started=started)
        step = int(checkpoint.name.split("-")[-1])
        path = checkpoint / TOTALS
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            return cls(step, saved["loss_sum"], saved["seconds"], saved["segments"], started)
        # a checkpoint written before totals were kept: its logged losses, each the mean of the
        # steps since the log before (steps after the last log are not counted)
        state = json.loads((checkpoint / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
        loss_sum, last = 0.0, 0
        for log in state.get("log_history", []):
            if "loss" in log and log["step"] <= step:
                loss_sum += log["loss"] * (log["step"] - last)
                last = log["step"]
        return cls(step, loss_sum, 0.0, 1, started)

    def upto(self, step: int, segment_loss_sum: float) -> dict:
        """The totals at `step` of this segment, given the loss sum of its own steps."""
        return {
            "step": step,
            "loss_sum": self.loss_sum + segment_loss_sum,
            "seconds": round(self.seconds + time.perf_counter() - self.started, 3),
            "segments": self.segments + 1,
        }

    def mean_loss(self, step: int, segment_mean: float) -> float:
        """The whole run's mean training loss, from this segment's (the Trainer's train_loss)."""
        if step <= 0:
            return segment_mean
        return self.upto(step, segment_mean * (step - self.step))["loss_sum"] / step


class AtomicCheckpoints:
    """Trainer mixin: each checkpoint is staged, then renamed into place when complete."""

    def _save_checkpoint(self, model, trial):
        checkpoints = Path(self._get_output_dir(trial=trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = checkpoints / STAGING
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # what a killed save left behind
        self.accelerator.wait_for_everyone()
        original = self.args.output_dir
        self.args.output_dir = str(staging)  # where the Trainer's save writes every file
        try:
            super()._save_checkpoint(model, trial)
            totals = self._totals_now()  # every process: the loss is averaged over them
            if self.args.should_save:
                save_checkpoint_extra(self.model, staging / name)
                if totals is not None:
                    (staging / name / TOTALS).write_text(json.dumps(totals), encoding="utf-8")
        finally:
            self.args.output_dir = original
        self.accelerator.wait_for_everyone()  # every process has written its part
        if self.args.should_save:
            self._move_into_place(staging / name, checkpoints / name)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(
                str(checkpoints), self.args.save_total_limit, self.state.best_model_checkpoint
            )
        self.accelerator.wait_for_everyone()

    def _totals_now(self) -> dict | None:
        """The run's totals at this step, when train() gave the trainer its `run_totals`."""
        totals: RunTotals | None = getattr(self, "run_totals", None)
        if totals is None:
            return None
        # the Trainer's loss sums: what it logged so far in this segment, and what it has
        # accumulated since its last log (the mean over processes, as its logs take it)
        logged = getattr(self, "_total_loss_scalar", 0.0)
        pending = getattr(self, "_tr_loss", None)
        if pending is not None:
            pending = self.accelerator.reduce(pending.detach().clone(), reduction="mean").item()
        return totals.upto(self.state.global_step, logged + (pending or 0.0))

    # A method's extra weights (models/methods/base.py: hybrid's adapters, prompt encoders) are
    # restored with the rest on resume and when the best checkpoint is loaded at the end.
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not extra_covers_training(self.model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_checkpoint_extra(self.model, Path(resume_from_checkpoint))

    def _load_best_model(self):
        if not extra_covers_training(self.model):
            super()._load_best_model()
        load_checkpoint_extra(self.model, Path(self.state.best_model_checkpoint))

    def _move_into_place(self, staged: Path, final: Path) -> None:
        if self.state.best_model_checkpoint == str(staged):  # this save is the best one so far
            self.state.best_model_checkpoint = str(final)
            self.state.save_to_json(str(staged / TRAINER_STATE_NAME))
        if final.exists():  # the same step saved again (a resumed run's first save)
            shutil.rmtree(final)
        os.replace(staged, final)
