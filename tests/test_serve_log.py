"""The request log and feedback (serve.log_dir): a live server, the official openai client."""

from __future__ import annotations

import datetime
import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tunesmith.data.quality.pii import find_pii, redact_pii
from tunesmith.serve.request_log import RequestLog

openai = pytest.importorskip("openai")
from helpers import start  # noqa: E402  (after the openai guard)
from test_serve import make_adapter  # noqa: E402

PII_PROMPT = "mail me at jane.doe@example.com or call +1 415 555 0123 please"
FIELDS = {
    "id",
    "time",
    "user",
    "route",
    "model",
    "version",
    "arm",
    "kind",
    "response",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "status",
    "error",
    "redacted",
}


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory, tiny_model_dir, tiny_tokenizer) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    make_adapter(root / "a", tiny_model_dir, tiny_tokenizer, seed=1)
    return root


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve-logs")


@pytest.fixture(scope="module")
def server(tiny_model_dir, adapters_dir, log_dir):
    live = start(tiny_model_dir, adapters_dir, log_dir=str(log_dir))
    yield live
    live.stop()


def logged(server, name: str = "requests.jsonl") -> list[dict]:
    server.state.request_log.flush()
    path = Path(server.state.cfg.log_dir) / name
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def by_id(server, response_id: str) -> dict:
    lines = [r for r in logged(server) if r["id"] == response_id]
    assert len(lines) == 1, f"{response_id} logged {len(lines)} times"
    return lines[0]


def test_pii_is_redacted_before_writing_and_counted(server, log_dir):
    assert len(redact_pii(PII_PROMPT)[1]) == 2  # the data workshop's redactor finds both
    client = server.client()
    reply = client.chat.completions.create(
        model="base", messages=[{"role": "user", "content": PII_PROMPT}], max_tokens=6
    )
    record = by_id(server, reply.id)
    raw = (log_dir / "requests.jsonl").read_text(encoding="utf-8")
    assert "jane.doe@example.com" not in raw and "555 0123" not in raw
    assert record["messages"] == [
        {"role": "user", "content": "mail me at [EMAIL] or call [PHONE] please"}
    ]
    answer = reply.choices[0].message.content
    assert record["redacted"] == 2 + len(find_pii(answer))
    assert record["response"] == redact_pii(answer)[0]
    # a completion's prompt too, with a Chinese mobile number
    done = client.completions.create(model="base", prompt="call 13812345678 now", max_tokens=4)
    record = by_id(server, done.id)
    assert record["kind"] == "completion" and record["prompt"] == "call [CN_MOBILE] now"
    assert "13812345678" not in (log_dir / "requests.jsonl").read_text(encoding="utf-8")
    assert "messages" not in record and record["redacted"] >= 1


def test_every_field_with_plausible_tokens_latency_and_version(server, adapters_dir):
    client = server.client()
    before = datetime.datetime.now(datetime.UTC)
    started = time.perf_counter()
    reply = client.chat.completions.create(
        model="a",
        messages=[{"role": "user", "content": "hello who are you?"}],
        max_tokens=8,
        user="u-17",
    )
    wall_ms = (time.perf_counter() - started) * 1000
    record = by_id(server, reply.id)
    assert set(record) >= FIELDS and "messages" in record
    when = datetime.datetime.fromisoformat(record["time"])
    assert record["time"].endswith("Z") and before <= when <= datetime.datetime.now(datetime.UTC)
    weights = (adapters_dir / "a" / "adapter_model.safetensors").read_bytes()
    assert record["version"] == f"a@{hashlib.sha256(weights).hexdigest()[:8]}"
    assert record["user"] == "u-17" and record["route"] == "a" and record["model"] == "a"
    assert record["arm"] is None and record["kind"] == "chat"
    assert record["status"] == "ok" and record["error"] is None
    assert record["prompt_tokens"] == reply.usage.prompt_tokens > 5
    assert record["completion_tokens"] == reply.usage.completion_tokens
    assert 1 <= record["completion_tokens"] <= 8
    assert record["finish_reason"] == reply.choices[0].finish_reason
    assert 0 < record["latency_ms"] <= wall_ms
    # the base's version is its config's hash; the user may come as a header instead
    raw = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        headers={"X-User-Id": "u-header"},
        timeout=30,
    ).json()
    record = by_id(server, raw["id"])
    assert record["user"] == "u-header" and record["version"].startswith("base@")
    assert len(record["version"]) == len("base@") + 8


def test_stream_logged_once_when_complete(server):
    client = server.client()
    pieces, stream_id = [], None
    for chunk in client.chat.completions.create(
        model="a",
        messages=[{"role": "user", "content": "write to bob@example.org"}],
        max_tokens=8,
        stream=True,
    ):
        stream_id = chunk.id
        pieces.append(chunk.choices[0].delta.content or "")
    record = by_id(server, stream_id)  # exactly one line
    text = "".join(pieces)
    assert record["response"] == redact_pii(text)[0] and record["status"] == "ok"
    assert record["messages"][0]["content"] == "write to [EMAIL]"
    assert record["completion_tokens"] >= 1 and record["finish_reason"] in ("stop", "length")
    vote = httpx.post(f"{server.url}/v1/feedback", json={"response_id": stream_id, "rating": 1})
    assert vote.status_code == 200  # a streamed answer takes feedback like any other


