"""The AI quality inspector (seed module 5, AIQualityInspector): detections -> severities ->
a PASS / WARNING / FAIL verdict with the seed's recommendation, an annotated image and, when a
VLM is given, its written analysis. A folder is inspected into report.json and report.html.

The seed's severity map says scratch / crack / stain / dent while its dataset names its classes
defect_scratch / defect_crack / ...: with the seed's code every detection was 'unknown' and no
verdict could be FAIL. Here a class name matches the map as written or with a known prefix
(`defect_`) removed, case-insensitively; the map and the prefixes are settings.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from tunesmith.utils.errors import TunesmithError
from tunesmith.utils.html import esc
from tunesmith.vision.convert import IMAGE_SUFFIXES

SEVERITY_MAP = {"scratch": "medium", "crack": "high", "stain": "low", "dent": "high"}
SEVERITIES = ("high", "medium", "low", "unknown")
PREFIXES = ("defect_", "defect-", "defect ")
CONFIDENCE = 0.5  # the seed's detect_defects(conf_threshold=0.5)
VERDICTS = ("PASS", "WARNING", "FAIL")
# The seed's recommendations (Chinese), with English beside them.
RECOMMENDATIONS = {
    "PASS": ("产品合格，可以出货", "Product qualified: it can ship."),
    "FAIL": ("存在严重缺陷，建议报废或返工", "Severe defect: scrap or rework it."),
    "WARNING": ("存在轻微缺陷，可降级处理", "Minor defects: it can be downgraded."),
}
COLOURS = {"high": (220, 30, 30), "medium": (245, 140, 0), "low": (230, 200, 0)}
VERDICT_COLOURS = {"PASS": (30, 150, 60), "WARNING": (235, 140, 0), "FAIL": (200, 30, 30)}

# image path, confidence threshold -> [{"class", "confidence", "bbox": [x1, y1, x2, y2]}]
Detector = Callable[[Path, float], list[dict]]


def severity_of(name: str, severity_map: dict[str, str], prefixes=PREFIXES) -> str:
    """The severity of a class name: as written, else with a known prefix removed; 'unknown'."""
    table = {k.strip().lower(): v for k, v in severity_map.items()}
    key = name.strip().lower()
    if key in table:
        return table[key]
    for prefix in prefixes:
        if key.startswith(prefix) and key[len(prefix) :] in table:
            return table[key[len(prefix) :]]
    return "unknown"


def decide(defects: list[dict]) -> str:
    """The seed's rules: no defect -> PASS; any high severity -> FAIL; otherwise WARNING (medium,
    low and unknown alike)."""
    if not defects:
        return "PASS"
    if any(d["severity"] == "high" for d in defects):
        return "FAIL"
    return "WARNING"


def parse_severity(items: list[str]) -> dict[str, str]:
    """`name=level` settings (CLI --severity) -> a map; levels high / medium / low."""
    found = {}
    for item in items:
        name, _, level = item.partition("=")
        if not name or level not in SEVERITIES[:3]:
            raise TunesmithError(
                f"--severity: expected class=high|medium|low (e.g. dent=high), got '{item}'"
            )
        found[name.strip()] = level
    return found


def yolo_detector(weights: Path, imgsz: int | None = None, device: str = "auto") -> Detector:
    """A detector over Ultralytics weights (a run folder or a .pt)."""
    from tunesmith.vision.detect import _run_config, detections_of, device_of, weights_of
    from tunesmith.vision.ultra import require_ultralytics

    model = require_ultralytics().YOLO(str(weights_of(weights)))
    saved = _run_config(Path(weights) if Path(weights).is_dir() else None)
    size = imgsz or (saved.get("train") or {}).get("imgsz") or 640

    def detect(image: Path, conf: float) -> list[dict]:
        results = model.predict(
            str(image), conf=conf, imgsz=size, device=device_of(device), verbose=False
        )
        return detections_of(results[0])

    return detect


@dataclass
class QualityInspector:
    detector: Detector
    severity_map: dict[str, str] = field(default_factory=lambda: dict(SEVERITY_MAP))
    prefixes: tuple[str, ...] = PREFIXES
    conf: float = CONFIDENCE
    vlm: Any = None  # a vision.vlm.VlmAnalyzer, or None: no written analysis

    def detect_defects(self, image: Path, conf: float | None = None):
        """(defects with their severity, the annotated PIL image)."""
        found = self.detector(Path(image), self.conf if conf is None else conf)
        defects = [
            {**d, "severity": severity_of(d["class"], self.severity_map, self.prefixes)}
            for d in found
        ]
        return defects, annotate(Path(image), defects, decide(defects))

    def inspect(self, image: Path, conf: float | None = None) -> dict:
        """The seed's inspect(): verdict, defects, count, recommendation (zh and en), the VLM's
        analysis (only when there are defects and a VLM) and the annotated image."""
        defects, annotated = self.detect_defects(image, conf)
        verdict = decide(defects)
        zh, en = RECOMMENDATIONS[verdict]
        analysis = self.vlm.analyze(Path(image), defects) if (defects and self.vlm) else None
        return {
            "image": str(image),
            "verdict": verdict,
            "defects": defects,
            "defect_count": len(defects),
            "recommendation": zh,
            "recommendation_en": en,
            "vlm_analysis": analysis,
            "annotated_image": annotated,
        }

    def inspect_folder(self, source: Path, out: Path, conf: float | None = None) -> dict:
        """Inspect every image of a folder (or one image): annotated copies in out/annotated/,
        out/report.json and out/report.html. An image that cannot be read is a row with the
        verdict ERROR and its reason: no image is left out of the counts."""
        images = list_images(Path(source))
        out = Path(out)
        (out / "annotated").mkdir(parents=True, exist_ok=True)
        rows = [self._row(image, out, conf) for image in images]
        report = {"summary": summarise(rows, self.conf if conf is None else conf), "images": rows}
        (out / "report.json").write_text(
            json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        (out / "report.html").write_text(report_html(report, out), encoding="utf-8")
        return report

    def _row(self, image: Path, out: Path, conf: float | None) -> dict:
        if not readable(image):
            error = f"{image}: not an image Pillow can read (corrupt, truncated or another format)"
            return {"image": str(image), "verdict": "ERROR", "error": error}
        result = self.inspect(image, conf)
        saved = out / "annotated" / f"{image.stem}.jpg"
        result.pop("annotated_image").convert("RGB").save(saved, quality=90)
        return {**result, "annotated": str(saved.relative_to(out))}


def readable(image: Path) -> bool:
    """Whether Pillow reads the file. Broad on purpose: once Ultralytics is imported it patches
    Image.open, and an unknown format raises its ImportError (no HEIF plugin), not OSError."""
    try:
        with Image.open(image) as opened:
            opened.verify()
    except Exception:
        return False
    return True


def list_images(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise TunesmithError(f"{source}: expected an image file or a folder of images")
    images = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise TunesmithError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return images


def summarise(rows: list[dict], conf: float) -> dict:
    counts = {v: sum(1 for r in rows if r["verdict"] == v) for v in (*VERDICTS, "ERROR")}
    return {"images": len(rows), "confidence": conf, **counts}


def annotate(image: Path, defects: list[dict], verdict: str) -> Image.Image:
    """The image with each box coloured by severity (`class confidence severity`) and a verdict
    banner on top."""
    with Image.open(image) as opened:
        picture = opened.convert("RGB")
    width = picture.width
    scale = max(1, round(width / 320))  # readable marks on small and large images alike
    font = _font(10 * scale)
    draw = ImageDraw.Draw(picture)
    for d in defects:
        colour = COLOURS.get(d["severity"], (150, 150, 150))
        x1, y1, x2, y2 = d["bbox"]
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=scale)
        label = f"{d['class']} {d['confidence']:.2f} {d['severity']}"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        # above the box, or below it at the top edge; moved left where it would leave the image
        x = max(0, min(x1, width - (right - left) - 4))
        y = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y2 + 1
        draw.rectangle([x, y, x + right - left + 4, y + bottom - top + 2], fill=colour)
        draw.text((x + 2, y - top), label, fill=(255, 255, 255), font=font)
    banner = Image.new("RGB", (width, 14 * scale + 4), VERDICT_COLOURS[verdict])
    text = f"{verdict}  {len(defects)} defect{'s' if len(defects) != 1 else ''}"
    ImageDraw.Draw(banner).text((4, 2), text, fill=(255, 255, 255), font=_font(12 * scale))
    whole = Image.new("RGB", (width, picture.height + banner.height))
    whole.paste(banner, (0, 0))
    whole.paste(picture, (0, banner.height))
    return whole


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow's own font, nothing to download
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


# --- the HTML report --------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; width: 100%; } th, td { border: 1px solid #ccc; padding: 6px; }
th { background: #f3f3f3; text-align: left; } td { vertical-align: top; }
.PASS { color: #1e963c; } .WARNING { color: #c77700; } .FAIL, .ERROR { color: #c81e1e; }
.counts span { display: inline-block; margin-right: 2em; font-size: 1.3em; font-weight: 600; }
img { max-width: 200px; }
"""


