"""Read what the server logged and what people said about it: the improvement loop's evidence.

The server's log folder (`tunesmith serve --log-dir DIR`) holds `requests.jsonl` (one finished
request a line: id, the conversation or prompt, the response, finish_reason, status, latency,
all PII-redacted by the server) and `feedback.jsonl` (a rating of 1 or -1 for a response id, an
optional correction and comment). The web workshop's arena votes (`RUN/arena/votes.jsonl`,
evaluation/arena.py) count as feedback too, with source "arena": a vote is a request of its own
(the prompt and the answer of the model being improved) rated 1 when that model won and -1 when
it lost; the winning answer of a lost vote is the correction (the answer the person chose).
A tie is a request without a rating.

Every line read is kept, or written to the rejects with the file:line it came from and why
(not JSON, a missing or mistyped field, a duplicate response id, feedback for a response the
log does not hold), or counted as filtered (another route or version than the one mined):
per file, read == kept + rejected + filtered. A response's rating is its latest feedback's; its
correction the latest non-empty one.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.utils.errors import DataError

REQUESTS = "requests.jsonl"
FEEDBACK = "feedback.jsonl"
_RATINGS = {1: 1, -1: -1, "up": 1, "down": -1, "1": 1, "-1": -1}


@dataclass
class Feedback:
    response_id: str
    rating: int | None  # 1, -1; None for an arena tie
    correction: str | None
    comment: str | None
    user: str | None
    source: str  # "api" | "arena"
    where: str  # file:line
    time: str | float | None = None


@dataclass
class Request:
    id: str
    where: str  # file:line
    messages: list[dict]  # the conversation sent, ending with the user turn answered
    response: str
    status: str  # "ok" | "error"
    finish_reason: str | None = None
    error: str | None = None
    latency_ms: float | None = None
    user: str | None = None
    route: str | None = None
    model: str | None = None
    version: str | None = None
    arm: str | None = None
    time: str | float | None = None
    source: str = "log"  # "log" | "arena"
    feedback: list[Feedback] = field(default_factory=list)

    @property
    def prompt(self) -> str:
        """The user turn the response answers."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")

    @property
    def rating(self) -> int | None:
        rated = [f.rating for f in self.feedback if f.rating is not None]
        return rated[-1] if rated else None

    @property
    def correction(self) -> str | None:
        given = [f.correction for f in self.feedback if f.correction and f.correction.strip()]
        return given[-1] if given else None


@dataclass
class LogSet:
    requests: list[Request]
    feedback: list[Feedback]
    rejects: list[dict]  # {"source": "file:line", "reason", "record"}
    stats: dict  # per file: {"read", "kept", "rejected", "filtered": {why: n}}


class _File:
    def __init__(self, path: Path, stats: dict, rejects: list[dict], name: str | None = None):
        self.path, self.rejects, self.name = path, rejects, name or path.name
        self.counts = stats.setdefault(
            self.name, {"read": 0, "kept": 0, "rejected": 0, "filtered": {}}
        )

    def lines(self):
        """(where, parsed object or None) per non-blank line; bad JSON is rejected here."""
        if not self.path.is_file():
            return
        with self.path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                self.counts["read"] += 1
                where = f"{self.name}:{number}"
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as exc:
                    self.reject(where, f"not valid JSON ({exc.msg})", line.strip()[:500])
                    continue
                if not isinstance(data, dict):
                    self.reject(where, "not a JSON object", data)
                    continue
                yield where, data

    def reject(self, where: str, reason: str, record) -> None:
        self.counts["rejected"] += 1
        self.rejects.append({"source": where, "reason": reason, "record": record})

    def keep(self) -> None:
        self.counts["kept"] += 1

    def filter(self, why: str) -> None:
        self.counts["filtered"][why] = self.counts["filtered"].get(why, 0) + 1


