"""Classification metrics (scikit-learn), most-confused pairs and the confusion-matrix plot.

Labels are strings. A prediction outside the declared labels (a generative classifier that
answered "maybe") is kept: it counts as wrong, appears as an extra column of the confusion
matrix, and is counted in `unexpected_predictions`; macro averages stay over the declared labels.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.runs.folder import atomic_path
from tunesmith.utils.errors import DataError


def classification_metrics(
    y_true: list[str], y_pred: list[str], labels: list[str] | None = None
) -> dict:
    """accuracy, precision/recall/f1 (macro and weighted), per-class report, confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    if len(y_true) != len(y_pred):
        raise DataError(f"{len(y_true)} gold labels but {len(y_pred)} predictions")
    if not y_true:
        raise DataError("no examples to score: the test set is empty")
    y_true, y_pred = [str(y) for y in y_true], [str(y) for y in y_pred]
    declared = list(labels) if labels is not None else sorted(set(y_true) | set(y_pred))
    unknown_gold = sorted(set(y_true) - set(declared))
    if unknown_gold:
        raise DataError(f"gold labels {unknown_gold} are not among the labels {declared}")
    extra = sorted(set(y_pred) - set(declared))
    order = declared + extra

    report: dict = {"n": len(y_true), "accuracy": float(accuracy_score(y_true, y_pred))}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=declared, average=average, zero_division=0
        )
        report |= {f"precision_{average}": p, f"recall_{average}": r, f"f1_{average}": f}
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=declared, average=None, zero_division=0
    )
    report["per_class"] = {
        label: {"precision": pi, "recall": ri, "f1": fi, "support": int(si)}
        for label, pi, ri, fi, si in zip(declared, p, r, f, s, strict=True)
    }
    report = _to_python(report)
    report["labels"] = order
    report["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=order).tolist()
    report["unexpected_predictions"] = sum(y not in declared for y in y_pred)
    return report


def most_confused(report: dict, n: int = 5) -> list[tuple[str, str, int]]:
    """The n largest off-diagonal cells as (true label, predicted label, count), count > 0."""
    labels, matrix = report["labels"], report["confusion_matrix"]
    cells = [
        (labels[i], labels[j], int(count))
        for i, row in enumerate(matrix)
        for j, count in enumerate(row)
        if i != j and count > 0
    ]
    return sorted(cells, key=lambda cell: -cell[2])[:n]  # stable: ties keep label order


def plot_confusion(report: dict, path: Path) -> Path:
    """A confusion-matrix heat map (rows: true, columns: predicted) written as PNG to `path`."""
    from matplotlib.figure import Figure

    labels, matrix = report["labels"], report["confusion_matrix"]
    size = min(4 + 0.5 * len(labels), 16)
    fig = Figure(figsize=(size, size * 0.85))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            color = "white" if count > peak / 2 else "black"
            ax.text(j, i, str(count), ha="center", va="center", color=color)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:  # a report page never embeds half a file
        fig.savefig(tmp, dpi=100, format="png")
    return path


def _to_python(value):
    """numpy scalars to float, so the report is JSON-serializable as is."""
    if isinstance(value, dict):
        return {k: _to_python(v) for k, v in value.items()}
    return value if isinstance(value, int | str) else float(value)
