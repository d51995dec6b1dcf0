"""tunesmith vision with real models: a short YOLO training from scratch (tiny synthetic images,
two epochs, offline), validation per class, prediction, the inspector on the trained detector,
the runs table, the CLI, our mAP against Ultralytics' on a hand-made case, and the VLM analysis
with a tiny random Qwen2-VL built in-process. Skipped where Ultralytics or torchvision does not
import (the vision extra and its torch/torchvision pair)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tunesmith.vision.ultra import vision_available

_MISSING = vision_available()
if _MISSING:
    pytest.skip(_MISSING, allow_module_level=True)

from typer.testing import CliRunner  # noqa: E402

from tunesmith.cli.main import app  # noqa: E402
from tunesmith.utils.errors import ConfigError, TunesmithError  # noqa: E402
from tunesmith.vision.detect import (  # noqa: E402
    load_detect_config,
    predict,
    train_detector,
    validate,
)
from tunesmith.vision.inspector import QualityInspector, yolo_detector  # noqa: E402
from tunesmith.vision.metrics import mean_average_precision  # noqa: E402
from tunesmith.vision.synth import make_dataset  # noqa: E402
from tunesmith.workshop import actions  # noqa: E402
from tunesmith.workshop.runs import list_runs, show_run  # noqa: E402
from tunesmith.workshop.workspace import Workspace  # noqa: E402

runner = CliRunner()
SIZE = 64


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A two-epoch YOLO run on 24 tiny synthetic images, with every network lookup recorded."""
    root = tmp_path_factory.mktemp("vision")
    dataset = make_dataset(root / "data", {"train": 24, "val": 8, "test": 4}, size=SIZE, seed=1)
    config = load_detect_config(
        None,
        [
            f"data.dataset={dataset}",
            "model.name_or_path=yolov8t-defect.yaml",
            "train.epochs=2",
            f"train.imgsz={SIZE}",
            "train.batch=8",
            "train.workers=0",
            f"output.dir={root / 'runs'}",
            "output.name=detect-tiny",
        ],
    )
    lookups = []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        lookups.append(host)
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            lookups.append(address)
        return real_connect(sock, address)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", getaddrinfo)
        mp.setattr(socket.socket, "connect", connect)
        summary = train_detector(config)
    return {
        "root": root,
        "run": root / "runs" / "detect-tiny",
        "dataset": dataset,
        "summary": summary,
        "lookups": lookups,
    }


def test_training_writes_a_tunesmith_run_folder(trained):
    run, summary = trained["run"], trained["summary"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["stage"] == "detect" and saved["train"]["epochs"] == 2
    assert saved["train"]["optimizer"] == "AdamW" and saved["train"]["momentum"] == 0.937
    assert json.loads((run / "process.json").read_text())["status"] == "finished"
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in epochs] == [1, 2]
    assert {"loss", "box_loss", "precision", "recall", "mAP50", "mAP50-95"} <= set(epochs[0])
    assert (run / "weights" / "best.pt").is_file()
    assert (run / "plots" / "results.png").is_file()  # the curves
    assert summary["epochs"] == 2 and summary["best"]["metric"] == "mAP50-95"
    assert [c["class"] for c in summary["per_class"]] == [
        "defect_scratch", "defect_crack", "defect_stain", "defect_dent"
    ]  # fmt: skip
    assert set(summary["per_class"][0]) >= {"precision", "recall", "mAP50", "mAP50-95"}


def test_training_needs_no_network(trained):
    """Ultralytics looks for fonts, weights and its own updates online; offline_settings keeps
    all of it local (run here with the network off as well)."""
    assert trained["lookups"] == []
    config_dir = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics"
    assert (config_dir / "Arial.ttf").is_file() and (config_dir / "Arial.Unicode.ttf").is_file()


def test_the_runs_table_lists_the_vision_run(trained):
    rows = list_runs(Workspace(trained["root"]))
    row = next(r for r in rows if r["name"] == "detect-tiny")
    assert row["stage"] == "detect" and row["status"] == "finished"
    assert row["model"] == "yolov8t-defect.yaml" and row["steps"] == 2
    assert row["best"]["name"] == "mAP50-95" and row["wall_seconds"] > 0
    assert len(row["data_hash"]) == 12  # dataset.yaml and the label files
    shown = show_run(Workspace(trained["root"]), "detect-tiny")
    assert shown["artifacts"] == ["weights"] and shown["last_metrics"]["step"] == 2


def test_val_reports_per_class_metrics(trained):
    result = validate(trained["run"], split="val")
    assert set(result) >= {"precision", "recall", "mAP50", "mAP50-95", "per_class"}
    assert all(0 <= c["mAP50"] <= 1 for c in result["per_class"])
    assert json.loads((trained["run"] / "val.json").read_text())["split"] == "val"
    out = runner.invoke(app, ["vision", "val", str(trained["run"]), "--split", "test"])
    assert out.exit_code == 0, out.output
    assert "mAP50-95" in out.output and "all" in out.output