def read_logs(
    logs_dir: str | Path,
    route: str | None = None,
    version: str | None = None,
    arena: str | Path | None = None,
    arena_model: str | None = None,
) -> LogSet:
    """The requests of `logs_dir` (only `route` / `version` when given), their feedback, and the
    arena votes of the run folder `arena` about `arena_model` as rated requests."""
    folder = Path(logs_dir)
    if not folder.is_dir():
        raise DataError(f"{folder}: log folder not found (the server writes it with --log-dir)")
    if not (folder / REQUESTS).is_file():
        raise DataError(f"{folder}: no {REQUESTS} in the log folder (nothing was logged yet?)")
    stats: dict = {}
    rejects: list[dict] = []
    requests: dict[str, Request] = {}
    filtered: set[str] = set()
    reqs = _File(folder / REQUESTS, stats, rejects)
    for where, data in reqs.lines():
        try:
            request = _request(data, where)
        except ValueError as exc:
            reqs.reject(where, str(exc), data)
            continue
        if request.id in requests or request.id in filtered:
            first = requests[request.id].where if request.id in requests else "a filtered line"
            reqs.reject(where, f"duplicate response id '{request.id}' (first at {first})", data)
            continue
        if route is not None and request.route != route:
            filtered.add(request.id)
            reqs.filter(f"route {request.route!r} is not {route!r}")
            continue
        if version is not None and request.version != version:
            filtered.add(request.id)
            reqs.filter(f"version {request.version!r} is not {version!r}")
            continue
        requests[request.id] = request
        reqs.keep()
    feedback: list[Feedback] = []
    fb_file = _File(folder / FEEDBACK, stats, rejects)
    for where, data in fb_file.lines():
        try:
            item = _feedback(data, where)
        except ValueError as exc:
            fb_file.reject(where, str(exc), data)
            continue
        if item.response_id in filtered:
            fb_file.filter("its response was filtered out")
            continue
        if item.response_id not in requests:
            fb_file.reject(
                where, f"feedback for response id '{item.response_id}' not in {REQUESTS}", data
            )
            continue
        requests[item.response_id].feedback.append(item)
        feedback.append(item)
        fb_file.keep()
    if arena is not None:
        for request in _arena(Path(arena), arena_model, stats, rejects):
            requests[request.id] = request
            feedback += request.feedback
    return LogSet(list(requests.values()), feedback, rejects, stats)


