"""Image + text conversations: read, validate, render through the model's processor, mask, batch.

Two ways of writing an image into a conversation are read:

- LLaMA-Factory's: `<image>` placeholders in the text of a turn and an `images` list of paths
  in the record (relative to data.media_dir, else to the data file's folder; a registry entry's
  to the registry's folder, as LLaMA-Factory's `media_dir` defaults to its dataset_dir). Its
  `mllm_demo` entry of dataset_info.json reads unchanged.
- OpenAI's content parts: `{"type": "text", "text": ...}`, `{"type": "image_url",
  "image_url": {"url": PATH or data: URL}}`, `{"type": "image", "image": PATH}`, or a bare
  `{"type": "image"}` taking the next path of the record's `images` list.

Every conversation comes out in transformers' processor shape: each message's content a list
of parts, `{"type": "image"}` where an image goes, and the record's images in order. A record
is rejected (with its reason, in rejects.jsonl) when an image file is missing or unreadable,
the number of image parts differs from the number of images, or an image is in an assistant
turn.

Tokens come from the processor itself (`processor(text=..., images=...)`), which expands each
image's placeholder into its image tokens for that image's size: the model's own rule, not
ours. Assistant turns are found as render.py finds them in a sanitized conversation, on token
ids, by encoding the conversation prefix by prefix (`before` = up to the assistant's turn with
the generation prompt, `through` = with the turn). Image tokens and prompt tokens are masked.
The collator opens the images again per batch (pixel values are not kept in memory) and runs
the processor's image side on them; a row may hold any number of images of any size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tunesmith.config.schema import DataConfig
from tunesmith.data import formats
from tunesmith.data.formats import RecordError, check_columns, detect_format
from tunesmith.data.readers import BadRecord, RawRecord, scan_records
from tunesmith.data.render import IGNORE_INDEX, TemplateError, _ids_turn_end
from tunesmith.data.render import encode_with_images as encode
from tunesmith.utils.errors import ConfigError, DataError
from tunesmith.utils.images import load_image, open_image

PLACEHOLDER = "<image>"  # LLaMA-Factory's image placeholder in a turn's text
IMAGES = "images"  # the record's column of image paths (LLaMA-Factory's name)
TEXT_KEYS = ("input_ids", "attention_mask")

RejectSink = Callable[[str, int, str, object], None]

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class VlmSource:
    """Files read with one format and column mapping; their images relative to `media_dir`."""

    paths: list[str]
    fmt: str
    columns: dict[str, str]
    images: str = IMAGES  # the images column
    media_dir: str | None = None  # None: each data file's folder


@dataclass
class VlmConversation:
    messages: list[dict]  # content: a list of parts; {"type": "image"} where an image goes
    images: list[str]  # resolved paths (or data: URLs), in the order of the image parts
    source: str
    line: int


def vlm_sources(cfg: DataConfig) -> list[VlmSource]:
    """data.train (data.format, data.columns), then each data.dataset entry of data.registry with
    its own format, columns and images column (the registry's folder holds its media)."""
    from tunesmith.data.registry import resolve_dataset

    sources = []
    if cfg.train:
        sources.append(
            VlmSource(list(cfg.train), cfg.format, dict(cfg.columns), IMAGES, cfg.media_dir)
        )
    if cfg.dataset and not cfg.registry:
        raise ConfigError(
            f"data.registry: data.dataset names {cfg.dataset} but no registry is given "
            "(e.g. data.registry=data/dataset_info.json)"
        )
    for name in cfg.dataset:
        try:
            entry = resolve_dataset(cfg.registry, name)
        except ConfigError as e:
            raise ConfigError(f"data.dataset: {e}") from None
        if entry.kind != "sft":
            raise ConfigError(
                f"data.dataset: '{name}' is {entry.kind} data ({entry.where}); a vision-language "
                "model trains on sft (chat) data"
            )
        media = cfg.media_dir or str(Path(cfg.registry).parent)
        columns = {**entry.columns, **cfg.columns}
        images = entry.extra.get(IMAGES, IMAGES)
        sources.append(VlmSource([str(f) for f in entry.files], entry.fmt, columns, images, media))
    return sources


# --- reading -----------------------------------------------------------------------------


def load_vlm_conversations(
    sources: Sequence[VlmSource], on_error: str = "stop", reject: RejectSink | None = None
) -> tuple[list[VlmConversation], dict]:
    """Every record of every source, as a conversation or a rejection (read == kept + rejected).
    Stats also count the images and their sizes (`data inspect` reports them)."""
    conversations: list[VlmConversation] = []
    stats: dict = {"read": 0, "kept": 0, "rejected": 0, "formats": {}, "images": ImageStats()}
    checker = ImageChecker()
    for source in sources:
        columns = check_columns(source.columns)
        for path in source.paths:
            fmt = None if source.fmt == "auto" else source.fmt
            media = Path(source.media_dir) if source.media_dir else Path(path).parent
            for record in scan_records(path):
                stats["read"] += 1
                if isinstance(record, BadRecord):
                    if on_error == "stop" or record.fatal:
                        raise record.error()
                    _reject(stats, reject, record.source, record.line, record.reason, record.text)
                    continue
                if fmt is None:
                    try:
                        fmt = detect_format(record.data, columns)
                    except RecordError as e:
                        raise DataError(f"{record.where}: {e}") from None
                    stats["formats"][path] = fmt
                try:
                    conv = to_vlm_conversation(record, fmt, columns, source.images, media, checker)
                except RecordError as e:
                    if on_error == "stop":
                        raise DataError(f"{record.where}: {e}") from None
                    _reject(stats, reject, record.source, record.line, str(e), record.data)
                    continue
                stats["kept"] += 1
                stats["images"].add(conv.images, checker)
                conversations.append(conv)
    stats["images"] = stats["images"].summary()
    return conversations, stats


def _reject(stats: dict, reject, source: str, line: int, reason: str, data) -> None:
    stats["rejected"] += 1
    if reject is not None:
        reject(source, line, reason, data)


def to_vlm_conversation(
    record: RawRecord,
    fmt: str,
    columns: dict[str, str],
    images_column: str = IMAGES,
    media_dir: Path | None = None,
    checker: ImageChecker | None = None,
    answered: bool = True,
) -> VlmConversation:
    """The record as a conversation with image parts; RecordError says why it cannot be.
    answered=False: it may end with the user's turn (a test question without a reference)."""
    col = formats._namer(columns)
    convert = {"alpaca": formats._alpaca, "sharegpt": formats._sharegpt, "openai": formats._openai}
    if fmt not in convert:
        raise RecordError(f"format '{fmt}' holds no images; use sharegpt or openai records")
    system, turns = convert[fmt](record.data, col)
    listed = record.data.get(images_column) or []
    if isinstance(listed, str):
        listed = [listed]
    if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
        raise RecordError(f"field '{images_column}' must be a list of image paths")
    messages = [{"role": "system", "content": [_text(system)]}] if system else []
    refs: list[str] = []
    waiting = list(listed)  # the images the bare image parts take, in order
    for i, (n, role, content) in enumerate(turns):
        expected = ("user", "assistant")[i % 2]
        if role != expected:
            raise RecordError(f"turn {n}: expected role '{expected}', got '{role}'")
        parts = _parts(content, n)
        for part in parts:
            if part["type"] != "image":
                continue
            if role == "assistant":
                raise RecordError(f"turn {n}: an image in an assistant turn cannot be trained")
            ref = part.pop("image", None)
            if ref is None:
                if not waiting:
                    raise RecordError(_count_reason(turns, listed))
                ref = waiting.pop(0)
            refs.append(ref)
        if not any(p["type"] == "image" or p["text"].strip() for p in parts):
            raise RecordError(f"turn {n}: empty {role} content")
        if role == "assistant" and not any(p.get("text", "").strip() for p in parts):
            raise RecordError(f"turn {n}: empty assistant content")
        messages.append({"role": role, "content": parts})
    if not turns:
        raise RecordError("no user/assistant turns")
    if turns[-1][1] != "assistant" and answered:
        raise RecordError(
            f"turn {turns[-1][0]}: conversation ends with a user turn; "
            "expected a final assistant turn"
        )
    if waiting:
        raise RecordError(_count_reason(turns, listed))
    checker = checker or ImageChecker()
    where = Path(record.source).parent
    images = [checker.check(ref, media_dir or where, where) for ref in refs]
    return VlmConversation(messages, images, record.source, record.line)


def _count_reason(turns, listed: list[str]) -> str:
    placed = sum(c.count(PLACEHOLDER) if isinstance(c, str) else 0 for _, _, c in turns) + sum(
        1
        for _, _, c in turns
        if isinstance(c, list)
        for p in c
        if isinstance(p, dict) and p.get("type") == "image" and "image" not in p
    )
    return (
        f"{placed} image placeholder(s) ({PLACEHOLDER} or image parts) but {len(listed)} "
        f"image(s) in '{IMAGES}'; each image needs exactly one placeholder"
    )


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


def _parts(content, n: int) -> list[dict]:
    """A turn's content as parts; `<image>` in text becomes an image part."""
    if isinstance(content, str):
        pieces = content.split(PLACEHOLDER)
        parts: list[dict] = []
        for k, piece in enumerate(pieces):
            if k:
                parts.append({"type": "image"})
            if piece:
                parts.append(_text(piece))
        return parts
    if not isinstance(content, list):
        raise RecordError(f"turn {n}: content must be a string or a list of parts")
    parts = []
    for k, part in enumerate(content, start=1):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts += _parts(part["text"], n)  # a placeholder in a text part counts too
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str) or not url:
                raise RecordError(f"turn {n}, part {k}: image_url needs a 'url'")
            parts.append({"type": "image", "image": url})
        elif kind == "image":
            ref = part.get("image") or part.get("path") or part.get("url")
            if ref is not None and not isinstance(ref, str):
                raise RecordError(f"turn {n}, part {k}: an image part names its image by path")
            parts.append({"type": "image", **({"image": ref} if ref else {})})
        else:
            raise RecordError(
                f"turn {n}, part {k}: expected a text, image_url or image part, got {kind!r}"
            )
    return parts


