"""Continued pre-training (train.stage: pt): plain text, every token trained.

The run is SFT's (`train_causal_lm`): only the data differs, see data/pretrain.py.
"""

from __future__ import annotations

from tunesmith.config.schema import RunConfig
from tunesmith.data.dataset import RejectSink, SFTData
from tunesmith.data.pretrain import build_pretrain_data, sources
from tunesmith.data.registry import TEXT, Source
from tunesmith.runs.folder import RunFolder
from tunesmith.train.sft import Stage, TrainResult, train_causal_lm
from tunesmith.utils.console import console


def run_pt(config: RunConfig, run: RunFolder, resume: bool = False) -> TrainResult:
    return train_causal_lm(PT, config, run, resume)


def _build(found: list[str | Source], config: RunConfig, tokenizer, reject: RejectSink) -> SFTData:
    # data.eval arrives as file names: plain text, with data.columns like data.train
    as_sources = [
        s if isinstance(s, Source) else Source([s], TEXT, dict(config.data.columns)) for s in found
    ]
    return build_pretrain_data(as_sources, config.data, tokenizer, config.train.packing, reject)


def _report(stats: dict, run: RunFolder) -> None:
    layout = f"{stats['examples']} blocks"
    if stats["layout"] == "documents":
        layout = f"{stats['examples']} pieces ({stats['split_documents']} documents split)"
    console.print(
        f"data: {stats['read']} documents read, {stats['documents']} used, {layout}, "
        f"{stats['tokens']:,} tokens ({stats['dropped_tokens']} dropped), "
        f"{stats['rejected']} rejected"
        + (f" (see {run.rejects_path})" if stats["rejected"] else "")
    )


PT = Stage("pt", sources, _build, _report)
