"""Stopping a YOLO training on SIGTERM / SIGINT at an epoch's end, resumable from weights/last.pt.

The signal handling is the language-model runs' (train/callbacks.py StopOnSignal: installed for
the whole run, a second signal ends the process at once); what differs is where training stops.
Ultralytics saves last.pt once per epoch, after validating it, so the first signal lets the
current epoch finish: `on_train_epoch_end` sets the trainer's own stop flag (`trainer.stop`,
which also makes it validate and save that epoch), and `on_fit_epoch_end`, which runs after the
save, raises DetectionInterrupted. Raising, not letting Ultralytics break out of its loop: its
end of training (final_eval) strips the optimizer from last.pt and marks it finished, which
would leave nothing to resume.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tunesmith.train.callbacks import StopOnSignal, _exit_now, exit_code


class DetectionInterrupted(Exception):
    """Vision training stopped by SIGTERM or SIGINT: after `epochs` complete epochs, which
    weights/last.pt holds, or before the first epoch of this start (`before`)."""

    def __init__(self, signum: int, epochs: int, run_root: Path, before: bool = False):
        self.signum, self.epochs, self.run_root = signum, epochs, run_root
        self.exit_code = exit_code(signum)
        last = run_root / "weights" / "last.pt"
        name = signal.Signals(signum).name
        if not before:
            message = f"training stopped by {name} after epoch {epochs}; {last} holds it"
        elif last.is_file():
            message = f"training stopped by {name} before its next epoch; {last} is unchanged"
        else:
            message = f"training stopped by {name} before its first epoch; nothing was trained"
        again = (
            f"Resume with: tunesmith vision train --resume {run_root}"
            if last.is_file()
            else "Start it again with the same command"
        )
        super().__init__(f"{message}. {again}")


class StopAfterEpoch(StopOnSignal):
    """StopOnSignal's handlers (`installed()`), acting at Ultralytics' epoch boundaries."""

    def __init__(self, run_root: Path):
        super().__init__()
        self.run_root = run_root
        self.pid = os.getpid()

    def attach(self, model) -> None:
        """Ultralytics runs callbacks in the order added: add this after the metrics logger, so
        the stopped epoch's metrics.jsonl line is written before it raises."""
        model.add_callback("on_train_epoch_start", self.epoch_start)
        model.add_callback("on_train_epoch_end", self.epoch_end)
        model.add_callback("on_fit_epoch_end", self.fit_epoch_end)

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self.pid:  # a forked dataloader worker: the main process decides
            return
        if self.signum is not None:
            _exit_now(signum)
            return
        self.signum = signum
        # one write to stderr, as StopOnSignal: the handler may interrupt a console write
        os.write(
            2,
            f"\n{signal.Signals(signum).name}: stopping after this epoch and saving "
            "weights/last.pt (send it again to stop at once, without saving)\n".encode(),
        )

    def epoch_start(self, trainer) -> None:
        """A signal while the model and data loaded: stop before the epoch begins."""
        if self.signum is not None:
            raise DetectionInterrupted(self.signum, trainer.epoch, self.run_root, before=True)

    def epoch_end(self, trainer) -> None:
        if self.signum is not None:
            trainer.stop = True  # validate and save this epoch whatever train.extra.val says

    def fit_epoch_end(self, trainer) -> None:
        # the last epoch (and final_eval's call, at epoch + 1) ends the run anyway: nothing to
        # resume, so a signal then lets it finish
        if self.signum is not None and trainer.epoch + 1 < trainer.epochs:
            raise DetectionInterrupted(self.signum, trainer.epoch + 1, self.run_root)
