"""Text classification (train.stage: cls): its recipe, loss, metrics and report.

Any model AutoModelForSequenceClassification loads works: an encoder (the embedded default
`model.name_or_path=minilm-l6`, BERT-style: the [CLS] pooled output feeds the head) or a decoder
(Llama-style: the last non-padding token feeds the `score` head). The loss is cross-entropy
(multi-label: binary cross-entropy with logits), weighted by train.cls.class_weights.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tunesmith.config.cls import ClsConfig
from tunesmith.config.schema import RunConfig
from tunesmith.data.classification import (
    ClsData,
    ClsEncoding,
    ClsRecord,
    batch_sampling,
    label_counts,
    load_cls_data,
    tokenize_cls,
)
from tunesmith.evaluation.classification import classification_metrics, plot_confusion
from tunesmith.models.classifier import load_classifier
from tunesmith.models.packed_encoder import packed_forward, packs
from tunesmith.runs.folder import LABELS, RunFolder, is_main_process
from tunesmith.runs.trained import open_run
from tunesmith.train.arguments import training_arguments
from tunesmith.train.recipe import Data, Job, Loaded, Probe, Recipe, TrainResult, train
from tunesmith.train.trainer import CausalLMTrainer
from tunesmith.utils.console import console
from tunesmith.utils.errors import ConfigError, ModelError


def run_cls(config: RunConfig, run: RunFolder, resume: bool = False) -> TrainResult:
    return train(CLS, config, run, resume)


def _check(config: RunConfig) -> None:
    if not config.data.train:
        raise ConfigError("data.train: no training files given (e.g. data.train=[reviews.csv])")
    for key, value in {
        "data.dataset": config.data.dataset,  # registry datasets are chat data
        "data.replay": config.data.replay,
    }.items():
        if value:
            raise ConfigError(f"{key}: not used by train.stage=cls; remove it")


@dataclasses.dataclass
class _Sources:
    """What the stage reads before the model loads, and the held-out encoding once tokenized
    (with chunking, several of its examples make one record's prediction)."""

    data: ClsData
    weights: torch.Tensor | None
    held_out: ClsEncoding | None = None


def _read(job: Job) -> _Sources:
    """The records, split, and the loss weights: label mistakes stop before the model loads."""
    config, cfg = job.config, job.config.train.cls
    data = load_cls_data(
        config.data.train,
        config.data.eval,
        cfg,
        on_error=config.data.on_error,
        max_samples=config.data.max_samples,
        seed=config.train.seed,
        reject=job.run.reject,
    )
    return _Sources(data, class_weights(data, cfg))


def _load(job: Job, quantization) -> Loaded:
    model, tokenizer, resolved = load_classifier(
        job.config.model, job.sources.data.labels, job.config.train.cls, quantization
    )
    return Loaded(model, tokenizer, resolved.ref)


def _data(job: Job) -> Data:
    """Tokenized by the long-text strategy the training texts call for (train.cls.long_text);
    the strategy chosen is written into the run's config, so prediction uses it too."""
    sources, tokenizer = job.sources, job.loaded.tokenizer
    data, cfg, cutoff = sources.data, job.config.train.cls, job.config.data.cutoff_len
    train = tokenize_cls(data.train, data.labels, tokenizer, cfg, cutoff)
    held_out = tokenize_cls(data.eval, data.labels, tokenizer, cfg, cutoff, train.strategy)
    sources.held_out = held_out.by_length()  # evaluated in this order (ClsTrainer)
    settled = _with_long_text(job.config, train.strategy)
    sampling = None
    if job.config.train.sampling == "auto":  # length-grouped unless the label sets the length
        sampler, why = batch_sampling(train.examples)
        sampling = {"sampler": sampler, "why": why}
        settled = _with_sampling(settled, sampler)
    if settled != job.config:
        job.config = settled
        job.run.save_config(job.config)
    long_text = {"strategy": train.strategy, "why": train.why, "truncated": train.truncated}
    stats = data.stats | {"truncated": train.truncated, "examples": len(train.examples)}
    summary = {
        "labels": data.labels,
        "class_weights": sources.weights.tolist() if sources.weights is not None else None,
        "data": stats | {"long_text": long_text, "sampling": sampling},
    }
    return Data(train.examples, sources.held_out.examples or None, stats, summary)


def _with_long_text(config: RunConfig, strategy: str) -> RunConfig:
    cls = config.train.cls.model_copy(update={"long_text": strategy})
    return config.model_copy(update={"train": config.train.model_copy(update={"cls": cls})})


def _with_sampling(config: RunConfig, sampler: str) -> RunConfig:
    return config.model_copy(
        update={"train": config.train.model_copy(update={"sampling": sampler})}
    )


def _trainer(job: Job) -> ClsTrainer:
    from transformers import DataCollatorWithPadding

    sources, cfg = job.sources, job.config.train.cls
    held_out = sources.held_out
    trainer = ClsTrainer(
        model=job.model,
        args=_arguments(job.config, job.run, has_eval=job.data.eval is not None),
        train_dataset=job.data.train,
        eval_dataset=job.data.eval,
        data_collator=DataCollatorWithPadding(job.loaded.tokenizer, pad_to_multiple_of=8),
        compute_metrics=lambda p: scores(
            evaluation_report(*_decode(p, cfg, held_out), sources.data.labels)
        ),
        class_weights=sources.weights,
        multi_label=cfg.multi_label,
        l2_to_pretrained=job.config.train.l2_to_pretrained,
        layerwise_lr_decay=job.config.train.layerwise_lr_decay,
        loraplus_lr_ratio=getattr(job.config.method, "loraplus_lr_ratio", None),
    )
    if trainer.packed:
        console.print("batches: padding-free (each batch's texts end to end, per-text attention)")
    return trainer


def _arguments(config: RunConfig, run: RunFolder, has_eval: bool):
    # the causal-LM arguments with logits kept for the metrics; padding is not counted as input
    args = training_arguments(config.train, run, has_eval)
    return dataclasses.replace(
        args,
        prediction_loss_only=False,
        label_names=["labels"],
        include_num_input_tokens_seen="non_padding",
    )


class _Report(Probe):
    """The labels file, and the per-class report of the trained model on the held-out set."""

    def on_end(self, job: Job, trainer) -> dict:
        sources = job.sources
        job.run.write_json(LABELS, sources.data.labels)
        evaluation = _final_report(trainer, sources, job.config.train.cls, job.run)
        if evaluation and is_main_process():
            console.print(f"eval f1_macro {evaluation['f1_macro']:.4f}")
        return {"eval": evaluation}


def report_data(data: Data, run: RunFolder) -> None:
    stats = data.stats
    counts = ", ".join(f"{name} {n}" for name, n in stats["labels"].items())
    evals = f"{stats['eval']} eval ({stats['eval_source']})" if stats["eval"] else "no eval"
    console.print(
        f"data: {stats['read']} records read, {stats['train']} train, {evals}, "
        f"{stats['rejected']} rejected"
        + (f" (see {run.rejects_path})" if stats["rejected"] else "")
        + f"; labels: {counts}"
    )
    long_text = data.summary["data"]["long_text"]
    if stats["truncated"]:
        windows = f", {stats['examples']} windows" if long_text["strategy"] == "chunk" else ""
        console.print(f"long texts: {long_text['strategy']}{windows} ({long_text['why']})")
    sampling = data.summary["data"]["sampling"]
    if sampling:
        console.print(f"train.sampling auto: {sampling['sampler']} ({sampling['why']})")


# loss and trainer -----------------------------------------------------------------------------


def class_weights(data: ClsData, cfg: ClsConfig) -> torch.Tensor | None:
    """Loss weights per label from train.cls.class_weights; None: unweighted."""
    setting = cfg.class_weights
    if setting == "none":
        return None
    if isinstance(setting, dict):
        unknown = sorted(set(setting) - set(data.labels))
        if unknown:
            raise ConfigError(
                f"train.cls.class_weights: unknown label {', '.join(unknown)}; "
                f"the labels are {', '.join(data.labels)}"
            )
        return torch.tensor([float(setting.get(name, 1.0)) for name in data.labels])
    counts = list(label_counts(data.train, data.labels).values())
    n = len(data.train)
    if cfg.multi_label:  # pos_weight: negatives per positive
        return torch.tensor([(n - c) / c if c else 1.0 for c in counts])
    return torch.tensor([n / (len(counts) * c) if c else 1.0 for c in counts])  # sklearn's


def classification_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    multi_label: bool = False,
) -> torch.Tensor:
    """Weighted mean cross-entropy (sum of w_y * CE over sum of w_y); multi-label: mean binary
    cross-entropy with `weights` as pos_weight."""
    logits = logits.float()
    if weights is not None:
        weights = weights.to(logits.device)
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=weights)
    return F.cross_entropy(logits, labels.long(), weight=weights)


