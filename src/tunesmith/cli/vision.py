"""`tunesmith vision ...`: defect detection datasets, YOLO training, the quality inspector."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from tunesmith.cli.errors import user_errors
from tunesmith.utils.console import console
from tunesmith.utils.errors import TunesmithError

vision_app = typer.Typer(
    help="Visual quality inspection: YOLO datasets, training, validation, the inspector.",
    no_args_is_help=True,
)


@vision_app.command()
@user_errors
def convert(
    source: Annotated[Path, typer.Argument(help="A folder of VOC .xml files, or a COCO .json.")],
    out: Annotated[Path, typer.Argument(help="The YOLO dataset folder to write.")],
    format: Annotated[str, typer.Option(help="auto | voc | coco")] = "auto",
    images: Annotated[
        Path | None, typer.Option(help="Where the images are (default: beside the annotations).")
    ] = None,
    classes: Annotated[
        str | None, typer.Option(help="Class names in id order, comma-separated (default: found).")
    ] = None,
    split: Annotated[str, typer.Option(help="train,val,test ratios.")] = "0.8,0.1,0.1",
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
):
    """Convert Pascal VOC XML or COCO JSON to the YOLO layout with dataset.yaml."""
    from tunesmith.vision.convert import convert_dataset

    names = [c.strip() for c in classes.split(",")] if classes else None
    report = convert_dataset(source, out, format, images, names, _ratios(split), seed)
    console.print(
        f"converted {report['converted']} of {report['read']} annotations "
        f"({report['rejected']} rejected, reasons in {out / 'rejects.jsonl'}); "
        f"splits {report['splits']}; classes {report['classes']}"
    )
    console.print(f"dataset: {report['dataset']}")


def _ratios(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise TunesmithError(
            f"--split: expected three numbers like 0.8,0.1,0.1, got '{text}'"
        ) from None
    if len(values) != 3:
        raise TunesmithError(f"--split: expected three ratios train,val,test, got '{text}'")
    return values


@vision_app.command()
@user_errors
def inspect(
    dataset: Annotated[Path, typer.Argument(help="dataset.yaml, or the folder holding it.")],
    out: Annotated[
        Path | None, typer.Option(help="Write inspect.json and rejects.jsonl here.")
    ] = None,
    clean: Annotated[
        Path | None, typer.Option(help="Write a copy without the rejected images here.")
    ] = None,
    tiny_pixels: Annotated[float, typer.Option(help="Boxes with a side below this warn.")] = 4.0,
    imbalance: Annotated[float, typer.Option(help="Most/fewest class ratio that warns.")] = 10.0,
):
    """Check a YOLO dataset: labels, boxes, classes, duplicates, imbalance (none lost)."""
    from tunesmith.vision.checks import inspect_dataset, write_report

    report = inspect_dataset(dataset, tiny_pixels, imbalance, clean)
    console.print(
        f"{report['images']} images: {report['images_kept']} kept, "
        f"{report['images_rejected']} rejected; {report['label_lines']} label lines, "
        f"{report['label_lines_rejected']} rejected; {len(report['warnings'])} warnings"
    )
    for kind, count in sorted(report["reasons"].items(), key=lambda kv: -kv[1]):
        console.print(f"  {count:6d}  {kind}")
    for split, counts in report["instances"].items():
        console.print(f"  {split}: {counts}")
    if out is not None:
        write_report(report, out)
        console.print(f"report: {out / 'inspect.json'}, rejects: {out / 'rejects.jsonl'}")
    if clean is not None:
        console.print(f"clean copy: {report['clean']}")


@vision_app.command()
@user_errors
def train(
    args: Annotated[
        list[str] | None, typer.Argument(help="CONFIG.yaml and/or key=value overrides.")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="dataset.yaml (data.dataset).")] = None,
    resume: Annotated[
        bool,
        typer.Option(help="Continue the run folder given (--resume RUN) from weights/last.pt."),
    ] = False,
):
    """Train a YOLO detector (seed defaults: 100 epochs, 640 px, AdamW lr0 0.01) in a run folder.
    SIGTERM or Ctrl-C stops it after the current epoch; --resume RUN continues it."""
    from tunesmith.vision.detect import (
        load_detect_config,
        print_metrics,
        resume_detector,
        train_detector,
    )

    configs = [a for a in args or [] if "=" not in a]
    overrides = [a for a in args or [] if "=" in a]
    if len(configs) > 1:
        raise TunesmithError(f"expected one config file, got {configs}; overrides need key=value")
    if resume:
        if not configs or data is not None:
            raise TunesmithError(
                "--resume: give the run folder (tunesmith vision train --resume RUN)"
            )
        summary = _train_or_stop(lambda: resume_detector(configs[0], overrides))
    else:
        if data is not None:
            overrides.append(f"data.dataset={data}")
        config = load_detect_config(Path(configs[0]) if configs else None, overrides)
        summary = _train_or_stop(lambda: train_detector(config))
    if summary.get("per_class"):
        print_metrics(summary)
    console.print(f"{summary['epochs']} epochs in {summary['seconds']} s; weights/best.pt saved")


def _train_or_stop(start: Callable[[], dict]) -> dict:
    """Training stopped by SIGTERM or SIGINT: the resume command and exit code 128 + the
    signal's number (143, 130), as for language-model runs."""
    from rich.markup import escape

    from tunesmith.vision.stopping import DetectionInterrupted

    try:
        return start()
    except DetectionInterrupted as stop:
        console.print(f"[yellow]{escape(str(stop))}", soft_wrap=True)  # ends with the command
        raise typer.Exit(stop.exit_code) from None


