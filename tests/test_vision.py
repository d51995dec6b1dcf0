"""tunesmith vision without a detector: VOC/COCO -> YOLO conversion, dataset checks, IoU and
our mAP, the inspector's severities, verdicts and reports (with a stand-in detector), the VLM
switch. Needs only numpy, Pillow and PyYAML; tests/test_vision_models.py trains a real YOLO."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tunesmith.utils.errors import TunesmithError
from tunesmith.vision.checks import inspect_dataset, write_report
from tunesmith.vision.convert import (
    convert_dataset,
    convert_voc_to_yolo,
    split_names,
    yolo_line,
)
from tunesmith.vision.inspector import (
    RECOMMENDATIONS,
    SEVERITY_MAP,
    QualityInspector,
    decide,
    parse_severity,
    severity_of,
)
from tunesmith.vision.metrics import average_precision, calculate_iou, mean_average_precision
from tunesmith.vision.synth import CLASSES, make_dataset, make_image
from tunesmith.vision.vlm import ANALYSIS_PROMPT, analysis_prompt, vlm_unavailable

# --- conversion ---------------------------------------------------------------------------------


def test_the_seed_test_vector():
    assert yolo_line(0, (100, 50, 300, 250), (640, 480)) == "0 0.312500 0.312500 0.312500 0.416667"
    seed_input = {"objects": [{"class_id": 0, "bbox": (100, 50, 300, 250)}]}
    assert convert_voc_to_yolo(seed_input, (640, 480)) == "0 0.312500 0.312500 0.312500 0.416667"


def _voc(folder: Path, name: str, objects, size=(640, 480), with_size=True, image=True) -> Path:
    if image:
        Image.new("RGB", size, (120, 120, 120)).save(folder / f"{name}.jpg")
    size_xml = (
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
        if with_size
        else ""
    )
    objs = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{a}</xmin>"
        f"<ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for n, a, b, c, d in objects
    )
    path = folder / f"{name}.xml"
    path.write_text(
        f"<annotation><filename>{name}.jpg</filename>{size_xml}{objs}</annotation>",
        encoding="utf-8",
    )
    return path


def test_voc_folder_converts_to_the_yolo_layout_with_rejects(tmp_path):
    src = tmp_path / "voc"
    src.mkdir()
    _voc(src, "img001", [("defect_scratch", 100, 50, 300, 250)])
    _voc(src, "img002", [("defect_crack", 10, 10, 50, 60), ("defect_scratch", 0, 0, 640, 480)])
    _voc(src, "img003", [("defect_stain", 5, 5, 20, 20)], with_size=False)  # size from the image
    _voc(src, "img004", [])  # a clean part: kept, as an empty label file
    _voc(src, "bad_box", [("defect_crack", 600, 400, 700, 500)])  # outside the 640x480 image
    _voc(src, "no_image", [("defect_crack", 1, 1, 5, 5)], image=False)
    (src / "broken.xml").write_text("<annotation><filename>", encoding="utf-8")
    out = tmp_path / "yolo"

    report = convert_dataset(src, out, ratios=(0.5, 0.25, 0.25), seed=1)

    assert report["format"] == "voc"
    assert report["read"] == 7 and report["converted"] == 4 and report["rejected"] == 3
    assert report["classes"] == {0: "defect_crack", 1: "defect_scratch", 2: "defect_stain"}
    assert sum(report["splits"].values()) == 4
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    reasons = {Path(r["source"]).stem: r["reason"] for r in rejects}
    assert "outside the 640x480 image" in reasons["bad_box"]
    assert "not found" in reasons["no_image"]
    assert "not valid XML" in reasons["broken"]
    labels = {p.stem: p.read_text() for p in (out / "labels").rglob("*.txt")}
    assert labels["img001"] == "1 0.312500 0.312500 0.312500 0.416667\n"
    assert labels["img004"] == ""
    images = {p.stem for p in (out / "images").rglob("*.jpg")}
    assert images == {"img001", "img002", "img003", "img004"}
    data = yaml.safe_load((out / "dataset.yaml").read_text())
    assert data["nc"] == 3 and data["names"][0] == "defect_crack"
    assert data["train"] == "images/train" and Path(data["path"]).is_absolute()


def test_given_classes_fix_the_ids_and_unknown_classes_reject_the_image(tmp_path):
    src = tmp_path / "voc"
    src.mkdir()
    _voc(src, "a", [("defect_scratch", 100, 50, 300, 250)])
    _voc(src, "b", [("rust", 10, 10, 20, 20)])
    out = tmp_path / "yolo"
    report = convert_dataset(src, out, classes=["defect_crack", "defect_scratch"], seed=0)
    assert report["classes"] == {0: "defect_crack", 1: "defect_scratch"}
    assert report["converted"] == 1 and report["rejected"] == 1
    line = next((out / "labels").rglob("a.txt")).read_text().strip()
    assert line == "1 0.312500 0.312500 0.312500 0.416667"
    assert "class 'rust' is not one of the classes" in (out / "rejects.jsonl").read_text()


def test_coco_json_converts(tmp_path):
    Image.new("RGB", (640, 480)).save(tmp_path / "p1.jpg")
    Image.new("RGB", (320, 240)).save(tmp_path / "p2.jpg")
    coco = {
        "images": [
            {"id": 1, "file_name": "p1.jpg", "width": 640, "height": 480},
            {"id": 2, "file_name": "p2.jpg", "width": 320, "height": 240},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [100, 50, 200, 200]},
            {"id": 2, "image_id": 2, "category_id": 3, "bbox": [0, 0, 32, 24]},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 9, 9], "iscrowd": 1},
        ],
        "categories": [{"id": 3, "name": "scratch"}, {"id": 7, "name": "crack"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    out = tmp_path / "yolo"
    report = convert_dataset(tmp_path / "ann.json", out, ratios=(1.0, 0.0, 0.0))
    assert report["format"] == "coco" and report["converted"] == 2
    assert report["classes"] == {0: "scratch", 1: "crack"}  # category id order
    assert (out / "labels/train/p1.txt").read_text() == "1 0.312500 0.312500 0.312500 0.416667\n"
    assert (out / "labels/train/p2.txt").read_text() == "0 0.050000 0.050000 0.100000 0.100000\n"


def test_split_is_seeded_and_independent_of_listing_order():
    names = [f"img{i:03d}" for i in range(50)]
    one = split_names(names, (0.8, 0.1, 0.1), seed=3)
    assert one == split_names(list(reversed(names)), (0.8, 0.1, 0.1), seed=3)
    assert one != split_names(names, (0.8, 0.1, 0.1), seed=4)
    counts = {s: sum(1 for v in one.values() if v == s) for s in ("train", "val", "test")}
    assert counts == {"train": 40, "val": 5, "test": 5}
    with pytest.raises(TunesmithError, match="three ratios summing to 1"):
        split_names(names, (0.8, 0.3, 0.1), seed=0)


# --- dataset checks -----------------------------------------------------------------------------


def _yolo_dataset(root: Path) -> Path:
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
    good = Image.new("RGB", (100, 100), (90, 90, 90))
    files = {
        "ok": "0 0.5 0.5 0.2 0.2\n1 0.2 0.2 0.1 0.1\n",
        "bad_class": "0 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.2 0.2\n",
        "outside": "1 0.95 0.5 0.2 0.2\n",
        "malformed": "0 0.5 0.5\n",
        "tiny": "0 0.5 0.5 0.01 0.2\n",
        "empty": "",
    }
    for i, (name, text) in enumerate(files.items()):
        Image.new("RGB", (100, 100), (90 + i, 90, 90)).save(root / f"images/train/{name}.png")
        (root / f"labels/train/{name}.txt").write_text(text)
    Image.new("RGB", (100, 100), (10, 10, 10)).save(root / "images/train/nolabel.png")
    good.save(root / "images/val/v1.png")
    (root / "labels/val/v1.txt").write_text("0 0.5 0.5 0.3 0.3\n")
    (root / "images/train/ok.png").replace(root / "images/train/ok.png")
    # the same picture in train and val: validation leaks into training
    Image.open(root / "images/train/ok.png").save(root / "images/val/leak.png")
    (root / "images/val/leak.png").write_bytes((root / "images/train/ok.png").read_bytes())
    (root / "labels/val/leak.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "labels/train/orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "images/train/corrupt.png").write_bytes(b"\x89PNG not really")
    names = {"nc": 2, "names": {0: "scratch", 1: "crack"}}
    (root / "dataset.yaml").write_text(
        yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val", **names})
    )
    return root / "dataset.yaml"


def test_inspect_rejects_with_reasons_and_loses_nothing(tmp_path):
    dataset = _yolo_dataset(tmp_path / "ds")
    report = inspect_dataset(dataset, clean=tmp_path / "clean")

    by_file = {}
    for item in report["rejects"]:
        by_file.setdefault(Path(item["file"]).stem, []).append(item["reason"])
    assert any("class 5 out of range" in r for r in by_file["bad_class"])
    assert any("box outside the image" in r for r in by_file["outside"])
    assert any("expected 5 fields" in r for r in by_file["malformed"])
    assert any("unreadable image" in r for r in by_file["corrupt"])
    assert by_file["orphan"] == ["label file without an image"]
    warnings = [
        (Path(w["file"]).stem if w["file"] else None, w["reason"]) for w in report["warnings"]
    ]
    assert any(f == "tiny" and r.startswith("tiny box (1.0x20.0 px)") for f, r in warnings)
    assert any(f == "empty" and "empty label file" in r for f, r in warnings)
    assert any(f == "nolabel" and "missing label file" in r for f, r in warnings)
    assert any(f == "leak" and "across splits" in r for f, r in warnings)

    # none lost: every image is kept or rejected, every label line counted
    assert report["images"] == 10
    assert report["images_kept"] + report["images_rejected"] == report["images"]
    assert report["images_rejected"] == 4  # bad_class, outside, malformed, corrupt
    assert report["label_lines"] == 10 and report["label_lines_rejected"] == 5
    assert report["instances"]["train"] == {"scratch": 2, "crack": 1}
    kept = {p.stem for p in (tmp_path / "clean" / "images").rglob("*.png")}
    assert kept == {"ok", "tiny", "empty", "nolabel", "v1", "leak"}

    write_report(report, tmp_path / "out")
    assert len((tmp_path / "out" / "rejects.jsonl").read_text().splitlines()) == 5
    assert json.loads((tmp_path / "out" / "inspect.json").read_text())["images"] == 10


def test_inspect_flags_class_imbalance_and_absent_classes(tmp_path):
    root = tmp_path / "ds"
    (root / "images/train").mkdir(parents=True)
    (root / "labels/train").mkdir(parents=True)
    for i in range(12):
        Image.new("RGB", (64, 64), (i * 10, 0, 0)).save(root / f"images/train/{i}.png")
        cls = 1 if i == 0 else 0
        (root / f"labels/train/{i}.txt").write_text(f"{cls} 0.5 0.5 0.5 0.5\n")
    (root / "dataset.yaml").write_text(
        yaml.safe_dump({"train": "images/train", "names": ["a", "b", "c"]})
    )
    reasons = [w["reason"] for w in inspect_dataset(root)["warnings"]]
    assert "class 'c' has no instance in train" in reasons
    assert any(r.startswith("class imbalance: 'a' 11 vs 'b' 1") for r in reasons)


def test_inspect_names_the_file_and_key_of_a_bad_dataset_yaml(tmp_path):
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump({"train": "images/train", "nc": 2}))
    with pytest.raises(TunesmithError, match=r"dataset.yaml: 'names' must list"):
        inspect_dataset(tmp_path)


# --- IoU and mAP --------------------------------------------------------------------------------


def test_iou_is_the_seeds_corner_formula():
    assert calculate_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert calculate_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert calculate_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    assert calculate_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0  # empty union


def test_ap_of_a_hand_computed_curve():
    # two labels; detections by confidence: hit, miss, hit -> recall .5 .5 1, precision 1 .5 .67
    recall, precision = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    # envelope: 1 up to recall .5, 2/3 after, 0 at recall 1 (nothing beyond the last hit); the
    # trapezoids over the 101 points cut the two steps' corners: [.49, .5] loses (1 - 2/3) / 2
    # and [.99, 1] loses (2/3 - 0) / 2, each times 0.01
    exact = 0.5 * 1 + 0.5 * 2 / 3 - 0.01 * (1 / 3) / 2 - 0.01 * (2 / 3) / 2
    assert average_precision(recall, precision) == pytest.approx(exact)
    result = mean_average_precision(
        [
            {
                "labels": [(0, [0, 0, 10, 10]), (0, [20, 20, 30, 30])],
                "detections": [
                    (0, 0.9, [0, 0, 10, 10]),
                    (0, 0.8, [50, 50, 60, 60]),
                    (0, 0.7, [20, 20, 30, 30]),
                    (1, 0.6, [0, 0, 5, 5]),  # a class without labels is not averaged
                ],
            }
        ]
    )
    assert result["map50"] == pytest.approx(average_precision(recall, precision))
    assert result["map50_95"] == pytest.approx(result["map50"])  # exact boxes: every threshold
    assert list(result["per_class"]) == [0]


# --- the inspector ------------------------------------------------------------------------------


def test_severity_matches_the_seed_names_and_the_dataset_names():
    assert severity_of("scratch", SEVERITY_MAP) == "medium"
    assert severity_of("defect_scratch", SEVERITY_MAP) == "medium"
    assert severity_of("Defect_Crack", SEVERITY_MAP) == "high"
    assert severity_of("defect-dent", SEVERITY_MAP) == "high"
    assert severity_of("defect_stain", SEVERITY_MAP) == "low"
    assert severity_of("rust", SEVERITY_MAP) == "unknown"
    # configurable: an exact entry wins, other prefixes can be named
    custom = {**SEVERITY_MAP, "defect_stain": "high"}
    assert severity_of("defect_stain", custom) == "high"
    assert severity_of("flaw/crack", SEVERITY_MAP, prefixes=("flaw/",)) == "high"
    assert parse_severity(["rust=high"]) == {"rust": "high"}
    with pytest.raises(TunesmithError, match="--severity: expected class=high"):
        parse_severity(["rust=severe"])


@pytest.mark.parametrize(
    ("severities", "verdict"),
    [
        ([], "PASS"),
        (["high"], "FAIL"),
        (["low", "medium", "high"], "FAIL"),
        (["medium"], "WARNING"),
        (["low", "low"], "WARNING"),
        (["unknown"], "WARNING"),
    ],
)
def test_verdict_rules_are_the_seeds(severities, verdict):
    assert decide([{"severity": s} for s in severities]) == verdict


def test_recommendations_are_the_seeds_in_chinese_with_english():
    assert RECOMMENDATIONS["PASS"][0] == "产品合格，可以出货"
    assert RECOMMENDATIONS["FAIL"][0] == "存在严重缺陷，建议报废或返工"
    assert RECOMMENDATIONS["WARNING"][0] == "存在轻微缺陷，可降级处理"
    assert all(en.isascii() for _, en in RECOMMENDATIONS.values())


def _fake_detector(table: dict[str, list[dict]]):
    """Detections per image name, filtered by the threshold as a detector does."""
    calls = []

    def detect(image: Path, conf: float) -> list[dict]:
        calls.append(conf)
        return [d for d in table.get(image.name, []) if d["confidence"] >= conf]

    detect.calls = calls
    return detect


def test_inspect_one_image_and_a_folder_report(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        Image.new("RGB", (160, 120), (128, 128, 128)).save(folder / name)
    (folder / "e.jpg").write_bytes(b"not an image")
    detector = _fake_detector(
        {
            "b.jpg": [{"class": "defect_crack", "confidence": 0.91, "bbox": [10, 10, 60, 40]}],
            "c.jpg": [
                {"class": "defect_scratch", "confidence": 0.8, "bbox": [5, 5, 100, 20]},
                {"class": "defect_stain", "confidence": 0.7, "bbox": [50, 50, 90, 90]},
            ],
            "d.jpg": [{"class": "defect_dent", "confidence": 0.3, "bbox": [5, 5, 30, 30]}],
        }
    )
    inspector = QualityInspector(detector)

    single = inspector.inspect(folder / "b.jpg")
    assert single["verdict"] == "FAIL" and single["defect_count"] == 1
    assert single["defects"][0]["severity"] == "high"
    assert single["recommendation"] == "存在严重缺陷，建议报废或返工"
    assert single["vlm_analysis"] is None
    annotated = single["annotated_image"]
    assert annotated.width == 160 and annotated.height > 120  # the verdict banner on top
    assert detector.calls == [0.5]  # the seed's threshold by default

    report = inspector.inspect_folder(folder, tmp_path / "out")
    verdicts = {Path(r["image"]).name: r["verdict"] for r in report["images"]}
    # d.jpg's dent is below 0.5: PASS; e.jpg cannot be read: a row, not a gap
    assert verdicts == {"a.jpg": "PASS", "b.jpg": "FAIL", "c.jpg": "WARNING", "d.jpg": "PASS",
                        "e.jpg": "ERROR"}  # fmt: skip
    assert report["summary"] == {
        "images": 5, "confidence": 0.5, "PASS": 2, "WARNING": 1, "FAIL": 1, "ERROR": 1
    }  # fmt: skip
    saved = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert saved == report
    assert sorted(p.name for p in (tmp_path / "out" / "annotated").iterdir()) == [
        "a.jpg", "b.jpg", "c.jpg", "d.jpg"
    ]  # fmt: skip
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/jpeg;base64,") == 4
    assert "FAIL 1" in page and "存在轻微缺陷，可降级处理" in page and "e.jpg" in page

    lower = inspector.inspect_folder(folder / "d.jpg", tmp_path / "out2", conf=0.25)
    assert lower["images"][0]["verdict"] == "FAIL"  # the threshold is overridable


def test_the_vlm_gets_the_seeds_prompt_only_when_there_are_defects(tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "x.jpg")
    Image.new("RGB", (64, 64)).save(tmp_path / "y.jpg")

    prompts = []

    class Recorder:
        def analyze(self, image, defects):
            prompts.append(analysis_prompt(defects))
            return "分析"

    table = {"x.jpg": [{"class": "defect_stain", "confidence": 0.876, "bbox": [1, 1, 9, 9]}]}
    inspector = QualityInspector(_fake_detector(table), vlm=Recorder())
    assert inspector.inspect(tmp_path / "x.jpg")["vlm_analysis"] == "分析"
    assert inspector.inspect(tmp_path / "y.jpg")["vlm_analysis"] is None
    assert prompts == [ANALYSIS_PROMPT.format(defect_summary="- defect_stain (置信度: 0.88)")]
    assert prompts[0].startswith("这是一张产品质检图片，系统已检测到以下缺陷：\n")
    assert prompts[0].endswith("4. 建议的处理方式（返工/降级/报废）")


def test_vlm_is_off_on_cpu_without_a_local_folder(tmp_path):
    reason = vlm_unavailable("Qwen/Qwen2-VL-7B-Instruct", cuda=False)
    assert reason.startswith("VLM analysis is off: 'Qwen/Qwen2-VL-7B-Instruct' is not a local")
    assert reason.count(". ") == 0  # one sentence
    assert vlm_unavailable(str(tmp_path), cuda=False) is None
    assert vlm_unavailable("Qwen/Qwen2-VL-2B-Instruct", cuda=True) is None
    assert vlm_unavailable(None) is None


# --- the synthetic dataset ----------------------------------------------------------------------


def test_synthetic_boxes_are_the_drawn_pixels(tmp_path):
    rng = np.random.default_rng(5)
    image, objects = make_image(rng, 160)
    assert image.shape == (160, 160, 3) and 1 <= len(objects) <= 3
    for _, (x1, y1, x2, y2) in objects:
        assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 160
    clean, none = make_image(rng, 160, clean=True)
    assert none == [] and clean.std() > 3  # textured, not flat

    dataset = make_dataset(tmp_path / "syn", {"train": 12, "val": 4}, size=96, seed=2)
    data = yaml.safe_load(dataset.read_text())
    assert data["names"] == dict(enumerate(CLASSES))
    report = inspect_dataset(dataset)
    assert report["rejects"] == [] and report["images"] == 16
    again = make_dataset(tmp_path / "syn2", {"train": 12, "val": 4}, size=96, seed=2)
    assert (again.parent / "truth.json").read_text() == (dataset.parent / "truth.json").read_text()


def test_cli_convert_and_inspect(tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli.main import app

    src = tmp_path / "voc"
    src.mkdir()
    for i in range(5):
        _voc(src, f"img{i}", [("defect_scratch", 100, 50, 300, 250)])
    _voc(src, "bad", [("defect_scratch", 100, 50, 900, 250)])
    runner = CliRunner()
    out = runner.invoke(
        app, ["vision", "convert", str(src), str(tmp_path / "yolo"), "--split", "0.6,0.2,0.2"]
    )
    assert out.exit_code == 0, out.output
    assert "converted 5 of 6 annotations (1 rejected" in out.output
    out = runner.invoke(app, ["vision", "inspect", str(tmp_path / "yolo"), "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "5 images: 5 kept, 0 rejected" in out.output
    assert json.loads((tmp_path / "inspect.json").read_text())["images"] == 5
    out = runner.invoke(
        app, ["vision", "convert", str(src), str(tmp_path / "y2"), "--split", "1,2"]
    )
    assert out.exit_code == 2 and "--split: expected three ratios" in out.output
