"""Pascal VOC XML and COCO JSON annotations -> the YOLO dataset layout.

    OUT/images/{train,val,test}/NAME.jpg   OUT/labels/{train,val,test}/NAME.txt
    OUT/dataset.yaml (path, train, val, test, nc, names)   OUT/convert.json   OUT/rejects.jsonl

A label line is `class x_center y_center width height`, normalised by the image size at six
decimals (the seed's `convert_voc_to_yolo`). Every annotation read is either written or
rejected with its reason in rejects.jsonl: an image whose annotation cannot be trusted whole
(a box outside the image, an unknown class) is rejected whole, because a half-labelled image
teaches the detector that a defect is background.
"""

from __future__ import annotations

import json
import random
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tunesmith.utils.errors import DataError, TunesmithError

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# VOC coordinates are 1-based pixels, so a box may end one pixel past the size it states
EDGE_TOLERANCE = 1.0


@dataclass
class Annotated:
    """One image and its boxes in absolute pixels (xmin, ymin, xmax, ymax), as read."""

    source: str  # the annotation file (and entry) this came from, for rejects
    image: Path
    width: float
    height: float
    objects: list[tuple[str, float, float, float, float]] = field(default_factory=list)


class Rejected(Exception):
    """An annotation that is not converted; the message is the reason."""


def yolo_line(class_id: int, box: tuple[float, float, float, float], size: tuple[float, float]):
    """The seed's normalisation: corner box in pixels -> `id xc yc w h` at six decimals."""
    img_w, img_h = size
    xmin, ymin, xmax, ymax = box
    x_center = (xmin + xmax) / 2 / img_w
    y_center = (ymin + ymax) / 2 / img_h
    width = (xmax - xmin) / img_w
    height = (ymax - ymin) / img_h
    return f"{class_id} {x_center:.6f} {y_center:.6f} {width:.6f} {height:.6f}"


def convert_voc_to_yolo(voc_annotation: dict, image_size: tuple[float, float]) -> str:
    """The seed's function, kept for its callers: {'objects': [{'class_id', 'bbox'}]} -> lines."""
    return "\n".join(
        yolo_line(obj["class_id"], tuple(obj["bbox"]), image_size)
        for obj in voc_annotation["objects"]
    )


# --- readers ----------------------------------------------------------------------------------


def read_voc(xml_path: Path, images: Path | None = None) -> Annotated:
    """One Pascal VOC XML file. The image is `<filename>` in `images` (default: the XML's folder,
    then a sibling JPEGImages/); a missing <size> is read from the image itself."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise Rejected(f"not valid XML ({exc})") from None
    filename = (root.findtext("filename") or "").strip()
    if not filename:
        raise Rejected("no <filename>")
    image = _find_image(filename, [images, xml_path.parent, xml_path.parent.parent / "JPEGImages"])
    width, height = _size(root, image)
    record = Annotated(str(xml_path), image, width, height)
    for number, obj in enumerate(root.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        if not name or box is None:
            raise Rejected(f"object {number}: needs <name> and <bndbox>")
        try:
            corners = tuple(float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise Rejected(f"object {number}: <bndbox> needs numeric xmin/ymin/xmax/ymax") from None
        record.objects.append((name, *corners))
    return record


def read_coco(json_path: Path, images: Path | None = None) -> tuple[list[Annotated], list[str]]:
    """A COCO detection JSON: one record per image (bbox [x, y, w, h] -> corners) and the
    category names in id order. Crowd annotations are regions, not objects: they are skipped."""
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
        categories = {c["id"]: c["name"] for c in data["categories"]}
        entries = data["images"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(
            f"{json_path}: expected COCO JSON with 'images', 'annotations' and 'categories' "
            f"({type(exc).__name__}: {exc})"
        ) from None
    folder = images or json_path.parent
    records = {
        e["id"]: Annotated(
            f"{json_path}#image {e['id']}", folder / e["file_name"], e["width"], e["height"]
        )
        for e in entries
    }
    for ann in data.get("annotations", []):
        record = records.get(ann.get("image_id"))
        if record is None or ann.get("iscrowd"):
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        name = categories.get(ann.get("category_id"), f"<category {ann.get('category_id')}>")
        record.objects.append((name, x, y, x + w, y + h))
    return list(records.values()), [categories[k] for k in sorted(categories)]


def _find_image(filename: str, folders: list[Path | None]) -> Path:
    for folder in folders:
        if folder is not None and (folder / filename).is_file():
            return folder / filename
    raise Rejected(f"image '{filename}' not found in {', '.join(str(f) for f in folders if f)}")


def _size(root: ET.Element, image: Path) -> tuple[float, float]:
    try:
        size = root.find("size")
        width, height = float(size.findtext("width")), float(size.findtext("height"))
        if width > 0 and height > 0:
            return width, height
    except (AttributeError, TypeError, ValueError):
        pass
    from PIL import Image  # the size the XML does not give

    with Image.open(image) as img:
        return float(img.width), float(img.height)


# --- conversion -------------------------------------------------------------------------------


def label_lines(record: Annotated, class_ids: dict[str, int]) -> list[str]:
    """The record's YOLO lines; Rejected (the reason) for a box the image cannot hold."""
    lines = []
    for name, xmin, ymin, xmax, ymax in record.objects:
        if name not in class_ids:
            raise Rejected(f"class '{name}' is not one of the classes ({', '.join(class_ids)})")
        if xmax <= xmin or ymax <= ymin:
            raise Rejected(f"'{name}' box ({xmin}, {ymin}, {xmax}, {ymax}) has no area")
        tol = EDGE_TOLERANCE
        if xmin < -tol or ymin < -tol or xmax > record.width + tol or ymax > record.height + tol:
            raise Rejected(
                f"'{name}' box ({xmin}, {ymin}, {xmax}, {ymax}) lies outside the "
                f"{record.width:g}x{record.height:g} image"
            )
        box = (max(xmin, 0), max(ymin, 0), min(xmax, record.width), min(ymax, record.height))
        lines.append(yolo_line(class_ids[name], box, (record.width, record.height)))
    return lines


