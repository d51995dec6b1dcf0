"""The quickstart workflow: plumbing on the tiny model, and the real outcome on SmolLM2 (slow)."""

from __future__ import annotations

import json

import pytest

from tunesmith.workflows.quickstart import run_quickstart


def test_quickstart_writes_table_report_and_replay(tmp_path, tiny_model_dir):
    run, answers, summary = run_quickstart(
        "Zed",
        'Acme "Q" Labs',  # quotes must survive the JSON placeholders
        [f"model.name_or_path={tiny_model_dir}", "train.max_steps=2", f"output.dir={tmp_path}"],
    )
    assert [a.kind for a in answers].count("identity") == summary["held_out_questions"] == 12
    assert [a.kind for a in answers].count("general") == 4
    identity = [json.loads(x) for x in (run.root / "data/identity.jsonl").read_text().splitlines()]
    assert all("{{" not in r["output"] for r in identity)
    assert any('Acme "Q" Labs' in r["output"] for r in identity)
    report = json.loads((run.reports / "quickstart.json").read_text())
    assert report["summary"] == summary
    assert len(report["answers"]) == 16
    page = (run.reports / "quickstart.html").read_text()
    assert "Could you tell me your name?" in page and "data:image/png;base64" in page
    # Every replayed record is a finished base answer to a replay prompt.
    replay = (run.root / "data/replay.jsonl").read_text().splitlines()
    assert summary["train_examples"] == len(identity) + len(replay)
    # the before/after table is a paired comparison on the 12 held-out questions
    says = summary["compare"]["says_name"]
    assert says["n"] == 12
    assert says["diff"] == pytest.approx(
        (summary["tuned_says_name"] - summary["base_says_name"]) / 12
    )
    assert says["ci_low"] <= says["diff"] <= says["ci_high"]
    assert -1 <= summary["compare"]["similarity"]["mean_b"] <= 1
    assert "tuned - base, says_name" in page


@pytest.mark.slow
def test_quickstart_teaches_the_name_to_smollm2(tmp_path):
    _, answers, summary = run_quickstart("Tessa", "Tunesmith Labs", [f"output.dir={tmp_path}"])
    assert summary["base_says_name"] <= 1
    assert summary["tuned_says_name"] >= 9  # of 12 held-out questions
    says, similarity = summary["compare"]["says_name"], summary["compare"]["similarity"]
    assert says["ci_low"] > 0 and similarity["diff"] > 0  # the gain is not chance
    general = {a.question: a.tuned.lower() for a in answers if a.kind == "general"}
    assert "paris" in general["What is the capital of France?"]
    assert not any("tessa" in answer for answer in general.values())
