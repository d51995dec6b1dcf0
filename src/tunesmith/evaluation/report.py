"""The eval report: one self-contained HTML page (inline PNG plots, a little inline JS to sort and
filter the item table, no CDN) showing the numbers that eval.json holds."""

from __future__ import annotations

import io
import json
from pathlib import Path

from tunesmith.evaluation.compare import higher_is_better
from tunesmith.runs.folder import RunFolder
from tunesmith.utils.html import esc, facts_list, png_img, table

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: .6em 0 1.4em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.good { background: #e6f6e6; } td.bad { background: #fbeaea; }
table.items th { cursor: pointer; } table.items td { max-width: 28em; white-space: pre-wrap; }
dl { display: grid; grid-template-columns: max-content auto; gap: 4px 16px; }
dt { font-weight: 600; } img { max-width: 100%; } pre { background: #f7f7f7; padding: 8px; }
"""
# Sort by a header click (numbers numerically), filter rows by a text box.
_SCRIPT = """
function sortTable(th) {
  const table = th.closest('table'), col = th.cellIndex, body = table.tBodies[0];
  const asc = th.dataset.asc !== '1'; th.dataset.asc = asc ? '1' : '0';
  const key = r => { const t = r.cells[col].innerText; const n = parseFloat(t);
    return isNaN(n) ? t.toLowerCase() : n; };
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b);
    return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1); }).forEach(r => body.appendChild(r));
}
function filterTable(input) {
  const q = input.value.toLowerCase();
  for (const r of document.getElementById('items').tBodies[0].rows)
    r.style.display = r.innerText.toLowerCase().includes(q) ? '' : 'none';
}
"""


def write_report(run: RunFolder, report: dict) -> Path:
    """reports/eval.html from eval.json's data; returns its path."""
    sections = [
        _facts(report),
        _summary(report),
        png_img(_metric_bars(report)),
        _tasks(report, run),
        png_img(_length_histogram(report)),
        _errors(report.get("errors")),
        _items_table(report),
    ]
    title = f"tunesmith eval: {Path(report['run']).name}"
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body><h1>{esc(title)}</h1>"
        + "".join(s for s in sections if s)
        + "</body></html>\n"
    )
    return run.write_text("reports/eval.html", page)


# --- html pieces -------------------------------------------------------------------------------


def _facts(report: dict) -> str:
    facts = {
        **{
            f"{role}": f"{m['model']}" + (f" + {m['adapter']}" if m["adapter"] else "")
            for role, m in report["models"].items()
        },
        "items": len(report["items"]),
        "tasks": ", ".join(report["eval"]["tasks"]),
        "seconds": report.get("seconds"),
    }
    for role, result in report["results"].items():
        replies = result["tasks"].get("replies", {})
        if "prompts_cut_to_context" in replies:
            facts[f"prompts cut to context ({role})"] = replies["prompts_cut_to_context"]
    return facts_list(facts)


def _summary(report: dict) -> str:
    compare = report.get("compare")
    if compare:
        level = int(100 * report["eval"]["bootstrap"]["confidence"])
        rows = [
            [
                m,
                c["mean_a"],
                c["mean_b"],
                c["diff"],
                f"[{c['ci_low']:.4g}, {c['ci_high']:.4g}]",
                c["p_value"],
                f"{c['wins']}/{c['ties']}/{c['losses']}",
                c["n"],
            ]
            for m, c in compare.items()
        ]
        headers = [
            "metric",
            "baseline",
            "model",
            "diff (model - baseline)",
            f"{level}% CI",
            "p",
            "win/tie/loss",
            "n",
        ]
        return "<h2>Model vs baseline (paired bootstrap)</h2>" + table(headers, rows, numbers=True)
    scores = report["results"]["model"]["scores"]
    rows = [[m, _mean(v), sum(x is not None for x in v)] for m, v in scores.items()]
    return "<h2>Per-item metrics (means)</h2>" + table(["metric", "mean", "n"], rows, numbers=True)


