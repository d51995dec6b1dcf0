"""Plain text for continued pre-training: documents -> token ids -> training examples.

Each document is tokenized and ends with the eos token, so the model learns where a text
stops. Two layouts, chosen by train.packing:

- blocks (packing false): all documents joined and cut into data.cutoff_len blocks, the
  standard concatenate-and-chunk of pre-training. Attention crosses document boundaries inside
  a block (the eos marks them). A last partial block shorter than a quarter block is dropped
  and counted in `dropped_tokens`.
- documents (packing true, the default): one example per document, split into cutoff_len
  pieces when longer; PackedCollator batches them padding-free with restarting position ids,
  so attention never crosses documents.

Every token is trained: labels are the input ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

from tunesmith.config.schema import DataConfig
from tunesmith.data.dataset import RejectSink, SFTData
from tunesmith.data.readers import RawRecord, read_records
from tunesmith.data.registry import TEXT, Source, pretrain_sources
from tunesmith.utils.errors import ConfigError, DataError


@dataclass
class Document:
    text: str
    source: str
    line: int


def sources(cfg: DataConfig) -> list[Source]:
    """The data files and pretrain datasets to read; config mistakes surface here."""
    if cfg.format != "auto":
        raise ConfigError(
            f"data.format: '{cfg.format}' is a chat format; train.stage=pt reads plain text "
            "(.txt, or records with a `text` column): leave data.format at auto"
        )
    unknown = sorted(set(cfg.columns) - {TEXT})
    if unknown:
        raise ConfigError(
            f"data.columns: {unknown} mean nothing to pre-training; "
            "only the text column can be renamed (e.g. data.columns.text=content)"
        )
    return pretrain_sources(cfg)


def read_documents(
    sources: Sequence[Source], on_error: str = "stop", reject: RejectSink | None = None
) -> tuple[list[Document], dict]:
    """Every record is a kept document or rejected with a reason.

    Empty documents are always rejected (valid data, nothing to learn); records without a text
    string are malformed: they stop the run, or with on_error=skip are rejected too.
    """
    documents: list[Document] = []
    stats = {"read": 0, "rejected": 0, "empty": 0}
    for paths, _fmt, columns in sources:
        for path in paths:
            # A .txt line is always {"text": line}; a column mapping is for structured files.
            column = TEXT if Path(path).suffix.lower() == ".txt" else columns.get(TEXT, TEXT)
            for record in read_records(path):
                stats["read"] += 1
                doc = _document(record, column, on_error)
                if isinstance(doc, Document):
                    documents.append(doc)
                    continue
                stats["rejected"] += 1
                stats["empty"] += doc.startswith("empty document")
                if reject:
                    reject(record.source, record.line, doc, record.data)
    return documents, stats


def _document(record: RawRecord, column: str, on_error: str) -> Document | str:
    """The document, or the reason it is rejected."""
    text = record.data.get(column)
    if isinstance(text, str):
        if not text.strip():
            return "empty document (no text to train on)"
        return Document(text, record.source, record.line)
    if text is None:
        keys = sorted(record.data)[:10]
        reason = f"no '{column}' column (keys found: {keys}); rename it with data.columns.text"
    else:
        reason = f"'{column}' must be a string, got {type(text).__name__}"
    if on_error == "stop":
        raise DataError(f"{record.where}: {reason}")
    return reason


def build_pretrain_data(
    sources: Sequence[Source],
    cfg: DataConfig,
    tokenizer,
    packing: bool,
    reject: RejectSink | None = None,
) -> SFTData:
    """Read, tokenize (eos after each document) and lay out as blocks or document pieces."""
    documents, read = read_documents(sources, cfg.on_error, reject)
    kept = documents[: cfg.max_samples] if cfg.max_samples else documents
    token_lists = tokenize_documents(kept, tokenizer)
    if packing:
        pieces, split, dropped = _document_pieces(token_lists, cfg.cutoff_len)
    else:
        (pieces, dropped), split = _blocks(token_lists, cfg.cutoff_len), 0
    tokens = sum(len(p) for p in pieces)
    stats = {
        **read,
        "documents": len(kept),
        "beyond_max_samples": len(documents) - len(kept),
        "layout": "documents" if packing else "blocks",
        "examples": len(pieces),
        "split_documents": split,
        "tokens_read": sum(len(t) for t in token_lists),
        "tokens": tokens,
        "dropped_tokens": dropped,
        "trainable_tokens": tokens,
    }
    return SFTData([{"input_ids": p, "labels": list(p)} for p in pieces], stats)


def tokenize_documents(documents: Sequence[Document], tokenizer) -> list[list[int]]:
    """Token ids of each document, each ending with eos (added unless the tokenizer did)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError(
            "model: the tokenizer has no eos token; pre-training needs one to end documents"
        )
    # verbose=False: documents longer than the model's context are expected here (we split)
    ids = tokenizer([d.text for d in documents], add_special_tokens=True, verbose=False)
    return [x if x and x[-1] == eos else [*x, eos] for x in ids["input_ids"]]


def _blocks(token_lists: list[list[int]], size: int) -> tuple[list[list[int]], int]:
    stream = list(chain.from_iterable(token_lists))
    blocks = [stream[i : i + size] for i in range(0, len(stream), size)]
    if blocks and 4 * len(blocks[-1]) < size:  # too short a tail to be worth a step's share
        return blocks[:-1], len(blocks[-1])
    return blocks, 0


def _document_pieces(token_lists: list[list[int]], size: int) -> tuple[list[list[int]], int, int]:
    pieces, split, dropped = [], 0, 0
    for ids in token_lists:
        split += len(ids) > size
        for start in range(0, len(ids), size):
            piece = ids[start : start + size]
            if len(piece) < 2:  # a lone token has no next token to predict
                dropped += len(piece)
            else:
                pieces.append(piece)
    return pieces, split, dropped
