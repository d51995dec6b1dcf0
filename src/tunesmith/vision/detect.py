"""Train, validate and predict with a YOLO detector through Ultralytics, in a tunesmith run
folder (the runs table lists it beside the language-model runs):

    config.yaml     the resolved vision config (train.stage: detect)
    process.json    running / finished / stopped / failed, as RunFolder records it for every run
    metrics.jsonl   one line per epoch: losses, precision, recall, mAP50, mAP50-95, lr, seconds
    summary.json    final metrics, per class, the best epoch, seconds
    val.json        `tunesmith vision val`: P, R, mAP50, mAP50-95 overall and per class
    weights/        Ultralytics' best.pt and last.pt (best by mAP50-95, Ultralytics' fitness)
    plots/          Ultralytics' curves (results.png, PR / F1 curves, confusion matrix, batches)
    results.csv, args.yaml   Ultralytics' own records, as it writes them

The defaults are the seed's hyper-parameters (module 5, `model.train(...)`), documented per field
in `DetectTrain`; anything else Ultralytics accepts goes through `train.extra`.

SIGTERM / SIGINT stops training after the current epoch (vision/stopping.py) and
`resume_detector` continues it from weights/last.pt with Ultralytics' own resume.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunesmith.runs.folder import RunFolder
from tunesmith.utils.console import console
from tunesmith.utils.errors import ConfigError, TunesmithError
from tunesmith.vision.ultra import require_ultralytics

PACKAGED_MODELS = Path(__file__).parent / "models"
PLOT_SUFFIXES = (".png", ".jpg")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DetectModel(_Strict):
    # A model YAML trains from scratch (Ultralytics' yolov8n.yaml, yolo11n.yaml, ... or
    # tunesmith's small yolov8t-defect.yaml); a local .pt fine-tunes. Hub weights such as
    # yolov8n.pt are not downloaded: give the file.
    name_or_path: str = "yolov8n.yaml"


class DetectData(_Strict):
    dataset: str = Field(description="the YOLO dataset.yaml (tunesmith vision convert writes one)")


class DetectTrain(_Strict):
    """The seed's `model.train(...)` values are the defaults."""

    stage: Literal["detect"] = "detect"
    epochs: int = Field(100, ge=1)
    imgsz: int = Field(640, ge=32)
    batch: int = Field(16, ge=1)
    device: str = "auto"  # the seed's device=0 needs CUDA: auto is 0 with CUDA, else cpu
    optimizer: str = "AdamW"
    lr0: float = 0.01  # the seed's value; Ultralytics advises ~0.001 for Adam-family optimizers
    lrf: float = 0.01
    momentum: float = 0.937
    weight_decay: float = 0.0005
    warmup_epochs: float = 3.0
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    patience: int = 50
    save_period: int = 10  # a checkpoint every 10 epochs (weights/epochN.pt)
    # augmentation (the seed's augment=True is Ultralytics' test-time augmentation switch for
    # val/predict, not training augmentation, which these values control: left out)
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    degrees: float = 0.0
    translate: float = 0.1
    scale: float = 0.5
    shear: float = 0.0
    perspective: float = 0.0
    flipud: float = 0.0
    fliplr: float = 0.5
    mosaic: float = 1.0
    mixup: float = 0.0
    close_mosaic: int = 10  # Ultralytics' default: the last epochs train on whole images
    minutes: float | None = None  # a time budget: Ultralytics fits the epochs into it
    seed: int = 0
    workers: int = 2
    plots: bool = True
    extra: dict[str, Any] = Field(default_factory=dict)  # any other Ultralytics train argument


class DetectOutput(_Strict):
    dir: str = "runs"
    name: str | None = None
    overwrite: bool = False


class DetectConfig(_Strict):
    kind: Literal["vision"] = "vision"
    model: DetectModel = Field(default_factory=DetectModel)
    data: DetectData
    train: DetectTrain = Field(default_factory=DetectTrain)
    output: DetectOutput = Field(default_factory=DetectOutput)


