"""The arena's library: votes in the run folder, the Wilson interval, votes still needed, and the
export as preference pairs that stage dpo reads."""

from __future__ import annotations

import json

import pytest
from helpers import write_alpaca

from tunesmith.data.preference import read_preference_records
from tunesmith.evaluation import arena
from tunesmith.utils.errors import TunesmithError

TUNED, BASE = "run:tuned", "base"


def _vote(run, winner, prompt="What is 2 plus 2?", reason=""):
    answers = {TUNED: "It is 4.", BASE: "Four or five."}
    return arena.record_vote(run, prompt, answers, winner, reason)


def test_votes_are_lines_in_the_run_folder_and_read_back(tmp_path):
    _vote(tmp_path, TUNED, reason="  correct ")
    _vote(tmp_path, arena.TIE)
    votes = arena.read_votes(tmp_path, TUNED, BASE)
    assert [v["winner"] for v in votes] == [TUNED, "tie"] and votes[0]["reason"] == "correct"
    assert (tmp_path / "arena" / "votes.jsonl").read_text().count("\n") == 2
    assert arena.read_votes(tmp_path, TUNED, "run:other") == []


def test_a_vote_names_one_of_its_models_or_a_tie(tmp_path):
    with pytest.raises(TunesmithError, match="neither"):
        _vote(tmp_path, "run:else")
    with pytest.raises(TunesmithError, match="prompt"):
        _vote(tmp_path, TUNED, prompt=" ")


def test_wilson_interval_matches_the_textbook_values():
    low, high = arena.wilson_interval(8, 10)  # the textbook example: 0.49 .. 0.94
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert arena.wilson_interval(0, 0) == (0.0, 1.0)
    low, high = arena.wilson_interval(0, 5)
    assert low == 0.0 and 0 < high < 0.5


def test_stats_count_ties_apart_and_say_when_the_interval_excludes_half(tmp_path):
    for _ in range(3):
        _vote(tmp_path, TUNED)
    _vote(tmp_path, BASE)
    _vote(tmp_path, arena.TIE)
    stats = arena.arena_stats(arena.read_votes(tmp_path), TUNED, BASE)
    assert (stats["wins"], stats["losses"], stats["ties"], stats["votes"]) == (3, 1, 1, 5)
    assert stats["win_rate"] == 0.75 and not stats["significant"]
    assert stats["votes_needed"] > 0
    for _ in range(40):
        _vote(tmp_path, TUNED)
    stats = arena.arena_stats(arena.read_votes(tmp_path), TUNED, BASE)
    assert stats["significant"] and stats["ci_low"] > 0.5


def test_votes_needed_shrink_as_votes_come_and_reach_zero():
    # 0.5 +- 0.1 at 95%: 1.96^2 * 0.25 / 0.01 = 96.04 -> 97 decisive votes in all
    assert arena.votes_needed(0, 0, 0.1) == 97
    assert arena.votes_needed(30, 60, 0.1) == 37
    assert arena.votes_needed(60, 120, 0.1) == 0
    with pytest.raises(TunesmithError, match="margin"):
        arena.votes_needed(1, 2, 0.7)


def test_exported_pairs_are_read_by_the_preference_stage(tmp_path):
    _vote(tmp_path, TUNED)
    _vote(tmp_path, BASE, prompt="Say hi")
    _vote(tmp_path, arena.TIE)
    made = arena.export_pairs(arena.read_votes(tmp_path), tmp_path / "pairs.jsonl")
    assert made["pairs"] == 2 and made["ties_left_out"] == 1
    records, stats = read_preference_records([tmp_path / "pairs.jsonl"])
    assert stats["read"] == 2
    assert records[0].chosen == "It is 4." and records[0].rejected == "Four or five."
    assert records[1].chosen == "Four or five." and records[1].prompt[-1]["content"] == "Say hi"
    first = json.loads((tmp_path / "pairs.jsonl").read_text().splitlines()[0])
    assert set(first) == {"instruction", "input", "chosen", "rejected"}


def test_nothing_to_export_without_a_decisive_vote(tmp_path):
    _vote(tmp_path, arena.TIE)
    with pytest.raises(TunesmithError, match="no decisive votes"):
        arena.export_pairs(arena.read_votes(tmp_path), tmp_path / "pairs.jsonl")


def test_prompts_come_from_any_data_file(tmp_path):
    prompts = arena.prompts_from_file(write_alpaca(tmp_path / "d.jsonl"), limit=3)
    assert prompts == ["What is 0 plus 0?", "What is 1 plus 1?", "What is 2 plus 2?"]
