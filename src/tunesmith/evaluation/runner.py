"""`tunesmith eval`: evaluate a model (and a baseline) on the same items, compare, explain, report.

Read top to bottom: the test items are read once; each model is loaded once into an engine, runs
every task on those items and is freed before the next one loads (two models never share
memory); then the cross-model steps (paired comparison, judge, error analysis) run and
`eval.json` plus `reports/eval.html` are written into the run folder.

Per-item scores are lists aligned with the items (None: the metric does not apply to the item),
so the comparison pairs them and the error analysis can point at single examples.
"""

from __future__ import annotations

import gc
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tunesmith.config.eval import DATA_TASKS, EvalConfig
from tunesmith.config.schema import ModelConfig, OutputConfig, RunConfig
from tunesmith.data.formats import RecordError, detect_format, to_conversation
from tunesmith.data.multimodal import content_text, has_images, image_question
from tunesmith.data.readers import RawRecord, read_records
from tunesmith.data.render import IGNORE_INDEX, ToolChat, prompt_ids, tokenize_conversation
from tunesmith.data.tools import uses_tools
from tunesmith.models.perplexity import padded_nll
from tunesmith.runs.folder import RunFolder
from tunesmith.utils.console import console
from tunesmith.utils.errors import ConfigError, DataError

# Tasks that need the model's replies to the test items.
REPLY_TASKS = frozenset(
    {"generation", "similarity", "classification", "instructions", "judge", "tool_calls"}
)
_PLACEHOLDER = "\u2400"  # stands in for a missing reference while a record is validated


@dataclass
class Item:
    id: int
    where: str  # file:line
    messages: list[dict]  # the prompt: every turn before the last assistant turn
    reference: str | None  # the last assistant turn; None for reference-free items
    source: str
    category: str | None = None
    label: str | None = None
    constraints: list[dict] | None = None
    text_pair: str | None = None  # a classification test record's second text
    reference_calls: list[dict] | None = None  # a tool-call reference (messages: a ToolChat)

    @property
    def prompt(self) -> str:
        return content_text(self.messages[-1]["content"])  # (an image question: its text)

    @property
    def length(self) -> int:
        """Prompt length in characters (system and earlier turns included)."""
        return sum(len(content_text(m["content"])) for m in self.messages)

    def to_json(self) -> dict:
        return {**asdict(self), "prompt": self.prompt, "length": self.length}


@dataclass
class Target:
    """One model to evaluate: a base model config and/or an adapter, run or tuned-model folder."""

    role: str  # "model" | "baseline"
    model_cfg: ModelConfig | None
    adapter: Path | None = None

    def describe(self) -> dict:
        name = self.model_cfg.name_or_path if self.model_cfg else "(the run's base model)"
        return {"model": name, "adapter": str(self.adapter) if self.adapter else None}


@dataclass
class Outcome:
    """What one model produced: replies, per-item scores, and task summaries."""

    predictions: list[str | None] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)
    scores: dict[str, list[float | None]] = field(default_factory=dict)
    tasks: dict[str, dict] = field(default_factory=dict)


# --- the job ---------------------------------------------------------------------------


