"""Streaming quality monitor (tunesmith.data.quality.monitor)."""

from __future__ import annotations

import json

import pytest

from tunesmith.data.quality.monitor import QualityMonitor, follow_file, watch_stream
from tunesmith.data.quality.rules import QualityRules
from tunesmith.utils.errors import DataError

SEED_TEXTS = [
    "这是一个高质量的文本样本，内容丰富且有意义。",
    "短文本",
    "!!!@@@###特殊字符过多的文本样本###@@@!!!",
    "a" * 31,
    "正常的文本样本，质量应该是合格的。",
    "",
    "另一个正常的高质量文本，用于测试监控系统的功能。",
]
GOOD = {"instruction": "What is the capital of France?", "output": "The capital is Paris."}
BAD = {"instruction": "What is the capital of France?", "output": "Paris"}  # response too short


def collecting_monitor(**kwargs) -> tuple[QualityMonitor, list[dict]]:
    alerts: list[dict] = []
    return QualityMonitor(alert_sink=alerts.append, **kwargs), alerts


def test_seed_demo_scores_stats_and_alerts():
    monitor, alerts = collecting_monitor(rules=QualityRules(pass_score=75))
    scores = [monitor.check(text).score for text in SEED_TEXTS]
    assert scores == [100, 70, 75, 65, 100, 30, 100]
    board = monitor.dashboard()
    assert (board["total"], board["passed"], board["failed"]) == (7, 4, 3)
    assert board["pass_rate"] == pytest.approx(4 / 7)
    assert board["avg_quality"] == pytest.approx(540 / 7)
    assert board["recent_scores"] == scores
    quality = [a for a in alerts if a["type"] == "quality_alert"]
    assert [a["score"] for a in quality] == [70, 65, 30]
    assert quality[1]["text"] == "a" * 31 and quality[1]["issues"] == ["repeated_chars"]
    assert list(monitor.alerts) == alerts  # the sink and the dashboard see the same alerts


def test_alert_text_is_clipped_to_100_characters():
    monitor, alerts = collecting_monitor()
    monitor.check("x" * 150)
    assert alerts[0]["text"] == "x" * 100 + "..."


def test_recent_scores_are_the_last_ten():
    monitor = QualityMonitor()
    for n in range(12):
        monitor.check("short" if n % 2 else "a perfectly normal sentence")
    assert len(monitor.dashboard()["recent_scores"]) == 10


def test_pass_rate_alert_fires_once_per_drop_and_rearms_on_recovery():
    monitor, alerts = collecting_monitor(window=10, min_pass_rate=0.8, min_records_before_alert=5)
    rate_alerts = lambda: [a for a in alerts if a["type"] == "pass_rate_alert"]  # noqa: E731
    for _ in range(4):
        monitor.check(BAD)  # pass rate 0, but too few records to judge yet
    assert rate_alerts() == []
    monitor.check(BAD)
    assert len(rate_alerts()) == 1 and rate_alerts()[0]["pass_rate"] == 0.0
    for _ in range(3):
        monitor.check(BAD)  # still low: no repeat
    assert len(rate_alerts()) == 1
    for _ in range(10):
        monitor.check(GOOD)  # the window recovers to 1.0 and re-arms
    assert monitor.dashboard()["rolling_pass_rate"] == 1.0
    assert len(rate_alerts()) == 1
    for _ in range(2):
        monitor.check(BAD)  # 8/10 = 0.8 is not below the threshold
    assert len(rate_alerts()) == 1
    monitor.check(BAD)  # 7/10
    assert len(rate_alerts()) == 2 and rate_alerts()[1]["pass_rate"] == pytest.approx(0.7)
    assert monitor.dashboard()["pass_rate"] == pytest.approx(10 / 21)  # all-time, not rolling


def test_records_of_every_format_and_malformed_records():
    monitor, alerts = collecting_monitor()
    sharegpt = {
        "conversations": [
            {"from": "human", "value": "Say hello please"},
            {"from": "gpt", "value": "Hello, nice to meet you!"},
        ]
    }
    openai = {
        "messages": [
            {"role": "user", "content": "Say hello please"},
            {"role": "assistant", "content": "Hello, nice to meet you!"},
        ]
    }
    assert monitor.check(GOOD).issues == []
    assert monitor.check(sharegpt).issues == []
    assert monitor.check(openai).issues == []
    assert monitor.check({"text": "a classification example", "label": 1}).issues == []
    assert monitor.check(BAD, where="feed:9").issues == ["response_too_short"]
    broken = monitor.check({"instruction": "Hello there"}, where="feed:10")
    assert (broken.score, broken.passed, broken.issues) == (0, False, ["malformed"])
    assert [a["where"] for a in alerts] == ["feed:9", "feed:10"]
    assert "output" in alerts[1]["reason"]


