"""The LLM client: a fake OpenAI-compatible endpoint on 127.0.0.1, and the tiny local model.

`serve` and `completion` are imported by test_augment and test_synth as well.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tunesmith.models.client import LocalClient, OpenAIClient
from tunesmith.runs.inference import local_client, make_client
from tunesmith.utils.errors import ModelError
from tunesmith.utils.llm import ChatClient, Reply, replies_of

# respond(method, path, body, headers) -> (status, payload) or (status, payload, extra headers);
# a bytes payload is sent as is, anything else as JSON.
Responder = Callable[[str, str, dict | None, dict], tuple]


def completion(text: str | None, finish: str = "stop") -> dict:
    return {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        ]
    }


@contextlib.contextmanager
def serve(respond: Responder) -> Iterator[tuple[str, list[dict]]]:
    """A fake endpoint in a background thread: yields its /v1 base URL and the requests seen."""
    seen: list[dict] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            headers = {k.lower(): v for k, v in self.headers.items()}
            with lock:
                seen.append({"method": method, "path": self.path, "body": body, "headers": headers})
            status, payload, *extra = respond(method, self.path, body, headers)
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            for key, value in (extra[0] if extra else {}).items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            self._handle("POST")

        def do_GET(self) -> None:
            self._handle("GET")

        def log_message(self, *args) -> None:  # keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", seen
    finally:
        server.shutdown()
        server.server_close()


def echo(method, path, body, headers):
    """Answers 're: <last user message>' so replies can be matched to their prompts."""
    return 200, completion("re: " + body["messages"][-1]["content"])


@pytest.fixture
def no_keys(monkeypatch):
    for name in ("TUNESMITH_API_KEY", "OPENAI_API_KEY", "TUNESMITH_API_BASE", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def _conv(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_chat_posts_openai_requests_and_keeps_order(no_keys, monkeypatch):
    monkeypatch.setenv("TUNESMITH_API_KEY", "sk-test")
    with serve(echo) as (url, seen):
        client = OpenAIClient(url, model="m", concurrency=4)
        texts = client.chat([_conv(f"q{i}") for i in range(6)], max_new_tokens=7, temperature=0.2)
    assert texts == [f"re: q{i}" for i in range(6)]
    assert {r["path"] for r in seen} == {"/v1/chat/completions"}
    body = seen[0]["body"]
    assert body["model"] == "m" and body["max_tokens"] == 7 and body["temperature"] == 0.2
    assert body["messages"][0]["role"] == "user"
    assert seen[0]["headers"]["authorization"] == "Bearer sk-test"


def test_key_precedence_and_no_key(no_keys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    assert OpenAIClient("http://127.0.0.1:1/v1").api_key == "sk-openai"
    monkeypatch.setenv("TUNESMITH_API_KEY", "sk-ours")
    assert OpenAIClient("http://127.0.0.1:1/v1").api_key == "sk-ours"
    assert OpenAIClient("http://127.0.0.1:1/v1", api_key="given").api_key == "given"
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("TUNESMITH_API_KEY")
    with serve(echo) as (url, seen):
        OpenAIClient(url, model="m").chat([_conv("hi")])
    assert "authorization" not in seen[0]["headers"]  # local servers need no key


def test_retries_after_429_honouring_retry_after(no_keys):
    calls = []

    def flaky(method, path, body, headers):
        calls.append(path)
        if len(calls) == 1:
            return 429, {"error": {"message": "slow down"}}, {"Retry-After": "2"}
        return 200, completion("ok")

    sleeps: list[float] = []
    with serve(flaky) as (url, _):
        texts = OpenAIClient(url, model="m", sleep=sleeps.append).chat([_conv("hi")])
    assert texts == ["ok"]
    assert len(calls) == 2 and sleeps == [2.0]


def test_retries_are_bounded_with_exponential_backoff(no_keys):
    def broken(method, path, body, headers):
        return 503, {"error": {"message": "overloaded"}}

    sleeps: list[float] = []
    with serve(broken) as (url, seen):
        client = OpenAIClient(url, model="m", max_retries=3, backoff=0.5, sleep=sleeps.append)
        with pytest.raises(ModelError, match=r"HTTP 503: overloaded"):
            client.chat([_conv("hi")])
    assert len(seen) == 4 and sleeps == [0.5, 1.0, 2.0]


def test_rejected_key_is_reported_without_retrying(no_keys):
    with (
        serve(lambda *a: (401, {"error": {"message": "bad key"}})) as (url, seen),
        pytest.raises(ModelError, match="rejected the API key") as info,
    ):
        OpenAIClient(url, model="m", api_key="wrong", sleep=lambda s: None).chat([_conv("x")])
    assert len(seen) == 1
    assert "TUNESMITH_API_KEY" in str(info.value)


def test_connection_refused_names_the_url(no_keys):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(ModelError, match=f"cannot connect to {url}/chat/completions"):
        OpenAIClient(url, model="m").chat([_conv("x")])


def test_malformed_json_and_missing_choices_are_reported(no_keys):
    with (
        serve(lambda *a: (200, b"<html>not json")) as (url, _),
        pytest.raises(ModelError, match="malformed JSON"),
    ):
        OpenAIClient(url, model="m").chat([_conv("x")])
    with (
        serve(lambda *a: (200, {"object": "chat.completion"})) as (url, _),
        pytest.raises(ModelError, match=r"without choices\[0\]\.message\.content"),
    ):
        OpenAIClient(url, model="m").chat([_conv("x")])


def test_not_found_points_at_the_base_url(no_keys):
    with (
        serve(lambda *a: (404, {"error": "no route"})) as (url, _),
        pytest.raises(ModelError, match="check the base URL"),
    ):
        OpenAIClient(url, model="m").chat([_conv("x")])


def test_replies_report_length_cut_and_null_content(no_keys):
    def respond(method, path, body, headers):
        text = body["messages"][-1]["content"]
        return 200, completion(None) if text == "null" else completion("partial", "length")

    with serve(respond) as (url, _):
        replies = OpenAIClient(url, model="m").replies([_conv("long"), _conv("null")])
    assert replies == [Reply("partial", False), Reply("", True)]


def test_model_name_is_discovered_when_the_endpoint_serves_one(no_keys):
    def respond(method, path, body, headers):
        if method == "GET":
            return 200, {"object": "list", "data": [{"id": "only-model"}]}
        return 200, completion(body["model"])

    with serve(respond) as (url, seen):
        assert make_client(url).chat([_conv("x")]) == ["only-model"]
    assert [r["path"] for r in seen] == ["/v1/models", "/v1/chat/completions"]

    two = {"object": "list", "data": [{"id": "a"}, {"id": "b"}]}
    with (
        serve(lambda *a: (200, two)) as (url, _),
        pytest.raises(ModelError, match=r"serves 2 models \['a', 'b'\]; name one"),
    ):
        make_client(url).chat([_conv("x")])


def test_make_client_specs(no_keys, monkeypatch):
    client = make_client("http://127.0.0.1:9/v1/#my-model")
    assert isinstance(client, OpenAIClient)
    assert (client.base_url, client.model) == ("http://127.0.0.1:9/v1", "my-model")
    client = make_client({"base_url": "https://api.example/v1", "model": "x", "api_key": "k"})
    assert (client.model, client.api_key) == ("x", "k")
    with pytest.raises(ModelError, match="TUNESMITH_API_BASE"):
        make_client("openai#gpt")
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.example/v1")
    client = make_client("openai#gpt")
    assert (client.base_url, client.model) == ("https://api.example/v1", "gpt")
    with pytest.raises(ModelError, match=r"unknown model spec 'gpt-4'.*local:<model ref>"):
        make_client("gpt-4")
    with pytest.raises(ModelError, match="needs 'base_url'"):
        make_client({"model": "x"})


def test_replies_of_wraps_a_chat_only_client():
    class Canned:
        def chat(self, conversations, max_new_tokens=256, temperature=0.7):
            return ["a"] * len(conversations)

    assert isinstance(Canned(), ChatClient)
    assert replies_of(Canned(), [_conv("x"), _conv("y")], 8, 0.0) == [Reply("a", True)] * 2


def test_local_client_prompts_through_the_chat_template(tiny_model_dir):
    client = make_client(f"local:{tiny_model_dir}")
    assert isinstance(client, LocalClient)
    rendered = []
    template = client.tokenizer.apply_chat_template

    def spy(messages, **kwargs):
        rendered.append((messages, kwargs.get("add_generation_prompt")))
        return template(messages, **kwargs)

    client.tokenizer.apply_chat_template = spy
    conversations = [_conv("hello who are you?"), _conv("你好"), _conv("What is the capital?")]
    texts = client.chat(conversations, max_new_tokens=4, temperature=0.0)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert rendered == [(c, True) for c in conversations]

    replies = local_client(str(tiny_model_dir), batch_size=2).replies(conversations, 4, 0.0)
    assert len(replies) == 3 and all(isinstance(r, Reply) for r in replies)
    # Greedy decoding is deterministic: the same prompts give the same texts.
    assert [r.text for r in replies] == texts


def test_local_client_missing_model_says_so(tmp_path):
    with pytest.raises(ModelError):
        local_client(str(tmp_path / "nowhere"))
