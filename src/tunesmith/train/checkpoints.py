"""Checkpoints written atomically: a checkpoint folder either is complete or does not exist.

transformers' Trainer writes `checkpoint-N` in place, file by file; a run killed mid-save leaves a
half-written folder that looks like a checkpoint. `AtomicCheckpoints` (first base of every
stage's trainer) lets the Trainer write everything (weights, optimizer, scheduler, RNG states,
trainer state, and the method weights PEFT does not save) into a staging folder,
then renames it into place: a rename within one filesystem is atomic. Older checkpoints are
rotated only after the new one is in place, so keep-last-N never leaves fewer complete ones.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from tunesmith.models.methods.base import (
    extra_covers_training,
    load_checkpoint_extra,
    save_checkpoint_extra,
)

STAGING = ".staging"  # inside the checkpoints folder; never matches `checkpoint-*`


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
            if self.args.should_save:
                save_checkpoint_extra(self.model, staging / name)
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
