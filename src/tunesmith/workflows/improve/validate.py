"""`tunesmith improve validate`: the staged gates a candidate passes before any user sees it.

Both models answer the same prompts, greedily (temperature 0), in this process. The gates run
in order and the first one that fails rejects the candidate (later ones are not run):

1. quick: the first `validate.quick_size` items of the regression set. The candidate's pass
   rate must be at least the current model's (it must not drop).
2. full: every item of the evaluation files (`validate.eval`; default the regression set).
   Per-item scores of both models are compared with a paired bootstrap (evaluation/stats.py):
   the gain (candidate - current) must exceed `min_gain` and, with `significant`, the low end
   of its 95% interval must lie above zero. The guard set (general ability) is scored the same
   way: its mean may drop by at most `max_guard_drop` (forgetting).
3. ab: up to `validate.ab_prompts` prompts replayed from the server's logs (requests.jsonl,
   chat requests that succeeded; deduplicated, a seeded sample), answered by both models and
   judged pairwise. With `validate.judge` an LLM judges each pair in both orders
   (evaluation/judge.judge_pairwise; disagreeing orders are a tie). Without one, the
   reference-based judge decides: the reference of a logged prompt is the user's correction
   (feedback.jsonl) or the expected answer of a check item with the same prompt; the answer
   scoring higher against it (score_answer) wins, differences below `judge_tie` tie, and a
   prompt without a reference is left out (counted). The candidate's win rate (ties half)
   must reach `ab_min_win_rate`; with no judgeable prompt the stage passes with a note (the
   full evaluation already showed the gain).

Item score (score_answer): with `contains`, the share of those strings found in the answer
(case-insensitive; passed = all found); otherwise ROUGE-L F1 against `expected` (0..1;
passed = at least `validate.pass_rouge`).

Writes DIR/validation.json (numbers of every stage, decision, reasons), DIR/validation.md and
DIR/answers.jsonl (every prompt with both answers and scores).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.evaluation.arena import wilson_interval
from tunesmith.evaluation.metrics import rouge_l, tokenize
from tunesmith.evaluation.stats import paired_bootstrap
from tunesmith.runs.folder import atomic_write
from tunesmith.utils.console import console
from tunesmith.utils.errors import DataError
from tunesmith.utils.llm import ChatClient
from tunesmith.workflows.improve.spec import ImproveSpec, ValidateSection, source


@dataclass
class CheckItem:
    messages: list[dict]
    expected: str | None = None
    contains: list[str] = field(default_factory=list)
    id: str | None = None
    pattern: str | None = None

    @property
    def prompt(self) -> str:
        return self.messages[-1]["content"]


def load_checks(path: str | Path) -> list[CheckItem]:
    """A check file (JSONL): {"prompt" | "messages", "expected"?, "contains"?, "id"?,
    "pattern"?}; a bad line is a DataError naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: check file not found")
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: a check item is a JSON object")
        items.append(_check_item(record, where))
    if not items:
        raise DataError(f"{path}: no check items")
    return items


def _check_item(record: dict, where: str) -> CheckItem:
    if "messages" in record:
        messages = record["messages"]
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)
            or messages[-1].get("role") != "user"
        ):
            raise DataError(f"{where}: 'messages' must be a list of turns ending with a user turn")
    elif isinstance(record.get("prompt"), str) and record["prompt"].strip():
        messages = [{"role": "user", "content": record["prompt"]}]
    else:
        raise DataError(f"{where}: needs 'prompt' (text) or 'messages'")
    contains = record.get("contains") or []
    if isinstance(contains, str):
        contains = [contains]
    expected = record.get("expected")
    if not all(isinstance(c, str) and c for c in contains) or not (
        expected is None or isinstance(expected, str)
    ):
        raise DataError(f"{where}: 'contains' is a list of strings and 'expected' a string")
    if not contains and not expected:
        raise DataError(f"{where}: needs 'expected' (a reference answer) or 'contains'")
    return CheckItem(messages, expected, contains, record.get("id"), record.get("pattern"))


