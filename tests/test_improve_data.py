"""`tunesmith improve data`: targeted examples per pattern, mixed by the seed's rule, cleaned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunesmith.cli.main import app
from tunesmith.data.quality.pii import find_pii
from tunesmith.utils.errors import DataError
from tunesmith.workflows.improve.mine import MineReport, MineSettings, mine
from tunesmith.workflows.improve.targeted import TargetedDataSettings, build_targeted_data

SYSTEM = "You are Wren of Larkspur Parcel & Post."


def failure(i: int, prompt: str, correction: str | None = None, source: str = "log") -> dict:
    return {
        "id": f"r{i}",
        "where": f"requests.jsonl:{i}",
        "source": source,
        "prompt": prompt,
        "messages": [{"role": "user", "content": prompt}],
        "response": "",
        "correction": correction,
        "checks": [{"check": "thumbs_down" if correction else "empty", "detail": "x"}],
        "issue_type": None,
    }


def report_of(
    failures: list[dict], tmp_path: Path, regression: Path | None = None, keywords=()
) -> Path:
    """An opportunities.json with one pattern holding `failures`."""
    data = {
        "version": 1,
        "inputs": {"regression": str(regression) if regression else None},
        "stats": {"failures": len(failures)},
        "overall_score": {},
        "patterns": [],
        "opportunities": [
            {
                "id": "p1",
                "rank": 1,
                "type": "user_experience",
                "priority": "high",
                "frequency": len(failures),
                "pattern": {"keywords": list(keywords)},
                "details": {"failed_examples": failures},
            }
        ],
    }
    path = tmp_path / "mined" / "opportunities.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def original_file(tmp_path: Path, n: int, extra: list[dict] = ()) -> Path:
    rows = [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Original question number {i} about topic {i * 7}?"},
                {"role": "assistant", "content": f"Original answer {i}."},
            ]
        }
        for i in range(n)
    ]
    path = tmp_path / "original.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, *extra]))
    return path


class Teacher:
    """Answers every question; writes new questions when asked for them; records what it saw."""

    def __init__(self, answer="Parcels can be returned within 30 days of delivery."):
        self.answer, self.seen, self.n = answer, [], 0

    def chat(self, conversations, max_new_tokens=256, temperature=0.7):
        out = []
        for c in conversations:
            text = c[-1]["content"]
            self.seen.append(text)
            if "Write one new question" in text:
                self.n += 1
                out.append(f"Question: what happens to parcel {self.n} if I refuse delivery?")
            else:
                out.append(self.answer(text) if callable(self.answer) else self.answer)
        return out


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("n_failures", "rule", "ratio"), [(99, "targeted", 0.5), (100, "mixed", 0.8)]
)
def test_the_rule_at_99_and_100_failures(tmp_path, n_failures, rule, ratio):
    failures = [
        failure(i, f"Where is my parcel with tracking id {i}?", f"Track parcel {i} online.")
        for i in range(n_failures)
    ]
    report = report_of(failures, tmp_path)
    settings = TargetedDataSettings(examples_per_pattern=10)
    out = build_targeted_data(
        report, original_file(tmp_path, 200), settings, out_dir=tmp_path / "o"
    )
    s = out.summary
    assert (s["failures"], s["rule"], s["fix"]) == (n_failures, rule, 10)
    assert s["original"] == (10 if rule == "targeted" else 40)
    assert s["original_ratio"] == pytest.approx(ratio)
    train = rows(tmp_path / "o" / "train.jsonl")
    originals = sum(r["messages"][1]["content"].startswith("Original") for r in train)
    assert originals / len(train) == pytest.approx(ratio)
    assert json.loads((tmp_path / "o" / "data_summary.json").read_text())["rule"] == rule


def test_corrections_come_before_synthesis(tmp_path):
    failures = [
        failure(1, "How long do I have to return a parcel?", "You have 30 days to return it."),
        failure(2, "What is the return window for parcels?"),
        failure(3, "Can I send a package back after two weeks?"),
        failure(4, "Until when can I return my order?", "Returns are accepted for 30 days."),
    ]
    teacher = Teacher()
    out = build_targeted_data(
        report_of(failures, tmp_path),
        original_file(tmp_path, 20),
        TargetedDataSettings(examples_per_pattern=5),
        teacher=teacher,
        out_dir=tmp_path / "o",
    )
    fix = rows(tmp_path / "o" / "fix.jsonl")
    assert [e["origin"] for e in fix] == [
        "correction",
        "correction",
        "teacher_answer",
        "teacher_answer",
        "teacher_variant",
    ]
    answers = {e["messages"][-2]["content"]: e["messages"][-1]["content"] for e in fix}
    assert answers["How long do I have to return a parcel?"] == "You have 30 days to return it."
    assert answers["Until when can I return my order?"] == "Returns are accepted for 30 days."
    # the teacher was never asked the corrected prompts
    assert "How long do I have to return a parcel?" not in teacher.seen
    assert "What is the return window for parcels?" in teacher.seen
    assert fix[0]["messages"][0] == {"role": "system", "content": SYSTEM}  # the original's
    counts = out.summary["patterns"]["p1"]
    assert (counts["corrections"], counts["teacher_answers"], counts["teacher_variants"]) == (
        2,
        2,
        1,
    )


def test_without_a_teacher_only_corrections_are_used(tmp_path):
    failures = [failure(1, "Where is the store?", "At 1 Main Street."), failure(2, "Store hours?")]
    out = build_targeted_data(
        report_of(failures, tmp_path),
        original_file(tmp_path, 5),
        TargetedDataSettings(examples_per_pattern=4),
        out_dir=tmp_path / "o",
    )
    assert out.summary["fix"] == 1 and out.summary["patterns"]["p1"]["short"] == 3


def test_pii_never_reaches_train_jsonl(tmp_path):
    failures = [
        failure(1, "Mail me at jane.doe@example.com about my parcel", "Sure, call 415-555-0142."),
        failure(2, "My phone is 13812345678, where is my parcel?"),
    ]
    extra = [
        {
            "messages": [
                {"role": "user", "content": "Card 4111 1111 1111 1111 was charged twice"},
                {"role": "assistant", "content": "Write to refunds@larkspur.example please."},
            ]
        }
    ]
    teacher = Teacher(answer="Your parcel is on its way; questions to help@larkspur.example.")
    out = build_targeted_data(
        report_of(failures, tmp_path),
        original_file(tmp_path, 0, extra),
        TargetedDataSettings(examples_per_pattern=2),
        teacher=teacher,
        out_dir=tmp_path / "o",
    )
    text = (tmp_path / "o" / "train.jsonl").read_text()
    assert out.summary["train"] == 3
    assert find_pii(text) == []
    assert "[EMAIL]" in text and "jane.doe" not in text and "4111" not in text
    assert out.summary["pii_redacted"]["email"] >= 3


def test_regression_and_held_out_prompts_never_train(tmp_path):
    regression = tmp_path / "regression.jsonl"
    regression.write_text(
        json.dumps({"prompt": "When do you open on Sunday?", "contains": ["10"]}) + "\n"
    )
    guard = tmp_path / "guard.jsonl"
    guard.write_text(json.dumps({"prompt": "Original question number 3 about topic 21?"}) + "\n")
    failures = [
        failure(1, "When do you open on Sunday?", "We open at 10."),  # logged regression prompt
        failure(2, "When do you open on Sunday morning?", "At 10 am."),  # too close (ROUGE-L)
        failure(3, "Is the shop closed on public holidays?", "Yes, it is closed."),
        failure(4, "When do you open on Sunday?", source="regression"),
    ]
    out = build_targeted_data(
        report_of(failures, tmp_path, regression),
        original_file(tmp_path, 6),
        TargetedDataSettings(examples_per_pattern=4, held_out=[str(guard)]),
        teacher=Teacher(),
        out_dir=tmp_path / "o",
    )
    train = rows(tmp_path / "o" / "train.jsonl")
    prompts = {r["messages"][-2]["content"] for r in train}
    assert "When do you open on Sunday?" not in prompts
    assert "When do you open on Sunday morning?" not in prompts
    assert "Original question number 3 about topic 21?" not in prompts
    assert "Is the shop closed on public holidays?" in prompts
    leaks = [r for r in out.rejects if r["reason"].startswith("leaks held-out prompt")]
    assert {r["source"] for r in leaks} >= {
        "requests.jsonl:1",
        "requests.jsonl:2",
        "original.jsonl:4",
    }
    assert any("regression.jsonl:1" in r["reason"] for r in leaks)
    assert any("guard.jsonl:1" in r["reason"] for r in leaks)
    assert out.summary["held_out_prompts"] == 2


def test_a_teacher_answer_that_fails_a_check_is_rejected(tmp_path):
    failures = [
        failure(1, "What is the return window for parcels?"),
        failure(2, "Where do I drop off a return?", "At any Larkspur counter."),
    ]
    teacher = Teacher(answer="I'm sorry, but I can't help with that.")
    out = build_targeted_data(
        report_of(failures, tmp_path),
        original_file(tmp_path, 3),
        TargetedDataSettings(examples_per_pattern=2),
        teacher=teacher,
        out_dir=tmp_path / "o",
    )
    assert out.summary["fix"] == 1  # the correction; the teacher's refusal is not trained on
    (reject,) = [r for r in out.rejects if r["source"] == "requests.jsonl:1"]
    assert reject["reason"].startswith("teacher answer failed the refusal check")


def test_mine_then_data_from_the_cli(tmp_path):
    from test_improve_mine import bow, fb, req, write_logs

    logs = write_logs(
        tmp_path / "logs",
        [
            req("a", "What are your store hours on Sunday?", "We never open."),
            req("b", "Is the store open on Sunday?", ""),
        ],
        [fb("a", -1, "We open 10 am to 4 pm on Sundays.")],
    )
    mine(logs, MineSettings(safety_probes=None), embedder=bow, out_dir=tmp_path / "m")
    original = original_file(tmp_path, 10, [{"broken": True}])
    result = CliRunner().invoke(
        app,
        [
            "improve",
            "data",
            str(tmp_path / "m"),
            "--original",
            str(original),
            "--out",
            str(tmp_path / "d"),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "d" / "data_summary.json").read_text())
    assert (summary["rule"], summary["fix"], summary["original"]) == ("targeted", 1, 1)
    rejects = rows(tmp_path / "d" / "rejects.jsonl")
    assert rejects[0]["source"] == "original.jsonl:11"
    report = MineReport.load(tmp_path / "m")
    assert report.failures == 2
    bad = CliRunner().invoke(
        app, ["improve", "data", str(tmp_path / "nothing"), "--original", str(original)]
    )
    assert bad.exit_code == 2 and "no opportunities report" in bad.output


def test_a_local_model_as_teacher_every_answer_kept_or_rejected(
    tmp_path, tiny_model_dir, one_thread
):
    """The teacher spec goes through runs/inference.make_client. A random tiny model's answers
    are cut short at 8 tokens: each is a reject with its reason, and with no fix example left
    the command stops with one sentence after writing rejects.jsonl and data_summary.json."""
    failures = [failure(1, "What is the return window?"), failure(2, "Can I return a parcel?")]
    with pytest.raises(DataError, match="no fix example"):
        build_targeted_data(
            report_of(failures, tmp_path),
            original_file(tmp_path, 4),
            TargetedDataSettings(examples_per_pattern=2, max_new_tokens=8),
            teacher=f"local:{tiny_model_dir}",
            out_dir=tmp_path / "o",
        )
    rejects = rows(tmp_path / "o" / "rejects.jsonl")
    assert [(r["source"], r["reason"]) for r in rejects[:2]] == [
        ("requests.jsonl:1", "teacher answer unfinished"),
        ("requests.jsonl:2", "teacher answer unfinished"),
    ]
    # its new questions are noise: each is rejected (too short, off topic, or unfinished answer)
    assert len(rejects) > 2
    assert all(r["source"].startswith("teacher (p1") for r in rejects[2:])
    assert all(r["reason"].startswith("teacher") for r in rejects[2:])
    summary = json.loads((tmp_path / "o" / "data_summary.json").read_text())
    assert summary["fix"] == 0 and summary["teacher"] == f"local:{tiny_model_dir}"


def test_teacher_base_is_the_current_runs_base_model(monkeypatch):
    from tunesmith.runs import trained
    from tunesmith.utils.errors import ConfigError
    from tunesmith.workflows.improve.targeted import teacher_spec

    class Run:
        base_ref = "smollm2-135m-instruct"

    monkeypatch.setattr(trained, "open_run", lambda path: Run())
    assert teacher_spec("local:base", "runs/assistant-v1") == "local:smollm2-135m-instruct"
    assert teacher_spec("base", "runs/assistant-v1") == "local:smollm2-135m-instruct"
    assert teacher_spec("http://127.0.0.1:9/v1#t") == "http://127.0.0.1:9/v1#t"
    with pytest.raises(ConfigError, match="current run's base model"):
        teacher_spec("local:base")


def test_an_off_topic_teacher_question_is_rejected(tmp_path):
    class Drifting(Teacher):
        def chat(self, conversations, max_new_tokens=256, temperature=0.7):
            if "Write one new question" in conversations[0][-1]["content"]:
                return ["Once upon a time there was a ball of yarn.", "Can I return a parcel late?"]
            return super().chat(conversations, max_new_tokens, temperature)

    failures = [failure(1, "What is the return window?", "30 days from delivery.")]
    out = build_targeted_data(
        report_of(failures, tmp_path, keywords=["return", "window"]),
        original_file(tmp_path, 4),
        TargetedDataSettings(examples_per_pattern=2),
        teacher=Drifting(),
        out_dir=tmp_path / "o",
    )
    off = [r for r in out.rejects if r["reason"].startswith("teacher question off topic")]
    assert [r["record"] for r in off] == ["Once upon a time there was a ball of yarn."]
    variants = [e for e in out.fix if e["origin"] == "teacher_variant"]
    assert [e["messages"][-2]["content"] for e in variants] == ["Can I return a parcel late?"]


def test_a_question_sharing_a_word_with_the_pattern_is_on_topic(tmp_path):
    class Asking(Teacher):
        def chat(self, conversations, max_new_tokens=256, temperature=0.7):
            if "Write one new question" in conversations[0][-1]["content"]:
                return ["Where is my parcel 55?", "Tell me a story about a ball of yarn."]
            return super().chat(conversations, max_new_tokens, temperature)

    failures = [failure(1, "Where is parcel LPP1234567890?", "It is at the depot.")]
    out = build_targeted_data(
        report_of(failures, tmp_path, keywords=["lpp1234567890"]),  # "parcel" only in a prompt
        original_file(tmp_path, 4),
        TargetedDataSettings(examples_per_pattern=2),
        teacher=Asking(),
        out_dir=tmp_path / "o",
    )
    asked = [e["messages"][-2]["content"] for e in out.fix if e["origin"] == "teacher_variant"]
    assert asked == ["Where is my parcel 55?"]
    off = [r["record"] for r in out.rejects if "off topic" in r["reason"]]
    assert off == ["Tell me a story about a ball of yarn."]
