"""The OpenAI-compatible server, live on localhost, with the official openai client."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from tunesmith.models.engine import GenerationParams, TransformersEngine

openai = pytest.importorskip("openai")
from helpers import start  # noqa: E402  (after the openai guard)

HELLO = [{"role": "user", "content": "hello who are you?"}]


def make_adapter(folder: Path, model_dir: Path, tokenizer, seed: int) -> Path:
    """A LoRA adapter with random non-zero weights: each seed answers differently."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory, tiny_model_dir, tiny_tokenizer) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    make_adapter(root / "a", tiny_model_dir, tiny_tokenizer, seed=1)
    make_adapter(root / "b", tiny_model_dir, tiny_tokenizer, seed=2)
    outside = make_adapter(root.parent / "outside", tiny_model_dir, tiny_tokenizer, seed=3)
    (root / "escape").symlink_to(outside, target_is_directory=True)  # must not be served
    return root


@pytest.fixture(scope="module")
def server(tiny_model_dir, adapters_dir):
    live = start(tiny_model_dir, adapters_dir, batch_wait_ms=30)
    yield live
    live.stop()


def expected_reply(model_dir: Path, tokenizer, adapter: Path | None, max_tokens: int) -> str:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    engine = TransformersEngine(model.eval(), tokenizer)
    return engine.generate([HELLO], GenerationParams(max_new_tokens=max_tokens))[0].text


def chat(client, model: str, **kwargs) -> str:
    reply = client.chat.completions.create(
        model=model, messages=HELLO, temperature=0, max_tokens=12, **kwargs
    )
    return reply.choices[0].message.content


