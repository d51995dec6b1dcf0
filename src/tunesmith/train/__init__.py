"""Training stages; `run_stage` runs the one train.stage names."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunesmith.config.schema import RunConfig
    from tunesmith.runs.folder import RunFolder
    from tunesmith.train.sft import TrainResult


def run_stage(config: RunConfig, run: RunFolder, resume: bool = False) -> TrainResult:
    from tunesmith.train.pt import run_pt  # heavy imports only when training
    from tunesmith.train.sft import run_sft

    return {"sft": run_sft, "pt": run_pt}[config.train.stage](config, run, resume)