def score_answer(item: CheckItem, answer: str, pass_rouge: float = 0.5) -> tuple[float, bool]:
    """(score 0..1, passed) of one answer to one check item."""
    if item.contains:
        text = answer.lower()
        found = sum(c.lower() in text for c in item.contains)
        return found / len(item.contains), found == len(item.contains)
    score = rouge_l(tokenize(answer), tokenize(item.expected or "")) / 100
    return score, score >= pass_rouge


# --- answering ---------------------------------------------------------------------------------


class Answers:
    """A model's greedy answers, each prompt asked once (cached by its conversation)."""

    def __init__(self, client: ChatClient, max_new_tokens: int):
        self.client, self.max_new_tokens, self.cache = client, max_new_tokens, {}

    def __call__(self, conversations: list[list[dict]]) -> list[str]:
        keys = [json.dumps(c, sort_keys=True, ensure_ascii=False) for c in conversations]
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if todo:
            replies = self.client.chat(
                [json.loads(k) for k in todo], max_new_tokens=self.max_new_tokens, temperature=0.0
            )
            self.cache.update(zip(todo, replies, strict=True))
        return [self.cache[k] for k in keys]


def model_client(path: str | Path) -> ChatClient:
    from tunesmith.runs.inference import make_client

    return make_client(f"local:{Path(path).resolve()}")


# --- the gates ---------------------------------------------------------------------------------


def scored(items: list[CheckItem], answers: list[str], pass_rouge: float) -> list[tuple]:
    return [score_answer(i, a, pass_rouge) for i, a in zip(items, answers, strict=True)]


def quick_gate(items, current: Answers, candidate: Answers, cfg: ValidateSection, rows) -> dict:
    items = items[: cfg.quick_size]
    conv = [i.messages for i in items]
    a_ans, b_ans = current(conv), candidate(conv)
    a, b = scored(items, a_ans, cfg.pass_rouge), scored(items, b_ans, cfg.pass_rouge)
    rate_a = sum(p for _, p in a) / len(items)
    rate_b = sum(p for _, p in b) / len(items)
    _rows(rows, "quick", items, a_ans, b_ans, a, b)
    passed = rate_b >= rate_a
    return {
        "passed": passed,
        "n": len(items),
        "current_pass_rate": rate_a,
        "candidate_pass_rate": rate_b,
        "rule": "candidate pass rate >= current pass rate",
        "why": None
        if passed
        else f"regression pass rate dropped from {rate_a:.2f} to {rate_b:.2f}",
    }