def report_html(report: dict, out: Path) -> str:
    """A self-contained page: verdict counts, then one row per image with its thumbnail."""
    summary = report["summary"]
    counts = "".join(
        f"<span class='{v}'>{v} {summary[v]}</span>" for v in (*VERDICTS, "ERROR") if summary[v]
    )
    rows = "".join(_html_row(r, out) for r in report["images"])
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Quality inspection</title>"
        f"<style>{_STYLE}</style></head><body><h1>Quality inspection 质检报告</h1>"
        f"<p>{summary['images']} images, confidence threshold {summary['confidence']}</p>"
        f"<p class='counts'>{counts}</p><table><tr><th>image</th><th>annotated</th>"
        "<th>verdict</th><th>defects</th><th>recommendation 建议</th></tr>"
        f"{rows}</table></body></html>\n"
    )


def _html_row(row: dict, out: Path) -> str:
    verdict = row["verdict"]
    if verdict == "ERROR":
        return (
            f"<tr><td>{esc(Path(row['image']).name)}</td><td></td>"
            f"<td class='ERROR'>ERROR</td><td colspan='2'>{esc(row['error'])}</td></tr>"
        )
    defects = "<br>".join(
        esc(f"{d['class']} {d['confidence']:.2f} ({d['severity']})") for d in row["defects"]
    )
    advice = f"{esc(row['recommendation'])}<br>{esc(row['recommendation_en'])}"
    if row.get("vlm_analysis"):
        advice += f"<details><summary>VLM</summary><pre>{esc(row['vlm_analysis'])}</pre></details>"
    return (
        f"<tr><td>{esc(Path(row['image']).name)}</td><td>{_thumbnail(out / row['annotated'])}</td>"
        f"<td class='{verdict}'>{verdict}</td><td>{defects or '-'}</td><td>{advice}</td></tr>"
    )


def _thumbnail(path: Path, size: int = 200) -> str:
    """An embedded JPEG thumbnail, so the page is one file that can be mailed."""
    with Image.open(path) as image:
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=80)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f"<img alt='{esc(path.name)}' src='data:image/jpeg;base64,{data}'>"


def print_result(result: dict) -> None:
    """The seed's printed report: 判定结果 / 缺陷数量 / 建议 (+ 详细分析)."""
    from tunesmith.utils.console import console

    console.print(f"判定结果 (verdict): {result['verdict']}")
    console.print(f"缺陷数量 (defects): {result['defect_count']}")
    console.print(
        f"建议 (recommendation): {result['recommendation']} {result['recommendation_en']}"
    )
    for d in result["defects"]:
        console.print(f"  类别: {d['class']}, 置信度: {d['confidence']:.2f}, {d['severity']}")
    if result.get("vlm_analysis"):
        console.print(f"\n详细分析:\n{result['vlm_analysis']}")
