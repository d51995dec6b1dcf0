"""`tunesmith data ...`: inspect, clean, convert, split, balance, augment, synth, review, log,
watch."""

from __future__ import annotations

import contextlib
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from tunesmith.cli.errors import user_errors
from tunesmith.utils.console import console
from tunesmith.utils.errors import TunesmithError

data_app = typer.Typer(help="Inspect, clean, convert and generate training data.")

Paths = Annotated[list[str], typer.Argument(help="Data files, or dataset names with --registry.")]
Format = Annotated[str, typer.Option("--format", help="auto | alpaca | sharegpt | openai")]
Registry = Annotated[
    Path | None, typer.Option(help="dataset_info.json or a tunesmith YAML registry.")
]
ModelSpec = Annotated[
    str | None, typer.Option("--model", help="local:<model ref> or an OpenAI-compatible URL.")
]
NumProc = Annotated[
    int, typer.Option("--num-proc", min=1, help="Processes that work on the records at once.")
]
EngineOpt = Annotated[
    str | None,
    typer.Option(
        "--engine",
        help="processes (the default with --num-proc > 1) | ray (a Ray cluster, or a local one "
        "with --num-proc CPUs; pip install 'tunesmith[ray]').",
    ),
]
WorkDir = Annotated[
    Path | None, typer.Option(help="Folder for the temporary dedup files (default: system temp).")
]


@data_app.command()
@user_errors
def inspect(
    args: Annotated[
        list[str], typer.Argument(help="Data files (or --registry names) and rule=value overrides.")
    ],
    tokenizer: Annotated[
        str | None, typer.Option(help="Model whose tokenizer counts tokens.")
    ] = None,
    cutoff_len: Annotated[int | None, typer.Option(help="Report the share truncated.")] = None,
    fmt: Format = "auto",
    registry: Registry = None,
    out: Annotated[Path | None, typer.Option(help="Report folder.")] = None,
    near_dup_threshold: float = 0.8,
    num_proc: NumProc = 1,
    engine: EngineOpt = None,
    work_dir: WorkDir = None,
):
    """Write a quality report (HTML + JSON); thresholds as overrides, e.g. pass_score=70."""
    from tunesmith.config.load import parse_override, set_dotted
    from tunesmith.data.quality.analyze import inspect_data, write_inspect_report
    from tunesmith.data.quality.rules import QualityRules

    settings: dict = {}
    for item in (a for a in args if "=" in a):
        set_dotted(settings, *parse_override(item))
    rules = _validated(QualityRules, settings, "inspect rules")
    files, fmt, columns = _sources([a for a in args if "=" not in a], fmt, registry)
    tok = _tokenizer(tokenizer) if tokenizer else None
    report = inspect_data(
        files,
        fmt,
        columns,
        tok,
        cutoff_len,
        rules,
        near_dup_threshold=near_dup_threshold,
        num_proc=num_proc,
        engine=engine,
        work_dir=work_dir,
    )
    if report["records"]["read"] == 0:
        raise TunesmithError(f"{', '.join(files)}: no records found (an empty file?)")
    html, js = write_inspect_report(report, out or Path(files[0]).parent / "inspect")
    console.print(f"quality score {report.get('quality_score')} — report: {html} ({js.name})")
    if images := report.get("images"):  # vision-language data
        size = lambda s: f"{s['min']}-{s['max']}" if s else "-"  # noqa: E731
        console.print(
            f"images: {images['images']} ({images['distinct_images']} distinct) in "
            f"{images['records_with_images']} records, width {size(images['width'])} px, "
            f"height {size(images['height'])} px; {images['rejected']} records with image "
            "problems"
            + (f" (first: {images['problems'][0]['reason']})" if images["rejected"] else "")
        )
    for advice in report.get("recommendations", []):
        console.print(f"- {advice}")


