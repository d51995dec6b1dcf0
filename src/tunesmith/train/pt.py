"""Continued pre-training (train.stage: pt): plain text, every token trained.

SFT's trainer on other data (data/pretrain.py): blocks of plain text instead of chats.
"""

from __future__ import annotations

from tunesmith.config.schema import RunConfig
from tunesmith.data.pretrain import build_pretrain_data, sources
from tunesmith.data.registry import TEXT, Source
from tunesmith.runs.folder import RunFolder
from tunesmith.train.forgetting import add_replay, replay_sources
from tunesmith.train.recipe import Data, Job, TrainResult, train
from tunesmith.train.trainer import causal_lm_recipe
from tunesmith.utils.console import console


def run_pt(config: RunConfig, run: RunFolder, resume: bool = False) -> TrainResult:
    return train(PT, config, run, resume)


def _read(job: Job) -> tuple[list, list]:
    return sources(job.config.data), replay_sources(job.config.data)


def _data(job: Job) -> Data:
    config, run, tokenizer = job.config, job.run, job.loaded.tokenizer
    found, replay = job.sources
    train_data = _build(found, config, tokenizer, run.reject)
    train_data = add_replay(
        train_data, replay, config.data, config.train.seed, tokenizer, run.reject
    )
    held_out = _build(config.data.eval, config, tokenizer, run.reject) if config.data.eval else None
    return Data.of(train_data, held_out)


def _build(found: list[str | Source], config: RunConfig, tokenizer, reject):
    # data.eval arrives as file names: plain text, with data.columns like data.train
    as_sources = [
        s if isinstance(s, Source) else Source([s], TEXT, dict(config.data.columns)) for s in found
    ]
    return build_pretrain_data(as_sources, config.data, tokenizer, config.train.packing, reject)


def _report(data: Data, run: RunFolder) -> None:
    stats = data.stats
    layout = f"{stats['examples']} blocks"
    if stats["layout"] == "documents":
        layout = f"{stats['examples']} pieces ({stats['split_documents']} documents split)"
    console.print(
        f"data: {stats['read']} documents read, {stats['documents']} used, {layout}, "
        f"{stats['tokens']:,} tokens ({stats['dropped_tokens']} dropped), "
        f"{stats['rejected']} rejected"
        + (f" (see {run.rejects_path})" if stats["rejected"] else "")
    )


PT = causal_lm_recipe("pt", _read, _data, report=_report, example="my_text.txt")
