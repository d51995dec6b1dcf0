"""`tunesmith improve mine LOGS`: failures in the served logs, grouped into error patterns, ranked.

A logged request fails when any check fires (one failure per request, with every check that
fired):
- thumbs_down: its latest rating is -1 (API feedback or a lost arena vote);
- empty: status ok and a blank response;
- truncated: finish_reason "length" (max_tokens cut it off);
- refusal: the reply declines (evaluation.safety.is_refusal) a prompt that holds none of
  `mine.may_refuse` (the topics it is meant to decline);
- wrong_language: the prompt and the response are both long enough and detected
  (data.quality.text.detect_language) as different languages; "latin" (a Latin-script text
  with no clear language) matches any Latin-script language;
- judge: with a judge (`mine.judge`), the rubric's overall score (1-10) is below
  `mine.judge_threshold`; the criterion it scored lowest names the issue type;
- regression: with a regression file (validate.load_checks format), an item whose answer fails
  validate.score_answer. The answers come from a model when one is given (`mine.model`, any
  client spec), else from the logs: the latest logged answer to the same prompt (canonical
  text); an item nobody asked is "not run" and counts neither way.
Requests with status "error" are not clustered: they count against performance (see
opportunities.py). A failure whose prompt got a good answer elsewhere in the logs (same
canonical prompt) is an inconsistency: for a rule-check failure, an answer no rule check
flagged; for a thumbs-down or a low judge score, an answer rated up or judged passing.

The overall score's components (opportunities.overall_score; each states its source):
regression pass rate = regression items passed / items run; quality = the judge's mean rubric
score mapped (x-1)/9, else (no judge, or nothing parsed) the share of answers no rule check
flagged; safety = the share of safety probes declined (mine.safety_probes, answered by
mine.model, else their logged answers); performance = the share of server requests answered
(status ok) within mine.latency_p95_ms; user satisfaction = up / (up + down) over the rated
responses. Anything not measurable from the inputs is unmeasured, never guessed.

The failing prompts are clustered into error patterns (patterns.py: MiniLM embeddings,
average-linkage agglomerative clustering at cosine `mine.cluster_threshold`), each pattern
becomes an opportunity (opportunities.py: the seed's types, priorities and overall score), and
the report is written: opportunities.json (everything, the failures included, for
`improve data`), opportunities.md (for people) and log_rejects.jsonl (the log lines that could
not be read, with file:line and reason).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field

from tunesmith.config.base import Section
from tunesmith.runs.folder import atomic_write
from tunesmith.utils.console import console
from tunesmith.utils.errors import DataError
from tunesmith.utils.llm import ChatClient
from tunesmith.workflows.improve import opportunities as O
from tunesmith.workflows.improve.logs import LogSet, Request, read_logs
from tunesmith.workflows.improve.patterns import cluster, describe, minilm_embedder

REPORT = "opportunities.json"
REPORT_MD = "opportunities.md"
LOG_REJECTS = "log_rejects.jsonl"
_LATIN = frozenset({"en", "fr", "de", "es", "it", "pt", "latin"})


class MineSettings(Section):
    """The `mine:` section of improve.yaml: how failures are found, grouped and ranked."""

    route: str | None = Field(None, description="Only requests to this route (null: all).")
    version: str | None = Field(
        None, description="Only answers of this model version (name@hash; null: all)."
    )
    arena: str | None = Field(
        None, description="A run folder whose arena votes (arena/votes.jsonl) count as feedback."
    )
    arena_model: str | None = Field(
        None,
        description="The arena reference of the model being improved (e.g. run:assistant-v1); "
        "null: the one non-base model the votes name.",
    )
    judge: str | None = Field(
        None,
        description="A judge for rubric scores (local:<model> or an OpenAI-compatible URL); "
        "null: no judge, quality comes from the rule checks.",
    )
    judge_threshold: float = Field(
        5.0, ge=1, le=10, description="A judged answer fails below this overall score (1-10)."
    )
    judge_max: int = Field(200, ge=1, description="Judge at most the latest N answers.")
    model: str | None = Field(
        None,
        description="A model that answers the regression prompts and safety probes (client "
        "spec); null: the logged answers to the same prompts are checked.",
    )
    max_new_tokens: int = Field(256, ge=1, description="Answer length when `model` answers.")
    safety_probes: str | None = Field(
        "shipped",
        description="Safety probes for the safety score: 'shipped' (evaluation's set), a JSONL "
        "file (id, category, prompt), or null. Answered by `model`, else matched in the logs.",
    )
    safety_max: int = Field(20, ge=1, description="At most this many probes are asked.")
    may_refuse: list[str] = Field(
        default_factory=list,
        description="Words of prompts the model may decline (its refusal topics); a refusal of "
        "any other prompt is a failure.",
    )
    min_language_chars: int = Field(
        12,
        ge=1,
        description="Prompt and response need this many characters for the language check.",
    )
    latency_p95_ms: float = Field(
        5000.0, gt=0, description="Latency budget: a p95 above it is a performance opportunity."
    )
    max_error_rate: float = Field(
        0.05, ge=0, le=1, description="Error-rate budget: above it is a performance opportunity."
    )
    cluster_threshold: float = Field(
        0.4,
        gt=0,
        le=1,
        description="Two groups of failing prompts merge while their mean cosine similarity "
        "(MiniLM) is at least this.",
    )
    encoder: str = Field("minilm-l6", description="The sentence encoder for clustering.")
    representatives: int = Field(3, ge=1, description="Prompts shown per pattern.")
    out_dir: str = Field("improve", description="Where opportunities.json/.md are written.")


@dataclass
class MineReport:
    """opportunities.json as read back; `path` is the file."""

    data: dict
    path: Path | None = None

    @property
    def opportunities(self) -> list[dict]:
        return self.data["opportunities"]

    @property
    def failures(self) -> int:
        return self.data["stats"]["failures"]

    @property
    def overall(self) -> dict:
        return self.data["overall_score"]

    @classmethod
    def load(cls, path: str | Path) -> MineReport:
        path = Path(path)
        if path.is_dir():
            path = path / REPORT
        if not path.is_file():
            raise DataError(f"{path}: no opportunities report (run `tunesmith improve mine`)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, dict) or "opportunities" not in data or "stats" not in data:
            raise DataError(f"{path}: not an opportunities report (no 'opportunities')")
        return cls(data, path)


def _client(spec: str | None) -> ChatClient | None:
    if spec is None:
        return None
    from tunesmith.runs.inference import make_client

    return make_client(spec)


def mine(
    logs_dir: str | Path,
    settings: MineSettings | None = None,
    regression: str | Path | None = None,
    embedder: Callable[[list[str]], np.ndarray] | None = None,
    *,
    model_client: ChatClient | None = None,
    judge_client: ChatClient | None = None,
    out_dir: str | Path | None = None,
) -> MineReport:
    """Find, cluster and rank the failures of a log folder; write the report (module docstring)."""
    settings = settings or MineSettings()
    out = Path(out_dir if out_dir is not None else settings.out_dir)
    logs = read_logs(
        logs_dir, settings.route, settings.version, settings.arena, settings.arena_model
    )
    model_client = model_client or _client(settings.model)
    judge_client = judge_client or _client(settings.judge)
    failures: dict[str, dict] = {}
    answered = [r for r in logs.requests if r.status == "ok"]
    for request in answered:
        checks = rule_checks(request, settings)
        if checks:
            _fail(failures, request, checks)
    judged_ok: set[str] = set()
    quality = (
        _judge(answered, judge_client, settings, failures, judged_ok) if judge_client else None
    )
    regression_result = (
        _regression(Path(regression), logs, model_client, settings, failures)
        if regression is not None
        else None
    )
    _mark_inconsistent(failures, answered, judged_ok)
    ordered = list(failures.values())
    embedder = embedder or minilm_embedder(settings.encoder)
    texts = [f["prompt"] for f in ordered]
    groups = cluster(texts, embedder, settings.cluster_threshold)
    described = describe(texts, groups, embedder, settings.representatives)
    patterns, opportunities = [], []
    for order, pattern in enumerate(described, 1):
        members = [ordered[i] for i in pattern.members]
        label = {
            "keywords": pattern.keywords,
            "representatives": [texts[i] for i in pattern.representatives],
            "cohesion": pattern.cohesion,
        }
        patterns.append({"id": f"p{order}", "size": len(members), **label})
        for f in members:
            f["pattern"] = f"p{order}"
        opportunities.append(O.pattern_opportunity(order, members, label))
    perf = _performance(logs, settings)
    perf_op = O.performance_opportunity(perf, settings.max_error_rate, settings.latency_p95_ms)
    if perf_op:
        opportunities.append(perf_op)
    ranked = O.rank(opportunities)
    safety = _safety(logs, model_client, settings)
    overall = O.overall_score(
        {
            "regression_pass_rate": _regression_component(regression_result),
            "quality_score": _quality(quality, answered, failures),
            "safety_score": safety,
            "performance_score": {
                "score": perf["within_budget"],
                "source": f"requests.jsonl: share of {perf['requests']} requests answered (status "
                f"ok) within {settings.latency_p95_ms:.0f} ms",
                "n": perf["requests"],
            }
            if perf["requests"]
            else {"score": None, "source": "requests.jsonl holds no server requests"},
            "user_satisfaction": _satisfaction(logs),
        }
    )
    checks: dict[str, int] = {}
    for f in ordered:
        for c in f["checks"]:
            checks[c["check"]] = checks.get(c["check"], 0) + 1
    report = {
        "version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": {
            "logs": str(logs_dir),
            "regression": str(Path(regression).resolve()) if regression is not None else None,
            "arena": settings.arena,
            "judge": settings.judge if judge_client else None,
            "settings": settings.model_dump(),
        },
        "stats": {
            "requests": len(logs.requests),
            "answered": len(answered),
            "errors": perf["errors"],
            "failures": len(ordered),
            "checks": dict(sorted(checks.items())),
            "regression": regression_result,
            "files": logs.stats,
            "rejected_lines": len(logs.rejects),
        },
        "overall_score": overall,
        "patterns": patterns,
        "opportunities": ranked,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / REPORT, json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    atomic_write(out / REPORT_MD, O.render_markdown(report))
    atomic_write(
        out / LOG_REJECTS,
        "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in logs.rejects),
    )
    for r in logs.rejects[:5]:
        console.print(f"[yellow]rejected[/yellow] {r['source']}: {r['reason']}", soft_wrap=True)
    if len(logs.rejects) > 5:
        console.print(f"... and {len(logs.rejects) - 5} more in {out / LOG_REJECTS}")
    return MineReport(report, out / REPORT)


# --- checks --------------------------------------------------------------------------------------


def rule_checks(request: Request, settings: MineSettings) -> list[dict]:
    """The rule checks and the thumbs-down of one answered request: [{"check", "detail",
    "issue_type"}] (empty when it passed)."""
    from tunesmith.data.quality.text import detect_language
    from tunesmith.evaluation.safety import is_refusal

    checks = []
    if request.rating == -1:
        via = request.feedback[-1].source if request.feedback else "api"
        detail = f"thumbs down ({via})"
        if request.correction:
            detail += " with a correction"
        checks.append({"check": "thumbs_down", "detail": detail, "issue_type": None})
    response, prompt = request.response, request.prompt
    if not response.strip():
        checks.append({"check": "empty", "detail": "empty response"})
    if request.finish_reason == "length":
        checks.append(
            {"check": "truncated", "detail": "cut off at max_tokens (finish_reason length)"}
        )
    if response.strip() and is_refusal(response):
        lowered = prompt.lower()
        if not any(word.lower() in lowered for word in settings.may_refuse):
            checks.append({"check": "refusal", "detail": "declined a prompt it should answer"})
    n = settings.min_language_chars
    if len(prompt.strip()) >= n and len(response.strip()) >= n:
        asked, said = detect_language(prompt), detect_language(response)
        if _different_languages(asked, said):
            checks.append(
                {"check": "wrong_language", "detail": f"asked in {asked}, answered in {said}"}
            )
    for c in checks:
        c.setdefault("issue_type", O.CHECK_ISSUE.get(c["check"]))
    return checks


def _different_languages(a: str, b: str) -> bool:
    if "unknown" in (a, b) or a == b:
        return False
    return not ({a, b} <= _LATIN and "latin" in (a, b))


def _fail(failures: dict[str, dict], request: Request, checks: list[dict], source=None) -> None:
    entry = failures.get(request.id)
    if entry is None:
        entry = failures[request.id] = {
            "id": request.id,
            "where": request.where,
            "source": source or request.source,
            "prompt": request.prompt,
            "messages": request.messages,
            "response": request.response,
            "correction": request.correction,
            "version": request.version,
            "checks": [],
            "issue_type": None,
        }
    entry["checks"] += checks
    issues = [c["issue_type"] for c in entry["checks"] if c.get("issue_type")]
    if issues:
        entry["issue_type"] = O.issue_type([{"issue_type": i} for i in issues])


def _canonical(text: str) -> str:
    from tunesmith.data.quality.dedup import canonical_text

    return canonical_text(text)


_RULES = frozenset({"empty", "truncated", "refusal", "wrong_language"})


def _mark_inconsistent(
    failures: dict[str, dict], answered: list[Request], judged_ok: set[str]
) -> None:
    """A failure is an inconsistency when the same prompt (canonical text) got a good answer
    elsewhere in the logs. Good, for a rule-check failure: an answer no rule check flagged; for
    a thumbs-down or a low judge score (a matter of quality): an answer rated up or judged at
    or above the threshold, and not failing otherwise."""
    rule_ok, quality_ok = set(), set()
    for r in answered:
        checks = {c["check"] for c in failures[r.id]["checks"]} if r.id in failures else set()
        if not checks & _RULES:
            rule_ok.add(_canonical(r.prompt))
        if not checks and (r.rating == 1 or r.id in judged_ok):
            quality_ok.add(_canonical(r.prompt))
    for f in failures.values():
        if f["source"] == "regression":
            continue
        key, kinds = _canonical(f["prompt"]), {c["check"] for c in f["checks"]}
        if (kinds & _RULES and key in rule_ok) or (kinds - _RULES and key in quality_ok):
            f["issue_type"] = "inconsistency"
            f["checks"].append(
                {
                    "check": "inconsistent",
                    "detail": "the same prompt got a good answer elsewhere in the logs",
                    "issue_type": "inconsistency",
                }
            )


def _judge(
    answered: list[Request],
    client: ChatClient,
    settings: MineSettings,
    failures: dict,
    judged_ok: set[str],
) -> dict:
    from tunesmith.evaluation.judge import judge_rubric

    items = [r for r in answered if r.response.strip()][-settings.judge_max :]
    result = judge_rubric(
        client,
        [{"question": r.prompt, "answer": r.response} for r in items],
    )
    scores = []
    for request, row in zip(items, result["items"], strict=True):
        if row["overall"] is None:
            continue
        scores.append((row["overall"] - 1) / 9)
        if row["overall"] >= settings.judge_threshold:
            judged_ok.add(request.id)
        else:
            lowest = min(row["scores"], key=lambda k: (row["scores"][k], k))
            _fail(
                failures,
                request,
                [
                    {
                        "check": "judge",
                        "detail": f"judge {row['overall']:.1f}/10, lowest {lowest} "
                        f"{row['scores'][lowest]:g}",
                        "issue_type": O.CHECK_ISSUE[f"judge:{lowest}"],
                    }
                ],
            )
    return {
        "score": float(np.mean(scores)) if scores else None,
        "source": f"judge rubric (1-10, mapped (x-1)/9), mean over {len(scores)} of "
        f"{len(items)} answers ({result['unparseable']} unparseable)",
        "n": len(scores),
    }


def _quality(judged: dict | None, answered: list[Request], failures: dict) -> dict:
    """The judge's mean when it scored anything, else the rule checks' pass rate."""
    if judged is not None and judged["score"] is not None:
        return judged
    rules = _rule_quality(answered, failures)
    if judged is not None:
        rules["source"] += f"; the judge scored nothing ({judged['source']})"
    return rules


def _rule_quality(answered: list[Request], failures: dict) -> dict:
    if not answered:
        return {"score": None, "source": "no answered requests in the logs"}
    bad = sum(
        any(c["check"] in _RULES for c in failures[r.id]["checks"])
        for r in answered
        if r.id in failures
    )
    return {
        "score": 1 - bad / len(answered),
        "source": f"rule checks (no judge): share of {len(answered)} answers that are not empty, "
        "truncated, a wrong refusal or in the wrong language",
        "n": len(answered),
    }


def _regression(
    path: Path,
    logs: LogSet,
    client: ChatClient | None,
    settings: MineSettings,
    failures: dict,
) -> dict:
    from tunesmith.workflows.improve.validate import load_checks, score_answer

    items = load_checks(path)
    if client is not None:
        replies = client.chat(
            [i.messages for i in items], max_new_tokens=settings.max_new_tokens, temperature=0.0
        )
        answers: list[str | None] = list(replies)
        how = f"answered by {settings.model or 'the given model'}"
    else:
        latest = {}
        for r in logs.requests:
            if r.status == "ok":
                latest[_canonical(r.prompt)] = r.response
        answers = [latest.get(_canonical(i.prompt)) for i in items]
        how = "the latest logged answer to each prompt"
    run = passed = 0
    for number, (item, answer) in enumerate(zip(items, answers, strict=True), 1):
        if answer is None:
            continue
        run += 1
        score, ok = score_answer(item, answer)
        if ok:
            passed += 1
            continue
        want = f"contains {item.contains}" if item.contains else "the expected answer"
        request = Request(
            id=f"regression:{item.id or number}",
            where=f"{path.name}:{item.id or number}",
            messages=item.messages,
            response=answer,
            status="ok",
            source="regression",
        )
        _fail(
            failures,
            request,
            [
                {
                    "check": "regression",
                    "detail": f"regression item {item.id or number}: score {score:.2f}, "
                    f"wanted {want}",
                    "issue_type": None,
                }
            ],
        )
    return {
        "items": len(items),
        "run": run,
        "passed": passed,
        "not_run": len(items) - run,
        "how": how,
    }


def _regression_component(result: dict | None) -> dict:
    if result is None:
        return {"score": None, "source": "no regression file given"}
    if not result["run"]:
        return {
            "score": None,
            "source": f"none of the {result['items']} regression prompts was answered "
            "(no model given and none of them in the logs)",
        }
    return {
        "score": result["passed"] / result["run"],
        "source": f"regression file: {result['passed']} of {result['run']} items passed "
        f"({result['how']}; {result['not_run']} not run)",
        "n": result["run"],
    }


def _performance(logs: LogSet, settings: MineSettings) -> dict:
    served = [r for r in logs.requests if r.source == "log"]
    errors = sum(r.status == "error" for r in served)
    latencies = [r.latency_ms for r in served if r.status == "ok" and r.latency_ms is not None]
    over = sum(lat > settings.latency_p95_ms for lat in latencies)
    return {
        "requests": len(served),
        "errors": errors,
        "error_rate": errors / len(served) if served else 0.0,
        "latency_p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
        "latency_p95_ms": float(np.percentile(latencies, 95)) if latencies else None,
        "over_latency": over,
        "within_budget": (len(served) - errors - over) / len(served) if served else None,
    }


def _satisfaction(logs: LogSet) -> dict:
    ratings = [r.rating for r in logs.requests if r.rating is not None]
    if not ratings:
        return {"score": None, "source": "no ratings in feedback.jsonl or the arena votes"}
    up = sum(r == 1 for r in ratings)
    return {
        "score": up / len(ratings),
        "source": f"feedback (api + arena): {up} up of {len(ratings)} rated responses "
        "(each response's latest rating)",
        "n": len(ratings),
    }


def _safety(logs: LogSet, client: ChatClient | None, settings: MineSettings) -> dict:
    if settings.safety_probes is None:
        return {"score": None, "source": "mine.safety_probes is null: safety not measured"}
    from tunesmith.evaluation.safety import is_refusal, load_probes

    path = None if settings.safety_probes == "shipped" else Path(settings.safety_probes)
    probes = load_probes(path)[: settings.safety_max]
    if client is not None:
        replies = client.chat(
            [[{"role": "user", "content": p["prompt"]}] for p in probes],
            max_new_tokens=settings.max_new_tokens,
            temperature=0.0,
        )
        pairs = list(zip(probes, replies, strict=True))
        how = "answered by the model"
    else:
        latest = {_canonical(r.prompt): r.response for r in logs.requests if r.status == "ok"}
        pairs = [
            (p, latest[_canonical(p["prompt"])])
            for p in probes
            if _canonical(p["prompt"]) in latest
        ]
        how = "their logged answers"
    if not pairs:
        return {
            "score": None,
            "source": f"safety probes ({settings.safety_probes}): none was asked in the logs and "
            "no model was given (mine.model), so safety is not measured",
        }
    refused = sum(is_refusal(reply) for _, reply in pairs)
    return {
        "score": refused / len(pairs),
        "source": f"safety probes ({settings.safety_probes}): {refused} of {len(pairs)} harmful "
        f"requests declined ({how})",
        "n": len(pairs),
    }
