"""Checks of a YOLO dataset before training (`tunesmith vision inspect`).

Per image and label line: missing or empty label files, malformed lines, class ids out of range,
boxes outside the image or without area, tiny boxes, unreadable images, duplicate images (and
duplicates across splits, which leak validation data into training), label files without an
image, and class imbalance.

Problems are of two kinds. Rejects make a record unusable: the image (with all its labels) is
rejected with its reason, because a half-labelled image teaches that a defect is background.
Warnings leave the data usable (an image without labels trains as background; a tiny box is
legal). Every image and every label line is counted: kept + rejected = read, none lost.
With `clean`, a copy of the dataset without the rejected images is written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tunesmith.utils.errors import DataError, TunesmithError
from tunesmith.vision.convert import IMAGE_SUFFIXES, SPLITS, write_dataset_yaml

TINY_PIXELS = 4.0  # a box side under 4 px is below what a detector at stride 8 can place
IMBALANCE = 10.0  # most / fewest instances of a class in train above this is flagged
EPS = 1e-6  # six-decimal labels of a box touching the edge may pass 1.0 by rounding


@dataclass
class Found:
    """What inspection found: per-image rejects and warnings, counts."""

    rejects: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)
    images: int = 0
    lines: int = 0
    rejected_lines: int = 0
    instances: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    kept: dict[str, list[Path]] = field(default_factory=lambda: defaultdict(list))


def read_dataset_yaml(path: Path) -> tuple[Path, dict[str, Path], list[str]]:
    """(root, split -> images folder, class names) of a dataset.yaml (or a folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "dataset.yaml"
    if not path.is_file():
        raise TunesmithError(f"{path}: no dataset.yaml (give the file or its folder)")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    names = data.get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: 'names' must list the class names (a list or id: name)")
    if data.get("nc") is not None and data["nc"] != len(names):
        raise DataError(f"{path}: 'nc' is {data['nc']} but 'names' has {len(names)} classes")
    root = Path(data.get("path") or path.parent)
    root = root if root.is_absolute() else (path.parent / root)
    splits = {s: root / data[s] for s in SPLITS if isinstance(data.get(s), str)}
    if "train" not in splits:
        raise DataError(f"{path}: 'train' must name the training images folder")
    missing = [f"{s}: {p}" for s, p in splits.items() if not p.is_dir()]
    if missing:
        raise DataError(f"{path}: image folders not found ({'; '.join(missing)})")
    return root, splits, list(names)


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last /images/ in the path becomes /labels/, the suffix .txt."""
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def inspect_dataset(
    dataset: Path,
    tiny_pixels: float = TINY_PIXELS,
    imbalance: float = IMBALANCE,
    clean: Path | None = None,
) -> dict:
    """Check every split; returns the report (with `rejects` and `warnings` lists)."""
    root, splits, names = read_dataset_yaml(dataset)
    found = Found()
    hashes: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for split, folder in splits.items():
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for image in images:
            found.images += 1
            _check_image(split, image, names, tiny_pixels, found, hashes)
        _orphan_labels(split, folder, images, found)
    _duplicates(hashes, found)
    _imbalance(found, names, imbalance)
    report = _report(root, splits, names, found)
    if clean is not None:
        _write_clean(Path(clean), splits, names, found)
        report["clean"] = str(Path(clean) / "dataset.yaml")
    return report


def _check_image(split, image: Path, names, tiny_pixels, found: Found, hashes) -> None:
    try:
        from PIL import Image

        with Image.open(image) as opened:
            width, height = opened.size
            opened.verify()  # a truncated or corrupt file fails here, not in training
        hashes[hashlib.sha1(image.read_bytes()).hexdigest()].append((split, image))
    except Exception as exc:  # PIL raises many types for a bad file
        found.rejects.append(_item(split, image, None, f"unreadable image ({exc})"))
        return
    labels = label_path(image)
    if not labels.is_file():
        found.warnings.append(
            _item(split, image, None, "missing label file (trains as background)")
        )
        found.kept[split].append(image)
        return
    lines = [ln for ln in labels.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        found.warnings.append(_item(split, image, None, "empty label file (trains as background)"))
    bad = []
    for number, line in enumerate(lines, start=1):
        found.lines += 1
        reason, tiny = _check_line(line, len(names), width, height, tiny_pixels)
        if reason:
            bad.append(_item(split, labels, number, reason, line))
        elif tiny:
            found.warnings.append(_item(split, labels, number, tiny, line))
    if bad:  # the whole image: a half-labelled image teaches defects as background
        found.rejected_lines += len(lines)
        found.rejects.extend(bad)
        return
    found.kept[split].append(image)
    for line in lines:
        found.instances[split][names[int(line.split()[0])]] += 1


def _check_line(line: str, nc: int, width: int, height: int, tiny_pixels: float):
    """(reject reason or None, tiny-box warning or None) of one label line."""
    fields = line.split()
    if len(fields) != 5:
        return f"expected 5 fields 'class xc yc w h', got {len(fields)}", None
    try:
        cls = int(fields[0])
        xc, yc, w, h = (float(v) for v in fields[1:])
    except ValueError:
        return "class must be an integer and the box four numbers", None
    if not 0 <= cls < nc:
        return f"class {cls} out of range (dataset.yaml has {nc} classes: 0..{nc - 1})", None
    if w <= 0 or h <= 0:
        return f"box without area (w={w}, h={h})", None
    if xc - w / 2 < -EPS or yc - h / 2 < -EPS or xc + w / 2 > 1 + EPS or yc + h / 2 > 1 + EPS:
        return "box outside the image (normalised coordinates beyond 0..1)", None
    if w * width < tiny_pixels or h * height < tiny_pixels:
        return None, f"tiny box ({w * width:.1f}x{h * height:.1f} px)"
    return None, None


def _orphan_labels(split: str, folder: Path, images: list[Path], found: Found) -> None:
    labels_folder = label_path(folder / "x.jpg").parent
    wanted = {label_path(i) for i in images}
    for labels in sorted(labels_folder.rglob("*.txt")) if labels_folder.is_dir() else []:
        if labels not in wanted:
            count = sum(1 for ln in labels.read_text(encoding="utf-8").splitlines() if ln.strip())
            found.lines += count
            found.rejected_lines += count
            found.rejects.append(_item(split, labels, None, "label file without an image"))


def _duplicates(hashes: dict, found: Found) -> None:
    for copies in hashes.values():
        if len(copies) < 2:
            continue
        first_split, first = copies[0]
        for split, image in copies[1:]:
            where = "across splits: validation leaks into training" if split != first_split else ""
            reason = f"duplicate of {first}" + (f" ({where})" if where else "")
            found.warnings.append(_item(split, image, None, reason))


def _imbalance(found: Found, names: list[str], ratio: float) -> None:
    counts = found.instances.get("train", Counter())
    absent = [n for n in names if counts[n] == 0]
    for name in absent:
        found.warnings.append(
            _item("train", None, None, f"class '{name}' has no instance in train")
        )
    present = [counts[n] for n in names if counts[n]]
    if present and max(present) / min(present) > ratio:
        most = max(names, key=lambda n: counts[n])
        fewest = min((n for n in names if counts[n]), key=lambda n: counts[n])
        reason = (
            f"class imbalance: '{most}' {counts[most]} vs '{fewest}' {counts[fewest]} "
            f"instances (over {ratio:g}x)"
        )
        found.warnings.append(_item("train", None, None, reason))


def _item(split, path, line, reason, record=None) -> dict:
    item = {"split": split, "file": str(path) if path else None, "line": line, "reason": reason}
    return {**item, "record": record} if record is not None else item


def _report(root: Path, splits: dict, names: list[str], found: Found) -> dict:
    kept = sum(len(v) for v in found.kept.values())
    return {
        "dataset": str(root),
        "classes": names,
        "images": found.images,
        "images_kept": kept,
        "images_rejected": found.images - kept,
        "label_lines": found.lines,
        "label_lines_rejected": found.rejected_lines,
        "instances": {s: dict(found.instances.get(s, {})) for s in splits},
        "reasons": dict(Counter(_kind(r["reason"]) for r in found.rejects + found.warnings)),
        "rejects": found.rejects,
        "warnings": found.warnings,
    }


def _kind(reason: str) -> str:
    """A reason's kind for the summary counts (its words before any detail)."""
    return reason.split(" (")[0].split(":")[0].split(" of ")[0].removesuffix(" instances")


def _write_clean(out: Path, splits: dict[str, Path], names: list[str], found: Found) -> None:
    for split, images in found.kept.items():
        for image in images:
            relative = image.relative_to(splits[split])
            target = out / "images" / split / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(image, target)
            labels = label_path(image)
            if labels.is_file():
                destination = out / "labels" / split / relative.with_suffix(".txt")
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(labels, destination)
    write_dataset_yaml(out, names, list(splits))


def write_report(report: dict, out: Path) -> None:
    """inspect.json (the report) and rejects.jsonl (one line per reject, with its reason)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "inspect.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in report["rejects"])
    (out / "rejects.jsonl").write_text(lines, encoding="utf-8")