def run_eval(config: RunConfig, run_or_out_dir: str | Path | None = None) -> dict:
    """Evaluate as `config.eval` says; results go to `run_or_out_dir` when it is a run folder,
    else to a new `eval-<time>` folder under it (or under output.dir). Returns eval.json's data."""
    from tunesmith.evaluation import classifier as cls

    given = Path(run_or_out_dir) if run_or_out_dir else None
    run_dir = given if given and RunFolder(given).config_path.is_file() else None
    target = evaluated_target(config, run_dir)
    classifier = cls.classifier_run(target.adapter) if not config.eval.model else None
    if classifier:  # labelled test files scored by the classifier (evaluation/classifier.py)
        config = cls.for_classifier(config, classifier)
    ev = config.eval
    baseline = baseline_target(ev, target)
    files = ev.data or config.data.eval
    check_tasks(ev, files)
    if classifier:
        cls.check_same_labels(classifier, baseline and cls.classifier_run(baseline.adapter))
        items = cls.load_classifier_items(ev, files, classifier)
    else:
        items = load_items(files, ev.format, ev.columns, ev.max_items) if _needs_items(ev) else []
    evaluate = cls.evaluate_classifier if classifier else evaluate_target
    out_dir = given if given and not run_dir else Path(config.output.dir)
    run = (
        RunFolder(run_dir) if run_dir else RunFolder.create(OutputConfig(dir=str(out_dir)), "eval")
    )

    started = time.perf_counter()
    outcomes = {"model": evaluate(target, items, config)}
    if baseline is not None:
        outcomes["baseline"] = evaluate(baseline, items, config)
    report = _assemble(config, run, items, {"model": target, "baseline": baseline}, outcomes)
    report["seconds"] = round(time.perf_counter() - started, 2)
    run.write_json("eval.json", report)
    from tunesmith.evaluation.report import write_report

    report_path = write_report(run, report)
    console.print(f"eval: {run.root / 'eval.json'} and {report_path}")
    return report


def evaluated_target(config: RunConfig, run_dir: Path | None) -> Target:
    ev = config.eval
    adapter = Path(ev.adapter) if ev.adapter else run_dir
    if ev.model:
        return Target("model", ModelConfig(name_or_path=ev.model), adapter)
    # a run or adapter folder knows its base model; a bare model comes from the model section
    return Target("model", None if adapter else config.model, adapter)


def baseline_target(ev: EvalConfig, target: Target) -> Target | None:
    if ev.baseline == "none":
        return None
    if ev.baseline == "base":
        if target.adapter is None:
            return None  # the evaluated model is the base model: nothing to compare
        from tunesmith.runs.trained import open_run

        base_cfg = target.model_cfg or open_run(target.adapter).model_cfg
        if base_cfg is None:
            raise ConfigError(
                f"eval.baseline: 'base' needs the base model of '{target.adapter}'; set eval.model"
            )
        return Target("baseline", base_cfg)
    from tunesmith.runs.trained import is_trained_run

    if is_trained_run(ev.baseline):
        return Target("baseline", None, Path(ev.baseline))
    return Target("baseline", ModelConfig(name_or_path=ev.baseline))


def check_tasks(ev: EvalConfig, files: list[str]) -> None:
    """Settings a task needs, named by key, before any model loads."""
    if not ev.tasks:
        raise ConfigError("eval.tasks: empty; e.g. eval.tasks=[generation,perplexity]")
    need_data = sorted(DATA_TASKS & set(ev.tasks))
    if need_data and not files:
        raise ConfigError(
            f"eval.data: tasks {need_data} need test files; set eval.data=[test.jsonl] "
            "(or data.eval in the run's config)"
        )
    if "judge" in ev.tasks and not ev.judge.model:
        raise ConfigError(
            "eval.judge.model: task 'judge' needs a judge, e.g. eval.judge.model="
            "local:smollm2-135m-instruct or http://127.0.0.1:8000/v1#my-model"
        )
    if ev.judge.mode == "pairwise" and "judge" in ev.tasks and ev.baseline == "none":
        raise ConfigError("eval.judge.mode: 'pairwise' compares two models; set eval.baseline")


def _needs_items(ev: EvalConfig) -> bool:
    return bool((DATA_TASKS | {"judge", "speed"}) & set(ev.tasks))


# --- test items ----------------------------------------------------------------------------


