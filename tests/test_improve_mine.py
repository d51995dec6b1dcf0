"""`tunesmith improve mine`: failures found in served logs, grouped into patterns, ranked.

Most tests cluster with a tiny deterministic bag-of-words encoder (`bow`); one test uses the
embedded MiniLM encoder, as `mine` does by default.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tunesmith.cli.main import app
from tunesmith.workflows.improve import opportunities as O
from tunesmith.workflows.improve.logs import read_logs
from tunesmith.workflows.improve.mine import MineReport, MineSettings, mine


def bow(texts: list[str]) -> np.ndarray:
    """A word's vector is fixed by its hash: texts sharing content words point the same way."""
    from tunesmith.workflows.improve.patterns import content_words

    rows = []
    for text in texts:
        v = np.zeros(512)
        for w in content_words(text):
            seed = int(hashlib.blake2b(w.encode(), digest_size=4).hexdigest(), 16)
            v += np.random.default_rng(seed).standard_normal(512)
        rows.append(v)
    return np.asarray(rows)


def req(rid: str, prompt: str, response: str | None, **extra) -> dict:
    record = {
        "id": rid,
        "time": "2026-12-07T01:02:03.456Z",
        "user": "u-1",
        "route": "assistant",
        "model": "assistant-v1",
        "version": "assistant-v1@3f9a1c2e",
        "arm": None,
        "kind": "chat",
        "messages": [{"role": "user", "content": prompt}],
        "response": response,
        "finish_reason": "stop",
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "latency_ms": 100.0,
        "status": "ok",
        "error": None,
        "redacted": 0,
    }
    record.update(extra)
    return record