class ClsTrainer(CausalLMTrainer):
    """The shared trainer (L2 to pretrained, layer-wise lr) with the classification loss; a
    first-token encoder under train.optimize runs its batches padding-free."""

    loss_is_scaled_for_ga = False  # a mean over the micro-batch: the trainer divides by GA

    def __init__(
        self, *args, class_weights: torch.Tensor | None = None, multi_label: bool = False, **kw
    ):
        super().__init__(*args, **kw)
        self.class_weights, self.multi_label = class_weights, multi_label
        self.packed = packs(self.model)  # padding-free batches (models/packed_encoder.py)

    def _get_eval_sampler(self, eval_dataset):
        # in order: predictions are matched to records by position (the held-out examples
        # come sorted by length already); transformers groups eval batches by length too when
        # training does, which would shuffle them
        from torch.utils.data import SequentialSampler

        return SequentialSampler(eval_dataset) if eval_dataset is not None else None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)  # the labels stay in the caller's batch for evaluation
        labels = inputs.pop("labels")
        if self.packed and "attention_mask" in inputs:
            outputs = packed_forward(model, inputs, self.model)
        else:
            outputs = model(**inputs)
        loss = classification_loss(outputs.logits, labels, self.class_weights, self.multi_label)
        if self.l2 is not None and model.training:
            loss = loss + self.l2()
        return (loss, outputs) if return_outputs else loss


