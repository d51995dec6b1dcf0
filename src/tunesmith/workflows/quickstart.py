"""The quickstart: teach the embedded SmolLM2 a new identity on CPU and show before / after.

Base answers are generated first, then a LoRA run trains on the bundled identity data, then the
tuned model (reloaded from the run folder, as a user would) answers the same held-out identity
questions, which the training set does not contain, and a few general ones.

The training set also replays the base model's own answers to general prompts, so the tune
changes who the assistant says it is and little else (without it, the model starts answering
unrelated questions with its name).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from rich.table import Table

from tunesmith.config.load import load_config
from tunesmith.models.generate import generate_replies
from tunesmith.models.load import load_model_and_tokenizer
from tunesmith.runs.folder import RunFolder
from tunesmith.runs.trained import load_for_inference
from tunesmith.train.sft import run_sft
from tunesmith.utils.console import console
from tunesmith.utils.html import html_page
from tunesmith.utils.llm import Reply

DATA = files("tunesmith.workflows") / "quickstart_data"
CONFIG = files("tunesmith.workflows") / "quickstart.yaml"
MAX_NEW_TOKENS = 64


@dataclass
class Answer:
    kind: str  # "identity" (held out) or "general"
    question: str
    base: str
    tuned: str

    def names(self, name: str) -> tuple[bool, bool]:
        """Whether the base and the tuned answer contain the name."""
        return name.lower() in self.base.lower(), name.lower() in self.tuned.lower()


def run_quickstart(
    name: str = "Tessa", author: str = "Tunesmith Labs", overrides: list[str] | None = None
) -> tuple[RunFolder, list[Answer], dict]:
    started = time.perf_counter()
    config = load_config(Path(str(CONFIG)), overrides)
    run = RunFolder.create(config.output, "quickstart")
    questions = [("identity", q["question"]) for q in _read("identity_heldout.jsonl")]
    questions += [("general", q["question"]) for q in _read("general.jsonl")]
    prompts = [[{"role": "user", "content": _fill(q, name, author)}] for _, q in questions]
    replay = [[{"role": "user", "content": q["question"]}] for q in _read("general_replay.jsonl")]

    console.rule("1/3 base model answers")
    model, tokenizer, _ = load_model_and_tokenizer(config.model)
    base = generate_replies(model, tokenizer, prompts + replay, MAX_NEW_TOKENS, batch_size=16)
    del model
    base, replay_answers = base[: len(prompts)], base[len(prompts) :]
    config.data.train = [
        str(
            run.write_text(
                "data/identity.jsonl", _fill(_read("identity_train.jsonl", raw=True), name, author)
            )
        ),
        str(run.write_text("data/replay.jsonl", _replay_records(replay, replay_answers))),
    ]

    console.rule("2/3 LoRA fine-tune on the identity data")
    result = run_sft(config, run)

    console.rule("3/3 tuned model answers")
    model, tokenizer = load_for_inference(run.root)
    tuned = generate_replies(model, tokenizer, prompts, MAX_NEW_TOKENS, batch_size=16)

    answers = [
        Answer(kind, p[0]["content"], b.text, t.text)
        for (kind, _), p, b, t in zip(questions, prompts, base, tuned, strict=True)
    ]
    summary = _summary(answers, name, author, result.summary, time.perf_counter() - started)
    summary["compare"] = compare_answers(answers, name, author)
    _print_table(answers, name, summary)
    _write_report(run, answers, name, summary)
    return run, answers, summary


def _read(filename: str, raw: bool = False):
    text = (DATA / filename).read_text(encoding="utf-8")
    return text if raw else [json.loads(line) for line in text.splitlines() if line.strip()]


def _replay_records(prompts: list[list[dict]], replies: list[Reply]) -> str:
    """The base model's finished answers as alpaca records (cut-off answers would teach cutting)."""
    records = [
        {"instruction": p[0]["content"], "output": r.text}
        for p, r in zip(prompts, replies, strict=True)
        if r.finished and r.text
    ]
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def _fill(text: str, name: str, author: str) -> str:
    # The placeholders go into JSON strings, so the values are inserted JSON-escaped.
    escape = lambda s: json.dumps(s, ensure_ascii=False)[1:-1]  # noqa: E731
    return text.replace("{{name}}", escape(name)).replace("{{author}}", escape(author))