@data_app.command()
@user_errors
def clean(
    args: Annotated[list[str], typer.Argument(help="Data files and key=value overrides.")],
    out: Annotated[Path, typer.Option(help="Cleaned output file (.jsonl/.json/.csv/.parquet).")],
    config: Annotated[Path | None, typer.Option(help="Clean config YAML.")] = None,
    fmt: Format = "auto",
    registry: Registry = None,
    num_proc: NumProc = 1,
    engine: EngineOpt = None,
    work_dir: WorkDir = None,
):
    """Run the cleaning pipeline; every removed record goes to rejects.jsonl with its reason.

    Records stream through in shards (memory does not grow with the file), on --num-proc
    processes; the files written are the same for any --num-proc.
    """
    from tunesmith.config.load import parse_override, set_dotted
    from tunesmith.data.quality.clean import CleanConfig
    from tunesmith.data.quality.clean_stream import clean_files

    paths = [a for a in args if "=" not in a]
    settings = CleanConfig.from_yaml(config).model_dump() if config else {}
    for item in (a for a in args if "=" in a):
        set_dotted(settings, *parse_override(item))
    cfg = _validated(CleanConfig, settings, "clean")
    files, fmt, columns = _sources(paths, fmt, registry)
    summary = clean_files(
        files, cfg, out, None, fmt, columns, num_proc=num_proc, engine=engine, work_dir=work_dir
    )
    for step in summary["steps"]:
        console.print(
            f"{step['step']:>12}: {step['in']} in, {step['kept']} kept, "
            f"{step['rejected']} rejected, {step.get('modified', 0)} modified"
        )
    read, kept, rejected = summary["read"], summary["kept"], summary["rejected"]
    console.print(f"{read} read = {kept} kept + {rejected} rejected")
    for reason, count in summary["top_reasons"]:
        console.print(f"  {count} x {reason}", markup=False)
    if summary["read"] == 0:
        console.print(f"[yellow]warning:[/yellow] no records found in {', '.join(files)}")
    written = [summary.get(k) for k in ("output", "rejects_path", "stats_path", "version_path")]
    console.print("wrote " + ", ".join(str(path) for path in written if path))


@data_app.command()
@user_errors
def convert(
    src: Path,
    dst: Path,
    to: Annotated[str, typer.Option(help="alpaca | sharegpt | openai")],
    fmt: Format = "auto",
):
    """Convert between alpaca, sharegpt and openai formats (and file types, by suffix)."""
    from tunesmith.data.convert import convert_file

    stats = convert_file(src, dst, to, fmt)
    _version(dst, "convert", {"to": to, "from": fmt}, [src])
    console.print(f"wrote {dst}: {stats}")


@data_app.command()
@user_errors
def split(
    src: Path,
    out_dir: Annotated[Path, typer.Option(help="Folder for train / val / test files.")],
    ratios: Annotated[str, typer.Option(help="Comma-separated, summing to 1.")] = "0.8,0.1,0.1",
    seed: int = 42,
    stratify: Annotated[str | None, typer.Option(help="Field to stratify by (label).")] = None,
):
    """Seeded train / val / test split, stratified by a field if asked."""
    from tunesmith.data.convert import split_records, write_records

    records = _raw_records(src)
    parts = [float(r) for r in ratios.split(",")]
    key = (lambda r: r.get(stratify)) if stratify else None
    names = ["train", "val", "test"][: len(parts)] if len(parts) <= 3 else None
    names = names or [f"part{i}" for i in range(len(parts))]
    for name, chunk in zip(names, split_records(records, tuple(parts), seed, key), strict=True):
        target = out_dir / f"{name}{src.suffix}"
        out_dir.mkdir(parents=True, exist_ok=True)
        write_records(target, chunk)
        _version(target, "split", {"ratios": parts, "seed": seed, "part": name}, [src])
        console.print(f"{target}: {len(chunk)} records")


@data_app.command()
@user_errors
def balance(
    src: Path,
    dst: Path,
    by: Annotated[str, typer.Option(help="Field holding the label or task type.")] = "label",
    strategy: Annotated[str, typer.Option(help="oversample | undersample")] = "oversample",
    seed: int = 42,
):
    """Over- or under-sample records so every label has the same count."""
    from tunesmith.data.convert import balance_records, write_records

    records = _raw_records(src)
    if not any(by in r for r in records):
        raise TunesmithError(f"{src}: no record has the field '{by}' to balance by")
    balanced = balance_records(records, lambda r: r.get(by), strategy, seed)
    write_records(dst, balanced)
    _version(dst, "balance", {"by": by, "strategy": strategy, "seed": seed}, [src])
    console.print(f"wrote {dst}: {len(records)} -> {len(balanced)} records")


