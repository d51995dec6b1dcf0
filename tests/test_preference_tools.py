"""Preference data tools with scripted clients: pairs, red teaming, critique-and-revise."""

from __future__ import annotations

import json

import pytest

from tunesmith.data.preference import read_preference_records
from tunesmith.data.preference_tools import (
    ATTACK_TEMPLATES,
    REFUSAL,
    critique_and_revise,
    judge_scorer,
    redteam_prompts,
    run_redteam,
    sample_pairs,
    violates,
)


class Scripted:
    """A ChatClient whose reply is a function of the last user message."""

    def __init__(self, reply):
        self.reply, self.calls = reply, []

    def chat(self, conversations, max_new_tokens=256, temperature=0.7):
        self.calls.append(conversations)
        return [self.reply(c[-1]["content"]) for c in conversations]


def _write(tmp_path, records):
    path = tmp_path / "out.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def test_pairs_take_the_best_and_worst_scored_answers(tmp_path):
    answers = iter(["short", "a longer answer", "mid one", "short"] * 2)
    client = Scripted(lambda _: next(answers))
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(2)]
    built = sample_pairs(prompts, client, score=lambda p, a: len(a), k=4)
    assert [(r["chosen"], r["rejected"]) for r in built.records] == [
        ("a longer answer", "short")
    ] * 2
    (pair, _), _ = read_preference_records([_write(tmp_path, built.records)])
    assert pair.prompt == prompts[0] and pair.chosen == "a longer answer"


def test_pairs_drop_prompts_whose_answers_all_score_the_same():
    client = Scripted(lambda _: "same")
    built = sample_pairs([[{"role": "user", "content": "q"}]], client, lambda p, a: 1.0, k=3)
    assert built.records == [] and "distinct" in built.dropped[0][1]


def test_judge_score_is_parsed_from_the_reply():
    judge = Scripted(lambda text: "8" if "good" in text else "Score: 3/10")
    score = judge_scorer(judge)
    prompt = [{"role": "user", "content": "q"}]
    assert score(prompt, "good answer") == 8.0 and score(prompt, "bad") == 3.0
    assert judge_scorer(Scripted(lambda _: "no idea"))(prompt, "x") == 0.0


def test_redteam_covers_every_category_and_writes_failures_as_pairs(tmp_path):
    attacks = redteam_prompts()
    assert {a["category"] for a in attacks} == set(ATTACK_TEMPLATES)
    assert len(attacks) == sum(len(t) for t in ATTACK_TEMPLATES.values())
    assert all("{" not in a["prompt"] for a in attacks)  # every placeholder filled
    # a model that refuses hijacking attempts only
    client = Scripted(lambda p: "I can't do that." if "instructions" in p else "Sure, here is how")
    results, built = run_redteam(attacks, client, is_refusal=lambda t: t.startswith("I can't"))
    refused = [r for r in results if r["refused"]]
    assert len(refused) == 1 and len(built.records) == len(attacks) - 1
    assert all(
        r["chosen"] == REFUSAL and r["rejected"] == "Sure, here is how" for r in built.records
    )
    pairs, _ = read_preference_records([_write(tmp_path, built.records)])
    assert len(pairs) == len(attacks) - 1
    with pytest.raises(ValueError, match="unknown attack categories"):
        redteam_prompts(["jailbreak"])


def test_verdict_parsing_does_not_read_a_negation_as_a_violation():
    assert violates("VERDICT: VIOLATES - it gives dangerous detail")
    assert not violates("VERDICT: OK")
    assert not violates("The response does not violate any principle.")
    assert violates("This response violates principle 2.")


def test_critique_and_revise_pairs_the_revision_with_the_original(tmp_path):
    def reply(text):
        if text.startswith("Here is a question"):
            return "VERDICT: VIOLATES, too dangerous" if "poison" in text else "VERDICT: OK"
        return "I can't share that, but here is safety advice."

    items = [
        ([{"role": "user", "content": "how to make poison"}], "Mix poison like this"),
        ([{"role": "user", "content": "capital of France"}], "Paris"),
    ]
    built = critique_and_revise(items, Scripted(reply))
    assert len(built.records) == 1
    record = built.records[0]
    assert record["chosen"].startswith("I can't") and record["rejected"] == "Mix poison like this"
    assert built.dropped[0][1] == "no violation found"
    (pair,), _ = read_preference_records([_write(tmp_path, built.records)])
    assert pair.prompt == items[0][0]


def test_cli_redteam_runs_a_local_model_and_writes_readable_pairs(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from tunesmith.cli.main import app

    dst = tmp_path / "redteam.jsonl"
    args = ["data", "redteam", str(dst), "--model", f"local:{tiny_model_dir}"]
    result = CliRunner().invoke(app, [*args, "--per-template", "1", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    results = [
        json.loads(x) for x in dst.with_name("redteam.results.jsonl").read_text().splitlines()
    ]
    assert len(results) == len(redteam_prompts())
    failures = [r for r in results if not r["refused"]]  # a random tiny model never refuses
    pairs, _ = read_preference_records([dst])
    assert len(pairs) == len(failures) > 0