def test_predict_and_the_inspector_with_the_trained_detector(trained):
    test_images = trained["dataset"].parent / "images" / "test"
    rows = predict(trained["run"], test_images, out=trained["root"] / "pred", conf=0.001)
    assert len(rows) == 4 and all("detections" in r for r in rows)
    assert len(list((trained["root"] / "pred").glob("*.jpg"))) == 4

    inspector = QualityInspector(yolo_detector(trained["run"]), conf=0.001)
    report = inspector.inspect_folder(test_images, trained["root"] / "inspection")
    assert report["summary"]["images"] == 4 and report["summary"]["ERROR"] == 0
    for row in report["images"]:
        severities = {d["severity"] for d in row["defects"]}
        assert "unknown" not in severities  # defect_* names meet the seed's map
    out = runner.invoke(
        app,
        ["vision", "inspect-images", str(trained["run"]), str(test_images / "test_0000.jpg"),
         "--out", str(trained["root"] / "one"), "--conf", "0.001", "--severity", "dent=low"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "判定结果 (verdict)" in out.output and "1 image: " in out.output


def test_cli_errors_are_one_sentence(trained, tmp_path):
    out = runner.invoke(
        app, ["vision", "train", f"data.dataset={trained['dataset']}", "model.name_or_path=x.pt"]
    )
    assert out.exit_code == 2
    assert "model.name_or_path: 'x.pt' is not a local file" in out.output
    with pytest.raises(ConfigError, match=r"train.epochs: Input should be greater than or equal"):
        load_detect_config(None, ["data.dataset=d.yaml", "train.epochs=0"])
    with pytest.raises(ConfigError, match=r"train.lr: Extra inputs are not permitted"):
        load_detect_config(None, ["data.dataset=d.yaml", "train.lr=0.1"])
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "dataset.yaml").write_text("train: images/train\nnames: [a]\n")
    out = runner.invoke(app, ["vision", "train", "--data", str(tmp_path / "dataset.yaml")])
    assert out.exit_code == 2 and "which holds no images" in out.output
    out = runner.invoke(app, ["vision", "val", str(tmp_path)])
    assert out.exit_code == 2 and "no weights/best.pt" in out.output


def _terminate_during_first_epoch(trainer):
    """An Ultralytics callback: SIGTERM to this process in the first batch of epoch 1."""
    if trainer.epoch == 0 and not getattr(trainer, "_sent", False):
        trainer._sent = True
        os.kill(os.getpid(), signal.SIGTERM)


def test_a_signal_stops_after_the_epoch_and_resume_finishes_the_run(tmp_path):
    """SIGTERM during epoch 1: the epoch ends, last.pt holds it, exit 143 with the resume
    command, process.json stopped; the workshop's resume runs epochs 2 and 3 into the same
    history."""
    import torch
    from ultralytics.utils.callbacks.base import default_callbacks

    dataset = make_dataset(tmp_path / "data", {"train": 8, "val": 4}, size=SIZE, seed=2)
    run = tmp_path / "runs" / "detect-stop"
    args = ["vision", "train", f"data.dataset={dataset}", "model.name_or_path=yolov8t-defect.yaml",
            "train.epochs=3", f"train.imgsz={SIZE}", "train.batch=8", "train.workers=0",
            "train.plots=false", f"output.dir={run.parent}", f"output.name={run.name}"]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        batch_end = [*default_callbacks["on_train_batch_end"], _terminate_during_first_epoch]
        mp.setitem(default_callbacks, "on_train_batch_end", batch_end)
        out = runner.invoke(app, args)
    assert out.exit_code == 143, out.output
    assert f"Resume with: tunesmith vision train --resume {run}" in out.output
    process = json.loads((run / "process.json").read_text())
    assert process["status"] == "stopped" and "SIGTERM after epoch 1" in process["error"]
    assert [m["epoch"] for m in _metrics(run)] == [1]
    last = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 0 and last["optimizer"] is not None  # epoch 1, resumable
    first_seconds = _metrics(run)[0]["seconds"]

    # the workshop's resume (the UI's and MCP's button) starts `tunesmith vision train --resume`
    ws = Workspace(tmp_path)
    assert actions.resume(ws, run.name)["status"] == "running"
    deadline = time.monotonic() + 240
    while actions.status(ws, run.name)["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert actions.status(ws, run.name)["status"] == "finished", actions.status(ws, run.name)
    assert [m["epoch"] for m in _metrics(run)] == [1, 2, 3]
    assert _metrics(run)[0]["seconds"] == first_seconds < _metrics(run)[2]["seconds"]
    process = json.loads((run / "process.json").read_text())
    assert process["status"] == "finished" and process["first_started"] < process["started"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["seconds"] >= _metrics(run)[2]["seconds"]
    assert summary["best"]["step"] in (1, 2, 3)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 3

    out = runner.invoke(app, ["vision", "train", "--resume", str(run)])
    assert out.exit_code == 2 and "finished its 3 epochs; nothing to resume" in out.output
    out = runner.invoke(app, ["vision", "train", "--resume", str(run), "train.epochs=5"])
    assert out.exit_code == 2 and "train.epochs cannot change" in out.output
    (run / "weights" / "last.pt").unlink()
    out = runner.invoke(app, ["vision", "train", "--resume", str(run)])
    assert out.exit_code == 2 and "has no weights/last.pt" in out.output
    with pytest.raises(TunesmithError, match=r"has no weights/last\.pt to resume from"):
        actions.resume(ws, run.name)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_our_map_equals_ultralytics_on_a_hand_made_case():
    import torch
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils.metrics import ap_per_class, box_iou

    images = [
        {
            "labels": [(0, [0, 0, 10, 10]), (1, [20, 20, 40, 40]), (2, [70, 70, 90, 90])],
            "detections": [
                (0, 0.9, [0, 0, 10, 10]),  # exact
                (0, 0.8, [50, 50, 60, 60]),  # false positive
                (1, 0.7, [20, 20, 40, 36]),  # IoU 0.8: a hit up to the 0.8 threshold
                (3, 0.4, [0, 0, 5, 5]),  # a class without labels
            ],
        },
        {
            "labels": [(0, [10, 10, 30, 30]), (0, [40, 40, 60, 60]), (1, [0, 0, 20, 20])],
            "detections": [
                (0, 0.6, [10, 10, 30, 28]),  # IoU 0.9
                (0, 0.95, [12, 12, 30, 30]),  # a duplicate, IoU 0.81: a false positive
                (1, 0.55, [2, 0, 20, 20]),  # IoU 0.9
                (1, 0.5, [0, 10, 20, 30]),  # IoU 1/3: a false positive
            ],
        },
    ]
    ours = mean_average_precision(images)

    validator = DetectionValidator()
    validator.iouv = torch.linspace(0.5, 0.95, 10)
    tps, confs, pred_cls, target_cls = [], [], [], []
    for image in images:
        labels = torch.tensor([b for _, b in image["labels"]], dtype=torch.float32)
        dets = torch.tensor([b for _, _, b in image["detections"]], dtype=torch.float32)
        lc = torch.tensor([c for c, _ in image["labels"]])
        dc = torch.tensor([c for c, _, _ in image["detections"]])
        tps.append(validator.match_predictions(dc, lc, box_iou(labels, dets)).cpu().numpy())
        confs += [s for _, s, _ in image["detections"]]
        pred_cls.append(dc.numpy())
        target_cls.append(lc.numpy())
    ap = ap_per_class(
        np.concatenate(tps),
        np.array(confs),
        np.concatenate(pred_cls),
        np.concatenate(target_cls),
    )[5]
    assert ours["map50"] == pytest.approx(float(ap[:, 0].mean()), abs=1e-9)
    assert ours["map50_95"] == pytest.approx(float(ap.mean()), abs=1e-9)
    assert [v["ap50"] for v in ours["per_class"].values()] == pytest.approx(list(ap[:, 0]))
    assert 0 < ours["map50_95"] < ours["map50"] < 1


def _tiny_qwen2_vl(folder: Path) -> Path:
    """A random Qwen2-VL of a few thousand parameters with a word-level tokenizer: the real
    classes and chat path of transformers' image-text-to-text, nothing downloaded."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLProcessor,
    )
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]  # fmt: skip
    words = ["[UNK]", *specials, *"abcdefghijklmnopqrstuvwxyz0123456789.,:()-", "user", "assistant"]
    vocab = {w: i for i, w in enumerate(words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=specials,
    )
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=template,
    )
    ids = {k: vocab[f"<|{k}|>"] for k in ("image_pad", "video_pad", "vision_start", "vision_end")}
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "max_position_embeddings": 2048, "bos_token_id": vocab["<|im_start|>"],
            "eos_token_id": vocab["<|im_end|>"], "pad_token_id": 0,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 2, 4]},
        },
        vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2,
                       "mlp_ratio": 2, "patch_size": 14, "spatial_merge_size": 2},
        image_token_id=ids["image_pad"], video_token_id=ids["video_pad"],
        vision_start_token_id=ids["vision_start"], vision_end_token_id=ids["vision_end"],
    )  # fmt: skip
    Qwen2VLForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_vlm_analysis_with_a_tiny_qwen2_vl(tmp_path):
    from tunesmith.vision.vlm import VlmAnalyzer

    folder = _tiny_qwen2_vl(tmp_path / "tiny-vlm")
    analyzer = VlmAnalyzer.load(str(folder), max_new_tokens=6)
    Image.new("RGB", (96, 96), (100, 100, 100)).save(tmp_path / "part.jpg")
    table = {"part.jpg": [{"class": "defect_crack", "confidence": 0.9, "bbox": [1, 1, 9, 9]}]}
    inspector = QualityInspector(lambda image, conf: table.get(image.name, []), vlm=analyzer)
    result = inspector.inspect(tmp_path / "part.jpg")
    assert result["verdict"] == "FAIL"
    assert isinstance(result["vlm_analysis"], str)
    assert "这是一张产品质检图片" not in result["vlm_analysis"]  # the answer without the prompt