def full_gate(items, guard, current: Answers, candidate: Answers, cfg: ValidateSection, rows):
    conv = [i.messages for i in items]
    a_ans, b_ans = current(conv), candidate(conv)
    a, b = scored(items, a_ans, cfg.pass_rouge), scored(items, b_ans, cfg.pass_rouge)
    _rows(rows, "full", items, a_ans, b_ans, a, b)
    boot = paired_bootstrap(
        [s for s, _ in a], [s for s, _ in b], n_resamples=cfg.bootstrap, seed=cfg.seed
    )
    gain_ok = boot["diff"] > cfg.min_gain and (not cfg.significant or boot["ci_low"] > 0)
    result = {
        "n": len(items),
        "metric": "item score (contains share or ROUGE-L F1)",
        "current": boot["mean_a"],
        "candidate": boot["mean_b"],
        "gain": boot["diff"],
        "ci95": [boot["ci_low"], boot["ci_high"]],
        "p_value": boot["p_value"],
        "current_pass_rate": sum(p for _, p in a) / len(items),
        "candidate_pass_rate": sum(p for _, p in b) / len(items),
        "changed": sum(x != y for x, y in zip(a_ans, b_ans, strict=True)) / len(items),
        "flipped": _flips(a, b),
        "by_pattern": _by_pattern(items, a, b),
        "rule": f"gain > {cfg.min_gain}"
        + (" and 95% CI low end > 0" if cfg.significant else "")
        + f"; guard drop <= {cfg.max_guard_drop}",
    }
    why = []
    if not gain_ok:
        why.append(
            f"gain {boot['diff']:+.3f} (95% CI {boot['ci_low']:+.3f} to {boot['ci_high']:+.3f}) "
            "does not show the candidate better"
        )
    if guard:
        gconv = [i.messages for i in guard]
        ga_ans, gb_ans = current(gconv), candidate(gconv)
        ga, gb = scored(guard, ga_ans, cfg.pass_rouge), scored(guard, gb_ans, cfg.pass_rouge)
        _rows(rows, "guard", guard, ga_ans, gb_ans, ga, gb)
        gboot = paired_bootstrap(
            [s for s, _ in ga], [s for s, _ in gb], n_resamples=cfg.bootstrap, seed=cfg.seed
        )
        drop = gboot["mean_a"] - gboot["mean_b"]
        flips = _flips(a + ga, b + gb)  # size of change: eval and guard items together
        result["flipped"] = flips
        result["guard"] = {
            "n": len(guard),
            "current": gboot["mean_a"],
            "candidate": gboot["mean_b"],
            "drop": drop,
            "ci95_of_change": [gboot["ci_low"], gboot["ci_high"]],
        }
        if drop > cfg.max_guard_drop:
            why.append(f"guard set mean dropped by {drop:.3f} (> {cfg.max_guard_drop})")
    result["passed"] = not why
    result["why"] = "; ".join(why) or None
    return result


def _flips(a: list[tuple], b: list[tuple]) -> float:
    """The share of items whose pass / fail outcome differs between the two models."""
    return sum(pa != pb for (_, pa), (_, pb) in zip(a, b, strict=True)) / len(a)


def _by_pattern(items, a, b) -> dict:
    out: dict[str, dict] = {}
    for item, (sa, _), (sb, _) in zip(items, a, b, strict=True):
        if item.pattern:
            row = out.setdefault(item.pattern, {"n": 0, "current": 0.0, "candidate": 0.0})
            row["n"] += 1
            row["current"] += sa
            row["candidate"] += sb
    for row in out.values():
        row["current"] /= row["n"]
        row["candidate"] /= row["n"]
    return out