def compare_answers(answers: list[Answer], name: str, author: str) -> dict:
    """Base vs tuned on the held-out identity questions, paired per question: saying the name
    (the headline) and the embedding similarity to the identity answer, each with a bootstrap
    CI of the difference (tuned - base)."""
    from tunesmith.evaluation.compare import compare_scores
    from tunesmith.evaluation.metrics import embedding_similarity

    held_out = [a for a in answers if a.kind == "identity"]
    identity = f"I am {name}, an AI assistant developed by {author}."
    texts = {role: [getattr(a, role) for a in held_out] for role in ("base", "tuned")}
    scores = {
        role: {
            "says_name": [float(name.lower() in t.lower()) for t in texts[role]],
            "similarity": embedding_similarity(texts[role], [identity] * len(held_out)),
        }
        for role in texts
    }
    return compare_scores(scores["base"], scores["tuned"])


def _summary(answers: list[Answer], name: str, author: str, train: dict, seconds: float) -> dict:
    held_out = [a.names(name) for a in answers if a.kind == "identity"]
    return {
        "name": name,
        "author": author,
        "held_out_questions": len(held_out),
        "base_says_name": sum(base for base, _ in held_out),
        "tuned_says_name": sum(tuned for _, tuned in held_out),
        "train_loss": round(train["train_loss"], 4),
        "train_examples": train["data"]["examples"],
        "train_seconds": train["seconds"],
        "total_seconds": round(seconds, 1),
    }


def _print_table(answers: list[Answer], name: str, summary: dict) -> None:
    table = Table(title="before / after", show_lines=True)
    for column in ("kind", "question", "base model", "tuned model"):
        table.add_column(column, overflow="fold")
    for answer in answers:
        base_hit, tuned_hit = answer.names(name)
        table.add_row(
            answer.kind,
            answer.question,
            f"[green]{answer.base}" if base_hit else answer.base,
            f"[green]{answer.tuned}" if tuned_hit else answer.tuned,
        )
    console.print(table)
    console.print(
        f"held-out identity questions answered with the name '{name}': "
        f"base {summary['base_says_name']}/{summary['held_out_questions']}, "
        f"tuned {summary['tuned_says_name']}/{summary['held_out_questions']} "
        f"(total {summary['total_seconds']} s)"
    )
    for metric, c in summary["compare"].items():
        console.print(f"tuned - base, {metric}: {_difference(c)}")


def _difference(c: dict) -> str:
    level = round(100 * c["confidence"])
    return f"{c['diff']:+.3f} ({level}% CI {c['ci_low']:+.3f} to {c['ci_high']:+.3f}, n={c['n']})"


def _write_report(run: RunFolder, answers: list[Answer], name: str, summary: dict) -> None:
    rows = []
    for a in answers:
        marks = (
            ["hit" if hit else "miss" for hit in a.names(name)]
            if a.kind == "identity"
            else ["", ""]
        )
        rows.append([a.kind, a.question, (a.base, marks[0]), (a.tuned, marks[1])])
    facts = {k: v for k, v in summary.items() if k != "compare"}
    facts |= {f"tuned - base, {m}": _difference(c) for m, c in summary["compare"].items()}
    page = html_page(
        f"tunesmith quickstart: {run.root.name}",
        facts,
        ["kind", "question", "base model", "tuned model"],
        rows,
        images=[run.plots / "loss.png"],
    )
    run.write_text("reports/quickstart.html", page)
    run.write_json(
        "reports/quickstart.json", {"summary": summary, "answers": [a.__dict__ for a in answers]}
    )
    console.print(f"report: {run.reports / 'quickstart.html'}")
