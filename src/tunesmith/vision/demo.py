"""`tunesmith vision demo`: the whole visual-inspection path offline on a CPU, in minutes.

1. a synthetic surface-defect dataset (vision/synth.py) inside the run folder, data/;
2. a small YOLO trained from scratch (tunesmith's yolov8t-defect.yaml, or yolov8n.yaml);
3. its P / R / mAP50 / mAP50-95 on the validation split, per class;
4. the quality inspector on the held-out test images: inspection/report.html and report.json,
   annotated images, and overview.jpg (one image per verdict side by side, for the README).

The training values differ from the seed's on purpose: a from-scratch model on 160-pixel images
and two cores learns in ~50 epochs with a lower AdamW rate, a one-epoch warm-up and the mosaic
closed for the last five epochs; the seed's defaults stay the defaults of `vision train`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from PIL import Image

from tunesmith.runs.folder import RunFolder
from tunesmith.utils.console import console
from tunesmith.vision.detect import (
    DetectConfig,
    DetectData,
    DetectModel,
    DetectOutput,
    DetectTrain,
    train_detector,
)
from tunesmith.vision.inspector import VERDICTS, QualityInspector, yolo_detector
from tunesmith.vision.synth import make_dataset

DEMO_TRAIN = {
    "epochs": 50,
    "imgsz": 160,
    "batch": 16,
    "lr0": 0.003,
    "warmup_epochs": 1.0,
    "close_mosaic": 5,
    "patience": 100,
    "save_period": -1,
}


def demo_config(
    dataset: Path,
    output: DetectOutput,
    model: str,
    epochs: int,
    minutes: float | None,
    size: int,
    seed: int = 0,
) -> DetectConfig:
    given = {"epochs": epochs, "imgsz": size, "minutes": minutes, "seed": seed}
    train = DetectTrain(**{**DEMO_TRAIN, **given})
    return DetectConfig(
        model=DetectModel(name_or_path=model),
        data=DetectData(dataset=str(dataset)),
        train=train,
        output=output,
    )


def run_demo(
    output: DetectOutput,
    images: int = 400,
    size: int = 160,
    epochs: int = 50,
    minutes: float | None = None,
    model: str = "yolov8t-defect.yaml",
    seed: int = 0,
) -> dict:
    """Generate, train, validate, inspect; returns the figures the command prints."""
    started = time.time()
    run = RunFolder.create(output, "vision-demo")
    counts = {"train": images, "val": max(images // 5, 8), "test": max(images // 16, 8)}
    console.print(
        f"dataset: {sum(counts.values())} synthetic images ({size} px) in {run.root}/data"
    )
    dataset = make_dataset(run.root / "data", counts, size=size, seed=seed)
    console.print(f"training {model} from scratch on {counts['train']} images ...")
    summary = train_detector(demo_config(dataset, output, model, epochs, minutes, size, seed), run)
    inspector = QualityInspector(yolo_detector(run.root, imgsz=size))
    report = inspector.inspect_folder(
        run.root / "data" / "images" / "test", run.root / "inspection"
    )
    truth = json.loads((run.root / "data" / "truth.json").read_text(encoding="utf-8"))
    overview(report, run.root / "inspection", truth)
    return {
        "run": str(run.root),
        "seconds": round(time.time() - started, 1),
        "train_seconds": summary["seconds"],
        "epochs": summary["epochs"],
        "precision": summary.get("precision"),
        "recall": summary.get("recall"),
        "mAP50": summary.get("mAP50"),
        "mAP50-95": summary.get("mAP50-95"),
        "per_class": summary.get("per_class", []),
        "verdicts": {v: report["summary"][v] for v in VERDICTS},
        "report": str(run.root / "inspection" / "report.html"),
    }


def overview(report: dict, out: Path, truth: dict | None = None, scale: int = 2) -> Path | None:
    """One annotated image per verdict side by side: the one with most defects whose
    detections name the classes drawn (`truth`: image name -> classes), else the one with
    most defects."""
    picked = []
    for verdict in VERDICTS:
        rows = [r for r in report["images"] if r["verdict"] == verdict]
        right = [r for r in rows if _found_all(r, truth)]
        if rows:
            picked.append(max(right or rows, key=lambda r: r["defect_count"]))
    if not picked:
        return None
    pictures = [Image.open(out / r["annotated"]).convert("RGB") for r in picked]
    width = sum(p.width for p in pictures) + 8 * (len(pictures) - 1)
    sheet = Image.new("RGB", (width, max(p.height for p in pictures)), (255, 255, 255))
    x = 0
    for picture in pictures:
        sheet.paste(picture, (x, 0))
        x += picture.width + 8
    sheet = sheet.resize((sheet.width * scale, sheet.height * scale), Image.Resampling.NEAREST)
    path = out / "overview.jpg"
    sheet.save(path, quality=90)
    return path


def _found_all(row: dict, truth: dict | None) -> bool:
    if truth is None:
        return False
    drawn = truth.get(f"test/{Path(row['image']).name}")
    return drawn is not None and sorted(drawn) == sorted(d["class"] for d in row["defects"])
