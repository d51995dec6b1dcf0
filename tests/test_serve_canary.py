"""Canary routes: the sticky hashed split, the admin endpoints, rollback, persistence, metrics."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
from pathlib import Path

import httpx
import pytest

from tunesmith.config.schema import RunConfig
from tunesmith.config.serve import RouteConfig
from tunesmith.serve.canary import assign, bucket
from tunesmith.utils.errors import ConfigError

openai = pytest.importorskip("openai")
from helpers import start  # noqa: E402  (after the openai guard)
from test_serve import make_adapter  # noqa: E402

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory, tiny_model_dir, tiny_tokenizer) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    make_adapter(root / "v1", tiny_model_dir, tiny_tokenizer, seed=1)
    make_adapter(root / "v2", tiny_model_dir, tiny_tokenizer, seed=2)
    return root


@pytest.fixture
def server(tiny_model_dir, adapters_dir, tmp_path):
    live = start(tiny_model_dir, adapters_dir, log_dir=str(tmp_path / "logs"))
    yield live
    live.stop()


def admin(server, path: str, body: dict | None = None, **params) -> httpx.Response:
    url = f"{server.url}/v1/admin/{path}"
    if body is None:
        return httpx.get(url, params=params, timeout=30)
    return httpx.post(url, json=body, timeout=30)


def logged(server) -> dict[str, dict]:
    server.state.request_log.flush()
    path = Path(server.state.cfg.log_dir) / "requests.jsonl"
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_split_ratios_hold_and_assignment_is_sticky():
    users = [f"user-{i}" for i in range(20_000)]
    for percent in (1.0, 5.0, 10.0, 25.0, 50.0):
        split = RouteConfig(stable="v1", canary="v2", canary_percent=percent)
        arms = [assign("assistant", split, u) for u in users]
        share = sum(arm == "canary" for _, arm in arms) / len(users)
        p = percent / 100
        assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / len(users)), (percent, share)
        assert all(model == ("v2" if arm == "canary" else "v1") for model, arm in arms)
        assert arms == [assign("assistant", split, u) for u in users]  # sticky
    # the contract's bucket, computed here independently
    for user in users[:100]:
        digest = hashlib.sha256(f"assistant\0{user}".encode()).hexdigest()
        assert bucket("assistant", user) == int(digest[:8], 16) % 10000
    # a user on the canary at 5% stays on it at 10% (widening only adds users)
    at5 = RouteConfig(stable="v1", canary="v2", canary_percent=5)
    at10 = RouteConfig(stable="v1", canary="v2", canary_percent=10)
    canary5 = {u for u in users if assign("assistant", at5, u)[1] == "canary"}
    canary10 = {u for u in users if assign("assistant", at10, u)[1] == "canary"}
    assert canary5 < canary10
    # another route splits users independently; no user id: a random bucket at the same rate
    other = {u for u in users if assign("other", at5, u)[1] == "canary"}
    assert len(other & canary5) < len(canary5) / 4
    rng = random.Random(0)
    share = sum(assign("assistant", at10, None, rng)[1] == "canary" for _ in range(20_000)) / 2e4
    assert abs(share - 0.10) < 4 * math.sqrt(0.09 / 20_000)
    assert assign("assistant", RouteConfig(stable="v1"), "u") == ("v1", None)


def test_users_reach_their_arm_and_rollback_is_immediate(server):
    body = {"route": "assistant", "stable": "v1", "canary": "v2", "canary_percent": 30.0}
    answer = admin(server, "routes", body)
    assert answer.status_code == 200 and answer.json() == body
    assert admin(server, "routes").json() == {
        "routes": {"assistant": {"stable": "v1", "canary": "v2", "canary_percent": 30.0}}
    }
    client = server.client()
    assert "assistant" in [m.id for m in client.models.list().data]
    split = RouteConfig(stable="v1", canary="v2", canary_percent=30.0)
    replies = {}
    for i in range(24):
        user = f"u-{i}"
        reply = client.chat.completions.create(
            model="assistant", messages=HI, max_tokens=2, user=user
        )
        replies[user] = reply
    records = logged(server)
    arms = set()
    for user, reply in replies.items():
        model, arm = assign("assistant", split, user)
        record = records[reply.id]
        assert (record["model"], record["arm"], record["route"]) == (model, arm, "assistant")
        assert reply.model == model and record["user"] == user
        arms.add(arm)
    assert arms == {"stable", "canary"}

    canary_user = next(u for u in replies if assign("assistant", split, u)[1] == "canary")
    rolled = admin(server, "rollback", {"route": "assistant"})
    assert rolled.json() == {
        "route": "assistant",
        "stable": "v1",
        "canary": None,
        "canary_percent": 0.0,
    }
    reply = client.chat.completions.create(
        model="assistant", messages=HI, max_tokens=2, user=canary_user
    )
    record = logged(server)[reply.id]
    assert (record["model"], record["arm"]) == ("v1", None)  # the next request, same server
    assert (
        json.loads((Path(server.state.cfg.log_dir) / "routes.json").read_text())["routes"][
            "assistant"
        ]["canary"]
        is None
    )


def test_routes_survive_a_restart_and_so_do_feedback_links(tiny_model_dir, adapters_dir, tmp_path):
    logs = str(tmp_path / "logs")
    first = start(tiny_model_dir, adapters_dir, log_dir=logs)
    try:
        body = {"route": "assistant", "stable": "v1", "canary": "v2", "canary_percent": 12.5}
        assert admin(first, "routes", body).status_code == 200
        reply = first.client().chat.completions.create(
            model="assistant", messages=HI, max_tokens=2, user="u-1"
        )
    finally:
        first.stop()
    second = start(tiny_model_dir, adapters_dir, log_dir=logs)
    try:
        assert admin(second, "routes").json()["routes"]["assistant"] == {
            "stable": "v1",
            "canary": "v2",
            "canary_percent": 12.5,
        }
        vote = {"response_id": reply.id, "rating": "up"}
        answer = httpx.post(f"{second.url}/v1/feedback", json=vote, timeout=30)
        assert answer.status_code == 200 and answer.json()["response_id"] == reply.id
    finally:
        second.stop()


def test_route_changes_are_checked(server):
    cases = [
        ({"route": "v1", "stable": "v2"}, "route", "shadow"),
        ({"route": "r", "stable": "v1", "canary": "missing"}, "canary", "missing"),
        ({"route": "r", "stable": "nope"}, "stable", "nope"),
        ({"route": "r", "stable": "v1", "canary": "v1", "canary_percent": 5}, "canary", "v1"),
        (
            {"route": "r", "stable": "v1", "canary": "v2", "canary_percent": 150},
            "canary_percent",
            "100",
        ),
        ({"route": "r", "stable": "v1", "canary_pct": 5}, "canary_pct", "Extra"),
    ]
    for body, param, mentions in cases:
        answer = admin(server, "routes", body)
        error = answer.json()["error"]
        assert answer.status_code == 400, body
        assert error["param"] == param and mentions in error["message"], error
    assert admin(server, "rollback", {"route": "ghost"}).status_code == 404
    assert admin(server, "routes").json() == {"routes": {}}
    since = admin(server, "metrics", route="v1", since="yesterday")
    assert since.status_code == 400 and since.json()["error"]["param"] == "since"


def test_metrics_count_errors_of_a_failing_arm(server, monkeypatch):
    split = {"route": "assistant", "stable": "v1", "canary": "v2", "canary_percent": 50.0}
    assert admin(server, "routes", split).status_code == 200
    registry = server.state.registry
    real_use = registry.use

    def failing_use(name):
        if name == "v2":
            raise RuntimeError("injected failure in the canary adapter")
        return real_use(name)

    monkeypatch.setattr(registry, "use", failing_use)
    client = server.client()
    route = RouteConfig(**{k: v for k, v in split.items() if k != "route"})
    expected = {"stable": 0, "canary": 0}
    ok_ids = []
    for i in range(16):
        user = f"m-{i}"
        arm = assign("assistant", route, user)[1]
        expected[arm] += 1
        if arm == "canary":
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(
                    model="assistant", messages=HI, max_tokens=2, user=user
                )
        else:
            reply = client.chat.completions.create(
                model="assistant", messages=HI, max_tokens=2, user=user
            )
            ok_ids.append(reply.id)
    assert expected["canary"] > 0 and expected["stable"] > 0
    for response_id, rating in zip(ok_ids[:3], ("up", "up", "down"), strict=True):
        vote = {"response_id": response_id, "rating": rating}
        assert httpx.post(f"{server.url}/v1/feedback", json=vote).status_code == 200

    metrics = admin(server, "metrics", route="assistant").json()
    assert set(metrics) == {"stable", "canary"}
    canary, stable = metrics["canary"], metrics["stable"]
    assert canary["model"] == "v2" and canary["requests"] == expected["canary"]
    assert canary["errors"] == expected["canary"] and canary["error_rate"] == 1.0
    assert canary["latency_p50_ms"] is None  # no successful request to time
    assert stable["model"] == "v1" and stable["requests"] == expected["stable"]
    assert stable["errors"] == 0 and stable["error_rate"] == 0.0
    assert 0 < stable["latency_p50_ms"] <= stable["latency_p95_ms"]
    assert (stable["feedback_up"], stable["feedback_down"]) == (2, 1)
    assert (canary["feedback_up"], canary["feedback_down"]) == (0, 0)
    later = admin(server, "metrics", route="assistant", since="2999-01-01T00:00:00Z").json()
    assert later["stable"]["requests"] == 0 and later["canary"]["errors"] == 0
    failed = [r for r in logged(server).values() if r["status"] == "error"]
    assert len(failed) == expected["canary"]
    assert all(r["arm"] == "canary" and "injected failure" in r["error"] for r in failed)


def _asgi_get(state, path: str, client_host: str, headers: dict | None = None):
    from tunesmith.serve.app import create_app

    async def call():
        transport = httpx.ASGITransport(create_app(state), client=(client_host, 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://tunesmith") as c:
            return await c.get(path, headers=headers or {})

    return asyncio.run(call())


def test_admin_needs_the_key_or_a_loopback_client(tiny_model_dir, adapters_dir):
    from tunesmith.serve.server import build_state

    def state(**serve):
        settings = {"model_name": "base", "adapters_dir": str(adapters_dir), **serve}
        return build_state(
            RunConfig.model_validate(
                {"model": {"name_or_path": str(tiny_model_dir)}, "serve": settings}
            )
        )

    open_state = state()
    far = _asgi_get(open_state, "/v1/admin/routes", "10.1.2.3")
    assert far.status_code == 403
    assert (
        "loopback" in far.json()["error"]["message"]
        and "10.1.2.3" in far.json()["error"]["message"]
    )
    assert _asgi_get(open_state, "/v1/admin/routes", "127.0.0.1").status_code == 200
    assert _asgi_get(open_state, "/v1/admin/routes", "::1").status_code == 200
    keyed = state(api_key="s3cret")
    assert _asgi_get(keyed, "/v1/admin/routes", "10.1.2.3").status_code == 401
    assert _asgi_get(keyed, "/v1/admin/routes", "127.0.0.1").status_code == 401
    bearer = {"Authorization": "Bearer s3cret"}
    assert _asgi_get(keyed, "/v1/admin/routes", "10.1.2.3", bearer).status_code == 200


def test_routes_from_config_and_bad_ones_named(tiny_model_dir, adapters_dir, tmp_path):
    from tunesmith.serve.server import build_state

    def config(routes, **serve):
        settings = {"model_name": "base", "adapters_dir": str(adapters_dir), "routes": routes}
        return RunConfig.model_validate(
            {"model": {"name_or_path": str(tiny_model_dir)}, "serve": {**settings, **serve}}
        )

    good = {"assistant": {"stable": "v1", "canary": "v2", "canary_percent": 5}}
    state = build_state(config(good))
    assert state.routes.as_json()["routes"]["assistant"]["canary_percent"] == 5.0
    no_canary = {"assistant": {"stable": "v1", "canary_percent": 5}}  # nothing to send 5% to
    assert build_state(config(no_canary)).routes.get("assistant").canary_percent == 0.0
    with pytest.raises(ConfigError, match=r"serve\.routes\.assistant: canary: .*'v3'"):
        build_state(config({"assistant": {"stable": "v1", "canary": "v3"}}))
    # routes.json in the log folder wins over the config for the routes it holds
    logs = tmp_path / "logs"
    logs.mkdir()
    saved = {"routes": {"assistant": {"stable": "v2", "canary": None, "canary_percent": 0}}}
    (logs / "routes.json").write_text(json.dumps(saved))
    state = build_state(config(good, log_dir=str(logs)))
    assert state.routes.get("assistant").stable == "v2"
    (logs / "routes.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"routes\.json: not a routes file"):
        build_state(config(good, log_dir=str(logs)))
    state = build_state(config({}))
    response = _asgi_post_feedback(state)
    assert response.status_code == 400 and "--log-dir" in response.json()["error"]["message"]


def _asgi_post_feedback(state):
    from tunesmith.serve.app import create_app

    async def call():
        transport = httpx.ASGITransport(create_app(state), client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://tunesmith") as c:
            return await c.post("/v1/feedback", json={"response_id": "x", "rating": 1})

    return asyncio.run(call())