# metrics and report ---------------------------------------------------------------------------


def _decode(
    prediction, cfg: ClsConfig, encoding: ClsEncoding | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_pred) per record from an EvalPrediction or (logits, labels) per example: a
    record cut into windows is predicted from the mean of their logits."""
    logits, labels = np.asarray(prediction[0]), np.asarray(prediction[1])
    if encoding is not None:
        logits, labels = encoding.pool(logits), encoding.pool(labels)
    return labels.astype(int), predict_ids(logits, cfg)


def predict_ids(logits: np.ndarray, cfg: ClsConfig) -> np.ndarray:
    """Class ids (argmax), or for multi-label a 0/1 matrix (sigmoid above the threshold)."""
    if cfg.multi_label:
        return (1 / (1 + np.exp(-logits)) > cfg.threshold).astype(int)
    return logits.argmax(-1)


SCORES = (
    "accuracy",  # multi-label: exact match of the whole label set
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
)


def evaluation_report(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict:
    """Scores, per-class report and confusion matrix: evaluation.classification's for single
    labels; for multi-label the same scores over 0/1 matrices and one 2x2 matrix per label."""
    if y_true.ndim == 1:
        names = list(labels)
        report = classification_metrics(
            [names[i] for i in y_true], [names[i] for i in y_pred], names
        )
        return report | {"multi_label": False}
    return _multi_label_report(y_true, y_pred, labels)


def scores(report: dict) -> dict[str, float]:
    return {key: round(report[key], 6) for key in SCORES}


def _multi_label_report(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict:
    from sklearn.metrics import (
        accuracy_score,
        multilabel_confusion_matrix,
        precision_recall_fscore_support,
    )

    report: dict = {"n": len(y_true), "accuracy": float(accuracy_score(y_true, y_pred))}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, average=average, zero_division=0
        )
        report |= {f"precision_{average}": float(p), f"recall_{average}": float(r)}
        report[f"f1_{average}"] = float(f)
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    report["per_class"] = {
        name: {"precision": p[i], "recall": r[i], "f1": f[i], "support": support[i]}
        for i, name in enumerate(labels)
    }
    report = json.loads(json.dumps(report, default=lambda x: x.item()))  # numpy -> python
    report["labels"] = list(labels)
    # per label [[tn, fp], [fn, tp]]
    report["confusion_matrix"] = multilabel_confusion_matrix(y_true, y_pred).tolist()
    return report | {"multi_label": True}


def _final_report(trainer, sources: _Sources, cfg: ClsConfig, run: RunFolder):
    """Per-class report, confusion matrix and misclassified examples into reports/; the scores."""
    held_out, data = sources.held_out, sources.data
    if not held_out or not held_out.examples:
        return None
    output = trainer.predict(held_out.examples)
    y_true, y_pred = _decode((output.predictions, output.label_ids), cfg, held_out)
    report = evaluation_report(y_true, y_pred, data.labels)
    report["errors"] = [
        {
            "where": record.where,
            "text": record.text,
            "true": list(record.labels),
            "predicted": _names(pred, data.labels),
        }
        for record, true, pred in zip(data.eval, y_true, y_pred, strict=True)
        if np.any(true != pred)
    ][:50]
    run.write_json("reports/classification.json", report)
    if is_main_process():
        plot = plot_label_counts if cfg.multi_label else plot_confusion
        plot(report, run.reports / "confusion_matrix.png")
    return scores(report)


def plot_label_counts(report: dict, path: Path) -> Path:
    """Multi-label: a heat map of each label's tn / fp / fn / tp counts."""
    from matplotlib.figure import Figure

    labels = report["labels"]
    matrix = np.asarray(report["confusion_matrix"]).reshape(len(labels), 4)
    fig = Figure(figsize=(5, min(3 + 0.4 * len(labels), 16)))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(4), ["tn", "fp", "fn", "tp"])
    ax.set_yticks(range(len(labels)), labels)
    ax.set(ylabel="label", title="per-label confusion counts")
    peak = matrix.max(initial=0)
    for (row, col), count in np.ndenumerate(matrix):
        color = "white" if count > peak / 2 else "black"
        ax.text(col, row, str(count), ha="center", va="center", color=color)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, format="png")
    return path