# --- images ------------------------------------------------------------------------------


class ImageChecker:
    """Finds and opens each image once: its path (or data: URL) and (width, height)."""

    def __init__(self):
        self.sizes: dict[str, tuple[int, int]] = {}

    def check(self, ref: str, media_dir: Path, beside: Path) -> str:
        if ref.startswith("data:"):
            key = ref
        elif ref.startswith(("http://", "https://")):
            raise RecordError(
                f"image '{ref[:80]}': remote images are not downloaded; save it beside the data "
                "and name its path"
            )
        else:
            path = Path(ref.removeprefix("file://")).expanduser()
            candidates = [path] if path.is_absolute() else [media_dir / path, beside / path]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                looked = " or ".join(str(c) for c in dict.fromkeys(candidates))
                raise RecordError(f"image '{ref}' not found (looked for {looked})")
            key = str(found)
        if key not in self.sizes:
            try:
                with open_image(key) as image:
                    image.verify()
                with open_image(key) as image:
                    self.sizes[key] = image.size
            except Exception as exc:
                shown = key if not key.startswith("data:") else "a data: URL"
                raise RecordError(f"image {shown} is not a readable image ({exc})") from None
        return key


@dataclass
class ImageStats:
    count: int = 0
    per_record: list[int] = field(default_factory=list)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # of each distinct image

    def add(self, images: list[str], checker: ImageChecker) -> None:
        self.count += len(images)
        self.per_record.append(len(images))
        for ref in images:
            self.sizes[ref] = checker.sizes[ref]

    def summary(self) -> dict:
        widths = [w for w, _ in self.sizes.values()]
        heights = [h for _, h in self.sizes.values()]
        return {
            "images": self.count,
            "distinct_images": len(self.sizes),
            "records_with_images": sum(1 for n in self.per_record if n),
            "max_images_per_record": max(self.per_record, default=0),
            "width": _range(widths),
            "height": _range(heights),
        }


