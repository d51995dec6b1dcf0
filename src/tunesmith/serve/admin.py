"""Feedback and the canary's admin endpoints.

- `POST /v1/feedback` `{"response_id", "rating": "up"|"down"|1|-1, "correction"?, "comment"?}`
  links a rating to a logged response (serve.log_dir) and appends it to feedback.jsonl.
- `GET /v1/admin/routes`, `POST /v1/admin/routes`, `POST /v1/admin/rollback`,
  `GET /v1/admin/metrics?route=R&since=ISO` (serve/canary.py holds routes and counters).

Feedback needs the same API key as the rest of the API. The admin endpoints need the server's
API key when one is set; without one they answer loopback clients only (an exposed server with
no key must not let anyone move its traffic).
"""

from __future__ import annotations

import datetime
import ipaddress
import uuid

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunesmith.config.serve import RouteConfig
from tunesmith.serve.canary import RouteError
from tunesmith.serve.protocol import APIError, validation_error
from tunesmith.serve.request_log import now_iso


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    response_id: str = Field(min_length=1, max_length=128)
    rating: str | int
    correction: str | None = Field(None, max_length=100_000)
    comment: str | None = Field(None, max_length=10_000)
    user: str | None = Field(None, max_length=256)


class RouteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    route: str = Field(min_length=1)
    stable: str = Field(min_length=1)
    canary: str | None = None
    canary_percent: float = Field(0.0, ge=0, le=100)


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    route: str = Field(min_length=1)


RATINGS = {"up": 1, "down": -1, 1: 1, -1: -1}


def register(app, state) -> None:
    """Add the feedback and admin endpoints to the FastAPI app."""
    from tunesmith.serve.app import _authorize, _read_body

    async def body_of(request, schema):
        try:
            return schema.model_validate_json(await _read_body(state, request))
        except ValidationError as exc:
            raise validation_error(exc.errors()) from None

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        _authorize(state, request)
        fb = await body_of(request, FeedbackRequest)
        log = state.request_log
        if log is None:
            raise APIError(
                400,
                "feedback is kept only when the server logs requests; start it with --log-dir "
                "DIR (serve.log_dir)",
                code="logging_off",
            )
        rating = RATINGS.get(fb.rating)
        if rating is None or isinstance(fb.rating, bool):
            raise APIError(
                400,
                f"rating: expected 'up', 'down', 1 or -1, got {fb.rating!r}",
                param="rating",
                code="invalid_value",
            )
        link = log.links.get(fb.response_id)
        if link is None:
            raise APIError(
                404,
                f"response_id: no logged response with id '{fb.response_id}'",
                param="response_id",
                code="response_not_found",
            )
        user = fb.user or request.headers.get("x-user-id") or link.user
        record = {
            "id": f"fb-{uuid.uuid4().hex[:24]}",
            "response_id": fb.response_id,
            "time": now_iso(),
            "rating": rating,
            "correction": fb.correction,
            "comment": fb.comment,
            "user": user,
            "source": "api",
        }
        state.metrics.rating(link.route, link.arm, link.model, rating)
        log.feedback(record)
        return {"id": record["id"], "response_id": fb.response_id}

    @app.get("/v1/admin/routes")
    async def get_routes(request: Request):
        _admin(state, request)
        return state.routes.as_json()

    @app.post("/v1/admin/routes")
    async def set_route(request: Request):
        _admin(state, request)
        body = await body_of(request, RouteRequest)
        split = RouteConfig(
            stable=body.stable, canary=body.canary, canary_percent=body.canary_percent
        )
        try:
            split = state.routes.set(body.route, split)
        except RouteError as exc:
            raise APIError(400, str(exc), param=exc.param, code="invalid_route") from None
        return {"route": body.route, **split.model_dump()}

    @app.post("/v1/admin/rollback")
    async def rollback(request: Request):
        _admin(state, request)
        body = await body_of(request, RollbackRequest)
        if state.routes.get(body.route) is None:
            raise _no_route(state, body.route)
        split = state.routes.rollback(body.route)
        return {"route": body.route, **split.model_dump()}

    @app.get("/v1/admin/metrics")
    async def metrics(request: Request, route: str, since: str | None = None):
        _admin(state, request)
        start = _since(since)
        split = state.routes.get(route)
        if split is None and state.registry.knows(route):  # a model asked for by name
            split = RouteConfig(stable=route)
        if split is None:
            raise _no_route(state, route)
        return {
            "stable": state.metrics.arm(route, "stable", split.stable, start),
            "canary": state.metrics.arm(route, "canary", split.canary, start),
        }


def _no_route(state, route: str) -> APIError:
    names = ", ".join(state.routes.routes) or "none"
    return APIError(404, f"route: no route named '{route}' (routes: {names})", param="route")


def _since(since: str | None) -> float:
    if not since:
        return 0.0
    try:
        when = datetime.datetime.fromisoformat(since)
    except ValueError:
        raise APIError(
            400,
            f"since: {since!r} is not an ISO 8601 time (e.g. 2026-12-07T01:02:03Z)",
            param="since",
            code="invalid_value",
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def _admin(state, request) -> None:
    """The server's API key when it has one; otherwise a loopback client."""
    from tunesmith.serve.app import _authorize

    if state.api_key:
        _authorize(state, request)
        return
    host = request.client.host if request.client else None
    if not is_loopback(host):
        raise APIError(
            403,
            f"admin endpoints answer loopback clients only while the server has no API key; "
            f"set serve.api_key or TUNESMITH_SERVE_API_KEY to manage it from {host}",
            "permission_error",
            code="admin_forbidden",
        )