# inference ------------------------------------------------------------------------------------


def load_trained_classifier(run_folder: str | Path):
    """(model in eval mode, tokenizer, run config, labels) of a finished cls or rm run."""
    run = open_run(run_folder)
    if run.task != "seq_cls" or run.config is None:
        raise ModelError(f"'{run_folder}' is not a classification or reward-model run folder")
    model, tokenizer = run.load()
    return model, tokenizer, run.config, run.labels


def predict_labels(
    run_folder: str | Path, texts: Sequence[str], batch_size: int = 32
) -> list[str | list[str]]:
    """The predicted label of each text (multi-label: the list of labels above the threshold)."""
    model, tokenizer, config, labels = load_trained_classifier(run_folder)
    logits = predict_logits(model, tokenizer, config, texts, batch_size=batch_size)
    return [_names(row, labels) for row in predict_ids(logits, config.train.cls)]


@torch.no_grad()
def predict_logits(
    model,
    tokenizer,
    config: RunConfig,
    texts: Sequence[str],
    pairs: Sequence[str] | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Logits per text, each tokenized as the run trained (its cutoff and long-text strategy;
    a text cut into windows gets the mean of theirs), in batches sorted by length."""
    cfg = config.train.cls
    strategy = "head" if cfg.long_text == "auto" else cfg.long_text  # runs from before the key
    records = [
        ClsRecord(text, pairs[i] if pairs else None, (), "input", i + 1)
        for i, text in enumerate(texts)
    ]
    encoding = tokenize_cls(records, [], tokenizer, cfg, config.data.cutoff_len, strategy)
    examples = encoding.examples
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    device = next(model.parameters()).device
    rows: list[np.ndarray | None] = [None] * len(examples)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = tokenizer.pad([examples[i] for i in chunk], return_tensors="pt").to(device)
        for i, row in zip(chunk, model(**batch).logits.float().cpu().numpy(), strict=True):
            rows[i] = row
    return encoding.pool(np.stack(rows))


def _names(prediction, labels: Sequence[str]) -> str | list[str]:
    if np.ndim(prediction) == 0:
        return labels[int(prediction)]
    return [labels[i] for i, on in enumerate(prediction) if on]


CLS = Recipe(
    name="cls",
    task="seq_cls",
    check=_check,
    read=_read,
    has_eval=lambda job: bool(job.sources.data.eval),
    load=_load,
    data=_data,
    report=report_data,
    trainer=_trainer,
    probes=lambda job: [_Report()],
    speed=True,  # fused LoRA, the faster matmul kernel, kept freed memory (models/speed.py)
    example="reviews.csv",
)