def _text(data: dict, key: str, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise ValueError(f"field '{key}' is missing")
        return None
    if not isinstance(value, str):
        raise ValueError(f"field '{key}' must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise ValueError(f"field '{key}' is empty")
    return value


def _messages(data: dict) -> list[dict]:
    kind = data.get("kind") or ("completion" if "prompt" in data else "chat")
    if kind == "completion":
        return [{"role": "user", "content": _text(data, "prompt", required=True)}]
    if kind != "chat":
        raise ValueError(f"field 'kind' must be 'chat' or 'completion', got {kind!r}")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("field 'messages' must be a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ValueError(f"messages[{i}] must be an object with a 'role'")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: the text parts
            content = "\n".join(
                p.get("text", "")
                for p in content
                if isinstance(p, dict) and p.get("type") == "text"
            )
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string")
        out.append({"role": m["role"], "content": content})
    if not any(m["role"] == "user" for m in out):
        raise ValueError("field 'messages' holds no user turn")
    return out


def _request(data: dict, where: str) -> Request:
    rid = _text(data, "id", required=True)
    status = data.get("status", "ok")
    if status not in ("ok", "error"):
        raise ValueError(f"field 'status' must be 'ok' or 'error', got {status!r}")
    response = data.get("response")
    if response is None and isinstance(data.get("responses"), list) and data["responses"]:
        response = data["responses"][0]
    if response is None:
        if status == "ok":
            raise ValueError("field 'response' is missing (status ok)")
        response = ""
    if not isinstance(response, str):
        raise ValueError(f"field 'response' must be a string, got {type(response).__name__}")
    latency = data.get("latency_ms")
    if latency is not None and (isinstance(latency, bool) or not isinstance(latency, int | float)):
        raise ValueError(f"field 'latency_ms' must be a number, got {latency!r}")
    return Request(
        id=rid,
        where=where,
        messages=_messages(data),
        response=response,
        status=status,
        finish_reason=_text(data, "finish_reason"),
        error=_text(data, "error"),
        latency_ms=float(latency) if latency is not None else None,
        user=_text(data, "user"),
        route=_text(data, "route"),
        model=_text(data, "model"),
        version=_text(data, "version"),
        arm=_text(data, "arm"),
        time=data.get("time"),
    )


def _feedback(data: dict, where: str) -> Feedback:
    rid = _text(data, "response_id", required=True)
    raw = data.get("rating")
    rating = _RATINGS.get(raw) if not isinstance(raw, bool) and isinstance(raw, int | str) else None
    if rating is None:
        raise ValueError(f"field 'rating' must be 1 or -1 ('up'/'down'), got {raw!r}")
    source = data.get("source", "api")
    if source not in ("api", "arena"):
        raise ValueError(f"field 'source' must be 'api' or 'arena', got {source!r}")
    return Feedback(
        response_id=rid,
        rating=rating,
        correction=_text(data, "correction"),
        comment=_text(data, "comment"),
        user=_text(data, "user"),
        source=source,
        where=where,
        time=data.get("time"),
    )


def _arena(run_dir: Path, model: str | None, stats: dict, rejects: list[dict]) -> list[Request]:
    """Arena votes about `model` as rated requests (see the module docstring)."""
    from tunesmith.evaluation.arena import TIE, votes_path

    path = votes_path(run_dir)
    if not path.is_file():
        raise DataError(f"{path}: no arena votes in {run_dir}")
    from tunesmith.data.quality.pii import redact_pii

    votes = _File(path, stats, rejects, name=f"{run_dir.name}/arena/votes.jsonl")
    parsed = []
    for where, data in votes.lines():
        answers, winner = data.get("answers"), data.get("winner")
        prompt = data.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            votes.reject(where, "arena vote without its prompt", data)
        elif not isinstance(answers, dict) or len(answers) != 2:
            votes.reject(where, "arena vote without the two models' answers", data)
        elif not all(isinstance(a, str) for a in answers.values()):
            votes.reject(where, "arena vote with an answer that is not a string", data)
        elif winner != TIE and winner not in answers:
            votes.reject(where, f"arena vote's winner {winner!r} is neither model nor 'tie'", data)
        else:
            parsed.append((where, data))
    if model is None:
        names = Counter(m for _, d in parsed for m in d["answers"] if m != "base")
        if len(names) > 1:
            raise DataError(
                f"{path}: the votes compare several models ({', '.join(sorted(names))}); "
                "name the one being improved with mine.arena_model"
            )
        model = next(iter(names), None)
    out = []
    for where, data in parsed:
        if model not in data["answers"]:
            votes.reject(where, f"arena vote not about {model!r}", data)
            continue
        # votes are written as typed in the arena: redacted here, as the server does its logs
        data = {
            **data,
            "prompt": redact_pii(data["prompt"])[0],
            "answers": {m: redact_pii(a)[0] for m, a in data["answers"].items()},
        }
        winner = data["winner"]
        other = next(m for m in data["answers"] if m != model)
        rating = None if winner == TIE else 1 if winner == model else -1
        rid = f"arena:{where}"
        feedback = Feedback(
            response_id=rid,
            rating=rating,
            correction=data["answers"][other] if rating == -1 else None,
            comment=redact_pii(data["reason"])[0] if isinstance(data.get("reason"), str) else None,
            user=None,
            source="arena",
            where=where,
            time=data.get("time"),
        )
        out.append(
            Request(
                id=rid,
                where=where,
                messages=[{"role": "user", "content": data["prompt"]}],
                response=data["answers"][model],
                status="ok",
                model=model,
                time=data.get("time"),
                source="arena",
                feedback=[feedback],
            )
        )
        votes.keep()
    return out