def _mean(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _tasks(report: dict, run: RunFolder) -> str:
    parts = ["<h2>Tasks</h2>"]
    for role, result in report["results"].items():
        for task, summary in result["tasks"].items():
            parts.append(f"<h3>{esc(task)} ({esc(role)})</h3>")
            if task == "classification":
                parts.append(png_img(_confusion_png(summary, run, role)))
            parts.append(_summary_block(summary))
    if report.get("judge"):
        parts.append("<h3>judge</h3>" + _summary_block(report["judge"]))
    return "".join(parts)


def _summary_block(summary: dict) -> str:
    flat = {k: v for k, v in summary.items() if not isinstance(v, dict | list)}
    nested = {k: v for k, v in summary.items() if isinstance(v, dict | list)}
    out = table(["key", "value"], [[k, v] for k, v in flat.items()], numbers=True) if flat else ""
    for key, value in nested.items():
        text = json.dumps(value, indent=1, ensure_ascii=False, default=str)
        out += f"<details><summary>{esc(key)}</summary><pre>{esc(text)}</pre></details>"
    return out


def _errors(errors: dict | None) -> str:
    if not errors:
        return ""
    parts = ["<h2>Error analysis (evaluated model)</h2>"]
    for metric, examples in errors["worst"].items():
        rows = [
            [x["id"], x["score"], x["prompt"], x["reference"], x["prediction"]] for x in examples
        ]
        parts.append(f"<h3>worst by {esc(metric)}</h3>")
        parts.append(table(["id", metric, "prompt", "reference", "reply"], rows, numbers=True))
    for group in ("by_length", "by_category", "by_label", "by_source"):
        if errors.get(group):
            parts.append(f"<h3>{esc(group.replace('_', ' '))}</h3>" + _group_table(errors[group]))
    if errors.get("confused_pairs"):
        rows = [[p["true"], p["predicted"], p["count"]] for p in errors["confused_pairs"]]
        parts.append(
            "<h3>most confused</h3>" + table(["true", "predicted", "count"], rows, numbers=True)
        )
    return "".join(parts)


def _group_table(per_metric: dict) -> str:
    metrics = list(per_metric)
    first = per_metric[metrics[0]]
    if isinstance(first, list):  # length buckets: the same buckets for every metric
        keys = [row["bucket"] for row in first]
        value = {m: {row["bucket"]: row for row in per_metric[m]} for m in metrics}
    else:
        keys = list(dict.fromkeys(k for m in metrics for k in per_metric[m]))
        value = per_metric
    rows = [
        [key, max((value[m].get(key, {}).get("n") or 0) for m in metrics)]
        + [value[m].get(key, {}).get("mean") for m in metrics]
        for key in keys
    ]
    return table(["group", "n", *metrics], rows, numbers=True)


def _items_table(report: dict) -> str:
    items = report["items"]
    if not items:
        return ""
    results = report["results"]
    roles = list(results)
    metrics = list(results["model"]["scores"])
    headers = ["id", "source", "category", "length", "prompt", "reference"]
    headers += [f"reply ({r})" for r in roles] + [f"{m} ({r})" for m in metrics for r in roles]
    rows = []
    for item in items:
        i = item["id"]
        row = [
            i,
            item["source"],
            item["category"],
            item["length"],
            item["prompt"],
            item["reference"],
        ]
        row += [(results[r]["predictions"] or [None] * len(items))[i] for r in roles]
        row += [results[r]["scores"].get(m, [None] * len(items))[i] for m in metrics for r in roles]
        rows.append(row)
    head = "".join(f"<th onclick='sortTable(this)'>{esc(h)}</th>" for h in headers)
    whole = table(headers, rows, numbers=True)
    body = whole[whole.index("<tbody>") :]  # under the sortable header above
    return (
        "<h2>All items</h2><p>Click a header to sort; type to filter. "
        "<input placeholder='filter' oninput='filterTable(this)'></p>"
        f"<table class='items' id='items'><thead><tr>{head}</tr></thead>{body}"
    )


# --- plots ---------------------------------------------------------------------------------------


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def _metric_bars(report: dict) -> bytes | None:
    """One small panel per metric: a bar per model; the model bar's whisker is the CI of its
    paired difference, placed on the baseline's mean."""
    from matplotlib.figure import Figure

    results, compare = report["results"], report.get("compare") or {}
    metrics = [
        m for m in results["model"]["scores"] if _mean(results["model"]["scores"][m]) is not None
    ]
    if not metrics:
        return None
    cols = min(4, len(metrics))
    rows = -(-len(metrics) // cols)
    fig = Figure(figsize=(3 * cols, 2.6 * rows))
    for k, metric in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, k + 1)
        roles = [r for r in ("baseline", "model") if r in results]
        means = [_mean(results[r]["scores"].get(metric, [])) or 0.0 for r in roles]
        ax.bar(roles, means, color=["#999", "#3b7dd8"][-len(roles) :])
        if metric in compare:
            c = compare[metric]
            low, high = c["mean_a"] + c["ci_low"], c["mean_a"] + c["ci_high"]
            ax.errorbar(
                [len(roles) - 1],
                [c["mean_b"]],
                yerr=[[c["mean_b"] - low], [high - c["mean_b"]]],
                fmt="none",
                ecolor="black",
                capsize=5,
            )
        arrow = "↑" if higher_is_better(metric) else "↓"
        ax.set_title(f"{metric} {arrow}", fontsize=10)
    return _png(fig)


def _length_histogram(report: dict) -> bytes | None:
    from matplotlib.figure import Figure

    series = {
        role: [len(p) for p in result["predictions"] if p is not None]
        for role, result in report["results"].items()
    }
    series["reference"] = [len(i["reference"]) for i in report["items"] if i["reference"]]
    series = {k: v for k, v in series.items() if v}
    if set(series) <= {"reference"}:  # no replies to show
        return None
    fig = Figure(figsize=(7, 3))
    ax = fig.add_subplot()
    ax.hist(list(series.values()), bins=20, label=list(series), alpha=0.8)
    ax.set(xlabel="reply length (characters)", ylabel="items", title="reply lengths")
    ax.legend()
    return _png(fig)


def _confusion_png(summary: dict, run: RunFolder, role: str) -> bytes | None:
    from tunesmith.evaluation.classification import plot_confusion

    if "confusion_matrix" not in summary:
        return None
    return plot_confusion(summary, run.plots / f"eval_confusion_{role}.png").read_bytes()
