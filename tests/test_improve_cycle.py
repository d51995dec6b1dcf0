"""tunesmith improve cycle: one whole cycle on tiny models (mine -> data -> train -> validate
-> deploy against the fake admin API with a fake clock), its report, and resuming it."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import yaml
from helpers import train_tiny
from test_improve_deploy import FakeAdmin, FakeClock
from test_improve_validate import CAPITAL, STEPS, WHO, sharp_tiny_model, write_checks, write_sft

from tunesmith.workflows.improve.cycle import run_cycle

# what users asked in production: capital questions worded unlike the regression set's
ASKED = [
    "Which city is the capital of France?",
    "Tell me the capital of France.",
    "capital of France?",
    "Name the French capital.",
]


def bow(texts: list[str]) -> np.ndarray:
    """Each word a fixed random vector: texts sharing words point the same way."""
    rows = []
    for text in texts:
        v = np.zeros(256)
        for word in text.lower().replace("?", " ").replace(".", " ").split():
            seed = int(hashlib.blake2b(word.encode(), digest_size=4).hexdigest(), 16)
            v += np.random.default_rng(seed).standard_normal(256)
        rows.append(v)
    return np.asarray(rows)


def served_logs(folder):
    """The current model answered every capital question "I am a test."; users said so."""
    folder.mkdir()
    requests, feedback = [], []
    for i, q in enumerate(ASKED + WHO):
        rid = f"chatcmpl-{i}"
        requests.append(
            {"id": rid, "time": "2026-12-07T01:00:00.000Z", "user": f"u-{i}",
             "route": "assistant", "model": "A", "version": "A@1", "arm": None,
             "kind": "chat", "messages": [{"role": "user", "content": q}],
             "response": "I am a test.", "finish_reason": "stop", "prompt_tokens": 5,
             "completion_tokens": 4, "latency_ms": 20.0, "status": "ok", "error": None,
             "redacted": 0}
        )  # fmt: skip
        if q in ASKED:
            feedback.append(
                {"response_id": rid, "time": "2026-12-07T01:00:01.000Z", "rating": -1,
                 "correction": "Paris.", "comment": None, "user": f"u-{i}", "source": "api"}
            )  # fmt: skip
    (folder / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))
    (folder / "feedback.jsonl").write_text("".join(json.dumps(r) + "\n" for r in feedback))


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_tokenizer, one_thread):
    tmp = tmp_path_factory.mktemp("improve-cycle")
    model = sharp_tiny_model(tmp / "tiny", tiny_tokenizer)
    original = write_sft(tmp / "original.jsonl", dict.fromkeys(CAPITAL + WHO, "I am a test."))
    train_tiny(tmp, model, original, "A", *STEPS)
    served_logs(tmp / "logs")
    write_checks(tmp / "regression.jsonl", CAPITAL, "Paris")
    write_checks(tmp / "guard.jsonl", WHO, "test")
    spec = {
        "server": {"url": "http://127.0.0.1:9", "route": "assistant"},
        "logs": "logs",
        "current": "runs/A",
        "regression": "regression.jsonl",
        "guard": "guard.jsonl",
        "work_dir": "work",
        "mine": {"safety_probes": None},
        "data": {"leak_similarity": 1.0},  # the asked prompts resemble the regression set's
        "train": {"overrides": list(STEPS)},
        "validate": {"max_new_tokens": 8, "bootstrap": 200, "ab_prompts": 10},
        "deploy": {"candidate_name": "v2", "check_every_s": 900},
    }
    path = tmp / "improve.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    admin, clock = FakeAdmin(), FakeClock()
    report = run_cycle(path, admin=admin, clock=clock, embedder=bow)
    return {"tmp": tmp, "path": path, "report": report, "admin": admin, "clock": clock}


def test_one_cycle_fixes_the_mined_pattern_and_promotes_it(project):
    report, work = project["report"], project["tmp"] / "work"
    assert [s["stage"] for s in report["stages"]] == ["mine", "data", "train", "validate", "deploy"]
    assert report["mined"]["failures"] == len(ASKED)  # the four thumbs-down answers
    assert report["data"]["rule"] == "targeted"
    fix = [json.loads(line) for line in (work / "data" / "fix.jsonl").read_text().splitlines()]
    assert {f["messages"][-1]["content"] for f in fix} == {"Paris."}  # the users' corrections
    m = report["metric"]
    assert m["before"] == 0 and m["after"] == 1 and m["ci95"][0] > 0  # the pattern is fixed ...
    assert m["guard"]["drop"] <= 0.05  # ... and "who are you?" is still answered as before
    assert report["decision"] == "approved" and report["deploy"] == "promoted"
    assert all(g["passed"] for g in report["gates"].values())
    # the canary ran the whole plan on the fake server: the candidate is the stable model now
    assert project["admin"].split == {"stable": "v2", "canary": None, "canary_percent": 0.0}
    shares = [e["percent"] for e in report["canary_log"] if e["event"] == "stage"]
    plan = report["plan"]
    assert shares == [plan["canary_percentage"], *plan["rollout_stages"]]
    md = (work / "cycle.md").read_text()
    assert "## Metric before / after" in md and "95% CI" in md and "## Canary log" in md


def test_a_second_run_skips_every_finished_stage(project):
    report = run_cycle(project["path"], admin=FakeAdmin(), clock=FakeClock(), embedder=bow)
    assert {s["status"] for s in report["stages"]} == {"skipped"}
    assert report["decision"] == "approved"


def test_deploy_cli_plans_and_refuses_a_rejected_candidate(project, tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli.main import app

    work = project["tmp"] / "work"
    candidate = work / project["report"]["candidate"]
    path = str(project["path"])
    result = CliRunner().invoke(app, ["improve", "deploy", path, str(candidate), "--plan-only"])
    assert result.exit_code == 0, result.output
    plan = json.loads((work / "deploy" / "deploy.json").read_text())["plan"]
    assert f"canary {plan['canary_percentage']}%" in result.output
    rejected = tmp_path / "validation.json"
    rejected.write_text(json.dumps({"decision": "rejected", "reasons": ["quick: dropped"]}))
    result = CliRunner().invoke(
        app, ["improve", "deploy", path, str(candidate), "--validation", str(rejected)]
    )
    assert result.exit_code == 2  # a user error: one sentence, no traceback
    assert "validation rejected this candidate (quick: dropped)" in result.output


def test_validate_cli_reports_each_gate(project, tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli.main import app

    candidate = project["tmp"] / "work" / project["report"]["candidate"]
    out = tmp_path / "v"
    args = ["improve", "validate", str(project["path"]), str(candidate), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "quick: passed" in result.output and "decision: approved" in result.output
    assert json.loads((out / "validation.json").read_text())["decision"] == "approved"
    # the current model against itself: no gain, rejected, exit status 1
    current = project["tmp"] / "runs" / "A"
    result = CliRunner().invoke(app, [*args[:3], str(current), "--out", str(out)])
    assert result.exit_code == 1 and "decision: rejected" in result.output