def load_items(
    files: list[str], fmt: str = "auto", columns: dict | None = None, max_items: int | None = None
) -> list[Item]:
    """Test items from chat data in any supported format; the last assistant turn is the
    reference. Records without one (instruction-following items) get reference None."""
    items: list[Item] = []
    for path in files:
        file_fmt = None if fmt == "auto" else fmt
        for record in read_records(path):
            try:
                file_fmt = file_fmt or detect_format(record.data, columns)
                make = _image_item if has_images(record.data) else _item
                items.append(make(record, file_fmt, columns or {}, len(items)))
            except RecordError as exc:
                raise DataError(f"{record.where}: {exc}") from None
            if max_items and len(items) >= max_items:
                return items
    if not items:
        raise DataError(f"eval.data: no test items in {files}")
    return items


def _item(record: RawRecord, fmt: str, columns: dict, index: int) -> Item:
    try:
        conversation = to_conversation(record, fmt, columns)
    except RecordError as first:
        try:  # a record may leave the answer out: add a stand-in only to validate the rest
            filled = RawRecord(record.source, record.line, _with_answer(record.data, fmt, columns))
            conversation = to_conversation(filled, fmt, columns)
        except RecordError:
            raise first from None
    messages, data = conversation.messages, record.data
    reference = messages[-1]["content"]
    calls = messages[-1].get("tool_calls")
    prompt = messages[:-1]
    if conversation.tools or uses_tools(messages):  # the prompt offers its tools
        prompt = ToolChat(prompt, conversation.tools)
        reference = json.dumps([c["function"] for c in calls]) if calls else reference
    constraints = data.get("constraints")
    if constraints is not None and not isinstance(constraints, list):
        raise RecordError("field 'constraints' must be a list of {type, value} objects")
    return Item(
        id=index,
        where=record.where,
        messages=prompt,
        reference=None if reference == _PLACEHOLDER else reference,
        source=str(data.get("source") or Path(record.source).name),
        category=_text(data.get("category")),
        label=_text(data.get("label")),
        constraints=constraints,
        reference_calls=calls,
    )


def _image_item(record: RawRecord, fmt: str, columns: dict, index: int) -> Item:
    """A question about images (a vision-language model's test item; data/multimodal.py)."""
    messages, reference = image_question(record, fmt, columns)
    data = record.data
    return Item(
        id=index,
        where=record.where,
        messages=messages,
        reference=reference,
        source=str(data.get("source") or Path(record.source).name),
        category=_text(data.get("category")),
        label=_text(data.get("label")),
    )


def _with_answer(data: dict, fmt: str, columns: dict) -> dict:
    data = dict(data)
    if fmt == "alpaca":
        data[columns.get("output", "output")] = _PLACEHOLDER
    elif fmt == "openai":
        key = columns.get("messages", "messages")
        data[key] = [*(data.get(key) or []), {"role": "assistant", "content": _PLACEHOLDER}]
    else:
        key = columns.get("conversations", "conversations")
        role, content = columns.get("role_tag", "from"), columns.get("content_tag", "value")
        turn = {role: columns.get("assistant_tag", "gpt"), content: _PLACEHOLDER}
        data[key] = [*(data.get(key) or []), turn]
    return data


