"""A synthetic surface-defect dataset: brushed-metal textures with drawn scratches, cracks,
stains and dents, each box taken from the pixels actually drawn (so labels are exact).

Used by `tunesmith vision demo` and the tests; written in the YOLO layout with dataset.yaml.
The class names carry the `defect_` prefix of the seed's dataset.yaml, so the inspector's
severity map (scratch / crack / stain / dent) must match both spellings.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tunesmith.vision.convert import write_dataset_yaml, yolo_line

CLASSES = ("defect_scratch", "defect_crack", "defect_stain", "defect_dent")


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Brushed metal: a grey level, horizontal streaks, a light gradient, sensor noise."""
    base = rng.uniform(95, 165)
    streaks = rng.normal(0, 9, (size, 1)) + rng.normal(0, 3, (size, size))
    kernel = np.ones(9) / 9  # brushing smears the noise along the rows
    streaks = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 1, streaks)
    ramp = np.linspace(-1, 1, size)
    light = rng.uniform(-14, 14) * ramp[None, :] + rng.uniform(-14, 14) * ramp[:, None]
    grey = base + streaks + light + rng.normal(0, 2.5, (size, size))
    tint = rng.uniform(0.94, 1.06, 3)
    return np.clip(grey[..., None] * tint[None, None, :], 0, 255)


def _scratch(draw: ImageDraw.ImageDraw, rng, size: int) -> None:
    length = rng.uniform(0.3, 0.65) * size
    angle = rng.uniform(0, math.pi)
    x0, y0 = rng.uniform(0.1, 0.9, 2) * size
    x1, y1 = x0 + length * math.cos(angle), y0 + length * math.sin(angle)
    bend = rng.normal(0, size * 0.03, 2)
    middle = ((x0 + x1) / 2 + bend[0], (y0 + y1) / 2 + bend[1])
    # 2-3 px: a 1-px line at 160 px is below what a stride-8 detector sees once augmented
    draw.line([(x0, y0), middle, (x1, y1)], fill=255, width=int(rng.integers(2, 4)))


def _crack(draw: ImageDraw.ImageDraw, rng, size: int) -> None:
    x, y = rng.uniform(0.2, 0.8, 2) * size
    heading = rng.uniform(0, 2 * math.pi)
    points = [(x, y)]
    for _ in range(int(rng.integers(6, 11))):
        heading += rng.normal(0, 0.7)  # jagged: each segment turns sharply
        step = rng.uniform(0.03, 0.07) * size
        x, y = x + step * math.cos(heading), y + step * math.sin(heading)
        points.append((x, y))
    draw.line(points, fill=255, width=int(rng.integers(2, 4)), joint="curve")
    branch = points[len(points) // 2]
    end = (branch[0] + rng.normal(0, size * 0.08), branch[1] + rng.normal(0, size * 0.08))
    draw.line([branch, end], fill=255, width=1)


def _blob(draw: ImageDraw.ImageDraw, rng, size: int) -> None:
    cx, cy = rng.uniform(0.2, 0.8, 2) * size
    for _ in range(int(rng.integers(3, 6))):
        r = rng.uniform(0.04, 0.1) * size
        dx, dy = rng.normal(0, r * 0.6, 2)
        draw.ellipse([cx + dx - r, cy + dy - r * 0.8, cx + dx + r, cy + dy + r * 0.8], fill=255)


def _dent(draw: ImageDraw.ImageDraw, rng, size: int) -> None:
    r = rng.uniform(0.05, 0.1) * size
    cx, cy = rng.uniform(0.15, 0.85, 2) * size
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)