def test_watch_stream_turns_bad_lines_into_alerts_with_their_line():
    lines = [json.dumps(GOOD), "", '{"instruction": "oops", ', "[1, 2]", json.dumps(BAD)]
    monitor, alerts = collecting_monitor()
    watch_stream(lines, monitor, source="feed.jsonl")
    assert [(a["where"], a["issues"]) for a in alerts] == [
        ("feed.jsonl:3", ["malformed"]),
        ("feed.jsonl:4", ["malformed"]),
        ("feed.jsonl:5", ["response_too_short"]),
    ]
    assert alerts[0]["reason"].startswith("invalid JSON")
    assert "got list" in alerts[1]["reason"]
    board = monitor.dashboard()
    assert (board["total"], board["passed"], board["failed"]) == (4, 1, 3)  # blank line skipped


def _writer(path, pieces: list[str]):
    """A stop() callback that appends the next piece each time the follower runs dry."""
    remaining = list(pieces)

    def stop() -> bool:
        if not remaining:
            return True
        with path.open("a", encoding="utf-8") as f:
            f.write(remaining.pop(0))
        return False

    return stop


def test_follow_file_yields_appended_lines_including_one_written_in_two_parts(tmp_path):
    path = tmp_path / "feed.jsonl"
    path.write_text('{"n": 1}\n', encoding="utf-8")
    stop = _writer(path, ['{"n": 2}\n{"n": ', '3, "zh": "你好"}\n', "\n", '{"n": 4}\r\n'])
    lines = list(follow_file(path, poll_seconds=0, stop=stop))
    assert lines == ['{"n": 1}', '{"n": 2}', '{"n": 3, "zh": "你好"}', "", '{"n": 4}']


def test_follow_file_splits_a_multibyte_character_safely(tmp_path):
    path = tmp_path / "feed.jsonl"
    path.write_bytes(b"")
    data = '{"t": "你好"}\n'.encode()
    cut = data.index("你".encode()) + 1  # in the middle of a UTF-8 sequence

    remaining = [data[:cut], data[cut:]]

    def stop() -> bool:
        if not remaining:
            return True
        with path.open("ab") as f:
            f.write(remaining.pop(0))
        return False

    assert list(follow_file(path, poll_seconds=0, stop=stop)) == ['{"t": "你好"}']


def test_follow_file_from_end_and_final_partial_line(tmp_path):
    path = tmp_path / "feed.jsonl"
    path.write_text("old line\n", encoding="utf-8")
    stop = _writer(path, ["new line\n", "no newline yet"])
    lines = list(follow_file(path, poll_seconds=0, stop=stop, from_start=False))
    assert lines == ["new line", "no newline yet"]  # the partial line is flushed at stop


def test_follow_file_rereads_a_truncated_file(tmp_path):
    path = tmp_path / "feed.jsonl"
    path.write_text("first\nsecond\n", encoding="utf-8")
    calls = []

    def stop() -> bool:
        calls.append(1)
        if len(calls) == 1:
            path.write_text("fresh\n", encoding="utf-8")  # rotated in place
            return False
        return True

    assert list(follow_file(path, poll_seconds=0, stop=stop)) == ["first", "second", "fresh"]


def test_follow_file_needs_an_existing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        next(follow_file(tmp_path / "missing.jsonl", poll_seconds=0))


def test_followed_file_feeds_the_monitor(tmp_path):
    path = tmp_path / "feed.jsonl"
    path.write_text(json.dumps(GOOD) + "\n", encoding="utf-8")
    stop = _writer(path, [json.dumps(BAD)[:20], json.dumps(BAD)[20:] + "\n", "{not json}\n"])
    monitor, alerts = collecting_monitor()
    watch_stream(follow_file(path, poll_seconds=0, stop=stop), monitor, source=str(path))
    assert [a["where"] for a in alerts] == [f"{path}:2", f"{path}:3"]
    assert alerts[0]["issues"] == ["response_too_short"]