def load_detect_config(path: Path | None, overrides: list[str]) -> DetectConfig:
    """A vision config from YAML (optional) and dotted key=value overrides."""
    data: dict = {}
    if path is not None:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (model, data, train)")
    for item in overrides:
        key, _, value = item.partition("=")
        _set(data, key.strip(), yaml.safe_load(value))
    try:
        return DetectConfig.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "config"
        raise ConfigError(f"{where}: {error['msg']}") from None


def _set(data: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: '{part}' is not a section")
    node[last] = value


def resolve_model(ref: str) -> str:
    """The model file Ultralytics builds from; never a download."""
    if (PACKAGED_MODELS / ref).is_file():
        return str(PACKAGED_MODELS / ref)
    path = Path(ref)
    if path.suffix == ".pt" and not path.is_file():
        raise ConfigError(
            f"model.name_or_path: '{ref}' is not a local file; tunesmith downloads no weights: "
            "give a model YAML to train from scratch (yolov8n.yaml) or a local .pt"
        )
    if path.suffix not in (".yaml", ".yml", ".pt"):
        raise ConfigError(f"model.name_or_path: expected a model .yaml or a local .pt, got '{ref}'")
    return ref


def device_of(setting: str) -> str:
    if setting != "auto":
        return setting
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


def ultralytics_train_args(config: DetectConfig, run: RunFolder) -> dict[str, Any]:
    """The keyword arguments of YOLO.train: the seed's values, our run folder as save_dir."""
    t = config.train
    skip = {"stage", "extra", "minutes", "device"}
    args = {k: v for k, v in t.model_dump().items() if k not in skip}
    args.update(
        data=str(Path(config.data.dataset).resolve()),
        device=device_of(t.device),
        project=str(run.root.parent.resolve()),
        name=run.root.name,
        exist_ok=True,  # Ultralytics writes into the run folder tunesmith made
        amp=device_of(t.device) != "cpu",  # its AMP check downloads a model: only where it helps
        verbose=False,
    )
    if t.minutes:
        args["time"] = t.minutes / 60
    return {**args, **t.extra}


def train_detector(
    config: DetectConfig, run: RunFolder | None = None, resume: bool = False
) -> dict:
    """Train, or with `resume` continue `run` from its weights/last.pt; returns summary.json's
    content. The run's process.json says how it ended; a signal stops it after the current epoch
    (DetectionInterrupted, process.json `stopped`)."""
    from tunesmith.vision.stopping import StopAfterEpoch  # imports transformers: training only

    ultralytics = require_ultralytics()
    dataset = Path(config.data.dataset)
    if not dataset.is_file():
        raise ConfigError(f"data.dataset: '{dataset}' does not exist (a YOLO dataset.yaml)")
    model_file = resolve_model(config.model.name_or_path)
    _check_images(dataset)  # a dataset.yaml's mistakes stop us before a run folder exists
    data_hash = dataset_hash(dataset)
    if resume:
        if run is None:
            raise ConfigError("resume: give the run folder to continue")
        done = epochs_done(run, config)
    else:
        run, done = run or RunFolder.create(config.output, f"detect-{Path(model_file).stem}"), 0
    run.write_text("config.yaml", yaml.safe_dump(config.model_dump(), sort_keys=False))
    run.drop_metrics_after(done)  # what a killed run logged after last.pt's epoch is forgotten
    earlier = _seconds_logged(run)
    run.start_process(data={"dataset": data_hash})
    started = time.time()
    try:
        with StopAfterEpoch(run.root).installed() as stop:  # from the start, as language models
            model = ultralytics.YOLO(str(_last(run)) if resume else model_file)
            logger = EpochLogger(run, started - earlier)
            model.add_callback("on_train_epoch_start", logger.start)
            model.add_callback("on_fit_epoch_end", logger.end)
            stop.attach(model)
            args = resume_args(config, run) if resume else ultralytics_train_args(config, run)
            model.train(**args)
            summary = _summary(config, run, model, earlier + time.time() - started)
    except BaseException as exc:
        error = _as_user_error(exc)
        run.end_process(error)
        if error is not exc:  # one sentence on the console too, not Ultralytics' traceback
            raise error from None
        raise
    run.end_process()
    run.add_to_index(stage="detect", model=config.model.name_or_path, seconds=summary["seconds"])
    return summary


# settings a resumed run may change (Ultralytics' check_resume keeps the others from last.pt)
RESUME_OVERRIDES = {"train.device", "train.batch", "train.workers"}


def resume_detector(run: str | Path, overrides: list[str] | None = None) -> dict:
    """`tunesmith vision train --resume RUN`: the run's own config.yaml, from weights/last.pt."""
    folder = RunFolder(run)
    saved = _run_config(folder.root)
    if not saved:
        raise TunesmithError(f"--resume: '{run}' is not a run folder (no config.yaml)")
    if (saved.get("train") or {}).get("stage") != "detect":
        raise TunesmithError(
            f"--resume: '{run}' is not a vision run; resume it with tunesmith train --resume"
        )
    refused = sorted({o.partition("=")[0].strip() for o in overrides or []} - RESUME_OVERRIDES)
    if refused:
        raise ConfigError(
            f"--resume keeps the run's config: {', '.join(refused)} cannot change "
            f"(only {', '.join(sorted(RESUME_OVERRIDES))} can)"
        )
    config = load_detect_config(folder.config_path, overrides or [])
    return train_detector(config, folder, resume=True)


def _last(run: RunFolder) -> Path:
    return run.root / "weights" / "last.pt"


def epochs_done(run: RunFolder, config: DetectConfig) -> int:
    """The epochs weights/last.pt holds; one sentence when there is nothing to resume from."""
    import torch

    last = _last(run)
    if not last.is_file():
        raise TunesmithError(
            f"--resume: {run.root} has no weights/last.pt (it stopped before its first epoch "
            "ended); start it again with the same command"
        )
    # Ultralytics' own checkpoint (a pickled model): read as it reads it
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    done = checkpoint.get("epoch", -1) + 1
    # a finished run's last.pt is marked epoch -1 without its optimizer (strip_optimizer)
    if done <= 0 or checkpoint.get("optimizer") is None or done >= config.train.epochs:
        raise TunesmithError(
            f"--resume: {run.root} finished its {config.train.epochs} epochs; nothing to resume"
        )
    return done


def resume_args(config: DetectConfig, run: RunFolder) -> dict[str, Any]:
    """YOLO(last.pt).train(resume=True): Ultralytics restores the model, optimizer, EMA,
    epoch and its arguments from last.pt; these are the ones it lets a resume change."""
    t = config.train
    return {
        "resume": True,
        "data": str(Path(config.data.dataset).resolve()),
        "device": device_of(t.device),
        "batch": t.batch,
        "workers": t.workers,
        "save_dir": str(run.root.resolve()),  # the run folder wherever it is now
    }


def _seconds_logged(run: RunFolder) -> float:
    """Training seconds of the earlier starts (a resumed run's summary counts the whole run)."""
    logged = [m["seconds"] for m in _read_metrics(run) if m.get("seconds") is not None]
    return logged[-1] if logged else 0.0


def dataset_hash(dataset: Path) -> str:
    """One hash of dataset.yaml and every label file (names and contents): the runs table's
    data column tells runs on the same labels apart from the rest; images are not read."""
    from tunesmith.vision.checks import label_path, read_dataset_yaml

    digest = hashlib.sha256(Path(dataset).read_bytes())
    _, splits, _ = read_dataset_yaml(dataset)
    for split, folder in sorted(splits.items()):
        labels = label_path(folder / "x.jpg").parent
        for path in sorted(labels.rglob("*.txt")) if labels.is_dir() else []:
            digest.update(f"{split}/{path.relative_to(labels)}".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _check_images(dataset: Path) -> None:
    from tunesmith.vision.checks import read_dataset_yaml
    from tunesmith.vision.convert import IMAGE_SUFFIXES

    _, splits, _ = read_dataset_yaml(dataset)
    for split, folder in splits.items():
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*")):
            raise ConfigError(
                f"data.dataset: {dataset} names '{split}: {folder}', which holds no images"
            )


def _as_user_error(exc: BaseException) -> BaseException:
    """Ultralytics reports a bad dataset as FileNotFoundError / RuntimeError with its own words
    (coloured for a terminal): its first line, plain."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    if isinstance(exc, FileNotFoundError | RuntimeError) and "data" in text.lower():
        return TunesmithError(text.splitlines()[0])
    return exc


class EpochLogger:
    """One metrics.jsonl line per epoch, as the epoch ends (the runs table reads it live).
    Ultralytics also fires on_fit_epoch_end once after training, for its validation of
    best.pt, as an extra epoch: that one is not an epoch (summary.json holds its numbers)."""

    def __init__(self, run: RunFolder, origin: float | None = None):
        # origin: when the run started, earlier starts' training seconds included
        self.run, self.training = run, False
        self.origin = time.time() if origin is None else origin

    def start(self, trainer) -> None:
        self.training = True

    def end(self, trainer) -> None:
        if not self.training:
            return
        self.training = False
        losses = trainer.label_loss_items(trainer.tloss, prefix="train")
        record = {"step": trainer.epoch + 1, "epoch": trainer.epoch + 1}
        record["loss"] = round(float(sum(losses.values())), 5)
        for key, value in {**losses, **(trainer.metrics or {}), **trainer.lr}.items():
            record[_metric_name(key)] = round(float(value), 6)
        record["seconds"] = round(time.time() - self.origin, 1)
        self.run.append_metrics(record)
        console.print(
            f"epoch {record['epoch']}/{trainer.epochs}  loss {record['loss']:.3f}  "
            f"mAP50 {record.get('mAP50', 0):.3f}  mAP50-95 {record.get('mAP50-95', 0):.3f}"
        )


def _metric_name(key: str) -> str:
    """Ultralytics' 'metrics/mAP50(B)' -> 'mAP50'; 'train/box_loss' -> 'box_loss'."""
    name = key.removesuffix("(B)")
    for prefix, new in (("metrics/", ""), ("train/", ""), ("val/", "val_"), ("lr/", "lr_")):
        if name.startswith(prefix):
            return new + name.removeprefix(prefix)
    return name


def _summary(config: DetectConfig, run: RunFolder, model, seconds: float) -> dict:
    trainer = model.trainer
    metrics = trainer.validator.metrics if trainer.validator else None
    history = [m for m in _read_metrics(run) if m.get("mAP50-95") is not None]
    best = max(history, key=lambda m: m["mAP50-95"], default=None)
    summary = {
        "model": config.model.name_or_path,
        "stage": "detect",
        "steps": trainer.epoch + 1,
        "epochs": trainer.epoch + 1,
        "seconds": round(seconds, 1),
        "weights": str(Path("weights") / "best.pt"),
        "best": {"metric": "mAP50-95", "value": best["mAP50-95"], "step": best["step"]}
        if best
        else None,
        **(box_metrics(metrics) if metrics is not None else {}),
    }
    _move_plots(run)
    run.write_json("summary.json", summary)
    return summary


def _read_metrics(run: RunFolder) -> list[dict]:
    from tunesmith.runs.folder import read_jsonl

    return read_jsonl(run.metrics_path)


def _move_plots(run: RunFolder) -> None:
    """Ultralytics leaves its pictures in the run's top folder: they go to plots/."""
    run.plots.mkdir(exist_ok=True)
    for path in run.root.iterdir():
        if path.is_file() and path.suffix in PLOT_SUFFIXES:
            shutil.move(path, run.plots / path.name)


def box_metrics(metrics) -> dict:
    """P, R, mAP50, mAP50-95 overall and per class from Ultralytics' DetMetrics."""
    box = metrics.box
    counts = getattr(metrics, "nt_per_class", None)
    per_class = []
    for i, cls in enumerate(metrics.ap_class_index):
        p, r, ap50, ap = box.class_result(i)
        per_class.append(
            {
                "class": metrics.names[int(cls)],
                "instances": int(counts[int(cls)]) if counts is not None else None,
                "precision": round(float(p), 4),
                "recall": round(float(r), 4),
                "mAP50": round(float(ap50), 4),
                "mAP50-95": round(float(ap), 4),
            }
        )
    return {
        "precision": round(float(box.mp), 4),
        "recall": round(float(box.mr), 4),
        "mAP50": round(float(box.map50), 4),
        "mAP50-95": round(float(box.map), 4),
        "per_class": per_class,
    }


# --- validation and prediction ------------------------------------------------------------------


def weights_of(ref: str | Path) -> Path:
    """A run folder (its weights/best.pt) or a .pt file."""
    path = Path(ref)
    if path.is_dir():
        for candidate in (path / "weights" / "best.pt", path / "weights" / "last.pt"):
            if candidate.is_file():
                return candidate
        raise TunesmithError(f"{path}: no weights/best.pt in this folder (a vision run folder?)")
    if path.suffix == ".pt" and path.is_file():
        return path
    raise TunesmithError(f"{path}: expected a vision run folder or a local .pt weights file")


def validate(
    ref: str | Path,
    data: str | Path | None = None,
    split: str = "val",
    imgsz: int | None = None,
    batch: int = 16,
    device: str = "auto",
) -> dict:
    """Validate weights on a dataset split: P, R, mAP50, mAP50-95 overall and per class. With a
    run folder, the run's own dataset and image size are the defaults and val.json is written."""
    ultralytics = require_ultralytics()
    weights = weights_of(ref)
    run_dir = Path(ref) if Path(ref).is_dir() else None
    saved = _run_config(run_dir)
    data = data or (saved.get("data") or {}).get("dataset")
    if not data:
        raise TunesmithError(f"{ref}: give --data DATASET.yaml (the weights name no dataset)")
    imgsz = imgsz or (saved.get("train") or {}).get("imgsz") or 640
    out = (run_dir or weights.parent) / "val"
    metrics = ultralytics.YOLO(str(weights)).val(
        data=str(Path(data).resolve()),
        split=split,
        imgsz=imgsz,
        batch=batch,
        device=device_of(device),
        project=str(out.parent.resolve()),
        name=out.name,
        exist_ok=True,
        plots=False,
        verbose=False,
    )
    result = {"weights": str(weights), "data": str(data), "split": split, **box_metrics(metrics)}
    if run_dir is not None:
        RunFolder(run_dir).write_json("val.json", result)
    return result


def _run_config(run_dir: Path | None) -> dict:
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return {}
    return yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}


def predict(
    ref: str | Path,
    source: str | Path,
    out: Path | None = None,
    conf: float = 0.25,
    imgsz: int | None = None,
    device: str = "auto",
) -> list[dict]:
    """Detections per image: [{"image", "detections": [{"class", "confidence", "bbox"}]}];
    annotated copies in `out` when given."""
    ultralytics = require_ultralytics()
    weights = weights_of(ref)
    saved = _run_config(Path(ref) if Path(ref).is_dir() else None)
    imgsz = imgsz or (saved.get("train") or {}).get("imgsz") or 640
    model = ultralytics.YOLO(str(weights))
    rows = []
    for result in model.predict(
        str(source), conf=conf, imgsz=imgsz, device=device_of(device), stream=True, verbose=False
    ):
        image = Path(result.path)
        rows.append({"image": str(image), "detections": detections_of(result)})
        if out is not None:
            import cv2

            Path(out).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(Path(out) / f"{image.stem}.jpg"), result.plot())
    return rows


def detections_of(result) -> list[dict]:
    """The seed's detection dicts: class name, confidence, [x1, y1, x2, y2] in pixels."""
    boxes = result.boxes
    return [
        {
            "class": result.names[int(cls)],
            "confidence": round(float(score), 4),
            "bbox": [round(float(v), 1) for v in xyxy],
        }
        for cls, score, xyxy in zip(
            boxes.cls.tolist(), boxes.conf.tolist(), boxes.xyxy.tolist(), strict=True
        )
    ]


def print_metrics(result: dict) -> None:
    """The val table: one row per class and `all`, as Ultralytics prints it."""
    from rich.table import Table

    table = Table("class", "instances", "P", "R", "mAP50", "mAP50-95")
    for row in result["per_class"]:
        values = (row["precision"], row["recall"], row["mAP50"], row["mAP50-95"])
        table.add_row(row["class"], str(row["instances"]), *(f"{v:.4f}" for v in values))
    totals = (result["precision"], result["recall"], result["mAP50"], result["mAP50-95"])
    table.add_row("all", "", *(f"{v:.4f}" for v in totals))
    console.print(table)
