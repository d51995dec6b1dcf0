"""What the planner needs to know about data.train: records, tokens, lengths, trained share."""

from __future__ import annotations

from dataclasses import dataclass

from tunesmith.config.schema import RunConfig
from tunesmith.data.render import IGNORE_INDEX

SAMPLE = 1000  # records tokenized to measure lengths; all records are counted


@dataclass(frozen=True)
class DataStats:
    records: int | None  # None: not readable
    mean_tokens: float | None  # per example, after cutoff_len
    longest: int | None
    trained_fraction: float  # share of positions whose next token is in the loss
    note: str

    @property
    def tokens(self) -> int | None:
        if self.records is None or self.mean_tokens is None:
            return None
        return int(self.records * self.mean_tokens)


UNKNOWN = DataStats(None, None, None, 1.0, "no data read: worst case, every example cutoff_len")


def data_stats(config: RunConfig, tokenizer=None) -> DataStats:
    """Tokenize a sample of the SFT data (stage sft, tokenizer given); else a worst case."""
    if config.train.stage != "sft" or tokenizer is None:
        return UNKNOWN
    if not (config.data.train or config.data.dataset):
        return UNKNOWN
    from tunesmith.data.dataset import build_sft_data
    from tunesmith.data.registry import sft_sources

    limit = min(config.data.max_samples or SAMPLE, SAMPLE)
    sample_cfg = config.data.model_copy(update={"max_samples": limit, "on_error": "skip"})
    data = build_sft_data(sft_sources(config.data), sample_cfg, tokenizer, reject=None)
    if not data.examples:
        return UNKNOWN
    lengths = [len(e["input_ids"]) for e in data.examples]
    trained = sum(sum(1 for t in e["labels"] if t != IGNORE_INDEX) for e in data.examples)
    stats = data.stats
    records = stats["read"] - stats["rejected"]
    if config.data.max_samples:
        records = min(records, config.data.max_samples)
    return DataStats(
        records,
        sum(lengths) / len(lengths),
        max(lengths),
        trained / sum(lengths),
        f"{len(lengths)} of {records} records tokenized",
    )
