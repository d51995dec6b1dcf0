"""The model card (README.md) written beside an export: base, method, data, eval, verification."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tunesmith.data.quality.version import file_hash

EVAL_FILES = ("eval.json", "reports/eval.json")  # where `tunesmith eval` leaves its results


def data_hashes(files: list[str]) -> dict[str, str]:
    """Content hash of each training file (the data-version hash), or why there is none."""
    return {f: file_hash(f) if Path(f).is_file() else "missing: file not found" for f in files}


def eval_results(run_folder: Path | None) -> dict | None:
    for name in EVAL_FILES:
        path = run_folder / name if run_folder else None
        if path and path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    return None


def card_facts(trained, run_config: dict, verification: dict | None, layout: str) -> dict:
    """What the card states, as data (also written to export.json)."""
    run_folder = trained.run_folder
    summary_path = run_folder / "summary.json" if run_folder else None
    summary = (
        json.loads(summary_path.read_text()) if summary_path and summary_path.is_file() else {}
    )
    data = run_config.get("data") or {}
    return {
        "base_model": trained.base_ref,
        "method": trained.run.method_cfg.model_dump(mode="json"),
        "stage": (run_config.get("train") or {}).get("stage"),
        "layout": layout,  # merged | base+adapter | full
        "quantized_base": trained.quantized,
        "data": data_hashes(list(data.get("train") or [])),
        "datasets": list(data.get("dataset") or []),
        "training": {k: summary.get(k) for k in ("train_loss", "steps", "seconds") if k in summary},
        "eval": eval_results(run_folder),
        "verification": verification,
        "source": str(run_folder or trained.artifact),
    }


def render_card(facts: dict[str, Any]) -> str:
    front = {
        "base_model": facts["base_model"],
        "library_name": "peft" if facts["layout"] == "base+adapter" else "transformers",
        "tags": ["tunesmith", str(facts["method"].get("type"))],
    }
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", ""]
    lines += [f"# Fine-tuned {facts['base_model']}", ""]
    lines += [f"- base model: `{facts['base_model']}`", f"- stage: {facts['stage'] or 'n/a'}"]
    lines += [f"- method: `{json.dumps(facts['method'], sort_keys=True)}`"]
    lines += [f"- layout: {_LAYOUT_TEXT[facts['layout']]}"]
    if facts["quantized_base"]:
        lines.append("- trained on a quantized base; merged into dequantized weights")
    lines += ["", "## Training data", ""]
    lines += [f"- `{f}`: `{h}`" for f, h in facts["data"].items()] or ["- (no files recorded)"]
    lines += [f"- registry dataset `{name}`" for name in facts["datasets"]]
    if facts["training"]:
        lines += ["", "## Training", "", *(f"- {k}: {v}" for k, v in facts["training"].items())]
    lines += ["", "## Evaluation", ""]
    lines.append(_json_block(facts["eval"]) if facts["eval"] else "No eval.json in the run folder.")
    lines += ["", "## Export verification", ""]
    lines.append(_json_block(facts["verification"]) if facts["verification"] else "Not verified.")
    if facts.get("gguf"):
        lines += [
            "",
            "| GGUF file | size | logit RMS error / spread | same argmax |",
            "|---|---|---|---|",
        ]
        for f in facts["gguf"]:
            lines.append(
                f"| `{f['file']}` | {f['bytes'] / 2**20:.1f} MB | {f['relative_rms']:.2g} "
                f"| {f['top1']:.1%} |"
            )
    lines += ["", "## Use", "", _USAGE[facts["layout"]], ""]
    return "\n".join(lines)


def _json_block(data: Any) -> str:
    return "```json\n" + json.dumps(data, indent=2, ensure_ascii=False) + "\n```"


_LAYOUT_TEXT = {
    "merged": "adapter merged into the base weights (a plain transformers model)",
    "full": "full model weights (the method trained the weights themselves)",
    "base+adapter": "base model in base/ and the unmerged adapter in adapter/ "
    "(this method cannot be merged into the weights)",
}
_USAGE = {
    "merged": "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
    'model = AutoModelForCausalLM.from_pretrained(".")\n'
    'tokenizer = AutoTokenizer.from_pretrained(".")\n```',
    "base+adapter": "```python\nfrom peft import PeftModel\n"
    "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
    'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("base"), "adapter")\n'
    'tokenizer = AutoTokenizer.from_pretrained("adapter")\n```',
}
_USAGE["full"] = _USAGE["merged"]