@vision_app.command()
@user_errors
def val(
    weights: Annotated[str, typer.Argument(help="A vision run folder or a .pt file.")],
    data: Annotated[Path | None, typer.Option(help="dataset.yaml (default: the run's).")] = None,
    split: Annotated[str, typer.Option(help="val | test | train")] = "val",
    imgsz: Annotated[int | None, typer.Option(help="Image size (default: the run's).")] = None,
):
    """Validate: precision, recall, mAP50 and mAP50-95, overall and per class."""
    from tunesmith.vision.detect import print_metrics, validate

    print_metrics(validate(weights, data, split, imgsz))


@vision_app.command()
@user_errors
def predict(
    weights: Annotated[str, typer.Argument(help="A vision run folder or a .pt file.")],
    source: Annotated[Path, typer.Argument(help="An image or a folder of images.")],
    out: Annotated[Path | None, typer.Option(help="Save annotated images here.")] = None,
    conf: Annotated[float, typer.Option(help="Confidence threshold.")] = 0.25,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write detections here.")] = None,
):
    """Detect objects in images; prints the seed's lines (检测到 N 个目标, 类别, 置信度)."""
    from tunesmith.vision.detect import predict as run_predict

    rows = run_predict(weights, source, out, conf)
    for row in rows:
        console.print(f"{row['image']}: 检测到 {len(row['detections'])} 个目标")
        for d in row["detections"]:
            console.print(f"  类别: {d['class']}, 置信度: {d['confidence']:.2f}")
    if json_out is not None:
        json_out.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")


@vision_app.command(name="inspect-images")
@user_errors
def inspect_images(
    weights: Annotated[str, typer.Argument(help="A vision run folder or a .pt file.")],
    source: Annotated[Path, typer.Argument(help="An image or a folder of images.")],
    out: Annotated[Path, typer.Option(help="Report folder.")] = Path("inspection"),
    conf: Annotated[float, typer.Option(help="Confidence threshold (seed: 0.5).")] = 0.5,
    severity: Annotated[
        list[str] | None,
        typer.Option(help="class=high|medium|low, repeatable; added to the seed's map."),
    ] = None,
    vlm: Annotated[
        str | None, typer.Option(help="Image-text-to-text model (local folder; hub id on CUDA).")
    ] = None,
):
    """The quality inspector: PASS / WARNING / FAIL per image, annotated images, a report."""
    from tunesmith.vision.inspector import (
        SEVERITY_MAP,
        QualityInspector,
        parse_severity,
        print_result,
        yolo_detector,
    )

    inspector = QualityInspector(
        yolo_detector(weights),
        severity_map={**SEVERITY_MAP, **parse_severity(severity or [])},
        conf=conf,
        vlm=_vlm(vlm),
    )
    report = inspector.inspect_folder(source, out, conf)
    if len(report["images"]) == 1 and report["images"][0]["verdict"] != "ERROR":
        print_result(report["images"][0])
    counts = report["summary"]
    plural = "s" if counts["images"] != 1 else ""
    console.print(
        f"{counts['images']} image{plural}: PASS {counts['PASS']}, WARNING {counts['WARNING']}, "
        f"FAIL {counts['FAIL']}" + (f", ERROR {counts['ERROR']}" if counts["ERROR"] else "")
    )
    console.print(f"report: {out / 'report.html'} and {out / 'report.json'}")


def _vlm(ref: str | None):
    from tunesmith.vision.vlm import VlmAnalyzer, vlm_unavailable

    if not ref:
        return None
    reason = vlm_unavailable(ref)
    if reason:
        console.print(f"[yellow]{reason}[/yellow]")
        return None
    return VlmAnalyzer.load(ref)


@vision_app.command()
@user_errors
def demo(
    output_dir: Annotated[str, typer.Option(help="Runs folder.")] = "runs",
    name: Annotated[str | None, typer.Option(help="Run folder name.")] = None,
    images: Annotated[int, typer.Option(min=16, help="Training images to generate.")] = 400,
    size: Annotated[int, typer.Option(min=64, help="Image size in pixels.")] = 160,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 50,
    minutes: Annotated[
        float | None, typer.Option(help="Time budget: Ultralytics fits the epochs into it.")
    ] = None,
    model: Annotated[str, typer.Option(help="Model YAML (from scratch) or local .pt.")] = (
        "yolov8t-defect.yaml"
    ),
    seed: Annotated[int, typer.Option(help="Seed of the generated images and of training.")] = 0,
):
    """Offline end to end: synthetic defects, a YOLO trained from scratch on CPU, the inspector."""
    from tunesmith.vision.demo import run_demo
    from tunesmith.vision.detect import DetectOutput, print_metrics

    output = DetectOutput(dir=output_dir, name=name)
    result = _train_or_stop(lambda: run_demo(output, images, size, epochs, minutes, model, seed))
    if result["per_class"]:
        print_metrics(result)
    console.print(
        f"mAP50 {result['mAP50']:.3f} (mAP50-95 {result['mAP50-95']:.3f}) after "
        f"{result['epochs']} epochs; {result['seconds']} s in all"
    )
    console.print(f"inspector on held-out images: {result['verdicts']}; report: {result['report']}")
