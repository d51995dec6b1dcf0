"""From data files to tokenized SFT examples, and the collator that batches them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import jinja2
import torch

from tunesmith.config.schema import DataConfig
from tunesmith.data.formats import Conversation, load_conversations
from tunesmith.data.readers import RawRecord
from tunesmith.data.render import IGNORE_INDEX, TemplateError, tokenize_conversation
from tunesmith.utils.errors import DataError

# (source file, line, reason, the record as read) -> None
RejectSink = Callable[[str, int, str, object], None]


@dataclass
class SFTData:
    examples: list[dict[str, list[int]]]
    stats: dict[str, object] = field(default_factory=dict)


def build_sft_data(
    paths: list[str], cfg: DataConfig, tokenizer, reject: RejectSink | None = None
) -> SFTData:
    """Read, validate, render and tokenize. Every record read is kept or passed to `reject`."""

    def reject_raw(record: RawRecord, reason: str) -> None:
        if reject:
            reject(record.source, record.line, reason, record.data)

    conversations, read_stats = load_conversations(
        paths, cfg.format, cfg.columns, cfg.on_error, reject_raw if reject else None
    )
    if cfg.max_samples:
        conversations = conversations[: cfg.max_samples]
    examples, truncated, unusable = [], 0, 0
    for conv in conversations:
        example = _tokenize(conv, cfg, tokenizer)
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
        "rejected": read_stats["rejected"] + unusable,
        "beyond_max_samples": read_stats["kept"] - len(conversations),
        "examples": len(examples),
        "truncated": truncated,
        "tokens": sum(len(e["input_ids"]) for e in examples),
        "trainable_tokens": sum(sum(t != IGNORE_INDEX for t in e["labels"]) for e in examples),
        "formats": read_stats["formats"],
    }
    return SFTData(examples, stats)


def _tokenize(conv: Conversation, cfg: DataConfig, tokenizer):
    try:
        example = tokenize_conversation(
            tokenizer, conv.messages, cfg.cutoff_len, cfg.train_on_prompt
        )
    except TemplateError as exc:  # the template itself is unusable: every record would fail
        raise DataError(f"{conv.source}:{conv.line}: {exc}") from None
    except jinja2.TemplateError as exc:  # the template refused this conversation (raise_exception)
        return f"the chat template refused this conversation: {exc}"
    if example.trainable_tokens == 0:
        return f"no assistant tokens left after truncation to data.cutoff_len={cfg.cutoff_len}"
    return example


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
