"""The live server under concurrency: requests whose client leaves stop their work, and
concurrent streams share one batch. The tiny model is slowed per forward pass where a test
needs generation that outlasts a client."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytest.importorskip("openai")
from helpers import start

HELLO = [{"role": "user", "content": "hello who are you?"}]
CHAT = "/v1/chat/completions"
SLOW_S = 0.03  # per forward pass while a test slows the model: 200 tokens take >= 6 s


class Slowdown:
    """A forward pre-hook on the served model: counts forward passes, sleeps `delay` in each."""

    def __init__(self, model):
        self.delay, self.calls = 0.0, 0
        model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)


@pytest.fixture(scope="module")
def live(tiny_model_dir):
    server = start(tiny_model_dir, max_tokens_limit=200, batch_wait_ms=30)
    server.slow = Slowdown(server.state.registry.engine.model)
    yield server
    server.stop()


@pytest.fixture
def slow(live):
    live.slow.delay = SLOW_S
    yield live.slow
    live.slow.delay = 0.0


@pytest.fixture
def patient(live):
    """The worker waits 0.5 s for batch mates: requests sent together share a batch."""
    live.state.batcher.batch_wait_s = 0.5
    yield
    live.state.batcher.batch_wait_s = 0.03


def body(max_tokens: int, **extra) -> dict:
    return {"model": "base", "messages": HELLO, "max_tokens": max_tokens, "temperature": 0} | extra


def timed_post(live, payload: dict, timeout: float = 60) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = httpx.post(f"{live.url}{CHAT}", json=payload, timeout=timeout)
    return time.perf_counter() - started, response


def leave_after(live, payload: dict, seconds: float) -> None:
    """Send a request and hang up after `seconds` without an answer."""
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{live.url}{CHAT}", json=payload, timeout=seconds)


def settled(slow: Slowdown, quiet_s: float = 0.5, timeout: float = 10) -> bool:
    """True once no forward pass has run for `quiet_s` (generation stopped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        calls = slow.calls
        time.sleep(quiet_s)
        if slow.calls == calls:
            return True
    return False


def test_a_request_whose_client_leaves_stops_generating(live, slow):
    normal, response = timed_post(live, body(8))
    assert response.status_code == 200
    batcher = live.state.batcher
    cancelled = batcher.stats["cancelled"]
    leave_after(live, body(200), 1.0)  # 200 slow tokens: >= 6 s if it ran on
    after_leaving, response = timed_post(live, body(8))
    assert response.status_code == 200
    assert after_leaving < normal + 1.5, (after_leaving, normal)
    assert batcher.stats["cancelled"] == cancelled + 1
    assert settled(slow) and not batcher.in_flight


def test_a_request_past_its_timeout_stops_generating(live, slow):
    normal, _ = timed_post(live, body(8))
    live.state.cfg.request_timeout_s = 1.0
    try:
        spent, response = timed_post(live, body(200))
    finally:
        live.state.cfg.request_timeout_s = 300.0
    assert response.status_code == 504 and spent < 3
    after, response = timed_post(live, body(8))
    assert response.status_code == 200 and after < normal + 1.5, (after, normal)
    assert settled(slow)


def test_one_request_leaving_does_not_stop_its_batch_mates(live, slow, patient):
    expected = timed_post(live, body(40))[1].json()["choices"][0]["message"]["content"]
    batches = live.state.batcher.stats["batches"]
    with ThreadPoolExecutor(2) as pool:
        stays = pool.submit(timed_post, live, body(40))
        leaves = pool.submit(leave_after, live, body(40), 0.9)  # same key: the same batch
        leaves.result()
        reply = stays.result()[1].json()
    assert reply["choices"][0]["message"]["content"] == expected
    assert live.state.batcher.stats["batches"] - batches == 1


def stream_text(live, max_tokens: int, stop=None) -> str:
    client = live.client()
    chunks = client.chat.completions.create(
        model="base", messages=HELLO, temperature=0, max_tokens=max_tokens, stream=True, stop=stop
    )
    return "".join(c.choices[0].delta.content or "" for c in chunks)


def test_concurrent_streams_share_one_batch_with_the_same_text(live, patient):
    settings = [(12, None), (5, None), (16, ["e"]), (9, [" "]), (12, None), (14, None)]
    alone = [stream_text(live, n, stop) for n, stop in settings]  # one at a time
    batcher = live.state.batcher
    _wait_until(lambda: not batcher.in_flight)  # the last stream's batch is counted
    batches = batcher.stats["batches"]
    with ThreadPoolExecutor(len(settings)) as pool:
        futures = [pool.submit(stream_text, live, n, stop) for n, stop in settings]
    assert [f.result() for f in futures] == alone
    _wait_until(lambda: not batcher.in_flight)
    assert batcher.stats["batches"] - batches == 1  # one by one would be 6
    assert batcher.stats["largest_batch"] >= len(settings)


def test_a_stream_whose_client_leaves_ends_its_row_only(live, slow, patient):
    full = stream_text(live, 30)
    batcher = live.state.batcher
    cancelled = batcher.stats["cancelled"]

    def leave_early() -> None:
        with httpx.stream("POST", f"{live.url}{CHAT}", json=body(200, stream=True)) as response:
            lines = (line for line in response.iter_lines() if line)
            next(lines), next(lines)  # the role event, then the first text: hang up

    with ThreadPoolExecutor(2) as pool:
        calls = slow.calls
        staying = pool.submit(stream_text, live, 30)
        leaving = pool.submit(leave_early)  # the same batch
        leaving.result()
        assert staying.result() == full
    _wait_until(lambda: batcher.stats["cancelled"] > cancelled)
    assert settled(slow) and not batcher.in_flight
    assert slow.calls - calls <= 40  # the batch ended with the 30-token stream, not at 200


def _wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)
