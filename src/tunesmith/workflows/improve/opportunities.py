"""Opportunities: the seed's types and priorities (chapter 3 §3.6, Exercise 3.6), made numeric.

Types (the seed's four) and where each comes from here:
- regression_fix (priority critical): an error pattern holding at least one regression-suite
  failure; suggested action targeted_retraining. Its `failed_examples` are all its failures.
- user_experience (high): a pattern holding a thumbs-down (API feedback or a lost arena vote)
  and no regression failure; suggested action user_driven_improvement.
- quality_improvement (priority = the issue's severity): a pattern found by the rule checks or
  the judge only. Its issue_type is the most frequent among its failures (ties: the more severe):
  hallucination (the judge scored accuracy lowest), knowledge_gaps (a refusal to a prompt it
  should answer, or the judge scored completeness lowest), poor_instruction_following (empty,
  truncated, wrong language, the judge scored relevance or fluency lowest), inconsistency (a
  prompt the model answered well at another time in the same logs). Severities:
  hallucination high, knowledge_gaps high, poor_instruction_following medium,
  inconsistency medium. The suggested action is the seed's dispatch name for the issue
  (reduce_hallucination, fill_knowledge_gaps, improve_instruction_following, fix_inconsistency).
- performance_optimization (medium): not a pattern. The log's error rate above
  mine.max_error_rate or its latency p95 above mine.latency_p95_ms; suggested action
  architecture_optimization. Requests with status error are counted here, never clustered.

Ranking: priority score descending (critical 4 > high 3 > medium 2 > low 1), then frequency
(failures in the pattern) descending, then the pattern's number (its size order), so equal
reports rank equally. A pattern has one opportunity, of the highest-priority type its failures
reach (ties by the order above: regression_fix, user_experience, quality_improvement).

The overall score is the seed's weighted sum of five components in [0, 1]: regression pass
rate 0.30, quality 0.25, safety 0.25, performance 0.10, user satisfaction 0.10. Each states
its source; a component the inputs cannot measure is reported as unmeasured (score null) and
left out, the weights of the measured ones are rescaled to sum to 1 and `coverage` says how
much of the seed's weight was measured (an unmeasured component is never guessed).
"""

from __future__ import annotations

PRIORITY_SCORE = {"critical": 4, "high": 3, "medium": 2, "low": 1}
ISSUE_SEVERITY = {
    "hallucination": "high",
    "knowledge_gaps": "high",
    "poor_instruction_following": "medium",
    "inconsistency": "medium",
}
ISSUE_ACTION = {
    "hallucination": "reduce_hallucination",
    "knowledge_gaps": "fill_knowledge_gaps",
    "poor_instruction_following": "improve_instruction_following",
    "inconsistency": "fix_inconsistency",
}
# rule checks and judge criteria -> quality issue type
CHECK_ISSUE = {
    "empty": "poor_instruction_following",
    "truncated": "poor_instruction_following",
    "wrong_language": "poor_instruction_following",
    "refusal": "knowledge_gaps",
    "judge:accuracy": "hallucination",
    "judge:completeness": "knowledge_gaps",
    "judge:relevance": "poor_instruction_following",
    "judge:fluency": "poor_instruction_following",
}
TYPE_ORDER = ("regression_fix", "user_experience", "quality_improvement")
WEIGHTS = {
    "regression_pass_rate": 0.30,
    "quality_score": 0.25,
    "safety_score": 0.25,
    "performance_score": 0.10,
    "user_satisfaction": 0.10,
}


def priority_score(opportunity: dict) -> int:
    return PRIORITY_SCORE[opportunity["priority"]]


def rank(opportunities: list[dict]) -> list[dict]:
    """Sorted by the documented order, each with its 1-based `rank`."""
    ordered = sorted(
        opportunities,
        key=lambda o: (-priority_score(o), -o["frequency"], o.get("order", 0)),
    )
    return [{**o, "rank": i} for i, o in enumerate(ordered, 1)]


def issue_type(failures: list[dict]) -> str | None:
    """The most frequent quality issue among failures; ties go to the more severe, then the
    name."""
    counts: dict[str, int] = {}
    for f in failures:
        if f.get("issue_type"):
            counts[f["issue_type"]] = counts.get(f["issue_type"], 0) + 1
    if not counts:
        return None
    return min(counts, key=lambda k: (-counts[k], -PRIORITY_SCORE[ISSUE_SEVERITY[k]], k))


def pattern_opportunity(order: int, failures: list[dict], label: dict) -> dict:
    """The opportunity of one error pattern (its failures, clustered together)."""
    kinds = {c["check"] for f in failures for c in f["checks"]}
    issue = issue_type(failures)
    if "regression" in kinds:
        kind, priority, action = "regression_fix", "critical", "targeted_retraining"
    elif "thumbs_down" in kinds:
        kind, priority, action = "user_experience", "high", "user_driven_improvement"
    else:
        kind = "quality_improvement"
        priority = ISSUE_SEVERITY[issue] if issue else "low"
        action = ISSUE_ACTION.get(issue, "targeted_retraining")
    checks: dict[str, int] = {}
    for f in failures:
        for c in f["checks"]:
            checks[c["check"]] = checks.get(c["check"], 0) + 1
    return {
        "id": f"p{order}",
        "order": order,
        "type": kind,
        "priority": priority,
        "priority_score": PRIORITY_SCORE[priority],
        "frequency": len(failures),
        "issue_type": issue,
        "suggested_action": action,
        "pattern": label,
        "details": {
            "checks": dict(sorted(checks.items())),
            "corrections": sum(bool(f.get("correction")) for f in failures),
            "failed_examples": failures,
        },
    }


