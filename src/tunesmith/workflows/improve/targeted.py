"""`tunesmith improve data REPORT --original FILE`: targeted examples per error pattern, mixed
with the original data by the seed's rule, inspected and cleaned.

Per pattern (the report's ranked opportunities that have one; `data.top` keeps the first N),
up to `data.examples_per_pattern` examples, in this order:
1. corrections: a failure whose feedback carries a correction (or a lost arena vote's winning
   answer) becomes the logged conversation with the correction as the assistant's answer;
2. teacher answers: the pattern's other failing logged prompts, answered by the teacher;
3. teacher variants: new questions on the pattern's topic written by the teacher from its
   failing prompts (regression prompts included: they show the topic), then answered by it;
   a question sharing no content word with the pattern's prompts is off topic and rejected.
The teacher is any client spec (`local:<model or run>`, an OpenAI-compatible URL; "base" or
"local:base" is the base model of the current run, given as `current`). A teacher answer that
is empty, cut short, declines, or is in another language than its prompt is rejected with that
reason (the mine checks). Without a teacher only corrections are used, and the summary says how
many examples each pattern lacks.

The seed's rule (Exercise 3.6, fix_regression), with n = the failures in the chosen patterns:
- n < `data.targeted_below` (100): "targeted": a targeted fine-tune on the fix data, with a
  replay share of original data to preserve capabilities: the original examples make up
  `data.targeted_original_share` (0.5) of the mix, i.e. one original example per fix example.
  (The seed's replay mix_ratio of 0.1 is for large data sets; with tens of fix examples it is
  one or two records, too few to anchor anything.)
- n >= 100: "mixed": `data.mixed_original_share` (0.8) original data, 0.2 fix data.
Original examples are drawn without replacement in a seeded order; when the original data is
too small for the share, all of it is used and the summary reports the ratio reached.

Cleaning, on fix and replayed examples alike, each drop written to rejects.jsonl with its
reason: PII redacted in every turn (data.quality.pii; counted per kind); an empty turn; a prompt
that is a regression or held-out prompt or too close to one (canonical text equal, or ROUGE-L
>= `data.leak_similarity`): the report's regression file and every `data.held_out` file; a
repeated question (the first kept: corrections come first) and near duplicates
(data.quality.dedup MinHash, `data.near_duplicate`); an original example whose question a fix
example answers (the fix's answer wins). Outputs in the out folder: train.jsonl (the shuffled
mix, {"messages"}), fix.jsonl (with pattern and origin), rejects.jsonl, data_summary.json.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from tunesmith.config.base import Section
from tunesmith.runs.folder import atomic_write
from tunesmith.utils.console import console
from tunesmith.utils.errors import ConfigError, DataError
from tunesmith.utils.llm import ChatClient
from tunesmith.workflows.improve.mine import MineReport

VARIANT_PROMPT = (
    "Users asked an assistant the questions below and were not well served:\n\n{examples}\n\n"
    "Write one new question a user could ask about the same topic, worded differently from all "
    "of them. Use the same language as the questions. Reply with the question only."
)


class TargetedDataSettings(Section):
    """The `data:` section of improve.yaml: targeted examples and how they mix with the
    original data."""

    teacher: str | None = Field(
        None,
        description="Writes answers and new questions (local:<model or run> or an "
        "OpenAI-compatible URL); null: only user corrections are used.",
    )
    examples_per_pattern: int = Field(16, ge=1, description="Fix examples wanted per pattern.")
    top: int | None = Field(
        None, ge=1, description="Only the first N ranked patterns (null: all of them)."
    )
    targeted_below: int = Field(
        100,
        ge=1,
        description="Fewer failures than this: targeted fine-tune (fix + replay); else mixed.",
    )
    targeted_original_share: float = Field(
        0.5, ge=0, lt=1, description="Share of replayed original examples in a targeted mix."
    )
    mixed_original_share: float = Field(
        0.8, ge=0, lt=1, description="Share of original examples in a mixed training set."
    )
    held_out: list[str] = Field(
        default_factory=list,
        description="Files whose prompts must never be trained on (guard/test sets); the "
        "report's regression file is always included.",
    )
    leak_similarity: float = Field(
        0.7, gt=0, le=1, description="ROUGE-L to a held-out prompt at which a prompt leaks."
    )
    near_duplicate: float = Field(
        0.8, gt=0, le=1, description="MinHash Jaccard at which two examples are duplicates."
    )
    system: str | None = Field(
        "auto",
        description="System turn for fix examples without one: 'auto' (the original data's "
        "system turn when all its records share one), a text, or null (none).",
    )
    max_new_tokens: int = Field(256, ge=1, description="Length of a teacher answer.")
    variant_temperature: float = Field(
        0.7, ge=0, description="Sampling temperature for new questions."
    )
    seed: int = Field(0, description="Seed of the replay draw and the shuffle.")
    out_dir: str | None = Field(None, description="Output folder (null: the report's folder).")


@dataclass
class TargetedData:
    out_dir: Path
    summary: dict
    train: list[dict]
    fix: list[dict]
    rejects: list[dict]

    @property
    def train_path(self) -> Path:
        return self.out_dir / "train.jsonl"


def build_targeted_data(
    report: MineReport | str | Path,
    original_data: str | Path,
    settings: TargetedDataSettings | None = None,
    teacher: ChatClient | str | None = None,
    *,
    out_dir: str | Path | None = None,
    current: str | Path | None = None,
) -> TargetedData:
    """Fix data per pattern, cleaned and mixed with the original data (module docstring).
    `current`: the run in production, whose base model a teacher "base" / "local:base" is."""
    settings = settings or TargetedDataSettings()
    if not isinstance(report, MineReport):
        report = MineReport.load(report)
    out = Path(
        out_dir
        if out_dir is not None
        else settings.out_dir or (report.path.parent if report.path else "improve")
    )
    teacher = teacher if teacher is not None else settings.teacher
    if isinstance(teacher, str):
        from tunesmith.runs.inference import make_client

        teacher_name = teacher_spec(teacher, current)
        teacher = make_client(teacher_name)
    else:
        teacher_name = type(teacher).__name__ if teacher is not None else None
    rejects: list[dict] = []
    chosen = [o for o in report.opportunities if o.get("pattern")][: settings.top]
    n_failures = sum(o["frequency"] for o in chosen)
    original = _read_original(Path(original_data), rejects)
    system = _system_turn(settings.system, original)
    held = _HeldOut(_held_out(report, settings))
    fix: list[dict] = []
    per_pattern: dict[str, dict] = {}
    for op in chosen:
        examples, counts = _pattern_examples(op, teacher, settings, rejects)
        per_pattern[op["id"]] = counts
        fix += examples
    pii: dict[str, int] = {}
    fix = _clean(fix, held, settings, rejects, pii, system)
    for pid, counts in per_pattern.items():
        counts["kept"] = sum(e["pattern"] == pid for e in fix)
        counts["short"] = max(0, settings.examples_per_pattern - counts["kept"])
    rule = "targeted" if n_failures < settings.targeted_below else "mixed"
    share = (
        settings.targeted_original_share if rule == "targeted" else settings.mixed_original_share
    )
    wanted = math.ceil(len(fix) * share / (1 - share) - 1e-9) if fix else 0
    replay = _replay(original, wanted, fix, held, settings, rejects, pii)
    train = [_row(e) for e in fix] + [_row(e) for e in replay]
    random.Random(settings.seed).shuffle(train)
    reasons: dict[str, int] = {}
    for r in rejects:
        key = r["reason"].split(" (")[0].split(": ")[0]
        reasons[key] = reasons.get(key, 0) + 1
    summary = {
        "failures": n_failures,
        "rule": rule,
        "threshold": settings.targeted_below,
        "target_original_ratio": share,
        "original_ratio": round(len(replay) / len(train), 4) if train else None,
        "fix": len(fix),
        "original": len(replay),
        "original_wanted": wanted,
        "original_available": len(original),
        "train": len(train),
        "origins": {
            k: sum(e["origin"] == k for e in fix)
            for k in ("correction", "teacher_answer", "teacher_variant")
        },
        "patterns": per_pattern,
        "teacher": teacher_name,
        "held_out_prompts": len(held),
        "pii_redacted": pii,
        "rejected": reasons,
        "report": str(report.path) if report.path else None,
        "original_data": str(original_data),
    }
    if wanted > len(replay):
        summary["note"] = (
            f"the original data gave {len(replay)} of the {wanted} examples the "
            f"{share:.0%} share needs"
        )
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "train.jsonl", train)
    _write_jsonl(out / "fix.jsonl", fix)
    _write_jsonl(out / "rejects.jsonl", rejects)
    atomic_write(
        out / "data_summary.json", json.dumps(summary, ensure_ascii=False, indent=2) + "\n"
    )
    if not fix:
        raise DataError(
            f"improve data: no fix example survived ({len(rejects)} rejected, see "
            f"{out / 'rejects.jsonl'}); give a teacher (data.teacher / --teacher) or collect "
            "corrections"
        )
    console.print(
        f"improve data: {n_failures} failures -> {rule}; {len(fix)} fix examples "
        f"({summary['origins']}) + {len(replay)} original = {len(train)} in {out / 'train.jsonl'}; "
        f"{len(rejects)} rejected ({reasons or 'none'})"
    )
    return TargetedData(out, summary, train, fix, rejects)


def teacher_spec(spec: str, current: str | Path | None = None) -> str:
    """A client spec; "base" and "local:base" name the base model of the `current` run."""
    if spec not in ("base", "local:base"):
        return spec
    if current is None:
        raise ConfigError(
            f"teacher '{spec}' means the current run's base model: name the run (current: in "
            "improve.yaml, --current on the command line) or give local:<model> or a URL"
        )
    from tunesmith.runs.trained import open_run

    return f"local:{open_run(current).base_ref}"


# --- inputs --------------------------------------------------------------------------------------


def _read_original(path: Path, rejects: list[dict]) -> list[dict]:
    from tunesmith.data.formats import load_conversations

    if not path.is_file():
        raise DataError(f"{path}: original data file not found")

    def reject(record, reason):
        rejects.append(
            {
                "source": f"{Path(record.source).name}:{record.line}",
                "reason": reason,
                "record": record.data,
            }
        )

    convs, _ = load_conversations([path], on_error="skip", reject=reject)
    return [
        {
            "messages": c.messages,
            **({"tools": c.tools} if c.tools else {}),
            "source": f"{path.name}:{c.line}",
            "origin": "original",
        }
        for c in convs
    ]


def _system_turn(setting: str | None, original: list[dict]) -> str | None:
    if setting != "auto":
        return setting
    firsts = {
        e["messages"][0]["content"] if e["messages"][0]["role"] == "system" else None
        for e in original
    }
    return next(iter(firsts)) if len(firsts) == 1 else None


def _held_out(report: MineReport, settings: TargetedDataSettings) -> list[tuple[str, str]]:
    """(where, prompt) of every prompt that must not be trained on."""
    from tunesmith.data.synth import read_prompts

    files = list(settings.held_out)
    regression = report.data.get("inputs", {}).get("regression")
    if regression:
        if not Path(regression).is_file():
            raise DataError(
                f"{regression}: the report's regression file is gone; its prompts must be kept "
                "out of training"
            )
        files.insert(0, regression)
    held = []
    for f in files:
        if not Path(f).is_file():
            raise DataError(f"{f}: held-out file not found (data.held_out)")
        for record, messages in read_prompts(f):
            held.append((record.where, _last_user(messages)))
    return held


def _last_user(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


# --- examples per pattern ------------------------------------------------------------------------


def _pattern_examples(
    op: dict, teacher: ChatClient | None, settings: TargetedDataSettings, rejects: list[dict]
) -> tuple[list[dict], dict]:
    from tunesmith.data.quality.dedup import canonical_text

    want = settings.examples_per_pattern
    failures = op["details"]["failed_examples"]
    pid = op["id"]
    out: list[dict] = []
    seen: set[str] = set()
    for f in failures:  # 1. corrections
        if len(out) >= want:
            break
        key = canonical_text(f["prompt"])
        if f.get("correction") and f["source"] != "regression" and key not in seen:
            seen.add(key)
            out.append(_example(f["messages"], f["correction"], pid, "correction", f["where"]))
    counts = {
        "failures": len(failures),
        "corrections": len(out),
        "teacher_answers": 0,
        "teacher_variants": 0,
    }
    if teacher is None or len(out) >= want:
        return out, counts
    from tunesmith.data.synth import clean_instruction, tokens
    from tunesmith.workflows.improve.patterns import content_words

    # 2. the teacher answers the other failing logged prompts (never a regression prompt)
    asked = []
    for f in failures:
        key = canonical_text(f["prompt"])
        if f["source"] != "regression" and key not in seen and len(asked) < want - len(out):
            seen.add(key)
            asked.append((f["messages"], f["where"]))
    answered = _teacher_answers(teacher, asked, pid, "teacher_answer", settings, rejects)
    counts["teacher_answers"] = len(answered)
    out += answered
    # 3. new questions on the pattern's topic, then their answers
    missing = want - len(out)
    if missing <= 0:
        return out, counts
    examples = list(dict.fromkeys(f["prompt"].strip() for f in failures))[:8]
    listed = "\n".join(f"{i}. {e}" for i, e in enumerate(examples, 1))
    # twice as many asks as needed: repeats and too-short questions are common at temperature
    asks = [[{"role": "user", "content": VARIANT_PROMPT.format(examples=listed)}]] * (2 * missing)
    import torch

    torch.manual_seed(settings.seed)  # a local teacher samples with torch: reproducible
    raws = teacher.chat(asks, max_new_tokens=64, temperature=settings.variant_temperature)
    # on topic: the question shares a content word with the pattern's prompts or keywords
    topic = {w.lower() for w in (op.get("pattern") or {}).get("keywords") or []}
    topic |= {w for f in failures for w in content_words(f["prompt"])}
    questions = []
    for raw in raws:
        question = clean_instruction(raw).split("\n")[0].strip()
        key = canonical_text(question)
        if len(question) < 8:
            rejects.append(
                {
                    "source": f"teacher ({pid})",
                    "reason": "teacher question too short",
                    "record": raw,
                }
            )
        elif topic and not topic & set(tokens(question)):
            rejects.append(
                {
                    "source": f"teacher ({pid})",
                    "reason": "teacher question off topic (no word of the pattern's prompts)",
                    "record": question,
                }
            )
        elif key in seen:
            rejects.append(
                {
                    "source": f"teacher ({pid})",
                    "reason": "teacher question repeated",
                    "record": question,
                }
            )
        elif len(questions) < missing:
            seen.add(key)
            where = f"teacher ({pid} question {len(questions) + 1})"
            questions.append(([{"role": "user", "content": question}], where))
        else:
            counts["surplus_questions"] = counts.get("surplus_questions", 0) + 1
    variants = _teacher_answers(teacher, questions, pid, "teacher_variant", settings, rejects)
    counts["teacher_variants"] = len(variants)
    return out + variants, counts


def _teacher_answers(teacher, asked, pid, origin, settings, rejects) -> list[dict]:
    from tunesmith.data.synth import teacher_answers
    from tunesmith.workflows.improve.logs import Request
    from tunesmith.workflows.improve.mine import MineSettings, rule_checks

    if not asked:
        return []
    where_of = {json.dumps(m, sort_keys=True): w for m, w in asked}

    def reject(prompt, reason):
        rejects.append(
            {
                "source": where_of.get(json.dumps(prompt, sort_keys=True), f"teacher ({pid})"),
                "reason": f"teacher answer {reason}",
                "record": prompt,
            }
        )

    records = teacher_answers(
        [m for m, _ in asked], teacher, max_new_tokens=settings.max_new_tokens, reject=reject
    )
    checks_settings = MineSettings()
    out = []
    for r in records:
        prompt, answer = r["messages"][:-1], r["messages"][-1]["content"]
        where = where_of.get(json.dumps(prompt, sort_keys=True), f"teacher ({pid})")
        request = Request(id="teacher", where=where, messages=prompt, response=answer, status="ok")
        failed = [c for c in rule_checks(request, checks_settings) if c["check"] != "thumbs_down"]
        if failed:
            rejects.append(
                {
                    "source": where,
                    "reason": f"teacher answer failed the {failed[0]['check']} "
                    f"check ({failed[0]['detail']})",
                    "record": r["messages"],
                }
            )
            continue
        out.append(_example(prompt, answer, pid, origin, where))
    return out


def _example(messages: list[dict], answer: str, pid: str, origin: str, where: str) -> dict:
    return {
        "messages": [*messages, {"role": "assistant", "content": answer}],
        "pattern": pid,
        "origin": origin,
        "source": where,
    }


# --- cleaning and mixing -------------------------------------------------------------------------


def _redacted(example: dict, pii: dict[str, int]) -> dict:
    from tunesmith.data.quality.pii import redact_pii

    messages = []
    for m in example["messages"]:
        content = m.get("content")
        if isinstance(content, str):
            content, hits = redact_pii(content)
            for h in hits:
                pii[h.kind] = pii.get(h.kind, 0) + 1
        messages.append({**m, "content": content})
    return {**example, "messages": messages}


class _HeldOut:
    """Held-out prompts, indexed for the leak check: canonical texts in a dict, and each
    prompt's tokens, so ROUGE-L runs only where its bound (2 * shared tokens / total tokens,
    since the LCS is at most the shared multiset) can reach the threshold."""

    def __init__(self, held: list[tuple[str, str]]):
        from tunesmith.data.quality.dedup import canonical_text
        from tunesmith.data.synth import tokens

        self.items = held
        self.exact = {}
        for where, text in held:
            self.exact.setdefault(canonical_text(text), where)
        self.tokens = [
            (where, text, len(tokens(text)), Counter(tokens(text))) for where, text in held
        ]

    def __len__(self) -> int:
        return len(self.items)

    def leak(self, prompt: str, threshold: float) -> str | None:
        from tunesmith.data.quality.dedup import canonical_text
        from tunesmith.data.synth import rouge_l, tokens

        where = self.exact.get(canonical_text(prompt))
        if where is not None:
            return f"leaks held-out prompt {where} (same text)"
        mine = tokens(prompt)
        counts = Counter(mine)
        for where, other, n_other, other_counts in self.tokens:
            total = len(mine) + n_other
            if not total or 2 * sum((counts & other_counts).values()) / total < threshold:
                continue
            similarity = rouge_l(prompt, other)
            if similarity >= threshold:
                return f"leaks held-out prompt {where} (ROUGE-L {similarity:.2f})"
        return None


def _empty_turn(example: dict) -> bool:
    return any(
        m["role"] != "system" and not (m.get("content") or "").strip() and not m.get("tool_calls")
        for m in example["messages"]
    )


def _clean(fix, held, settings, rejects, pii, system) -> list[dict]:
    from tunesmith.data.quality.dedup import canonical_text, near_duplicate_groups

    kept = []
    for e in fix:
        e = _redacted(e, pii)
        if system and e["messages"][0]["role"] != "system":
            e["messages"] = [{"role": "system", "content": system}, *e["messages"]]
        reason = (
            "empty turn"
            if _empty_turn(e)
            else held.leak(_last_user(e["messages"][:-1]), settings.leak_similarity)
        )
        if reason:
            rejects.append({"source": e["source"], "reason": reason, "record": e["messages"]})
            continue
        kept.append(e)
    drop: dict[int, str] = {}
    first: dict[str, int] = {}
    for i, e in enumerate(kept):
        key = canonical_text(_last_user(e["messages"][:-1]))
        if key in first:
            drop[i] = f"repeated question (first: {kept[first[key]]['source']})"
        else:
            first[key] = i
    texts = [
        " ".join(m["content"] or "" for m in e["messages"] if m["role"] != "system") for e in kept
    ]
    for group in near_duplicate_groups(texts, threshold=settings.near_duplicate):
        for i in group[1:]:
            drop.setdefault(i, f"near duplicate of {kept[group[0]]['source']}")
    for i, reason in sorted(drop.items()):
        rejects.append(
            {"source": kept[i]["source"], "reason": reason, "record": kept[i]["messages"]}
        )
    return [e for i, e in enumerate(kept) if i not in drop]


def _replay(original, wanted, fix, held, settings, rejects, pii) -> list[dict]:
    from tunesmith.data.quality.dedup import canonical_text

    fix_questions = {canonical_text(_last_user(e["messages"][:-1])): e["source"] for e in fix}
    order = list(range(len(original)))
    random.Random(settings.seed).shuffle(order)
    out = []
    for i in order:
        if len(out) >= wanted:
            break
        e = _redacted(original[i], pii)
        question = _last_user(e["messages"])
        reason = "empty turn" if _empty_turn(e) else held.leak(question, settings.leak_similarity)
        if reason is None and canonical_text(question) in fix_questions:
            reason = f"same question as fix example {fix_questions[canonical_text(question)]}"
        if reason:
            rejects.append({"source": e["source"], "reason": reason, "record": e["messages"]})
            continue
        out.append(e)
    return out


def _row(example: dict) -> dict:
    return {
        "messages": example["messages"],
        **({"tools": example["tools"]} if example.get("tools") else {}),
    }


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