def split_names(names: list[str], ratios: tuple[float, ...], seed: int) -> dict[str, str]:
    """name -> split: sorted, shuffled with the seed, cut by the ratios (the same split for the
    same names, whatever order the files were listed in)."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or not 0.999 < sum(ratios) < 1.001:
        raise TunesmithError(f"split: expected three ratios summing to 1, got {list(ratios)}")
    order = sorted(names)
    random.Random(seed).shuffle(order)
    n_train = round(len(order) * ratios[0])
    n_val = round(len(order) * ratios[1])
    if ratios[1] > 0 and n_val == 0 and len(order) - n_train > 0:
        n_val = 1
    cuts = {"train": order[:n_train], "val": order[n_train : n_train + n_val]}
    cuts["test"] = order[n_train + n_val :]
    return {name: split for split, members in cuts.items() for name in members}


def convert_dataset(
    source: Path,
    out: Path,
    fmt: str = "auto",
    images: Path | None = None,
    classes: list[str] | None = None,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict:
    """Convert VOC XML files (a folder or one file) or a COCO JSON file into a YOLO dataset in
    `out`; returns the report written to out/convert.json."""
    source, out = Path(source), Path(out)
    fmt = _detect_format(source) if fmt == "auto" else fmt
    records, rejects, found_names = _read_all(source, fmt, images)
    names = list(classes) if classes else found_names
    class_ids = {name: i for i, name in enumerate(names)}
    converted: dict[str, tuple[Annotated, list[str]]] = {}
    for record in records:
        try:
            lines = label_lines(record, class_ids)
            if record.image.stem in converted:
                raise Rejected(
                    f"another annotation already uses the image name {record.image.stem}"
                )
            converted[record.image.stem] = (record, lines)
        except Rejected as why:
            rejects.append({"source": record.source, "reason": str(why)})
    splits = split_names(list(converted), ratios, seed)
    _write_layout(out, converted, splits)
    write_dataset_yaml(out, names, [s for s in SPLITS if s in splits.values() or s != "test"])
    return _report(out, source, fmt, names, converted, splits, rejects)


def _detect_format(source: Path) -> str:
    if source.is_file() and source.suffix == ".json":
        return "coco"
    if source.suffix == ".xml" or (source.is_dir() and any(source.rglob("*.xml"))):
        return "voc"
    raise TunesmithError(
        f"{source}: expected a folder of VOC .xml files or a COCO .json file (or give --format)"
    )


def _read_all(source: Path, fmt: str, images: Path | None):
    """(records, rejects so far, class names in the data's order)."""
    if fmt == "coco":
        records, names = read_coco(source, images)
        return records, [], names
    if fmt != "voc":
        raise TunesmithError(f"format: expected voc, coco or auto, got '{fmt}'")
    paths = [source] if source.is_file() else sorted(source.rglob("*.xml"))
    records, rejects = [], []
    for path in paths:
        try:
            records.append(read_voc(path, images))
        except Rejected as why:
            rejects.append({"source": str(path), "reason": str(why)})
    names = sorted({obj[0] for record in records for obj in record.objects})
    return records, rejects, names


def _write_layout(out: Path, converted: dict, splits: dict[str, str]) -> None:
    for split in SPLITS:
        for kind in ("images", "labels"):
            (out / kind / split).mkdir(parents=True, exist_ok=True)
    for stem, (record, lines) in converted.items():
        split = splits[stem]
        shutil.copy2(record.image, out / "images" / split / record.image.name)
        text = "\n".join(lines) + ("\n" if lines else "")
        (out / "labels" / split / f"{stem}.txt").write_text(text, encoding="utf-8")


def write_dataset_yaml(out: Path, names: list[str], splits: list[str]) -> Path:
    """dataset.yaml as the seed writes it: path, one images/<split> per split, nc, names."""
    data = {"path": str(Path(out).resolve())}
    data.update({split: f"images/{split}" for split in splits})
    data.update({"nc": len(names), "names": dict(enumerate(names))})
    path = Path(out) / "dataset.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _report(out, source, fmt, names, converted, splits, rejects) -> dict:
    per_split = {s: sum(1 for v in splits.values() if v == s) for s in SPLITS}
    instances = {name: 0 for name in names}
    for record, _ in converted.values():
        for obj in record.objects:
            instances[obj[0]] += 1
    report = {
        "source": str(source),
        "format": fmt,
        "dataset": str(out / "dataset.yaml"),
        # every annotation read is converted or has a line in rejects.jsonl: none is lost
        "read": len(converted) + len(rejects),
        "converted": len(converted),
        "rejected": len(rejects),
        "splits": per_split,
        "classes": dict(enumerate(names)),
        "instances": instances,
    }
    (out / "convert.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects)
    (out / "rejects.jsonl").write_text(lines, encoding="utf-8")
    return report
