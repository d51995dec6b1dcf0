"""The request log and feedback store (`serve.log_dir`; `tunesmith serve --log-dir DIR`).

`DIR/requests.jsonl` gets one JSON object per finished request, errors included, and
`DIR/feedback.jsonl` one per `POST /v1/feedback`; the fields are those of the improve loop's
contract (docs/architecture.md, workflows/improve/ reads them). Personal information in
messages, prompts, replies, corrections and comments is replaced by the data workshop's
redactor (data/quality/pii.py: [EMAIL], [PHONE], [CN_ID] ...) before the record is serialized,
so no unredacted text reaches the disk; `redacted` counts the replaced spans.

Writing happens on one thread of its own: the event loop only queues the raw record, the thread
redacts, hashes the model's weights for `version` (once per weights file), serializes and
appends the line with a single os.write on an O_APPEND descriptor. One writer and one write per
line: lines never interleave, and a feedback line queued after its request is written after it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.data.quality.pii import redact_pii

log = logging.getLogger("tunesmith.serve")

REQUESTS = "requests.jsonl"
FEEDBACK = "feedback.jsonl"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors")


def now_iso() -> str:
    """UTC time with milliseconds and a Z: 2026-12-07T01:02:03.456Z."""
    now = datetime.datetime.now(datetime.UTC)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def redact(value: Any) -> tuple[Any, int]:
    """`value` with PII replaced in every string inside it (dict keys excepted), and the count."""
    if isinstance(value, str):
        text, hits = redact_pii(value)
        return text, len(hits)
    if isinstance(value, list):
        out, total = [], 0
        for item in value:
            item, count = redact(item)
            out.append(item)
            total += count
        return out, total
    if isinstance(value, dict):
        out, total = {}, 0
        for key, item in value.items():
            out[key], count = redact(item)
            total += count
        return out, total
    return value, 0


def loggable_messages(conversation: list[dict]) -> list[dict]:
    """The request's messages as logged: images as "[image]" (never their data: URL)."""
    out = []
    for message in conversation:
        message = dict(message)
        content = message.get("content")
        if isinstance(content, list):
            message["content"] = [
                {"type": "image_url", "url": "[image]"} if p.get("type") == "image_url" else p
                for p in content
            ]
        out.append(message)
    return out


@dataclass(frozen=True)
class Link:
    """What a logged response id leads to: feedback is counted for its route, arm and model."""

    route: str
    arm: str | None
    model: str
    user: str | None


class Versions:
    """`name@first 8 hex of sha256` of the weights answering as a model name: an adapter's
    adapter_model file (all *.safetensors of a whole model, in name order), the base's config.
    Each file is hashed once while its size and modification time stay the same."""

    def __init__(self, registry):
        self.registry = registry
        self.cache: dict[tuple, str] = {}
        self.files: dict[str, list[Path]] = {}  # name -> its weights files, found once

    def __call__(self, name: str) -> str:
        try:
            files = self._weights(name)
        except Exception as exc:  # a folder gone since: the log still gets its line
            log.warning("version of %s: %s", name, exc)
            return f"{name}@unknown"
        if not files:
            return f"{name}@{self._config_hash()}"
        key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
        if key not in self.cache:
            digest = hashlib.sha256()
            for f in files:
                with f.open("rb") as handle:
                    while block := handle.read(1 << 20):
                        digest.update(block)
            self.cache[key] = digest.hexdigest()[:8]
        return f"{name}@{self.cache[key]}"

    def _weights(self, name: str) -> list[Path]:
        if name == self.registry.base_name:
            return []
        known = self.files.get(name)
        if known and all(f.is_file() for f in known):
            return known
        self.files[name] = found = self._find_weights(name)
        return found

    def _find_weights(self, name: str) -> list[Path]:
        folder = self.registry.available().get(name)
        if folder is None:
            return []
        from tunesmith.runs.trained import open_run

        artifact = open_run(folder, self.registry.base_cfg).artifact
        for file in WEIGHTS:
            if (artifact / file).is_file():
                return [artifact / file]
        return sorted(artifact.glob("*.safetensors")) or sorted(artifact.glob("*.bin"))

    def _config_hash(self) -> str:
        if "base" not in self.cache:
            config = getattr(self.registry.engine.model, "config", None)
            text = config.to_json_string() if config is not None else self.registry.base_name
            self.cache["base"] = hashlib.sha256(text.encode()).hexdigest()[:8]
        return self.cache["base"]


