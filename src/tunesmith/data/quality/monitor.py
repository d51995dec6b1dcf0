"""Score records as they arrive, keep running stats, and raise alerts.

The seed's DataQualityMonitor, fixed: no daemon threads or swallowed exceptions (the caller
drives it, one record at a time, and alerts go to a callable sink the moment they happen), no
division by zero on an empty text, and a pass-rate alert that fires once per drop instead of every
ten seconds for as long as the rate stays low.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path

from tunesmith.data.formats import RecordError, detect_format, to_conversation
from tunesmith.data.quality.rules import QualityRules, RecordScore, score_record, score_text
from tunesmith.data.readers import RawRecord
from tunesmith.utils.errors import DataError

ALERT_TEXT_CHARS = 100  # an alert quotes this much of the record (seed value)
RECENT_SCORES = 10  # dashboard trend length (seed value)


class QualityMonitor:
    """Per-record checks with stats over all records and over a rolling window."""

    def __init__(
        self,
        rules: QualityRules | None = None,
        window: int = 1000,
        min_pass_rate: float = 0.8,
        alert_sink: Callable[[dict], None] | None = None,
        min_records_before_alert: int = 20,
        columns: dict[str, str] | None = None,
    ):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.rules = rules or QualityRules()
        self.min_pass_rate = min_pass_rate
        self.min_records_before_alert = min_records_before_alert
        self.columns = columns
        self.alert_sink = alert_sink
        self.alerts: deque[dict] = deque(maxlen=window)  # the latest alerts, for a dashboard
        self.total = self.passed = 0
        self._recent: deque[tuple[bool, float]] = deque(maxlen=window)
        self._rate_alert_armed = True

    def check(self, record: dict | str, where: str | None = None) -> RecordScore:
        """Score a text or a raw record of any supported format; update stats; alert."""
        text, result, reason = _score(record, self.rules, self.columns)
        self._update(result)
        if not result.passed:
            alert = {"type": "quality_alert", "where": where, "text": _clip(text)}
            alert |= {"score": result.score, "issues": result.issues}
            self._emit(alert | ({"reason": reason} if reason else {}))
        self._check_pass_rate()
        return result

    def malformed(self, where: str, reason: str, text: str = "") -> RecordScore:
        """Count a record that could not even be parsed as a failed one (score 0)."""
        result = RecordScore(0.0, False, ["malformed"])
        self._update(result)
        alert = {"type": "quality_alert", "where": where, "text": _clip(text), "score": 0.0}
        self._emit(alert | {"issues": result.issues, "reason": reason})
        self._check_pass_rate()
        return result

    def dashboard(self) -> dict:
        scores = [score for _, score in self._recent]
        return {
            "total": self.total,
            "passed": self.passed,
            "failed": self.total - self.passed,
            "pass_rate": self.passed / max(1, self.total),
            "rolling_pass_rate": self._rolling_pass_rate(),
            "window": len(self._recent),
            "avg_quality": sum(scores) / len(scores) if scores else 0.0,  # over the window
            "recent_scores": scores[-RECENT_SCORES:],
        }

    def _update(self, result: RecordScore) -> None:
        self.total += 1
        self.passed += result.passed
        self._recent.append((result.passed, result.score))

    def _rolling_pass_rate(self) -> float:
        return sum(ok for ok, _ in self._recent) / max(1, len(self._recent))

    def _check_pass_rate(self) -> None:
        rate = self._rolling_pass_rate()
        if rate >= self.min_pass_rate:
            self._rate_alert_armed = True  # recovered: the next drop alerts again
        elif self._rate_alert_armed and len(self._recent) >= self.min_records_before_alert:
            self._rate_alert_armed = False
            self._emit(
                {
                    "type": "pass_rate_alert",
                    "pass_rate": rate,
                    "threshold": self.min_pass_rate,
                    "window": len(self._recent),
                    "total": self.total,
                }
            )

    def _emit(self, alert: dict) -> None:
        alert["timestamp"] = datetime.now().isoformat(timespec="seconds")
        self.alerts.append(alert)
        if self.alert_sink is not None:
            self.alert_sink(alert)


def _score(
    record: dict | str, rules: QualityRules, columns: dict[str, str] | None
) -> tuple[str, RecordScore, str | None]:
    """(text to quote in an alert, score, reason the record is malformed or None)."""
    if isinstance(record, str):
        return record, score_text(record, rules), None
    if isinstance(record.get("text"), str) and "messages" not in record:
        return record["text"], score_text(record["text"], rules), None  # plain / classification
    try:
        conversation = to_conversation(
            RawRecord("<record>", 0, record), detect_format(record, columns), columns
        )
    except RecordError as e:
        return (
            json.dumps(record, ensure_ascii=False),
            RecordScore(0.0, False, ["malformed"]),
            str(e),
        )
    text = "\n".join(m["content"] for m in conversation.messages)
    return text, score_record(conversation.messages, rules), None


def _clip(text: str) -> str:
    return text[:ALERT_TEXT_CHARS] + "..." if len(text) > ALERT_TEXT_CHARS else text


def watch_stream(lines: Iterable[str], monitor: QualityMonitor, source: str = "<stdin>") -> None:
    """Check each JSON line; a line that is not a JSON object is an alert, never a crash."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # blank lines separate records, as in a JSONL file
        where = f"{source}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            monitor.malformed(where, f"invalid JSON: {e.msg} (column {e.colno})", line)
            continue
        if not isinstance(data, dict):
            monitor.malformed(where, f"expected a JSON object, got {type(data).__name__}", line)
            continue
        monitor.check(data, where=where)


def follow_file(
    path: Path,
    poll_seconds: float = 1.0,
    stop: Callable[[], bool] = lambda: False,
    from_start: bool = True,
) -> Iterator[str]:
    """Yield the lines of a growing file, like `tail -f` (`-n +1` when from_start).

    A line is yielded once its newline is written, so a record written in two pieces arrives
    whole. When `stop()` says so after the file is drained, a final unterminated line is yielded
    too. A file truncated in place (log rotation) is read again from its start.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with path.open("rb") as f:
        if not from_start:
            f.seek(0, 2)
        pending = b""
        while True:
            chunk = f.read(1 << 16)
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                yield from (_decode(line) for line in lines)
                continue
            if path.stat().st_size < f.tell():
                f.seek(0)
                pending = b""
                continue
            if stop():
                if pending:
                    yield _decode(pending)
                return
            time.sleep(poll_seconds)


def _decode(line: bytes) -> str:
    # Bytes are split at newlines only, so a character is never cut; a bad byte becomes U+FFFD
    # and the record then fails JSON parsing or quality checks where the user can see it.
    return line.removesuffix(b"\r").decode("utf-8", errors="replace")