@data_app.command()
@user_errors
def augment(
    src: Path,
    dst: Path,
    method: Annotated[
        list[str], typer.Option(help="noise | synonym | paraphrase | backtranslate (repeatable)")
    ],
    synonyms: Annotated[Path | None, typer.Option(help="JSON {word: [synonyms]}.")] = None,
    model: ModelSpec = None,
    n: Annotated[int, typer.Option(help="New records per input record.")] = 1,
    seed: int = 42,
    fmt: Format = "auto",
):
    """Add noisy, synonym-replaced or paraphrased copies of records."""
    from tunesmith.data.augment import augment_records
    from tunesmith.data.convert import to_record, write_records
    from tunesmith.data.formats import load_conversations

    conversations, stats = load_conversations([src], fmt)
    table = json.loads(synonyms.read_text(encoding="utf-8")) if synonyms else None
    client = _client(model) if model else None
    new = augment_records(conversations, method, n, seed, client=client, synonyms=table)
    out_fmt = next(iter(stats["formats"].values()))
    originals = [to_record(c.messages, out_fmt) for c in conversations]
    augmented = [{**to_record(r["messages"], out_fmt), "origin": r["origin"]} for r in new]
    write_records(dst, originals + augmented)
    _version(dst, "augment", {"methods": method, "n": n, "seed": seed}, [src])
    console.print(f"wrote {dst}: {len(originals)} originals + {len(new)} augmented")


@data_app.command()
@user_errors
def synth(
    src: Annotated[
        Path, typer.Argument(help="Seed examples (self-instruct) or prompts (teacher).")
    ],
    dst: Path,
    model: ModelSpec = None,
    n: Annotated[int, typer.Option(help="Instructions to generate (self-instruct).")] = 50,
    teacher: Annotated[bool, typer.Option(help="Answer the prompts in SRC instead.")] = False,
    seed: int = 42,
    max_new_tokens: int = 512,
):
    """Self-Instruct new instructions from seeds, or teacher answers for distillation data."""
    from tunesmith.data.convert import to_record, write_records
    from tunesmith.data.formats import load_conversations
    from tunesmith.data.synth import read_prompts, self_instruct, teacher_answers

    if model is None:
        raise TunesmithError("--model is required: local:<model ref> or an OpenAI-compatible URL")
    client = _client(model)
    if teacher:
        prompts = [messages for _, messages in read_prompts(str(src))]
        rejects: list[dict] = []
        records = teacher_answers(
            prompts,
            client,
            max_new_tokens,
            reject=lambda prompt, reason: rejects.append({"prompt": prompt, "reason": reason}),
        )
        if rejects:  # answers left out (empty or cut short) are kept with their reason
            write_records(dst.with_name(f"{dst.stem}.rejects.jsonl"), rejects)
        stats = {"prompts": len(prompts), "answered": len(records), "left_out": len(rejects)}
    else:
        conversations, _ = load_conversations([src])
        seeds = [to_record(c.messages, "alpaca") for c in conversations]
        records, stats = self_instruct(seeds, client, n, seed)
    write_records(dst, records)
    _version(dst, "synth", {"teacher": teacher, "n": n, "seed": seed, "model": model}, [src])
    console.print(f"wrote {dst}: {stats}")


@data_app.command()
@user_errors
def review(
    src: Annotated[Path, typer.Argument(help="The dataset to review.")],
    out: Annotated[
        Path, typer.Option(help="The review file (--sample) or the reviewed dataset (--apply).")
    ],
    sample: Annotated[
        float | None, typer.Option(help="Share of records to review (default 0.1).")
    ] = None,
    apply: Annotated[
        Path | None, typer.Option(help="A filled-in review file: write the reviewed dataset.")
    ] = None,
    strata: Annotated[
        str, typer.Option(help="Comma-separated: record fields and/or length.")
    ] = "category,source,length",
    seed: int = 42,
):
    """Sample records for human review (accept / edit / reject), or apply the decisions."""
    from tunesmith.data.review import apply_review, write_review_file

    if apply is not None:
        if sample is not None:
            raise TunesmithError("give --sample (write a review file) or --apply, not both")
        _print_review(apply_review(src, apply, out))
        return
    names = [s.strip() for s in strata.split(",") if s.strip()]
    made = write_review_file(src, out, 0.1 if sample is None else sample, names, seed)
    console.print(
        f"wrote {out}: {made['sampled']} records from {made['strata']} strata to review; set "
        "each line's decision to accept, edit (with 'edited') or reject (with a 'reason'), "
        f"then: tunesmith data review {src} --apply {out} --out reviewed{src.suffix}",
        markup=False,
    )