class RequestLog:
    """Appends redacted records to DIR/requests.jsonl and DIR/feedback.jsonl off the loop."""

    def __init__(self, folder: str | Path, versions: Versions | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.versions = versions
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="request-log")
        self.files: dict[str, int] = {}
        self.lock = threading.Lock()  # around the descriptors (opened lazily, closed once)
        self.links: dict[str, Link] = self._read_links()  # response id -> where it went

    def _read_links(self) -> dict[str, Link]:
        """Response ids already logged (a restart keeps feedback on old answers possible)."""
        links: dict[str, Link] = {}
        path = self.folder / REQUESTS
        if not path.is_file():
            return links
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                try:
                    r = json.loads(line)
                    if r.get("status") == "ok":
                        links[r["id"]] = Link(r["route"], r.get("arm"), r["model"], r.get("user"))
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue  # a torn last line from a crash: its request is not linkable
        return links

    # event loop side: queue only
    def request(self, record: dict[str, Any]) -> None:
        """Queue one finished request (raw text; redacted on the writer thread)."""
        if record.get("status") == "ok":
            self.links[record["id"]] = Link(
                record["route"], record.get("arm"), record["model"], record.get("user")
            )
        self._queue(self._write_request, record)

    def feedback(self, record: dict[str, Any]) -> None:
        self._queue(self._write_feedback, record)

    def _queue(self, write, record: dict[str, Any]) -> None:
        try:
            self.pool.submit(write, record)
        except RuntimeError:  # closed: a stream that ended after the shutdown still gets its line
            write(record)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued line is written."""
        self.pool.submit(lambda: None).result(timeout)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        with self.lock:
            for fd in self.files.values():
                os.close(fd)
            self.files.clear()

    # writer thread
    def _write_request(self, record: dict[str, Any]) -> None:
        try:
            if self.versions is not None:
                record["version"] = self.versions(record["model"])
            total = 0
            for key in ("messages", "prompt", "response", "responses", "error"):
                if record.get(key) is not None:
                    record[key], count = redact(record[key])
                    total += count
            record["redacted"] = total
            self._append(REQUESTS, record)
        except Exception:  # the answer went out; a lost log line must not take the server
            log.exception("could not log request %s", record.get("id"))

    def _write_feedback(self, record: dict[str, Any]) -> None:
        try:
            for key in ("correction", "comment"):
                if record.get(key) is not None:
                    record[key], _ = redact(record[key])
            self._append(FEEDBACK, record)
        except Exception:
            log.exception("could not log feedback on %s", record.get("response_id"))

    def _append(self, name: str, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self.lock:
            fd = self.files.get(name)
            if fd is None:
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
                fd = self.files[name] = os.open(self.folder / name, flags, 0o600)
            written = os.write(fd, line)
            while written < len(line):  # a short write (a full disk, a signal): finish it
                written += os.write(fd, line[written:])


class Exchange:
    """One request on its way: which route and arm answer it, and, once it ends, its log line
    (when logging) and its count in the metrics. `ok` or `fail` is called once; leaving the
    `with` block on an exception is a `fail`."""

    def __init__(
        self,
        log: RequestLog | None,
        metrics,
        *,
        response_id: str,
        kind: str,
        route: str,
        model: str,
        arm: str | None,
        user: str | None,
        inputs: dict[str, Any],
        started: float,
    ):
        self.log, self.metrics = log, metrics
        self.id, self.kind, self.route, self.model, self.arm = response_id, kind, route, model, arm
        self.user, self.inputs, self.started = user, inputs, started
        self.prompt_tokens = 0
        self.finished = False
        self.streaming = False  # a stream ends in its generator, after the handler returned

    def __enter__(self) -> Exchange:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if exc is not None and not self.finished:
            self.fail(exc)

    def ok(self, texts: list[str], reasons: list[str], prompt: int, completion: int) -> None:
        self._finish(200, None, texts, reasons, prompt, completion)

    def fail(self, exc: BaseException | str, status: int | None = None) -> None:
        if status is None:
            status = getattr(exc, "status", 500 if isinstance(exc, Exception) else 499)
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        if getattr(exc, "__cause__", None) is not None:  # the reason behind a generic answer
            message = f"{message}: {exc.__cause__}"
        self._finish(status, message, [], [], self.prompt_tokens, 0)

    def _finish(self, status, error, texts, reasons, prompt, completion) -> None:
        if self.finished:
            return
        self.finished = True
        latency = round((time.perf_counter() - self.started) * 1000, 1)
        self.metrics.request(self.route, self.arm, self.model, latency, status >= 500)
        if self.log is None:
            return
        record: dict[str, Any] = {
            "id": self.id,
            "time": now_iso(),
            "user": self.user,
            "route": self.route,
            "model": self.model,
            "version": None,  # filled in on the writer thread
            "arm": self.arm,
            "kind": self.kind,
            **self.inputs,
            "response": texts[0] if texts else None,
        }
        if len(texts) > 1:
            record["responses"] = texts
        record.update(
            finish_reason=reasons[0] if reasons else None,
            prompt_tokens=prompt,
            completion_tokens=completion,
            latency_ms=latency,
            status="ok" if error is None else "error",
            error=error,
            http_status=status,
            redacted=0,
        )
        self.log.request(record)