def test_errors_are_logged_and_bad_bodies_are_not(server):
    before = len(logged(server))
    body = {"model": "base", "messages": [{"role": "user", "content": "x " * 200}]}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400
    errors = logged(server)[before:]
    assert len(errors) == 1 and errors[0]["status"] == "error"
    assert "tokens" in errors[0]["error"] and errors[0]["http_status"] == 400
    assert errors[0]["response"] is None and errors[0]["completion_tokens"] == 0
    # no model to route to: nothing to learn from, nothing logged
    bad = {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(f"{server.url}/v1/chat/completions", json=bad).status_code == 404
    assert len(logged(server)) == before + 1


def test_feedback_is_linked_to_the_right_response(server, log_dir):
    client = server.client()
    ask = [{"role": "user", "content": "first question"}]
    first = client.chat.completions.create(model="base", messages=ask, max_tokens=3)
    ask = [{"role": "user", "content": "second question"}]
    second = client.chat.completions.create(model="base", messages=ask, max_tokens=3, user="u-9")
    assert first.id != second.id
    earlier = len(logged(server, "feedback.jsonl"))
    body = {
        "response_id": second.id,
        "rating": "down",
        "correction": "The answer is 4; ask me at ann@example.com",
        "comment": "wrong",
    }
    answer = httpx.post(f"{server.url}/v1/feedback", json=body, timeout=30)
    assert answer.status_code == 200
    assert answer.json()["response_id"] == second.id and answer.json()["id"].startswith("fb-")
    feedback = logged(server, "feedback.jsonl")[earlier:]
    assert [f["response_id"] for f in feedback] == [second.id]
    record = feedback[0]
    assert record["id"] == answer.json()["id"] and record["rating"] == -1
    assert record["correction"] == "The answer is 4; ask me at [EMAIL]"
    assert record["comment"] == "wrong" and record["source"] == "api" and record["user"] == "u-9"
    assert by_id(server, record["response_id"])["messages"][0]["content"] == "second question"
    assert "ann@example.com" not in (log_dir / "feedback.jsonl").read_text(encoding="utf-8")

    unknown = httpx.post(
        f"{server.url}/v1/feedback", json={"response_id": "chatcmpl-nope", "rating": 1}
    )
    assert unknown.status_code == 404
    error = unknown.json()["error"]
    assert "chatcmpl-nope" in error["message"] and error["param"] == "response_id"
    wrong = httpx.post(f"{server.url}/v1/feedback", json={"response_id": first.id, "rating": 5})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "rating"
    assert len(logged(server, "feedback.jsonl")) == earlier + 1  # refused ones are not written


def test_concurrent_requests_give_whole_lines(server):
    client = server.client()

    def ask(i: int) -> str:
        messages = [{"role": "user", "content": f"question {i} from u{i}@example.com"}]
        return client.chat.completions.create(model="base", messages=messages, max_tokens=3).id

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(ask, range(16)))
    records = {r["id"]: r for r in logged(server)}  # every line parses
    for i, response_id in enumerate(ids):
        assert records[response_id]["messages"][0]["content"] == f"question {i} from [EMAIL]"


def test_request_log_lines_never_interleave_across_threads(tmp_path):
    log = RequestLog(tmp_path)
    big = "x" * 100_000  # far past the pipe/page sizes where torn writes show

    def write(thread: int) -> None:
        for i in range(50):
            log.request(
                {
                    "id": f"r{thread}-{i}",
                    "status": "ok",
                    "route": "m",
                    "model": "m",
                    "response": big,
                    "user": None,
                    "arm": None,
                }
            )

    threads = [threading.Thread(target=write, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    lines = (tmp_path / "requests.jsonl").read_text().splitlines()
    assert len(lines) == 300
    assert {json.loads(line)["id"] for line in lines} == {
        f"r{t}-{i}" for t in range(6) for i in range(50)
    }
    assert set(RequestLog(tmp_path).links) == {f"r{t}-{i}" for t in range(6) for i in range(50)}


def test_cli_log_dir_option_sets_serve_log_dir(monkeypatch, tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    import tunesmith.serve.server as serve_server
    from tunesmith.cli.main import app

    seen = {}
    monkeypatch.setattr(serve_server, "build_state", lambda config, adapter: config)
    monkeypatch.setattr(serve_server, "run_server", lambda state: seen.setdefault("cfg", state))
    logs = tmp_path / "logs"
    args = ["serve", f"model.name_or_path={tiny_model_dir}", "serve.log_dir=elsewhere"]
    result = CliRunner().invoke(app, [*args, "--log-dir", str(logs)])
    assert result.exit_code == 0, result.output
    assert seen["cfg"].serve.log_dir == str(logs)  # the option wins over the key