def _print_review(summary: dict) -> None:
    rate = summary["acceptance_rate"]
    console.print(
        f"{summary['reviewed']} reviewed: {summary['accepted']} accepted, "
        f"{summary['modified']} modified, {summary['rejected']} rejected, "
        f"{summary['undecided']} undecided; acceptance rate "
        + (f"{rate:.0%}" if rate is not None else "n/a (nothing decided)")
    )
    console.print(
        f"{summary['read']} read = {summary['kept']} kept + {summary['rejected']} rejected"
    )
    paths = (summary[k] for k in ("output", "rejects_path", "version_path"))
    console.print("wrote " + ", ".join(paths), markup=False)


@data_app.command()
@user_errors
def log(path: Path):
    """Print the lineage of a dataset (parents, operations) with metric deltas."""
    from tunesmith.data.quality.version import format_lineage, lineage

    console.print(format_lineage(lineage(path)), markup=False)


@data_app.command()
@user_errors
def watch(
    path: Annotated[str, typer.Argument(help="JSONL file to follow, or - for stdin.")] = "-",
    follow: Annotated[bool, typer.Option(help="Keep reading lines appended to the file.")] = False,
    min_pass_rate: float = 0.8,
    alerts: Annotated[Path | None, typer.Option(help="Append alerts to this JSONL file.")] = None,
):
    """Score records as they arrive; alert when the rolling pass rate drops."""
    from tunesmith.data.quality.monitor import QualityMonitor, follow_file, watch_stream

    def sink(alert: dict) -> None:
        console.print(f"[yellow]alert:[/yellow] {escape(json.dumps(alert, ensure_ascii=False))}")
        if alerts:
            with alerts.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(alert, ensure_ascii=False) + "\n")

    monitor = QualityMonitor(min_pass_rate=min_pass_rate, alert_sink=sink)
    with contextlib.ExitStack() as stack:
        if path == "-":
            lines, source = sys.stdin, "<stdin>"
        elif follow:
            lines, source = follow_file(Path(path)), path
        else:
            lines, source = stack.enter_context(Path(path).open(encoding="utf-8")), path
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends a follow: print the summary
            watch_stream(lines, monitor, source)
    console.print(json.dumps(monitor.dashboard(), ensure_ascii=False))


def _sources(names: list[str], fmt: str, registry: Path | None) -> tuple[list[str], str, dict]:
    """Files, format and columns: paths as given, or dataset names looked up in a registry."""
    if not names:
        raise TunesmithError("give at least one data file (or a dataset name with --registry)")
    if registry is None:
        return names, fmt, {}
    from tunesmith.data.registry import dataset_source

    return dataset_source(registry, names)


def _raw_records(path: Path) -> list[dict]:
    from tunesmith.data.readers import read_records

    return [record.data for record in read_records(path)]


def _version(path: Path, operation: str, params: dict, parents: list[Path]) -> None:
    from tunesmith.data.quality.version import write_version

    write_version(
        Path(path), _raw_records(Path(path)), operation, params, [Path(p) for p in parents]
    )


def _tokenizer(ref: str):
    from tunesmith.config.schema import ModelConfig
    from tunesmith.models.load import load_tokenizer
    from tunesmith.models.resolve import resolve_model

    return load_tokenizer(resolve_model(ref), ModelConfig(name_or_path=ref))


def _client(spec: str):
    from tunesmith.runs.inference import make_client

    return make_client(spec)


def _validated(model_cls, settings: dict, source: str):
    from pydantic import ValidationError

    try:
        return model_cls.model_validate(settings)
    except ValidationError as exc:
        lines = [_explain(e, list(model_cls.model_fields)) for e in exc.errors()]
        raise TunesmithError(f"{source}: invalid settings\n  " + "\n  ".join(lines)) from None


def _explain(error: dict, allowed: list[str]) -> str:
    from tunesmith.config.load import closest

    key = ".".join(map(str, error["loc"]))
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'{closest(key, allowed)}; allowed: {', '.join(allowed)}"
    return f"{key}: got {error['input']!r}: {error['msg']}"


