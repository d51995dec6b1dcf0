"""Canary routes: a name clients use as `model`, split between a stable and a canary model.

A route `{"stable": "v1", "canary": "v2", "canary_percent": 5.0}` sends 5% of its users to v2.
Assignment is sticky: a user's bucket is `int(sha256(f"{route}\\0{user}").hexdigest()[:8], 16)
% 10000` and the canary answers when `bucket < canary_percent * 100`, so a user stays on one arm
while the percentage holds, and a user on the canary at 5% is still on it at 10%. A request
without a user id (OpenAI's `user` field or the X-User-Id header) gets a random bucket.

Routes change at run time through the admin endpoints (serve/admin.py): the next request picks
with the new split, no restart. With a log folder they are kept in routes.json (written whole,
then renamed over the old one, so a crash leaves the old or the new file, never half of one)
and read back at start, over the routes of `serve.routes`.

`Metrics` are the server's own counters per (route, arm, model): requests, server-side errors
(5xx), latencies and feedback, each with its time so /v1/admin/metrics can count since a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from collections import defaultdict, deque
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from tunesmith.config.serve import RouteConfig
from tunesmith.utils.errors import ConfigError

ROUTES_FILE = "routes.json"
BUCKETS = 10_000
ROUTE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
KEEP_EVENTS = 100_000  # per (route, arm, model): the metrics' memory is bounded


def bucket(route: str, user: str) -> int:
    """The user's bucket in 0..9999 for this route (stable across processes and restarts)."""
    digest = hashlib.sha256(f"{route}\0{user}".encode()).hexdigest()
    return int(digest[:8], 16) % BUCKETS


def assign(route: str, split: RouteConfig, user: str | None, rng=random) -> tuple[str, str | None]:
    """(the model that answers, its arm): arm None when the route has no canary."""
    if not split.canary:
        return split.stable, None
    at = bucket(route, user) if user is not None else rng.randrange(BUCKETS)
    if at < split.canary_percent * 100:
        return split.canary, "canary"
    return split.stable, "stable"


class RouteError(ValueError):
    """A route the server cannot take; the message names the field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class Routes:
    """The server's routes. Used from the event loop only (no lock): a change is one dict
    assignment, so a request sees the old split or the new one, never half of each."""

    def __init__(self, knows: Callable[[str], bool], folder: str | Path | None = None):
        self.knows = knows  # is this a model or adapter the server answers for
        self.file = Path(folder) / ROUTES_FILE if folder else None
        self.routes: dict[str, RouteConfig] = {}

    def load(self, configured: dict[str, RouteConfig]) -> None:
        """serve.routes, then routes.json over them; an unusable entry is one ConfigError."""
        for name, split in configured.items():
            self._check_or_fail(name, split, f"serve.routes.{name}")
            self.routes[name] = _normal(split)
        if self.file is None or not self.file.is_file():
            return
        try:
            saved = json.loads(self.file.read_text(encoding="utf-8"))["routes"]
            items = {name: RouteConfig.model_validate(value) for name, value in saved.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else exc
            raise ConfigError(f"{self.file}: not a routes file ({reason})") from None
        for name, split in items.items():
            self._check_or_fail(name, split, f"{self.file}: route '{name}'")
            self.routes[name] = _normal(split)

    def _check_or_fail(self, name: str, split: RouteConfig, where: str) -> None:
        try:
            self.check(name, split)
        except RouteError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def check(self, name: str, split: RouteConfig) -> None:
        """RouteError unless both arms are models the server knows and the name is free."""
        if not ROUTE_NAME.fullmatch(name):
            raise RouteError(
                f"route name {name!r} must be 1-128 letters, digits, '.', '_', ':' or '-'",
                "route",
            )
        if self.knows(name):
            raise RouteError(f"route '{name}' would shadow the model of that name", "route")
        for arm in ("stable", "canary"):
            model = getattr(split, arm)
            if model is None:
                continue
            if model in self.routes or model == name:
                raise RouteError(f"{arm}: '{model}' is a route; a route names models", arm)
            if not self.knows(model):
                raise RouteError(f"{arm}: no model or adapter named '{model}'", arm)
        if split.canary is not None and split.canary == split.stable:
            raise RouteError(f"canary: '{split.canary}' is the stable model too", "canary")

    def get(self, name: str) -> RouteConfig | None:
        return self.routes.get(name)

    def set(self, name: str, split: RouteConfig) -> RouteConfig:
        self.check(name, split)
        split = _normal(split)
        self.routes = {**self.routes, name: split}
        self.save()
        return split

    def rollback(self, name: str) -> RouteConfig:
        """All of the route's traffic to its stable model, from the next request on."""
        split = self.routes[name].model_copy(update={"canary": None, "canary_percent": 0.0})
        self.routes = {**self.routes, name: split}
        self.save()
        return split

    def as_json(self) -> dict:
        return {"routes": {name: split.model_dump() for name, split in self.routes.items()}}

    def save(self) -> None:
        if self.file is None:
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.file.with_name(f".{ROUTES_FILE}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(self.as_json(), indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, self.file)


def _normal(split: RouteConfig) -> RouteConfig:
    """No canary: no canary share either (what GET /v1/admin/routes shows is what happens)."""
    if split.canary is None and split.canary_percent:
        return split.model_copy(update={"canary_percent": 0.0})
    return split


class Metrics:
    """Per (route, arm, model): finished requests and feedback, with their times."""

    def __init__(self, keep: int = KEEP_EVENTS):
        # (route, arm, model) -> deque of (unix time, latency ms, failed on the server's side)
        self.requests: dict[tuple, deque] = defaultdict(lambda: deque(maxlen=keep))
        # (route, arm, model) -> deque of (unix time, rating)
        self.feedback: dict[tuple, deque] = defaultdict(lambda: deque(maxlen=keep))

    @staticmethod
    def key(route: str, arm: str | None, model: str) -> tuple:
        return (route, arm or "stable", model)  # a route without a split: all of it is stable

    def request(self, route: str, arm: str | None, model: str, latency_ms: float, failed: bool):
        self.requests[self.key(route, arm, model)].append((time.time(), latency_ms, failed))

    def rating(self, route: str, arm: str | None, model: str, rating: int) -> None:
        self.feedback[self.key(route, arm, model)].append((time.time(), rating))

    def arm(self, route: str, arm: str, model: str | None, since: float = 0.0) -> dict | None:
        if model is None:
            return None
        key = (route, arm, model)
        done = [e for e in self.requests.get(key, ()) if e[0] >= since]
        votes = [r for t, r in self.feedback.get(key, ()) if t >= since]
        errors = sum(failed for _, _, failed in done)
        latencies = sorted(ms for _, ms, failed in done if not failed)
        return {
            "model": model,
            "requests": len(done),
            "errors": errors,
            "error_rate": errors / len(done) if done else 0.0,
            "latency_p50_ms": percentile(latencies, 50),
            "latency_p95_ms": percentile(latencies, 95),
            "feedback_up": sum(r > 0 for r in votes),
            "feedback_down": sum(r < 0 for r in votes),
        }


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values; None for none."""
    if not values:
        return None
    rank = max(1, -(-len(values) * q // 100))  # ceil(n * q / 100)
    return round(values[int(rank) - 1], 1)