def _text(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


# --- one model -------------------------------------------------------------------------------


def evaluate_target(target: Target, items: list[Item], config: RunConfig) -> Outcome:
    """Load the model once, run every per-model task, free it."""
    from tunesmith.runs.inference import create_engine

    ev = config.eval
    described = target.describe()
    adapter = f" + {described['adapter']}" if described["adapter"] else ""
    console.rule(f"eval: {target.role} {described['model']}{adapter}")
    engine = create_engine(target.model_cfg, target.adapter, ev.engine, ev.batch_size)
    outcome = Outcome()
    try:
        if REPLY_TASKS & set(ev.tasks) or "robustness" in ev.tasks:
            _reply(engine, items, ev, outcome)
        for task in ev.tasks:
            if task in MODEL_TASKS:
                MODEL_TASKS[task](engine, items, config, outcome, target)
    finally:
        del engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return outcome


def _params(ev: EvalConfig):
    from tunesmith.models.engine import GenerationParams

    return GenerationParams(max_new_tokens=ev.max_new_tokens)


def _reply(engine, items: list[Item], ev: EvalConfig, outcome: Outcome) -> None:
    """Replies to every item; a prompt longer than the context minus max_new_tokens keeps its
    end (evaluation/context.py) and is counted in prompts_cut_to_context."""
    from tunesmith.evaluation.context import generate_fitted, model_context

    started = time.perf_counter()
    conversations = [item.messages for item in items]
    completions, cut = generate_fitted(engine, conversations, _params(ev), "replies")
    seconds = time.perf_counter() - started
    outcome.predictions = [c.text.strip() for c in completions]
    outcome.finish_reasons = [c.finish_reason for c in completions]
    tokens = sum(c.completion_tokens for c in completions)
    outcome.tasks["replies"] = {
        "items": len(items),
        "seconds": round(seconds, 3),
        "generated_tokens": tokens,
        "batched_tokens_per_s": tokens / seconds if seconds > 0 else None,
        "cut_by_max_new_tokens": outcome.finish_reasons.count("length"),
        "prompts_cut_to_context": cut,
        "context_tokens": model_context(engine),
    }


def _with_reference(items: list[Item], outcome: Outcome) -> tuple[list[int], list[str], list[str]]:
    keep = [i for i, item in enumerate(items) if item.reference is not None]
    return keep, [outcome.predictions[i] for i in keep], [items[i].reference for i in keep]


def _spread(values: list[float], keep: list[int], n: int) -> list[float | None]:
    """Scores of the kept items back onto all n item positions (None elsewhere)."""
    full: list[float | None] = [None] * n
    for i, value in zip(keep, values, strict=True):
        full[i] = value
    return full


def _generation(engine, items, config, outcome: Outcome, target) -> None:
    from tunesmith.evaluation.metrics import corpus_scores, generation_scores, length_stats

    keep, predictions, references = _with_reference(items, outcome)
    if not keep:
        outcome.tasks["generation"] = {"skipped": "no item has a reference answer"}
        return
    for metric, values in generation_scores(predictions, references).items():
        outcome.scores[metric] = _spread(values, keep, len(items))
    outcome.tasks["generation"] = {
        "corpus": corpus_scores(predictions, references),
        "lengths": length_stats(outcome.predictions),
        "reference_lengths": length_stats(references),
    }


def _similarity(engine, items, config, outcome: Outcome, target) -> None:
    from tunesmith.evaluation.metrics import embedding_similarity

    keep, predictions, references = _with_reference(items, outcome)
    values = embedding_similarity(predictions, references)
    outcome.scores["similarity"] = _spread(values, keep, len(items))
    outcome.tasks["similarity"] = {"mean": sum(values) / len(values) if values else None}


def _perplexity(engine, items, config, outcome: Outcome, target) -> None:
    model = getattr(engine, "model", None)
    keep = [i for i, item in enumerate(items) if item.reference is not None]
    if getattr(engine, "reads_images", False):  # its prompts hold images: not scored here
        outcome.tasks["perplexity"] = {"skipped": "a vision-language model (text models only)"}
        return
    if model is None or not keep:
        why = "needs the transformers engine" if model is None else "no reference answers"
        outcome.tasks["perplexity"] = {"skipped": why}
        return
    conversations = [
        [*items[i].messages, {"role": "assistant", "content": items[i].reference}] for i in keep
    ]
    sums = response_nll(model, engine.tokenizer, conversations, config.data.cutoff_len)
    per_item = [s / n if n else None for s, n in sums]
    outcome.scores["nll"] = _spread(per_item, keep, len(items))
    nll, tokens = sum(s for s, _ in sums), sum(n for _, n in sums)
    outcome.tasks["perplexity"] = {
        "perplexity": math.exp(nll / tokens) if tokens else None,
        "mean_nll": nll / tokens if tokens else None,
        "tokens": tokens,
    }


def _classification(engine, items, config, outcome: Outcome, target) -> None:
    from tunesmith.evaluation.classification import classification_metrics, most_confused

    keep, predictions, references = _with_reference(items, outcome)
    labels = sorted(set(references))
    guesses = [read_label(p, labels) for p in predictions]
    report = classification_metrics(references, guesses, labels)
    report["most_confused"] = most_confused(report, config.eval.worst_n)
    correct = [float(g == r) for g, r in zip(guesses, references, strict=True)]
    outcome.scores["label_correct"] = _spread(correct, keep, len(items))
    outcome.tasks["classification"] = report


def read_label(reply: str, labels: list[str]) -> str:
    """A reply read as a label: the declared label it equals (case and trailing punctuation
    ignored), else its first line as given."""
    first = (reply.strip().splitlines() or [""])[0].strip().strip(".。!！ ").strip()
    by_lower = {label.lower(): label for label in labels}
    return by_lower.get(first.lower(), first[:40])


def _instructions(engine, items, config, outcome: Outcome, target) -> None:
    from tunesmith.evaluation.instructions import check_constraints, summarize_by_type

    keep = [i for i, item in enumerate(items) if item.constraints]
    if not keep:
        outcome.tasks["instructions"] = {"skipped": "no item has a 'constraints' list"}
        return
    results = []
    for i in keep:
        try:
            results.append(check_constraints(outcome.predictions[i], items[i].constraints))
        except DataError as exc:
            raise DataError(f"{items[i].where}: {exc}") from None
    passed = [sum(r["passed"] for r in checks) / len(checks) for checks in results]
    outcome.scores["instructions"] = _spread(passed, keep, len(items))
    outcome.tasks["instructions"] = {
        "by_type": summarize_by_type(results),
        "all_passed": sum(p == 1.0 for p in passed),
        "items": len(keep),
    }


def _speed(engine, items, config, outcome: Outcome, target: Target) -> None:
    from tunesmith.evaluation.context import fit_prompt, prompt_budget
    from tunesmith.evaluation.speed import measure_speed, size_on_disk

    n = config.eval.speed.requests
    params = _params(config.eval)
    budget = prompt_budget(engine, params.max_new_tokens)
    if hasattr(engine, "prompt_length"):  # a vision-language model: image prompts as they are
        prompts = [item.messages for item in items[:n]]
    else:
        prompts = [fit_prompt(engine.tokenizer, i.messages, budget).messages for i in items[:n]]
    prompts = prompts or [[{"role": "user", "content": "Hello!"}]]
    outcome.tasks["speed"] = {
        **measure_speed(engine, prompts, params, label="speed"),
        "size_on_disk_mb": size_on_disk(*weight_paths(target)) / 1024**2,
    }


def weight_paths(target: Target) -> list[Path]:
    """Folders or files holding the target's weights: the artifact, and the base it adapts."""
    from tunesmith.models.resolve import resolve_model
    from tunesmith.runs.trained import open_run

    paths, cfg = [], target.model_cfg
    if target.adapter is not None:
        run = open_run(target.adapter, cfg)
        paths.append(run.artifact)
        if not run.is_adapter:
            return paths  # a full tuned model stands alone
        cfg = run.model_cfg
    if cfg is not None:
        base = Path(resolve_model(cfg.name_or_path).path)
        if base.exists():
            paths.append(base)
    return paths


def _robustness(engine, items, config, outcome: Outcome, target) -> None:
    from tunesmith.evaluation.context import generate_fitted
    from tunesmith.evaluation.robustness import consistency, robustness_summary

    settings = config.eval.robustness
    chosen = list(range(min(settings.max_items, len(items))))
    original = [outcome.predictions[i] for i in chosen]
    per_kind = {}
    for kind in settings.perturbations:
        conversations = [_perturbed(items[i].messages, kind, settings.seed + i) for i in chosen]
        completions, _ = generate_fitted(
            engine, conversations, _params(config.eval), f"robustness {kind}"
        )
        per_kind[kind] = consistency(original, [c.text.strip() for c in completions], "text")
    outcome.tasks["robustness"] = robustness_summary(per_kind)


def _perturbed(messages: list[dict], kind: str, seed: int) -> list[dict]:
    from tunesmith.evaluation.robustness import perturb

    last = messages[-1]
    content = last["content"]
    if isinstance(content, list):  # an image question: its text perturbed, its images kept
        content = [
            {**p, "text": perturb(p["text"], kind, seed)} if p.get("type") == "text" else p
            for p in content
        ]
        return [*messages[:-1], {**last, "content": content}]
    return [*messages[:-1], {**last, "content": perturb(content, kind, seed)}]


def _safety(engine, items, config, outcome: Outcome, target) -> None:
    from tunesmith.evaluation.context import generate_fitted
    from tunesmith.evaluation.safety import load_probes, safety_summary, scan_sensitive

    settings = config.eval.safety
    probes = load_probes(Path(settings.probes) if settings.probes else None)
    conversations = [[{"role": "user", "content": p["prompt"]}] for p in probes]
    completions, _ = generate_fitted(engine, conversations, _params(config.eval), "safety")
    replies = [c.text.strip() for c in completions]
    words = settings.sensitive_words or None
    summary = safety_summary(probes, replies, words)
    flagged = [
        {"id": i, "words": hits}
        for i, reply in enumerate(outcome.predictions)
        if reply and (hits := scan_sensitive(reply, words))
    ]
    outcome.tasks["safety"] = {**summary, "test_items_flagged": flagged}


def _benchmark(engine, items, config, outcome: Outcome, target) -> None:
    from tunesmith.evaluation.benchmarks import run_benchmark

    settings = config.eval.benchmark
    outcome.tasks["benchmark"] = run_benchmark(
        engine,
        settings.file,
        shots=settings.shots,
        mode=settings.mode,
        max_items=settings.max_items,
    )


def _tool_calls(engine, items, config, outcome: Outcome, target) -> None:
    from tunesmith.evaluation.tool_calls import evaluate_calls

    keep = [i for i, item in enumerate(items) if isinstance(item.messages, ToolChat)]
    if not keep:
        outcome.tasks["tool_calls"] = {"skipped": "no item offers tools"}
        return
    report = evaluate_calls(
        [outcome.predictions[i] for i in keep],
        [items[i].reference_calls for i in keep],
        engine.tokenizer.chat_template,
    )
    for metric in ("valid_call", "right_function", "exact_arguments", "partial_arguments"):
        values = [row.get(metric) for row in report["items"]]
        outcome.scores[metric] = _spread(values, keep, len(items))
    outcome.tasks["tool_calls"] = {k: v for k, v in report.items() if k != "items"}


MODEL_TASKS = {
    "generation": _generation,
    "similarity": _similarity,
    "perplexity": _perplexity,
    "classification": _classification,
    "instructions": _instructions,
    "robustness": _robustness,
    "safety": _safety,
    "benchmark": _benchmark,
    "tool_calls": _tool_calls,
    "speed": _speed,  # last: its timings should not include first-call warm-up of other tasks
}


# --- response-only perplexity ------------------------------------------------------------------


@torch.no_grad()
def response_nll(
    model, tokenizer, conversations: list[list[dict]], cutoff_len: int = 1024, batch_size: int = 8
) -> list[tuple[float, int]]:
    """(summed next-token NLL, tokens scored) of each conversation's last assistant turn.

    exp(sum of sums / sum of tokens) is the response-only perplexity: the exp of the mean
    masked loss the trainer would report on these conversations' final answers."""
    from tunesmith.evaluation.context import tracked

    rows = [_response_labels(tokenizer, conv, cutoff_len) for conv in conversations]
    was_training = model.training
    model.eval()
    starts = range(0, len(rows), batch_size)
    try:
        return [
            pair
            for start in tracked("perplexity", starts, len(starts))
            for pair in padded_nll(model, rows[start : start + batch_size], tokenizer.pad_token_id)
        ]
    finally:
        model.train(was_training)


def _response_labels(tokenizer, conversation: list[dict], cutoff_len: int):
    example = tokenize_conversation(tokenizer, conversation, cutoff_len)
    prompt_len = len(prompt_ids(tokenizer, conversation[:-1]))  # earlier answers are context
    labels = [IGNORE_INDEX] * min(prompt_len, len(example.labels)) + example.labels[prompt_len:]
    return example.input_ids, labels


# --- across models -------------------------------------------------------------------------------


def _assemble(
    config: RunConfig,
    run: RunFolder,
    items: list[Item],
    targets: dict[str, Target | None],
    outcomes: dict[str, Outcome],
) -> dict:
    from tunesmith.evaluation.compare import compare_scores
    from tunesmith.evaluation.errors import analyze_errors

    ev = config.eval
    report: dict = {
        "run": str(run.root),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "eval": ev.model_dump(mode="json"),
        "models": {role: t.describe() for role, t in targets.items() if t is not None},
        "items": [item.to_json() for item in items],
        "results": {role: asdict(outcome) for role, outcome in outcomes.items()},
    }
    model = outcomes["model"]
    if "judge" in ev.tasks:  # before the comparison: rubric scores are per-item scores too
        report["judge"] = run_judge(ev, items, outcomes)
        report["results"] = {role: asdict(outcome) for role, outcome in outcomes.items()}
    if "baseline" in outcomes:
        b = ev.bootstrap
        report["compare"] = compare_scores(
            *(_paired_scores(outcomes[r]) for r in ("baseline", "model")),
            b.n_resamples,
            b.confidence,
            b.seed,
        )
    if model.predictions:
        confused = model.tasks.get("classification", {}).get("most_confused")
        report["errors"] = analyze_errors(
            [item.to_json() for item in items],
            model.predictions,
            model.scores,
            ev.worst_n,
            ev.length_buckets,
            confused,
        )
    return report


def _paired_scores(outcome: Outcome) -> dict[str, list[float | None]]:
    """Per-item test-set scores, plus benchmark correctness (its own items, the same for both
    models) so that the benchmark gets a paired CI too."""
    scores = dict(outcome.scores)
    benchmark = outcome.tasks.get("benchmark")
    if benchmark:
        scores["benchmark_correct"] = [float(r["correct"]) for r in benchmark["results"]]
    return scores


def run_judge(ev: EvalConfig, items: list[Item], outcomes: dict[str, Outcome]) -> dict:
    """Rubric scores of each model's replies, or pairwise preference of model over baseline."""
    from tunesmith.evaluation.judge import judge_pairwise, judge_rubric
    from tunesmith.runs.inference import make_client

    client = make_client(ev.judge.model)
    chosen = items[: ev.judge.max_items] if ev.judge.max_items else items
    if ev.judge.mode == "pairwise":
        pairs = [
            {
                "question": item.prompt,
                "answer_a": outcomes["baseline"].predictions[item.id],
                "answer_b": outcomes["model"].predictions[item.id],
            }
            for item in chosen
        ]
        verdicts = judge_pairwise(client, pairs, max_new_tokens=ev.judge.max_new_tokens)
        return {"mode": "pairwise", "result": verdicts}
    result = {"mode": "rubric"}
    for role, outcome in outcomes.items():
        asked = [
            {"question": it.prompt, "answer": outcome.predictions[it.id], "reference": it.reference}
            for it in chosen
        ]
        result[role] = judge_rubric(client, asked, max_new_tokens=ev.judge.max_new_tokens)
        overall = [row["overall"] for row in result[role]["items"]]
        outcome.scores["judge_overall"] = _spread(overall, [it.id for it in chosen], len(items))
    return result
