"""`tunesmith eval` of a classification run (train.stage cls): labelled test files scored with
the classifier itself, not with generated replies.

The test files are read with the run's own columns and label set (train.cls); each text is cut
as the run trained (its cutoff and long-text strategy). The one task is `classification`
(accuracy, precision / recall / F1, confusion matrix, most-confused pairs) with a per-item
`label_correct` score, so that another classification run as eval.baseline gets the same
paired-bootstrap comparison as generative runs. The base model is no baseline here: its
classifier head was never trained.
"""

from __future__ import annotations

from tunesmith.config.eval import EvalConfig
from tunesmith.config.schema import RunConfig
from tunesmith.utils.console import console
from tunesmith.utils.errors import ConfigError

# config/eval.py's default task list, read as "not chosen"
DEFAULT_TASKS = EvalConfig.model_fields["tasks"].default_factory()


def classifier_run(path):
    """The TrainedRun of a classification run folder, else None."""
    from tunesmith.runs.trained import open_run

    if path is None:
        return None
    run = open_run(path)
    return run if run.task == "seq_cls" and run.config is not None else None


def for_classifier(config: RunConfig, run) -> RunConfig:
    """The eval settings a classifier takes: the classification task, and no base baseline."""
    ev = config.eval
    tasks = ev.tasks
    if tasks == DEFAULT_TASKS:
        tasks = ["classification"]
    elif tasks != ["classification"]:
        raise ConfigError(
            f"eval.tasks: {run.root} is a classification run, which predicts labels; only "
            f"'classification' applies (got {', '.join(tasks)})"
        )
    baseline = ev.baseline
    if baseline == "base":
        console.print(
            "eval: no baseline (the base model's classifier head is untrained); compare with "
            "another classification run by eval.baseline=RUN"
        )
        baseline = "none"
    elif baseline != "none" and classifier_run_or_none(baseline) is None:
        raise ConfigError(
            f"eval.baseline: '{baseline}' is not a classification run; a classifier is compared "
            "with another classification run, or with none"
        )
    update = {"tasks": tasks, "baseline": baseline}
    return config.model_copy(update={"eval": ev.model_copy(update=update)})


def classifier_run_or_none(path: str):
    from tunesmith.runs.trained import is_trained_run

    return classifier_run(path) if is_trained_run(path) else None


def load_classifier_items(ev: EvalConfig, files: list[str], run) -> list:
    """Eval items of labelled test records: the text is the prompt, the label the reference."""
    from tunesmith.data.classification import load_cls_test
    from tunesmith.evaluation.runner import Item

    cfg = run.config.train.cls
    records = load_cls_test(files, cfg, run.labels)[: ev.max_items]
    return [
        Item(
            id=i,
            where=record.where,
            messages=[{"role": "user", "content": record.text}],
            reference=cfg.label_delimiter.join(record.labels),
            source=record.source,
            label=cfg.label_delimiter.join(record.labels),
            text_pair=record.pair,
        )
        for i, record in enumerate(records)
    ]


def evaluate_classifier(target, items: list, config: RunConfig):
    """Predict every item's label with the run's classifier; metrics and per-item scores."""
    import numpy as np

    from tunesmith.evaluation.runner import Outcome
    from tunesmith.train.cls import evaluation_report, predict_ids, predict_logits

    run = classifier_run(target.adapter)
    console.rule(f"eval: {target.role} {run.root}")
    model, tokenizer = run.load()
    cfg, labels = run.config.train.cls, run.labels
    pairs = [item.text_pair or "" for item in items] if cfg.text_pair_column else None
    texts = [item.prompt for item in items]
    logits = predict_logits(model, tokenizer, run.config, texts, pairs, config.eval.batch_size)
    predicted = predict_ids(logits, cfg)
    truth = np.asarray([_label_ids(item.reference, labels, cfg) for item in items])
    report = evaluation_report(truth, predicted, labels)
    correct = [float(np.all(t == p)) for t, p in zip(truth, predicted, strict=True)]
    if not cfg.multi_label:
        from tunesmith.evaluation.classification import most_confused

        report["most_confused"] = most_confused(report, config.eval.worst_n)
    names = [_names(row, labels, cfg) for row in predicted]
    return Outcome(
        predictions=names,
        finish_reasons=[None] * len(items),
        scores={"label_correct": correct},
        tasks={"classification": report},
    )


def check_same_labels(model_run, baseline_run) -> None:
    if baseline_run is not None and list(baseline_run.labels) != list(model_run.labels):
        raise ConfigError(
            f"eval.baseline: {baseline_run.root} predicts the labels {baseline_run.labels}, "
            f"{model_run.root} predicts {model_run.labels}; they cannot be scored on one test set"
        )


def _label_ids(reference: str, labels: list[str], cfg):
    if not cfg.multi_label:
        return labels.index(reference)
    given = set(reference.split(cfg.label_delimiter)) if reference else set()
    return [int(name in given) for name in labels]


def _names(row, labels: list[str], cfg) -> str:
    if not cfg.multi_label:
        return labels[int(row)]
    return cfg.label_delimiter.join(name for name, on in zip(labels, row, strict=True) if on)