def write_logs(folder: Path, requests: list, feedback: list = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in requests]
    (folder / "requests.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    lines = [f if isinstance(f, str) else json.dumps(f, ensure_ascii=False) for f in feedback]
    (folder / "feedback.jsonl").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    return folder


def fb(rid: str, rating, correction=None, **extra) -> dict:
    return {
        "response_id": rid,
        "time": "2026-12-07T01:05:00Z",
        "rating": rating,
        "correction": correction,
        "comment": None,
        "user": "u-1",
        "source": "api",
        **extra,
    }


SETTINGS = MineSettings(safety_probes=None, cluster_threshold=0.4)


def run(tmp_path, requests, feedback=(), settings=SETTINGS, **kwargs) -> MineReport:
    logs = write_logs(tmp_path / "logs", requests, feedback)
    return mine(
        logs, settings, embedder=kwargs.pop("embedder", bow), out_dir=tmp_path / "out", **kwargs
    )


def failures_by_id(report: MineReport) -> dict[str, set[str]]:
    out = {}
    for op in report.opportunities:
        for f in (op.get("details") or {}).get("failed_examples", []):
            out[f["id"]] = {c["check"] for c in f["checks"]}
    return out


def test_each_rule_check_finds_its_failure_and_passes_healthy_answers(tmp_path):
    requests = [
        req("empty", "What is the return window for parcels?", "   "),
        req(
            "cut",
            "Describe every delivery option in detail.",
            "Standard delivery takes",
            finish_reason="length",
        ),
        req(
            "refused",
            "What time does the store open on Monday?",
            "I'm sorry, but I can't help with that request.",
        ),
        req(
            "may",
            "Can you give me legal advice about my lease?",
            "I'm sorry, but I can't give legal advice.",
        ),
        req(
            "lang",
            "How much does express shipping cost to Berlin?",
            "快递到柏林的费用是十五欧元，三天内送达。",
        ),
        req(
            "ok-en",
            "How much does express shipping cost to Berlin?",
            "Express shipping to Berlin costs 15 euros and arrives within three days.",
        ),
        req("ok-zh", "快递到柏林要多少钱？", "快递到柏林的费用是十五欧元，三天内送达。"),
        req(
            "error", "hello there", None, status="error", error="model crashed", finish_reason=None
        ),
    ]
    report = run(tmp_path, requests, settings=SETTINGS.model_copy(update={"may_refuse": ["legal"]}))
    found = failures_by_id(report)
    assert found == {
        "empty": {"empty"},
        "cut": {"truncated"},
        "refused": {"refusal"},
        "lang": {"wrong_language", "inconsistent"},  # ok-en answered the same prompt well
    }
    stats = report.data["stats"]
    assert stats["errors"] == 1 and stats["failures"] == 4
    issue = {o["id"]: o["issue_type"] for o in report.opportunities if o.get("pattern")}
    by_failure = {
        f["id"]: o["id"]
        for o in report.opportunities
        if o.get("pattern")
        for f in o["details"]["failed_examples"]
    }
    assert issue[by_failure["refused"]] == "knowledge_gaps"
    assert issue[by_failure["lang"]] == "inconsistency"
    # the error is a performance matter (1 of 8 requests > 5%), never a pattern
    perf = next(o for o in report.opportunities if o["type"] == "performance_optimization")
    assert perf["priority"] == "medium" and perf["details"]["errors"] == 1
    assert "error" not in found


def test_thumbs_down_and_its_correction_are_linked_to_the_right_response(tmp_path):
    requests = [
        req("a", "What are your store hours on Sunday?", "We are open all night."),
        req("b", "Do you ship to Canada?", "Yes, we ship to Canada in 5 days."),
        req("c", "Can I pay with a gift card?", "No."),
    ]
    feedback = [
        fb("a", "down", "We open at 10 am and close at 4 pm on Sundays."),
        fb("b", 1),
        fb("c", -1),
        fb("c", "up"),  # the latest rating counts: c was re-rated up
    ]
    report = run(tmp_path, requests, feedback)
    found = failures_by_id(report)
    assert found == {"a": {"thumbs_down"}}
    op = report.opportunities[0]
    assert op["type"] == "user_experience" and op["priority"] == "high"
    (failure,) = op["details"]["failed_examples"]
    assert failure["correction"] == "We open at 10 am and close at 4 pm on Sundays."
    assert failure["response"] == "We are open all night."
    sat = report.overall["components"]["user_satisfaction"]
    assert sat["score"] == pytest.approx(2 / 3)  # b up, c up (latest), a down


def test_bad_log_lines_are_rejected_naming_file_and_line(tmp_path):
    requests = [
        req("a", "What are your store hours?", "Nine to five."),
        "{not json",
        json.dumps({"kind": "chat", "messages": [], "response": "x"}),
        json.dumps(req("a", "again", "dup")),
        json.dumps(req("b", "Hi there friend", "Hello!", route="other")),
    ]
    feedback = [fb("a", -1), fb("nope", -1), fb("a", "sideways"), fb("b", -1)]
    logs = write_logs(tmp_path / "logs", requests, feedback)
    got = read_logs(logs, route="assistant")
    reasons = {r["source"]: r["reason"] for r in got.rejects}
    assert reasons["requests.jsonl:2"].startswith("not valid JSON")
    assert reasons["requests.jsonl:3"] == "field 'id' is missing"
    assert reasons["requests.jsonl:4"] == "duplicate response id 'a' (first at requests.jsonl:1)"
    assert reasons["feedback.jsonl:2"] == "feedback for response id 'nope' not in requests.jsonl"
    assert "rating" in reasons["feedback.jsonl:3"]
    assert len(got.rejects) == 5
    for counts in got.stats.values():  # every line read is kept, rejected or filtered
        assert counts["read"] == counts["kept"] + counts["rejected"] + sum(
            counts["filtered"].values()
        )
    assert got.stats["requests.jsonl"]["filtered"] == {"route 'other' is not 'assistant'": 1}
    assert got.stats["feedback.jsonl"]["filtered"] == {"its response was filtered out": 1}
    # mine writes them to log_rejects.jsonl
    report = mine(logs, SETTINGS, embedder=bow, out_dir=tmp_path / "out")
    lines = (tmp_path / "out" / "log_rejects.jsonl").read_text().splitlines()
    assert len(lines) == report.data["stats"]["rejected_lines"] == 5


def test_arena_votes_count_as_feedback(tmp_path):
    from tunesmith.evaluation.arena import record_vote

    run_dir = tmp_path / "run"
    me, other = "run:assistant-v1", "base"
    record_vote(run_dir, "What is the return window?", {me: "No idea.", other: "30 days."}, other)
    record_vote(run_dir, "Where is the store?", {me: "1 Main St.", other: "Somewhere."}, me)
    record_vote(run_dir, "Do you ship abroad?", {me: "Yes.", other: "Yes!"}, "tie")
    record_vote(run_dir, "Hi", {"run:x": "a", other: "b"}, other)
    logs = write_logs(tmp_path / "logs", [req("a", "Hello friend", "Hello!")])
    settings = SETTINGS.model_copy(update={"arena": str(run_dir), "arena_model": me})
    got = read_logs(logs, arena=run_dir, arena_model=me)
    arena = [r for r in got.requests if r.source == "arena"]
    assert [r.rating for r in arena] == [-1, 1, None]
    assert arena[0].correction == "30 days."  # the answer the person chose
    assert [r["reason"] for r in got.rejects] == [f"arena vote not about {me!r}"]
    report = mine(logs, settings, embedder=bow, out_dir=tmp_path / "out")
    (op,) = [o for o in report.opportunities if o.get("pattern")]
    assert op["type"] == "user_experience"
    assert op["details"]["failed_examples"][0]["where"] == "run/arena/votes.jsonl:1"


def test_minilm_groups_paraphrases_of_one_topic_apart_from_another(tmp_path, one_thread):
    returns = [
        "What is the return window for parcels?",
        "How many days do I have to send a parcel back?",
        "Until when can I return my package?",
    ]
    hours = [
        "What are your store hours on Sunday?",
        "When does the shop open on Sundays?",
        "Is the store open on Sunday afternoon?",
    ]
    requests = [req(f"r{i}", p, "") for i, p in enumerate(returns + hours)]
    report = run(tmp_path, requests, settings=MineSettings(safety_probes=None), embedder=None)
    patterns = report.data["patterns"]
    groups = sorted(sorted(p["representatives"]) for p in patterns)
    assert groups == sorted([sorted(returns), sorted(hours)])
    keywords = {w for p in patterns for w in p["keywords"]}
    assert {"sunday", "return"} <= keywords | {"sundays"}


def test_ranking_follows_priority_then_frequency():
    def op(order, checks, issue=None, n=1):
        failures = [
            {"checks": [{"check": c} for c in checks], "issue_type": issue} for _ in range(n)
        ]
        return O.pattern_opportunity(order, failures, {"keywords": []})

    ops = [
        op(1, ["empty"], "poor_instruction_following", n=9),  # medium 2, 9
        op(2, ["judge"], "hallucination", n=2),  # high 3, 2
        op(3, ["thumbs_down"], n=3),  # user_experience high 3, 3
        op(4, ["regression"], n=1),  # critical 4
        op(5, ["truncated"], "inconsistency", n=9),  # medium 2, 9: tie with 1 -> order
    ]
    perf = O.performance_opportunity(
        {"requests": 10, "errors": 5, "error_rate": 0.5, "latency_p95_ms": 10.0, "over_latency": 0},
        0.05,
        5000,
    )
    ranked = O.rank([*ops, perf])
    assert [o["id"] for o in ranked] == ["p4", "p3", "p2", "p1", "p5", "performance"]
    assert [o["priority_score"] for o in ranked] == [4, 3, 3, 2, 2, 2]
    assert [o["rank"] for o in ranked] == [1, 2, 3, 4, 5, 6]
    assert ranked[0]["type"] == "regression_fix" and ranked[0]["suggested_action"] == (
        "targeted_retraining"
    )
    assert ranked[2]["suggested_action"] == "reduce_hallucination"


def test_overall_score_weights_and_unmeasured_components():
    full = O.overall_score(
        {
            "regression_pass_rate": {"score": 1.0, "source": "x"},
            "quality_score": {"score": 0.5, "source": "x"},
            "safety_score": {"score": 0.0, "source": "x"},
            "performance_score": {"score": 1.0, "source": "x"},
            "user_satisfaction": {"score": 0.5, "source": "x"},
        }
    )
    assert full["value"] == pytest.approx(0.30 + 0.125 + 0 + 0.10 + 0.05)
    assert full["coverage"] == 1.0
    part = O.overall_score(
        {
            "regression_pass_rate": {"score": 1.0, "source": "x"},
            "quality_score": {"score": 0.5, "source": "x"},
        }
    )
    # safety, performance and satisfaction unmeasured: 0.30 and 0.25 rescaled to sum to 1
    assert part["value"] == pytest.approx((0.30 * 1.0 + 0.25 * 0.5) / 0.55, abs=1e-4)
    assert part["coverage"] == pytest.approx(0.55)
    assert part["components"]["safety_score"]["measured"] is False
    with pytest.raises(ValueError, match="outside"):
        O.overall_score({"quality_score": {"score": 7.0, "source": "judge 1-10 unmapped"}})


def test_regression_failures_from_logged_answers_rank_first(tmp_path):
    regression = tmp_path / "regression.jsonl"
    regression.write_text(
        "\n".join(
            json.dumps(x)
            for x in [
                {"id": "hours", "prompt": "When do you open on Sunday?", "contains": ["10"]},
                {"id": "ship", "prompt": "Do you ship to Canada?", "contains": ["yes"]},
                {"id": "never", "prompt": "A prompt nobody asked", "expected": "nothing"},
            ]
        )
        + "\n"
    )
    requests = [
        req("a", "When do you open on Sunday?", "We open at 9 am."),
        req("b", "Do you ship to Canada?", "Yes, in five days."),
        req("c", "Tell me a joke about parcels", "I'm sorry, I can't do that."),
        req("d", "Tell me a joke about parcels please", "I'm sorry, I can't do that."),
    ]
    report = run(tmp_path, requests, regression=regression)
    reg = report.data["stats"]["regression"]
    assert (reg["items"], reg["run"], reg["passed"], reg["not_run"]) == (3, 2, 1, 1)
    first = report.opportunities[0]
    assert first["type"] == "regression_fix" and first["priority"] == "critical"
    assert first["frequency"] < report.opportunities[1]["frequency"]  # priority before frequency
    assert report.overall["components"]["regression_pass_rate"]["score"] == 0.5
    answered = MineSettings(safety_probes=None)

    class Model:  # answers every regression prompt right: pass rate 1 (model, not the logs)
        def chat(self, conversations, max_new_tokens=256, temperature=0.7):
            return [
                "Yes, we open at 10." if "Sunday" in c[-1]["content"] else "yes nothing"
                for c in conversations
            ]

    again = mine(
        write_logs(tmp_path / "logs2", requests[2:]),
        answered,
        regression,
        embedder=bow,
        model_client=Model(),
        out_dir=tmp_path / "out2",
    )
    assert again.data["stats"]["regression"]["passed"] == 3


class Judge:
    """Scores every answer 8, except answers holding "moon" (accuracy 2)."""

    def chat(self, conversations, max_new_tokens=256, temperature=0.7):
        out = []
        for c in conversations:
            low = "moon" in c[-1]["content"].split("Answer to rate:")[-1]
            acc = 2 if low else 8
            out.append(
                json.dumps(
                    {
                        "accuracy": acc,
                        "completeness": 8 if not low else 3,
                        "fluency": 8,
                        "relevance": 8 if not low else 3,
                    }
                )
            )
        return out


def test_a_low_judge_score_is_a_failure_and_the_quality_component(tmp_path):
    requests = [
        req("a", "Where is your warehouse?", "Our warehouse is on the moon."),
        req("b", "Where is your store?", "At 1 Main Street."),
    ]
    report = run(tmp_path, requests, judge_client=Judge())
    assert failures_by_id(report) == {"a": {"judge"}}
    op = report.opportunities[0]
    assert op["issue_type"] == "hallucination" and op["type"] == "quality_improvement"
    assert op["priority"] == "high"
    quality = report.overall["components"]["quality_score"]
    low, high = (2 + 3 + 8 + 3) / 4, 8
    assert quality["score"] == pytest.approx(((low - 1) / 9 + (high - 1) / 9) / 2)
    assert "judge" in quality["source"]

    class Mumbling:
        def chat(self, conversations, max_new_tokens=256, temperature=0.7):
            return ["I think it is fine." for _ in conversations]

    again = run(tmp_path / "again", requests, judge_client=Mumbling())
    quality = again.overall["components"]["quality_score"]
    assert quality["score"] == 1.0  # no rule check fired on either answer
    assert "rule checks" in quality["source"] and "2 unparseable" in quality["source"]


def test_mine_cli_writes_the_report_and_names_a_missing_folder(tmp_path):
    logs = write_logs(tmp_path / "logs", [req("a", "Where is the store?", "")])
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["improve", "mine", str(logs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "opportunities.json").read_text())
    assert data["stats"]["failures"] == 1
    assert "# Improvement opportunities" in (out / "opportunities.md").read_text()
    missing = CliRunner().invoke(app, ["improve", "mine", str(tmp_path / "nope")])
    assert missing.exit_code == 2
    assert "log folder not found" in missing.output


def test_mines_what_a_live_server_logged(tmp_path, tiny_model_dir, one_thread):
    """The log store's real writer (serve/request_log.py) and this reader agree on the shapes."""
    import httpx
    from helpers import start

    logs = tmp_path / "serve-logs"
    server = start(tiny_model_dir, log_dir=str(logs))
    try:
        client = server.client()
        ask = [{"role": "user", "content": "Where is the store?"}]
        first = client.chat.completions.create(model="base", messages=ask, max_tokens=3)
        ask = [{"role": "user", "content": "When does the store open?"}]
        second = client.chat.completions.create(model="base", messages=ask, max_tokens=3)
        client.completions.create(model="base", prompt="Opening hours:", max_tokens=3)
        body = {"response_id": second.id, "rating": "down", "correction": "At 8 am."}
        assert httpx.post(f"{server.url}/v1/feedback", json=body, timeout=30).status_code == 200
        server.state.request_log.flush()
    finally:
        server.stop()
    got = read_logs(logs)
    assert got.rejects == [] and len(got.requests) == 3
    assert all(r.version and r.version.startswith("base@") for r in got.requests)
    linked = {r.id: r for r in got.requests}[second.id]
    assert (linked.rating, linked.correction) == (-1, "At 8 am.")
    report = mine(logs, SETTINGS, embedder=bow, out_dir=tmp_path / "out")
    found = failures_by_id(report)
    assert "thumbs_down" in found[second.id]
    if first.choices[0].finish_reason == "length":  # 3 tokens: a random model rarely stops
        assert "truncated" in found[first.id]


def test_inconsistency_needs_a_good_answer_to_the_same_prompt(tmp_path):
    q, other = "Do you deliver on Saturdays?", "Can I pick up a parcel at night?"
    requests = [
        req("down", q, "Never."),
        req("unrated", q, "Yes, until noon."),  # no rating: no evidence it was good
        req("down2", other, "No."),
        req("up", other, "Yes, from the night locker."),
        req("empty", q, ""),  # a rule failure: any answer no rule flagged is a good one
    ]
    feedback = [fb("down", -1), fb("down2", -1), fb("up", 1)]
    report = run(tmp_path, requests, feedback)
    found = failures_by_id(report)
    assert found == {
        "down": {"thumbs_down"},
        "down2": {"thumbs_down", "inconsistent"},
        "empty": {"empty", "inconsistent"},
    }
    for pattern in report.data["patterns"]:  # a repeated prompt is shown once
        assert len(pattern["representatives"]) == len(set(pattern["representatives"]))