def _range(values: list[int]) -> dict | None:
    if not values:
        return None
    ordered = sorted(values)
    return {"min": ordered[0], "median": ordered[len(ordered) // 2], "max": ordered[-1]}


# --- rendering and masking -----------------------------------------------------------------


@dataclass
class VlmExample:
    input_ids: list[int]
    labels: list[int]
    token_fields: dict[str, list[int]]  # other per-token processor outputs (mm_token_type_ids)
    images: list[str]
    truncated: bool

    @property
    def trainable_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)

    def as_dict(self) -> dict:
        return {
            "input_ids": self.input_ids,
            "labels": self.labels,
            "images": self.images,
            **self.token_fields,
        }


def _image_count(messages: list[dict]) -> int:
    return sum(
        1
        for m in messages
        if isinstance(m["content"], list)
        for p in m["content"]
        if p.get("type") == "image"
    )


def tokenize_vlm(
    processor, conv: VlmConversation, cutoff_len: int, train_on_prompt: bool = False
) -> VlmExample | str:
    """Ids, labels (assistant turns only, image tokens never) and the per-token fields the
    processor adds; or the reason the conversation cannot train."""
    import torch

    images = [load_image(ref) for ref in conv.images]
    messages = conv.messages
    full = encode(processor, messages, images, add_generation_prompt=False)
    ids = full["input_ids"][0].tolist()
    width = len(ids)
    fields = {
        k: v[0].tolist()
        for k, v in full.items()
        if k not in TEXT_KEYS
        and isinstance(v, torch.Tensor)
        and v.dim() == 2
        and v.shape == (1, width)
    }
    image_positions = _image_positions(processor, ids, fields)
    if train_on_prompt:
        labels = list(ids)
    else:
        labels = [IGNORE_INDEX] * width
        eos = _eos_id(processor)
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            shown = images[: _image_count(messages[:i])]
            before = encode(processor, messages[:i], shown, True)["input_ids"][0].tolist()
            through = encode(processor, messages[: i + 1], shown, False)["input_ids"][0].tolist()
            end = _ids_turn_end(through, ids, eos)
            if end is None or ids[: len(before)] != before:
                raise TemplateError(
                    "the chat template renders earlier turns differently once later turns are "
                    "added, so assistant tokens cannot be located; use a template without that "
                    "behaviour (model.chat_template) or data.train_on_prompt=true"
                )
            labels[len(before) : end] = ids[len(before) : end]
    for k in image_positions:
        labels[k] = IGNORE_INDEX
    truncated = width > cutoff_len
    if truncated:
        if any(k >= cutoff_len for k in image_positions):
            return (
                f"too long: {width} tokens with its images' tokens past "
                f"data.cutoff_len={cutoff_len} (an image cannot be cut)"
            )
        ids, labels = ids[:cutoff_len], labels[:cutoff_len]
        fields = {k: v[:cutoff_len] for k, v in fields.items()}
    example = VlmExample(ids, labels, fields, list(conv.images), truncated)
    if not example.trainable_tokens:
        return f"too long: no assistant tokens within data.cutoff_len={cutoff_len}"
    return example


def _image_positions(processor, ids: list[int], fields: dict) -> list[int]:
    """Positions of image tokens: the processor's image token, and any position its per-token
    type fields mark as non-text (Qwen2-VL's mm_token_type_ids)."""
    image_id = getattr(processor, "image_token_id", None)
    marked = {k for k, token in enumerate(ids) if image_id is not None and token == image_id}
    for name, values in fields.items():
        if "type_ids" in name:
            marked |= {k for k, v in enumerate(values) if v}
    return sorted(marked)


def _eos_id(processor) -> int | None:
    tokenizer = getattr(processor, "tokenizer", processor)
    return tokenizer.eos_token_id


@dataclass
class VlmData:
    examples: list[dict]
    stats: dict


def build_vlm_data(
    sources: Sequence[VlmSource], cfg: DataConfig, processor, reject: RejectSink | None = None
) -> VlmData:
    """Read, validate, render and tokenize; every record read is kept or passed to `reject`."""
    conversations, read = load_vlm_conversations(sources, cfg.on_error, reject)
    if cfg.max_samples:
        conversations = conversations[: cfg.max_samples]
    examples, truncated, unusable = [], 0, 0
    for conv in conversations:
        try:
            example = tokenize_vlm(processor, conv, cfg.cutoff_len, cfg.train_on_prompt)
        except TemplateError as exc:
            raise DataError(f"{conv.source}:{conv.line}: {exc}") from None
        if isinstance(example, str):
            if reject is None:
                raise DataError(f"{conv.source}:{conv.line}: {example}")
            reject(conv.source, conv.line, example, {"messages": conv.messages})
            unusable += 1
            continue
        truncated += example.truncated
        examples.append(example.as_dict())
    image_token_id = getattr(processor, "image_token_id", None)
    stats = {
        "read": read["read"],
        "rejected": read["rejected"] + unusable,
        "too_long": unusable,
        "beyond_max_samples": read["kept"] - len(conversations),
        "examples": len(examples),
        "truncated": truncated,
        "tokens": sum(len(e["input_ids"]) for e in examples),
        "image_tokens": sum(e["input_ids"].count(image_token_id) for e in examples)
        if image_token_id is not None
        else None,
        "trainable_tokens": sum(sum(t != IGNORE_INDEX for t in e["labels"]) for e in examples),
        "formats": read["formats"],
        **read["images"],
    }
    return VlmData(examples, stats)


class VlmCollator:
    """Right-pads ids (pad token), labels (IGNORE_INDEX) and per-token fields (0), opens each
    row's images and adds what the processor's image side makes of them (pixel values, grids,
    masks: whatever this model reads)."""

    def __init__(self, processor, pad_to_multiple_of: int = 8):
        self.processor = processor
        tokenizer = getattr(processor, "tokenizer", processor)
        self.pad_token_id = tokenizer.pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        import torch

        longest = max(len(item["input_ids"]) for item in batch)
        width = -(-longest // self.multiple) * self.multiple
        fields = [k for k in batch[0] if k not in ("input_ids", "labels", "images")]
        out = {
            "input_ids": torch.full((len(batch), width), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(batch), width), dtype=torch.long),
            "labels": torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long),
            **{k: torch.zeros((len(batch), width), dtype=torch.long) for k in fields},
        }
        for row, item in enumerate(batch):
            n = len(item["input_ids"])
            out["input_ids"][row, :n] = torch.tensor(item["input_ids"])
            out["labels"][row, :n] = torch.tensor(item["labels"])
            out["attention_mask"][row, :n] = 1
            for k in fields:
                out[k][row, :n] = torch.tensor(item[k])
        images = [[load_image(ref) for ref in item["images"]] for item in batch]
        images = [row for row in images if row]
        if images:
            vision = self.processor(images=images, return_tensors="pt")
            out.update({k: v for k, v in vision.items() if k not in TEXT_KEYS})
        return out