def test_two_adapters_and_base_answer_as_their_own_models(
    server, tiny_model_dir, tiny_tokenizer, adapters_dir
):
    client = server.client()
    assert [m.id for m in client.models.list().data] == ["base", "a", "b"]  # no "escape"
    answers = {name: chat(client, name) for name in ("a", "b", "base", "a")}
    assert answers["a"] != answers["b"]
    for name, adapter in (("a", adapters_dir / "a"), ("b", adapters_dir / "b"), ("base", None)):
        assert answers[name] == expected_reply(tiny_model_dir, tiny_tokenizer, adapter, 12)
    reply = client.chat.completions.create(model="a", messages=HELLO, temperature=0, max_tokens=12)
    assert reply.usage.completion_tokens <= 12 and reply.usage.prompt_tokens > 5
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_stream_sends_the_same_text_as_non_stream(server):
    client = server.client()
    pieces, reasons = [], []
    for chunk in client.chat.completions.create(
        model="b", messages=HELLO, temperature=0, max_tokens=12, stream=True
    ):
        pieces.append(chunk.choices[0].delta.content or "")
        reasons.append(chunk.choices[0].finish_reason)
    assert "".join(pieces) == chat(client, "b")
    assert reasons[-1] in ("stop", "length") and all(r is None for r in reasons[:-1])
    body = {"model": "b", "messages": HELLO, "max_tokens": 4, "stream": True}
    raw = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30).text
    events = [line for line in raw.split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_concurrent_requests_share_one_batch(server):
    client = server.client()
    single = chat(client, "a")
    batches = server.state.batcher.stats["batches"]
    batcher = server.state.batcher
    with ThreadPoolExecutor(6) as pool, batcher.lock:  # the worker waits on the lock
        futures = [pool.submit(chat, client, "a") for _ in range(6)]
        _wait_until(lambda: len(batcher.waiting) + len(batcher.in_flight) == 6)
    answers = [f.result() for f in futures]  # lock released: the worker's batch, then the rest
    assert answers == [single] * 6
    # one by one would be 6 generate calls; grouped, the 6 need at most 2
    assert server.state.batcher.stats["batches"] - batches <= 2
    assert server.state.batcher.stats["largest_batch"] >= 3


def test_completions_endpoint(server, tiny_model_dir, tiny_tokenizer):
    client = server.client()
    reply = client.completions.create(
        model="base", prompt=["hello", "The capital of France"], max_tokens=5, temperature=0
    )
    from transformers import AutoModelForCausalLM

    engine = TransformersEngine(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_tokenizer
    )
    expected = engine.complete(["hello", "The capital of France"], GenerationParams(5))
    assert [c.text for c in reply.choices] == [c.text for c in expected]


BAD = [
    ("not json", 400, "invalid_json", None),
    ({"model": "a", "messages": [{"role": "robot", "content": "hi"}]}, 400, None, "role"),
    ({"model": "a", "messages": []}, 400, None, "messages"),
    ({"model": "a", "messages": HELLO, "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
    ({"model": "a", "messages": HELLO, "max_tokens": 10_000}, 400, "invalid_value", "max_tokens"),
    ({"model": "a", "messages": HELLO, "temperature": 7}, 400, None, "temperature"),
    ({"model": "a", "messages": HELLO, "n": 3}, 400, None, "n"),
    ({"model": "a", "messages": [{"role": "user"}]}, 400, None, "content"),
    ({"messages": HELLO}, 400, None, "model"),
    ([1, 2], 400, None, None),
    ({"model": "zzz", "messages": HELLO}, 404, "model_not_found", "model"),
    ({"model": "../outside", "messages": HELLO}, 404, "model_not_found", "model"),
    ({"model": "escape", "messages": HELLO}, 404, "model_not_found", "model"),
    (
        {"model": "a", "messages": [{"role": "user", "content": "hello " * 200}]},
        400,
        "context_length_exceeded",
        "messages",
    ),
]


@pytest.mark.parametrize(("body", "status", "code", "mentions"), BAD)
def test_bad_input_gets_a_4xx_with_an_openai_error_body(server, body, status, code, mentions):
    data = body if isinstance(body, str) else json.dumps(body)
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=data,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code:
        assert error["code"] == code
    if mentions:
        assert mentions in (error["message"] + str(error["param"]))
    if status == 404:
        assert "base, a, b" in error["message"]  # the names a client may use
    assert "outside" not in server.state.registry.loaded


def test_oversized_body_and_openai_client_errors(server):
    big = {"model": "a", "messages": [{"role": "user", "content": "x" * 1_100_000}]}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=big, timeout=30)
    assert response.status_code == 413 and response.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError, match="available: base, a, b"):
        chat(server.client(), "nope")
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        server.client().chat.completions.create(model="a", messages=HELLO, max_tokens=-1)


def test_api_key_required_when_set(tiny_model_dir):
    live = start(tiny_model_dir, api_key="s3cret")
    try:
        with pytest.raises(openai.AuthenticationError):
            live.client("wrong").models.list()
        assert httpx.get(f"{live.url}/v1/models").status_code == 401
        assert httpx.get(f"{live.url}/health").json()["status"] == "ok"
        assert chat(live.client("s3cret"), "base") == chat(live.client("s3cret"), "base")
    finally:
        live.stop()


def test_full_queue_gets_429_with_retry_after(tiny_model_dir):
    live = start(tiny_model_dir, max_queue=1, batch_size=1, batch_wait_ms=0)
    batcher = live.state.batcher
    try:
        with ThreadPoolExecutor(2) as pool, batcher.lock:
            first = pool.submit(chat, live.client(), "base")
            _wait_until(lambda: len(batcher.in_flight) == 1)
            second = pool.submit(chat, live.client(), "base")
            _wait_until(lambda: len(batcher.waiting) == 1)
            body = {"model": "base", "messages": HELLO, "max_tokens": 4}
            response = httpx.post(f"{live.url}/v1/chat/completions", json=body, timeout=30)
            assert response.status_code == 429
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"]["code"] == "queue_full"
        assert first.result() == second.result()  # both finished once the worker ran
    finally:
        live.stop()


def test_timeout_and_client_disconnect_drop_queued_requests(tiny_model_dir):
    live = start(tiny_model_dir, request_timeout_s=0.5, batch_size=1, batch_wait_ms=0)
    batcher = live.state.batcher
    body = {"model": "base", "messages": HELLO, "max_tokens": 4}
    try:
        with ThreadPoolExecutor(1) as pool, batcher.lock:
            blocker = pool.submit(httpx.post, f"{live.url}/v1/chat/completions", json=body)
            _wait_until(lambda: len(batcher.in_flight) == 1)
            response = httpx.post(f"{live.url}/v1/chat/completions", json=body, timeout=30)
            assert response.status_code == 504
            assert response.json()["error"]["code"] == "timeout"
            assert not batcher.waiting  # the timed-out request left the queue
            cancelled = batcher.stats["cancelled"]
            with pytest.raises(httpx.ReadTimeout):  # the client gives up and disconnects
                httpx.post(f"{live.url}/v1/chat/completions", json=body, timeout=0.3)
            _wait_until(lambda: batcher.stats["cancelled"] > cancelled)
            assert not batcher.waiting
        assert blocker.result().status_code in (200, 504)
    finally:
        live.stop()


def test_graceful_shutdown_finishes_in_flight_request(tiny_model_dir):
    live = start(tiny_model_dir, batch_wait_ms=0)
    batcher = live.state.batcher
    with ThreadPoolExecutor(1) as pool:
        with batcher.lock:
            pending = pool.submit(chat, live.client(), "base")
            _wait_until(lambda: len(batcher.in_flight) == 1)
            live.server.should_exit = True  # like SIGTERM: stop accepting, finish open requests
            time.sleep(0.3)
        assert isinstance(pending.result(), str)
    live.thread.join(20)
    assert not live.thread.is_alive()


def _wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)
