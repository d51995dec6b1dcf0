"""From data files to tokenized SFT examples, and the collator that batches them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import jinja2
import torch

from tunesmith.config.schema import DataConfig
from tunesmith.data.formats import Conversation, load_conversations
from tunesmith.data.readers import RawRecord
from tunesmith.data.registry import Source
from tunesmith.data.render import IGNORE_INDEX, TemplateError, tokenize_conversation
from tunesmith.utils.errors import DataError

# (source file, line, reason, the record as read) -> None
RejectSink = Callable[[str, int, str, object], None]


@dataclass
class SFTData:
    examples: list[dict[str, list[int]]]
    stats: dict[str, object] = field(default_factory=dict)


def build_sft_data(
    sources: Sequence[str | Source],
    cfg: DataConfig,
    tokenizer,
    reject: RejectSink | None = None,
) -> SFTData:
    """Read, validate, render and tokenize. Every record read is kept or passed to `reject`.

    `sources`: data files, read with data.format and data.columns, or Sources carrying their
    own (registry datasets, see `registry.sft_sources`).
    """

    def reject_raw(record: RawRecord, reason: str) -> None:
        if reject:
            reject(record.source, record.line, reason, record.data)

    conversations, read_stats = _read(sources, cfg, reject_raw if reject else None)
    if cfg.max_samples:
        conversations = conversations[: cfg.max_samples]
    examples, truncated, unusable, too_long = [], 0, 0, 0
    for conv in conversations:
        example = _tokenize(conv, cfg, tokenizer)
        if isinstance(example, TooLong):  # the length policy's casualty: never stops the run
            if reject:
                reject(conv.source, conv.line, str(example), {"messages": conv.messages})
            too_long += 1
            continue
        if isinstance(example, str):  # a reason: nothing left to learn from
            if cfg.on_error == "stop" or reject is None:
                raise DataError(f"{conv.source}:{conv.line}: {example}")
            reject(conv.source, conv.line, example, {"messages": conv.messages})
            unusable += 1
            continue
        truncated += example.truncated
        examples.append({"input_ids": example.input_ids, "labels": example.labels})
    stats = {
        "read": read_stats["read"],
        "rejected": read_stats["rejected"] + unusable + too_long,
        "too_long": too_long,  # of the rejected: nothing trainable within data.cutoff_len
        "beyond_max_samples": read_stats["kept"] - len(conversations),
        "examples": len(examples),
        "truncated": truncated,
        "tokens": sum(len(e["input_ids"]) for e in examples),
        "trainable_tokens": sum(sum(t != IGNORE_INDEX for t in e["labels"]) for e in examples),
        "formats": read_stats["formats"],
    }
    return SFTData(examples, stats)


def _read(sources: Sequence[str | Source], cfg: DataConfig, reject_raw) -> tuple[list, dict]:
    conversations: list[Conversation] = []
    stats: dict = {"read": 0, "kept": 0, "rejected": 0, "formats": {}}
    for source in sources:
        paths, fmt, columns = (
            source if isinstance(source, Source) else ([source], cfg.format, cfg.columns)
        )
        convs, part = load_conversations(paths, fmt, columns, cfg.on_error, reject_raw)
        conversations += convs
        for key in ("read", "kept", "rejected"):
            stats[key] += part[key]
        stats["formats"].update(part["formats"])
    return conversations, stats


class TooLong(str):
    """A reason: the record holds nothing trainable within data.cutoff_len, even with its
    earliest turns dropped. Counted and written to rejects.jsonl; it never stops the run."""


def _tokenize(conv: Conversation, cfg: DataConfig, tokenizer):
    """The example, or a reason. A conversation whose assistant turns all start past
    data.cutoff_len loses its earliest exchanges (a leading system message stays) until one
    does not; the first fit is kept (counted as truncated)."""
    messages = conv.messages
    try:
        example = tokenize_conversation(
            tokenizer, messages, cfg.cutoff_len, cfg.train_on_prompt, conv.tools
        )
        for shorter in without_earliest_turns(messages):
            if example.trainable_tokens:
                break
            example = tokenize_conversation(
                tokenizer, shorter, cfg.cutoff_len, cfg.train_on_prompt, conv.tools
            )
            example.truncated = True
    except TemplateError as exc:  # the template itself is unusable: every record would fail
        raise DataError(f"{conv.source}:{conv.line}: {exc}") from None
    except jinja2.TemplateError as exc:  # the template refused this conversation (raise_exception)
        return f"the chat template refused this conversation: {exc}"
    if example.trainable_tokens == 0:
        return TooLong(
            f"too long: no assistant tokens within data.cutoff_len={cfg.cutoff_len}, even "
            "with only the system message and the latest exchange kept"
        )
    return example


def without_earliest_turns(messages: list[dict], answered: bool = True):
    """The conversation with 1, 2, ... of its earliest exchanges dropped (each cut falls before
    a user turn; a leading system message stays), down to the latest exchange. `answered`:
    every cut keeps an assistant turn (training); False for a prompt awaiting its reply."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system) :]
    for i, message in enumerate(turns):
        answer_kept = not answered or any(m["role"] == "assistant" for m in turns[i:])
        if i and message["role"] == "user" and answer_kept:
            yield [*system, *turns[i:]]


class SFTCollator:
    """Right-pads a batch: input ids with the pad token, labels with IGNORE_INDEX."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8):
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        longest = max(len(item["input_ids"]) for item in batch)
        width = -(-longest // self.multiple) * self.multiple
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, item in enumerate(batch):
            n = len(item["input_ids"])
            ids[row, :n] = torch.tensor(item["input_ids"])
            labels[row, :n] = torch.tensor(item["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class PackedCollator:
    """Padding-free batches: the examples of a batch are concatenated into one row.

    Position ids restart at 0 for every example; with no attention mask, transformers reads the
    example boundaries from them and never lets attention cross an example. The first label of
    each example is ignored so no example learns to predict the start of the next.
    """

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        ids, labels, positions = [], [], []
        for item in batch:
            ids += item["input_ids"]
            labels += [IGNORE_INDEX, *item["labels"][1:]]
            positions += range(len(item["input_ids"]))
        as_row = lambda values: torch.tensor([values], dtype=torch.long)  # noqa: E731
        return {
            "input_ids": as_row(ids),
            "labels": as_row(labels),
            "position_ids": as_row(positions),
        }