# --- preference data: pairs, redteam, revise (data/preference_tools.py) ----------------


def _write_built(dst: Path, built, what: str) -> None:
    from tunesmith.data.convert import write_records

    write_records(dst, built.records)
    if built.dropped:  # nothing disappears silently: the left-out records keep their reason
        rejects = [{**record, "reason": reason} for record, reason in built.dropped]
        write_records(dst.with_name(f"{dst.stem}.rejects.jsonl"), rejects)
    console.print(f"wrote {dst}: {len(built.records)} {what}, {len(built.dropped)} left out")


@data_app.command()
@user_errors
def pairs(
    src: Annotated[Path, typer.Argument(help="Prompts (any data file; answers are ignored).")],
    dst: Path,
    model: ModelSpec = None,
    judge: Annotated[
        str | None, typer.Option(help="Judge: local:<model ref> or an OpenAI-compatible URL.")
    ] = None,
    reward_model: Annotated[
        Path | None, typer.Option(help="A run folder of train.stage=rm to score with.")
    ] = None,
    k: Annotated[int, typer.Option(help="Answers sampled per prompt.")] = 4,
    temperature: float = 0.9,
    max_new_tokens: int = 256,
):
    """Sample K answers per prompt and keep the best (chosen) and worst (rejected) by score."""
    from tunesmith.data.preference_tools import judge_scorer, sample_pairs
    from tunesmith.data.synth import read_prompts

    if model is None or (judge is None) == (reward_model is None):
        raise TunesmithError("give --model, and exactly one of --judge or --reward-model")
    if reward_model is not None:
        from tunesmith.train.reward import RewardScorer

        score = RewardScorer(reward_model)
    else:
        score = judge_scorer(_client(judge))
    prompts = [messages for _, messages in read_prompts(str(src))]
    built = sample_pairs(prompts, _client(model), score, k, temperature, max_new_tokens)
    _write_built(dst, built, "pairs")
    _version(dst, "pairs", {"model": model, "judge": judge, "k": k}, [src])


@data_app.command()
@user_errors
def redteam(
    dst: Path,
    model: ModelSpec = None,
    category: Annotated[
        list[str] | None, typer.Option(help="Attack categories (default: all).")
    ] = None,
    per_template: Annotated[int, typer.Option(help="Fillings per attack template.")] = 2,
    max_new_tokens: int = 256,
):
    """Attack a model with the seeds' red-team templates; failures become refusal pairs."""
    from tunesmith.data.convert import write_records
    from tunesmith.data.preference_tools import redteam_prompts, run_redteam
    from tunesmith.evaluation.safety import is_refusal

    if model is None:
        raise TunesmithError("--model is required: local:<model ref> or an OpenAI-compatible URL")
    attacks = redteam_prompts(category, per_template)
    results, built = run_redteam(attacks, _client(model), is_refusal, max_new_tokens=max_new_tokens)
    write_records(dst.with_name(f"{dst.stem}.results.jsonl"), results)
    by_category = Counter(r["category"] for r in results if not r["refused"])
    write_records(dst, built.records)
    console.print(
        f"{len(built.records)} of {len(attacks)} attacks not refused {dict(by_category)}; "
        f"wrote {dst} (pairs) and {dst.stem}.results.jsonl"
    )


@data_app.command()
@user_errors
def revise(
    src: Annotated[Path, typer.Argument(help="(prompt, answer) data: alpaca/sharegpt/openai.")],
    dst: Path,
    model: ModelSpec = None,
    principle: Annotated[
        list[str] | None, typer.Option(help="A principle (repeat the option; default: the seed's).")
    ] = None,
    max_new_tokens: int = 256,
):
    """Constitutional critique-and-revise: (prompt, revised) chosen over the original answer."""
    from tunesmith.data.formats import load_conversations
    from tunesmith.data.preference_tools import critique_and_revise

    if model is None:
        raise TunesmithError("--model is required: local:<model ref> or an OpenAI-compatible URL")
    conversations, _ = load_conversations([src])
    items = [(c.messages[:-1], c.messages[-1]["content"]) for c in conversations]
    built = critique_and_revise(items, _client(model), principle, max_new_tokens)
    _write_built(dst, built, "revised pairs")
    _version(dst, "revise", {"model": model, "principles": principle}, [src])