def _paint(image: np.ndarray, mask: np.ndarray, kind: int, rng) -> None:
    """Colour the drawn mask into the image in the look of the defect class."""
    alpha = mask[..., None] / 255.0
    if kind == 0:  # scratch: a bright line where the coating is scraped off
        colour = np.full(3, rng.uniform(215, 250))
    elif kind == 1:  # crack: dark, almost black
        colour = np.full(3, rng.uniform(10, 45))
    elif kind == 2:  # stain: brown-yellow, half transparent
        colour = np.array([150, 105, 40]) * rng.uniform(0.7, 1.0)
        alpha = alpha * rng.uniform(0.55, 0.75)
    else:  # dent: shaded like a hollow, lit from the top left
        ys, xs = np.nonzero(mask)
        cy, cx, r = ys.mean(), xs.mean(), max(np.ptp(xs), np.ptp(ys)) / 2 + 1
        yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
        shade = ((xx - cx) + (yy - cy)) / r  # -1.4 (top left) .. 1.4 (bottom right)
        image[:] = image * (1 - alpha) + np.clip(image + 70 * shade[..., None], 0, 255) * alpha
        return
    image[:] = image * (1 - alpha) + colour[None, None, :] * alpha


DRAWERS = (_scratch, _crack, _blob, _dent)


def draw_defect(image: np.ndarray, kind: int, rng) -> tuple[float, float, float, float] | None:
    """Draw one defect of class `kind`; its box (x1, y1, x2, y2) from the drawn pixels, or None
    when nothing landed inside the image."""
    size = image.shape[0]
    layer = Image.new("L", (size, size), 0)
    DRAWERS[kind](ImageDraw.Draw(layer), rng, size)
    if kind == 2:  # stains have soft edges
        layer = layer.filter(ImageFilter.GaussianBlur(1.2))
    mask = np.asarray(layer, dtype=np.float32)
    mask[mask < 40] = 0  # the faint blur edge is not part of the object
    ys, xs = np.nonzero(mask)
    if len(xs) < 12:
        return None
    _paint(image, mask, kind, rng)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def _overlaps(box, boxes, margin: float = 2.0) -> bool:
    return any(
        box[0] < b[2] + margin
        and b[0] < box[2] + margin
        and box[1] < b[3] + margin
        and b[1] < box[3] + margin
        for b in boxes
    )


def make_image(rng: np.random.Generator, size: int, clean: bool = False):
    """(RGB uint8 image, [(class, box)]): up to three defects that do not overlap."""
    image = background(rng, size)
    objects: list[tuple[int, tuple[float, float, float, float]]] = []
    wanted = 0 if clean else int(rng.integers(1, 4))
    for _ in range(wanted * 4):  # a few tries for a place that is free
        if len(objects) == wanted:
            break
        kind = int(rng.integers(0, len(CLASSES)))
        trial = image.copy()
        box = draw_defect(trial, kind, rng)
        if box is not None and not _overlaps(box, [b for _, b in objects]):
            image, objects = trial, [*objects, (kind, box)]
    return image.astype(np.uint8), objects


def make_dataset(
    out: Path,
    counts: dict[str, int] | None = None,
    size: int = 160,
    seed: int = 0,
    clean_share: float = 0.1,
) -> Path:
    """Write a synthetic YOLO dataset (JPEG images, labels, dataset.yaml); returns the yaml.
    About `clean_share` of the images have no defect: the inspector must pass them."""
    out = Path(out)
    counts = counts or {"train": 400, "val": 80, "test": 40}
    rng = np.random.default_rng(seed)
    truth = {}
    for split, count in counts.items():
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, objects = make_image(rng, size, clean=rng.random() < clean_share)
            name = f"{split}_{i:04d}"
            Image.fromarray(image).save(out / "images" / split / f"{name}.jpg", quality=92)
            lines = [yolo_line(k, box, (size, size)) for k, box in objects]
            text = "".join(f"{line}\n" for line in lines)
            (out / "labels" / split / f"{name}.txt").write_text(text, encoding="utf-8")
            truth[f"{split}/{name}.jpg"] = [CLASSES[k] for k, _ in objects]
    (out / "truth.json").write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
    return write_dataset_yaml(out, list(CLASSES), list(counts))