def replay_prompts(logs: Path, checks: list[CheckItem], limit: int, seed: int, out: Path):
    """(messages, reference | None) of logged chat prompts; unusable lines go to
    out/ab_rejects.jsonl with their reason."""
    requests, rejects = logs / "requests.jsonl", []
    if not requests.is_file():
        return [], 0
    corrections = {}
    feedback = logs / "feedback.jsonl"
    if feedback.is_file():
        for line in feedback.read_text(encoding="utf-8").splitlines():
            try:
                fb = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(fb, dict) and fb.get("correction") and fb.get("response_id"):
                corrections[fb["response_id"]] = fb["correction"]
    expected = {i.prompt.strip().lower(): i for i in checks}
    seen, prompts = set(), []
    for number, line in enumerate(requests.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            rejects.append({"line": number, "reason": "not JSON"})
            continue
        messages = row.get("messages") if isinstance(row, dict) else None
        if row.get("status") != "ok" or row.get("kind") != "chat" or not messages:
            rejects.append({"line": number, "reason": "not a successful chat request"})
            continue
        if messages[-1].get("role") != "user":
            rejects.append({"line": number, "reason": "does not end with a user turn"})
            continue
        key = json.dumps(messages, sort_keys=True)
        if key in seen:
            rejects.append({"line": number, "reason": "a repeat of an earlier prompt"})
            continue
        seen.add(key)
        text = messages[-1]["content"].strip().lower()
        reference = None
        if row.get("id") in corrections:
            reference = CheckItem(messages, expected=corrections[row["id"]])
        elif text in expected:
            reference = expected[text]
        prompts.append((messages, reference))
    if rejects:
        atomic_write(out / "ab_rejects.jsonl", "".join(json.dumps(r) + "\n" for r in rejects))
    random.Random(seed).shuffle(prompts)
    return prompts[:limit], len(rejects)


def ab_gate(prompts, current: Answers, candidate: Answers, cfg: ValidateSection, rows, judge):
    if not prompts:
        return {"passed": True, "n": 0, "note": "no logged prompts to replay", "why": None}
    conv = [m for m, _ in prompts]
    a_ans, b_ans = current(conv), candidate(conv)
    if judge is not None:
        from tunesmith.evaluation.judge import judge_pairwise

        items = [
            {"question": m[-1]["content"], "answer_a": a, "answer_b": b}
            for m, a, b in zip(conv, a_ans, b_ans, strict=True)
        ]
        verdicts = judge_pairwise(judge, items)
        scores = [r["score_b"] for r in verdicts["items"]]
        judge_name = "llm"
    else:
        scores = []
        for (_, ref), a, b in zip(prompts, a_ans, b_ans, strict=True):
            if ref is None:
                scores.append(None)
                continue
            sa, _ = score_answer(ref, a, cfg.pass_rouge)
            sb, _ = score_answer(ref, b, cfg.pass_rouge)
            scores.append(0.5 if abs(sb - sa) < cfg.judge_tie else float(sb > sa))
        judge_name = "reference"
    for (m, _), a, b, s in zip(prompts, a_ans, b_ans, scores, strict=True):
        rows.append(
            {
                "stage": "ab",
                "prompt": m[-1]["content"],
                "current": a,
                "candidate": b,
                "candidate_score": s,
            }
        )
    judged = [s for s in scores if s is not None]
    wins, losses = sum(s == 1.0 for s in judged), sum(s == 0.0 for s in judged)
    ties = len(judged) - wins - losses
    result = {
        "judge": judge_name,
        "n": len(prompts),
        "judged": len(judged),
        "unjudged": len(prompts) - len(judged),
        "candidate_wins": wins,
        "current_wins": losses,
        "ties": ties,
        "rule": f"candidate win rate (ties half) >= {cfg.ab_min_win_rate}",
    }
    if not judged:
        result.update(passed=True, note="no prompt could be judged (no references)", why=None)
        return result
    rate = sum(judged) / len(judged)
    decided = wins + losses
    result["win_rate"] = rate
    result["wilson95_of_decided"] = list(wilson_interval(wins, decided)) if decided else None
    result["passed"] = rate >= cfg.ab_min_win_rate
    result["why"] = (
        None
        if result["passed"]
        else f"replayed A/B win rate {rate:.2f} < {cfg.ab_min_win_rate} "
        f"({wins} wins, {losses} losses, {ties} ties)"
    )
    return result


def _rows(rows, stage, items, a_ans, b_ans, a, b) -> None:
    for item, x, y, (sa, pa), (sb, pb) in zip(items, a_ans, b_ans, a, b, strict=True):
        rows.append(
            {
                "stage": stage,
                "id": item.id,
                "pattern": item.pattern,
                "prompt": item.prompt,
                "current": x,
                "candidate": y,
                "current_score": sa,
                "candidate_score": sb,
                "current_passed": pa,
                "candidate_passed": pb,
            }
        )


# --- the whole validation ----------------------------------------------------------------------


def validate_candidate(
    spec: ImproveSpec,
    root: Path,
    candidate: Path,
    out: Path,
    clients: Callable[[Path], ChatClient] = model_client,
    judge: ChatClient | None = None,
) -> dict:
    """Run the gates; write validation.json, validation.md, answers.jsonl into out."""
    cfg = spec.validation
    out.mkdir(parents=True, exist_ok=True)
    current_path = source(root, spec.current)
    regression = load_checks(source(root, spec.regression))
    evals = [c for f in cfg.eval for c in load_checks(source(root, f))] or regression
    guard = load_checks(source(root, spec.guard)) if spec.guard else []
    if judge is None and cfg.judge:
        from tunesmith.runs.inference import make_client

        judge = make_client(cfg.judge)
    current = Answers(clients(current_path), cfg.max_new_tokens)
    cand = Answers(clients(candidate), cfg.max_new_tokens)
    rows: list[dict] = []
    stages: dict[str, dict] = {}
    console.print(f"validate: quick check on {min(cfg.quick_size, len(regression))} items")
    stages["quick"] = quick_gate(regression, current, cand, cfg, rows)
    if stages["quick"]["passed"]:
        console.print(f"validate: full evaluation on {len(evals)} items, guard {len(guard)}")
        stages["full"] = full_gate(evals, guard, current, cand, cfg, rows)
    if stages.get("full", {}).get("passed") and cfg.ab_prompts:
        prompts, rejected = replay_prompts(
            source(root, spec.logs), regression + evals, cfg.ab_prompts, cfg.seed, out
        )
        console.print(f"validate: replayed A/B on {len(prompts)} logged prompts")
        stages["ab"] = ab_gate(prompts, current, cand, cfg, rows, judge)
        stages["ab"]["log_lines_left_out"] = rejected
    failed = [name for name, s in stages.items() if not s["passed"]]
    expected = ["quick", "full"] + (["ab"] if cfg.ab_prompts else [])
    approved = not failed and all(name in stages for name in expected)
    result = {
        "current": str(current_path),
        "candidate": str(candidate),
        "decision": "approved" if approved else "rejected",
        "reasons": [f"{name}: {stages[name]['why']}" for name in failed],
        "improvement_score": stages.get("full", {}).get("gain"),
        "stages": stages,
    }
    atomic_write(out / "validation.json", json.dumps(result, indent=2) + "\n")
    atomic_write(
        out / "answers.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    )
    atomic_write(out / "validation.md", render_report(result))
    return result


def render_report(result: dict) -> str:
    s = result["stages"]
    lines = [
        "# Validation",
        "",
        f"- current: `{result['current']}`",
        f"- candidate: `{result['candidate']}`",
        f"- decision: **{result['decision']}**",
        *(f"- {r}" for r in result["reasons"]),
        "",
        "| gate | rule | current | candidate | passed |",
        "|---|---|---|---|---|",
    ]
    if "quick" in s:
        q = s["quick"]
        lines.append(
            f"| quick ({q['n']} items) | {q['rule']} | {q['current_pass_rate']:.2f} | "
            f"{q['candidate_pass_rate']:.2f} | {q['passed']} |"
        )
    if "full" in s:
        f = s["full"]
        lines.append(
            f"| full ({f['n']} items) | {f['rule']} | {f['current']:.3f} | {f['candidate']:.3f} "
            f"(gain {f['gain']:+.3f}, 95% CI {f['ci95'][0]:+.3f} to {f['ci95'][1]:+.3f}) | "
            f"{f['passed']} |"
        )
        if "guard" in f:
            g = f["guard"]
            lines.append(
                f"| guard ({g['n']} items) | drop of the mean | {g['current']:.3f} | "
                f"{g['candidate']:.3f} (drop {g['drop']:+.3f}) | {f['passed']} |"
            )
    if "ab" in s:
        a = s["ab"]
        rate = f"{a['win_rate']:.2f}" if "win_rate" in a else a.get("note", "")
        lines.append(
            f"| A/B replay ({a['n']} prompts, {a.get('judge', '-')} judge) | "
            f"{a.get('rule', '')} | {a.get('current_wins', 0)} wins | "
            f"{a.get('candidate_wins', 0)} wins, {a.get('ties', 0)} ties, win rate {rate} | "
            f"{a['passed']} |"
        )
    return "\n".join(lines) + "\n"
