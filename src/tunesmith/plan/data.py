"""What the planner needs to know about data.train: records, tokens, lengths, trained share."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace

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
    # training examples when a record may give several (cls); None: one per record
    examples: int | None = None
    # tokens of each sampled training example: padded batches (cls) are priced from them
    lengths: tuple[int, ...] = ()
    eval_examples: int = 0  # cls: evaluated at every save step and once at the end
    eval_lengths: tuple[int, ...] = ()
    prepare_seconds: float = 0.0  # cls: reading and tokenizing every record (from the sample)
    labels: int = 0  # cls: the label set's size (the classifier head's outputs)
    sampler: str | None = None  # cls: what train.sampling auto picks for this data
    image_share: float = 0.0  # a vision-language model's: share of positions that are image tokens

    @property
    def count(self) -> int | None:
        """Training examples per epoch."""
        return self.examples if self.examples is not None else self.records

    @property
    def tokens(self) -> int | None:
        if self.count is None or self.mean_tokens is None:
            return None
        return int(self.count * self.mean_tokens)

    def as_dict(self) -> dict:
        """For plan.json: the length samples are summarised, not listed."""
        fields = {k: v for k, v in self.__dict__.items() if not k.endswith("lengths")}
        return fields | {"tokens": self.tokens}


UNKNOWN = DataStats(None, None, None, 1.0, "no data read: worst case, every example cutoff_len")


def data_stats(config: RunConfig, tokenizer=None, max_positions: int | None = None) -> DataStats:
    """Tokenize a sample of the SFT or cls data (tokenizer given); else a worst case.
    max_positions: the model's position table, a cap on a classifier's example length."""
    if tokenizer is None or not (config.data.train or config.data.dataset):
        return UNKNOWN
    if config.train.stage == "cls":
        return _cls_stats(config, tokenizer, max_positions)
    if config.train.stage != "sft":
        return UNKNOWN
    from tunesmith.models.vlm import is_processor

    if is_processor(tokenizer):
        return _vlm_stats(config, tokenizer)
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


def _vlm_stats(config: RunConfig, processor) -> DataStats:
    """A vision-language model's examples as training makes them: each image's tokens in its
    example's length (the processor expands them), so memory and time count them."""
    from tunesmith.data.multimodal import build_vlm_data, vlm_sources

    limit = min(config.data.max_samples or SAMPLE, SAMPLE)
    sample_cfg = config.data.model_copy(update={"max_samples": limit, "on_error": "skip"})
    data = build_vlm_data(vlm_sources(config.data), sample_cfg, processor, lambda *_: None)
    if not data.examples:
        return UNKNOWN
    lengths = [len(e["input_ids"]) for e in data.examples]
    stats = data.stats
    records = stats["read"] - stats["rejected"]
    if config.data.max_samples:
        records = min(records, config.data.max_samples)
    return DataStats(
        records,
        sum(lengths) / len(lengths),
        max(lengths),
        stats["trainable_tokens"] / sum(lengths),
        f"{len(lengths)} of {records} records tokenized, {stats['images']} images "
        f"({stats['image_tokens']} image tokens)",
        image_share=(stats["image_tokens"] or 0) / sum(lengths),
    )


def _cls_stats(config: RunConfig, tokenizer, max_positions: int | None) -> DataStats:
    """The records training reads and splits, and the lengths of a sample's examples as
    tokenize_cls makes them (a record may give several; each is cut to the model's limit)."""
    from tunesmith.data.classification import cls_max_length, load_cls_data
    from tunesmith.utils.errors import TunesmithError

    start = time.perf_counter()
    try:
        data = load_cls_data(
            config.data.train,
            config.data.eval,
            config.train.cls,
            on_error="skip",
            max_samples=config.data.max_samples,
            seed=config.train.seed,
            reject=lambda *_: None,  # skipped records are counted by training, not by the plan
        )
    except (TunesmithError, OSError) as exc:
        return replace(UNKNOWN, note=f"data not read ({exc}): worst case, every example cutoff_len")
    read = time.perf_counter() - start
    cutoff = min(config.data.cutoff_len, max_positions or config.data.cutoff_len)
    train, lengths, train_seconds, strategy, sampler = _cls_lengths(
        data.train, data.labels, tokenizer, config, cutoff
    )
    evals, eval_lengths, eval_seconds, _, _ = _cls_lengths(
        data.eval, data.labels, tokenizer, config, cutoff, strategy
    )
    limit = cls_max_length(tokenizer, cutoff)
    cut = f", {_cut_share(lengths, limit)}% of examples at the {limit}-token limit"
    return DataStats(
        len(data.train),
        sum(lengths) / len(lengths),
        max(lengths),
        1.0,  # no LM logits: the memory and time estimates of cls ignore it
        f"{len(lengths)} examples ({strategy}) of a {min(len(data.train), SAMPLE)}-record "
        f"sample tokenized" + cut,
        examples=train,
        lengths=tuple(lengths),
        eval_examples=evals,
        eval_lengths=tuple(eval_lengths),
        prepare_seconds=read + train_seconds + eval_seconds,
        labels=len(data.labels),
        sampler=sampler if config.train.sampling == "auto" else None,
    )


def _cls_lengths(records, labels, tokenizer, config: RunConfig, cutoff: int, strategy=None):
    """(examples of all records, the sample's example lengths, seconds to tokenize all records,
    the long-text strategy, the sampler train.sampling auto picks), the first and third
    estimated from a sample. strategy: the training data's, for held-out records (None: chosen
    from these, as training does)."""
    from tunesmith.data.classification import batch_sampling, tokenize_cls

    if not records:
        return 0, [], 0.0, strategy, None
    sample = random.Random(config.train.seed).sample(records, min(len(records), SAMPLE))
    start = time.perf_counter()
    # the long-text strategy (train.cls.long_text) may give a record several examples
    encoding = tokenize_cls(sample, labels, tokenizer, config.train.cls, cutoff, strategy)
    scale = len(records) / len(sample)
    lengths = [len(e["input_ids"]) for e in encoding.examples]
    seconds = (time.perf_counter() - start) * scale
    sampler = batch_sampling(encoding.examples)[0] if encoding.examples else None
    return round(len(lengths) * scale), lengths, seconds, encoding.strategy, sampler


def _cut_share(lengths: list[int], cutoff: int) -> int:
    return round(100 * sum(n >= cutoff for n in lengths) / len(lengths))