def performance_opportunity(
    perf: dict, max_error_rate: float, latency_p95_ms: float
) -> dict | None:
    """A performance_optimization opportunity when the log breaks its error or latency budget."""
    reasons = []
    if perf["requests"] and perf["error_rate"] > max_error_rate:
        reasons.append(f"error rate {perf['error_rate']:.1%} > {max_error_rate:.1%}")
    if perf["latency_p95_ms"] is not None and perf["latency_p95_ms"] > latency_p95_ms:
        reasons.append(f"latency p95 {perf['latency_p95_ms']:.0f} ms > {latency_p95_ms:.0f} ms")
    if not reasons:
        return None
    return {
        "id": "performance",
        "order": 10**9,
        "type": "performance_optimization",
        "priority": "medium",
        "priority_score": PRIORITY_SCORE["medium"],
        "frequency": perf["errors"] + perf["over_latency"],
        "issue_type": None,
        "suggested_action": "architecture_optimization",
        "pattern": None,
        "details": {**perf, "reasons": reasons},
    }


def overall_score(components: dict[str, dict]) -> dict:
    """components: name -> {"score": float in [0,1] or None, "source": str, "n": int}."""
    rows = {}
    for name, weight in WEIGHTS.items():
        c = components.get(name) or {"score": None, "source": "not given"}
        score = c.get("score")
        if score is not None and not 0.0 <= score <= 1.0:
            raise ValueError(f"component {name} = {score} is outside [0, 1]")
        rows[name] = {**c, "weight": weight, "measured": score is not None}
    measured = {k: r for k, r in rows.items() if r["measured"]}
    coverage = sum(r["weight"] for r in measured.values())
    value = (
        sum(r["weight"] * r["score"] for r in measured.values()) / coverage if coverage else None
    )
    return {
        "value": round(value, 4) if value is not None else None,
        "coverage": round(coverage, 4),
        "treatment": (
            "Unmeasured components are left out and the measured weights rescaled to sum to 1; "
            "coverage is the share of the seed's weight that was measured"
        ),
        "components": rows,
    }


# --- markdown ------------------------------------------------------------------------------------


def _clip(text: str, n: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def render_markdown(report: dict) -> str:
    s = report["stats"]
    lines = [
        "# Improvement opportunities",
        "",
        f"Logs: `{report['inputs']['logs']}`; {s['requests']} requests, "
        f"{s['failures']} failures in {len(report['patterns'])} error patterns; "
        f"{s['rejected_lines']} log lines rejected (log_rejects.jsonl).",
        "",
        "## Overall score",
        "",
    ]
    o = report["overall_score"]
    value = "unmeasured" if o["value"] is None else f"{o['value']:.3f}"
    lines += [
        f"**{value}** (coverage {o['coverage']:.0%} of the seed's weight). {o['treatment']}.",
        "",
        "| component | weight | score | source |",
        "|---|---|---|---|",
    ]
    for name, c in o["components"].items():
        score = "unmeasured" if c["score"] is None else f"{c['score']:.3f}"
        lines.append(f"| {name} | {c['weight']:.2f} | {score} | {_clip(c['source'], 200)} |")
    lines += [
        "",
        "## Ranked opportunities",
        "",
        "Priority: critical 4 > high 3 > medium 2 > low 1, then frequency.",
        "",
        "| rank | id | type | issue | priority | failures | action | label |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for op in report["opportunities"]:
        label = ", ".join(op["pattern"]["keywords"]) if op.get("pattern") else ""
        lines.append(
            f"| {op['rank']} | {op['id']} | {op['type']} | {op['issue_type'] or ''} | "
            f"{op['priority']} ({op['priority_score']}) | {op['frequency']} | "
            f"{op['suggested_action']} | {_clip(label, 60)} |"
        )
    for op in report["opportunities"]:
        lines += ["", f"### {op['rank']}. {op['id']}: {op['type']}", ""]
        if op.get("pattern"):
            p = op["pattern"]
            lines.append(f"Keywords: {', '.join(p['keywords']) or '-'}; cohesion {p['cohesion']}.")
            lines.append("")
            lines += [f"- {_clip(r)}" for r in p["representatives"]]
            d = op["details"]
            checks = ", ".join(f"{k} {v}" for k, v in d["checks"].items())
            lines += ["", f"Checks: {checks}; corrections: {d['corrections']}.", ""]
            for f in d["failed_examples"][:3]:
                why = "; ".join(c["detail"] for c in f["checks"])
                lines.append(f"- `{f['where']}`: {_clip(f['prompt'], 80)} → {_clip(why, 120)}")
        else:
            lines.append("; ".join(op["details"]["reasons"]) + ".")
    return "\n".join(lines) + "\n"