# --- evaluation items ----------------------------------------------------------------------


def has_images(data: dict, images_column: str = IMAGES) -> bool:
    """Whether a record holds images (an images list, or image parts in its messages)."""
    if data.get(images_column):
        return True
    turns = data.get("messages") or data.get("conversations") or []
    return any(
        isinstance(turn, dict)
        and isinstance(turn.get("content"), list)
        and any(
            isinstance(p, dict) and p.get("type") in ("image", "image_url") for p in turn["content"]
        )
        for turn in turns
    )


def image_question(
    record: RawRecord, fmt: str, columns: dict[str, str] | None = None
) -> tuple[list[dict], str | None]:
    """(the prompt: the turns before the last assistant turn, each image part carrying its
    image; that turn's text, the reference, or None where the record ends with the question)
    of a test record with images."""
    conv = to_vlm_conversation(record, fmt, check_columns(columns), answered=False)
    images = iter(conv.images)
    messages = [
        {
            "role": m["role"],
            "content": [
                {"type": "image", "image": next(images)} if p["type"] == "image" else p
                for p in m["content"]
            ],
        }
        for m in conv.messages
    ]
    if messages[-1]["role"] != "assistant":
        return messages, None
    return messages[:-1], content_text(messages[-1]["content"])


def content_text(content) -> str:
    """A message's text: the string, or its text parts joined."""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


# --- data inspect ------------------------------------------------------------------------


def image_report(
    paths: Sequence[str | Path], fmt: str = "auto", columns: dict[str, str] | None = None
) -> dict | None:
    """`data inspect`'s images section: how many images, of which sizes, and each record whose
    images cannot train with the reason; None when no record holds images."""
    problems: list[dict] = []

    def note(source: str, line: int, reason: str, record) -> None:
        problems.append({"where": f"{source}:{line}", "reason": reason})

    source = VlmSource([str(p) for p in paths], fmt, dict(columns or {}))
    try:
        _, stats = load_vlm_conversations([source], "skip", note)
    except (DataError, ConfigError):
        return None  # the text report says why the files cannot be read
    about_images = [p for p in problems if "image" in p["reason"]]
    if not stats["images"]["images"] and not about_images:
        return None
    return {**stats["images"], "rejected": len(about_images), "problems": about_images[:20]}
