"""The OpenAI-compatible HTTP API: /v1/models, /v1/chat/completions, /v1/completions, /health.

Bad input is a 4xx with an OpenAI-style error body, never a 500: bodies are parsed and checked
here (size, JSON, schema, model name, max_tokens, prompt length) before anything is queued.
Every size a request controls has a limit in the `serve` section (body bytes, stop sequences,
prompts per request, logit_bias entries, prompts x n x max_tokens), and the body is counted
while it is read, so a chunked body past the limit is refused without being held.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi import Request
from pydantic import ValidationError

from tunesmith.config.serve import ServeConfig
from tunesmith.data.render import ToolChat, prompt_ids
from tunesmith.models.engine import GenerationParams
from tunesmith.serve.batcher import END, Batcher, Job, QueueFull
from tunesmith.serve.canary import Metrics, Routes, assign
from tunesmith.serve.images import has_images, open_images
from tunesmith.serve.protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    _Request,
    validation_error,
)
from tunesmith.serve.registry import ModelRegistry
from tunesmith.serve.request_log import Exchange, RequestLog, Versions, loggable_messages
from tunesmith.serve.tools import (
    ToolStream,
    convention_of,
    reply_message,
    request_messages,
    with_tools,
)

log = logging.getLogger("tunesmith.serve")


@dataclass
class ServerState:
    cfg: ServeConfig
    registry: ModelRegistry
    batcher: Batcher
    api_key: str | None = None
    closing: bool = False
    closing_since: float | None = None  # time.monotonic() of the SIGTERM, when one came
    # requests are tokenized here, one at a time, so a long prompt list never stalls the event
    # loop (/health included) nor takes the threads the batcher generates in
    tokenize_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="tokenize")
    )
    # continuous improvement (serve/canary.py, request_log.py, admin.py): routes with a canary
    # split, the server's own counters, and the request log when serve.log_dir is set
    routes: Routes | None = None
    metrics: Metrics = field(default_factory=Metrics)
    request_log: RequestLog | None = None

    def __post_init__(self) -> None:
        if self.routes is None:
            self.routes = Routes(self.registry.knows, self.cfg.log_dir)
            self.routes.load(self.cfg.routes)
        if self.request_log is None and self.cfg.log_dir:
            self.request_log = RequestLog(self.cfg.log_dir, Versions(self.registry))

    def shutdown_left(self) -> float:
        """Seconds of the shutdown grace (serve.shutdown_timeout_s) not yet spent."""
        since = self.closing_since if self.closing_since is not None else time.monotonic()
        return max(0.0, since + self.cfg.shutdown_timeout_s - time.monotonic())

    async def off_loop(self, fn, *args, **kwargs):
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.tokenize_pool, call)

    @property
    def tokenizer(self):
        return self.registry.engine.tokenizer

    @property
    def context_limit(self) -> int | None:
        config = getattr(getattr(self.registry.engine, "model", None), "config", None)
        config = getattr(config, "text_config", None) or config  # a vision-language model's
        return getattr(config, "max_position_embeddings", None)


def create_app(state: ServerState):
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.batcher.start()
        yield
        state.closing = True  # uvicorn has stopped accepting and waited for open requests
        await state.batcher.stop(state.shutdown_left())
        state.tokenize_pool.shutdown(wait=False, cancel_futures=True)
        if state.request_log is not None:
            await asyncio.to_thread(state.request_log.close)  # every queued line written

    app = FastAPI(title="tunesmith", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.tunesmith = state
    if state.cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=state.cfg.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-User-Id"],
        )

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        error = APIError(exc.status_code, str(exc.detail))
        return JSONResponse(error.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _server_error(request, exc: Exception):
        log.exception("unexpected error")
        error = APIError(500, "internal server error", "server_error")
        return JSONResponse(error.body(), status_code=500)

    @app.get("/health")
    async def health():
        b = state.batcher
        status = "shutting_down" if state.closing else "ok"
        return {
            "status": status,
            "queued": len(b.waiting),
            "in_flight": len(b.in_flight),
            **b.stats,
        }

    @app.get("/v1/models")
    async def models(request: Request):
        _authorize(state, request)
        created = int(time.time())
        data = [
            {"id": n, "object": "model", "created": created, "owned_by": "tunesmith"}
            for n in [*state.registry.names(), *state.routes.routes]  # routes answer as models
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        _authorize(state, request)
        req = await _parse(state, request, ChatRequest)
        conversation = [m.as_dict() for m in req.messages]
        with _exchange(state, request, req, "chat", messages=conversation) as ex:
            conversation = await _open_images(state, ex.model, conversation)
            conversation = request_messages(req.messages, conversation)  # tool calls, results
            conversation = with_tools(conversation, req.tools, req.tool_choice, state.tokenizer)
            tools = convention_of(state.tokenizer) if isinstance(conversation, ToolChat) else None
            ex.prompt_tokens = await _chat_prompt_len(state, conversation)
            params = _params(state, req, ex.prompt_tokens, prompts=1)
            if req.stream:
                job = _submit(state, "stream", ex.model, [conversation], params)
                job.deltas = asyncio.Queue()
                ex.streaming = True  # logged by the stream once it ends
                return StreamingResponse(
                    _chat_stream(state, job, ex.model, tools, ex), media_type="text/event-stream"
                )
            job = _submit(state, "chat", ex.model, [conversation], params)
            completion = (await _wait(state, job, request))[0]
            body = _chat_body(ex.model, completion, tools, ex.id)
            ex.ok([completion.text], [body["choices"][0]["finish_reason"]], **_tokens([completion]))
            return body

    @app.post("/v1/completions")
    async def completions(request: Request):
        _authorize(state, request)
        req = await _parse(state, request, CompletionRequest)
        if req.stream:
            raise APIError(400, "stream is supported on /v1/chat/completions only", param="stream")
        prompt = req.prompt[0] if len(req.prompt) == 1 else req.prompt
        with _exchange(state, request, req, "completion", prompt=prompt) as ex:
            encoded = await state.off_loop(state.tokenizer, req.prompt)
            lengths = [len(ids) for ids in encoded["input_ids"]]
            ex.prompt_tokens = sum(lengths)
            params = _params(state, req, max(lengths), prompts=len(req.prompt))
            job = _submit(state, "completion", ex.model, req.prompt, params)
            results = await _wait(state, job, request)
            body = _completion_body(ex.model, results, ex.id)
            ex.ok([c.text for c in results], [c.finish_reason for c in results], **_tokens(results))
            return body

    from tunesmith.serve.admin import register  # feedback and the canary's admin endpoints

    register(app, state)

    return app


def _authorize(state: ServerState, request) -> None:
    if not state.api_key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    # constant time: the comparison takes as long for a near miss as for a wild guess
    ok = scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), state.api_key.encode()
    )
    if not ok:
        raise APIError(
            401,
            "missing or wrong API key (send Authorization: Bearer KEY)",
            "authentication_error",
            code="invalid_api_key",
        )


async def _parse(state: ServerState, request, schema: type[_Request]) -> _Request:
    if state.closing:
        raise APIError(503, "the server is shutting down", "server_error")
    body = await _read_body(state, request)
    try:
        req = schema.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None
    if state.routes.get(req.model) is None and not state.registry.knows(req.model):
        names = ", ".join([*state.registry.names(), *state.routes.routes])
        raise APIError(
            404,
            f"model '{req.model}' not found; available: {names}",
            param="model",
            code="model_not_found",
        )
    _check_sizes(state, req)
    return req


def _exchange(state: ServerState, request, req: _Request, kind: str, **inputs) -> Exchange:
    """The request's route resolved (a canary split picks its arm by the user's bucket) and the
    record that logs and counts it once it ends."""
    started = time.perf_counter()
    user = req.user or request.headers.get("x-user-id") or None
    split = state.routes.get(req.model)
    model, arm = (req.model, None) if split is None else assign(req.model, split, user)
    if "messages" in inputs:
        inputs["messages"] = loggable_messages(inputs["messages"])
    prefix = "chatcmpl" if kind == "chat" else "cmpl"
    return Exchange(
        state.request_log,
        state.metrics,
        response_id=_id(prefix),
        kind=kind,
        route=req.model,
        model=model,
        arm=arm,
        user=user,
        inputs=inputs,
        started=started,
    )


async def _read_body(state: ServerState, request) -> bytes:
    """The body, counted as it arrives: past serve.max_body_bytes (declared or chunked) 413,
    slower than serve.read_timeout_s 408; either closes the connection, the rest unread."""
    limit = state.cfg.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(state)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(state.cfg.read_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(state)
                chunks.append(chunk)
    except TimeoutError:
        raise APIError(
            408,
            f"the request body did not arrive within {state.cfg.read_timeout_s} s",
            code="timeout",
            headers={"Connection": "close"},
        ) from None
    return b"".join(chunks)


def _too_large(state: ServerState) -> APIError:
    return APIError(
        413,
        f"request body larger than {state.cfg.max_body_bytes} bytes (serve.max_body_bytes)",
        code="body_too_large",
        headers={"Connection": "close"},  # the rest of the body is never read
    )


def _invalid(param: str, message: str) -> APIError:
    return APIError(400, f"{param}: {message}", param=param, code="invalid_value")


def _check_sizes(state: ServerState, req: _Request) -> None:
    """Every size the request controls, against its serve.* limit."""
    cfg = state.cfg
    if len(req.stop) > cfg.max_stop:
        raise _invalid("stop", f"at most {cfg.max_stop} stop sequences, got {len(req.stop)}")
    longest = max((len(s) for s in req.stop), default=0)
    if longest > cfg.max_stop_chars:
        raise _invalid(
            "stop", f"a stop sequence has at most {cfg.max_stop_chars} characters, got {longest}"
        )
    if req.logit_bias and len(req.logit_bias) > cfg.max_logit_bias:
        raise _invalid(
            "logit_bias", f"at most {cfg.max_logit_bias} entries, got {len(req.logit_bias)}"
        )
    prompts = getattr(req, "prompt", None)
    if prompts is not None and len(prompts) > cfg.max_prompts:
        raise _invalid("prompt", f"at most {cfg.max_prompts} prompts, got {len(prompts)}")


async def _open_images(state: ServerState, model: str, conversation: list[dict]) -> list[dict]:
    """image_url parts opened and checked (serve/images.py) for a model that reads images."""
    if not has_images(conversation):
        return conversation
    if not getattr(state.registry.engine, "reads_images", False):
        raise APIError(
            400,
            f"messages: model '{model}' reads text only; image parts need a vision-language model",
            param="messages",
            code="images_not_supported",
        )
    return await state.off_loop(open_images, conversation, state.cfg)


async def _chat_prompt_len(state: ServerState, conversation: list[dict]) -> int:
    engine = state.registry.engine
    try:
        if hasattr(engine, "prompt_length"):  # a vision-language model: images count too
            return await state.off_loop(engine.prompt_length, conversation)
        return len(await state.off_loop(prompt_ids, state.tokenizer, conversation))
    except Exception as exc:  # the template refuses this conversation (e.g. role order)
        raise APIError(
            400, f"messages: the chat template refused them: {exc}", param="messages"
        ) from None


def _params(state: ServerState, req: _Request, prompt_len: int, prompts: int) -> GenerationParams:
    cfg = state.cfg
    field_name, max_tokens = req.requested_tokens()
    if max_tokens is None:
        max_tokens = min(cfg.default_max_tokens, cfg.max_tokens_limit)
    if not 1 <= max_tokens <= cfg.max_tokens_limit:
        raise APIError(
            400,
            f"{field_name} must be between 1 and {cfg.max_tokens_limit}, got {max_tokens}",
            param=field_name,
            code="invalid_value",
        )
    budget = prompts * req.n * max_tokens
    if budget > cfg.max_request_tokens:
        raise _invalid(
            field_name,
            f"{prompts} prompt(s) x n={req.n} x {field_name}={max_tokens} = {budget} tokens; "
            f"at most {cfg.max_request_tokens} per request (serve.max_request_tokens)",
        )
    limit = state.context_limit
    if prompt_len > cfg.max_prompt_tokens or (limit and prompt_len + max_tokens > limit):
        allowed = min(cfg.max_prompt_tokens, (limit or 10**9) - max_tokens)
        raise APIError(
            400,
            f"the prompt has {prompt_len} tokens; at most {allowed} fit with "
            f"max_tokens={max_tokens}",
            param="messages",
            code="context_length_exceeded",
        )
    return GenerationParams(
        max_new_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        stop=list(req.stop or []),
        seed=req.seed,
    )


def _submit(state: ServerState, kind: str, model: str, inputs: list, params) -> Job:
    job = Job(kind, model, inputs, params, asyncio.get_running_loop().create_future())
    try:
        state.batcher.submit(job)
    except QueueFull:
        retry = state.batcher.retry_after()
        raise APIError(
            429,
            f"the server is busy ({state.cfg.max_queue} requests waiting); retry in {retry} s",
            "rate_limit_error",
            code="queue_full",
            headers={"Retry-After": str(retry)},
        ) from None
    return job


async def _wait(state: ServerState, job: Job, request) -> list:
    """The job's result; cancels it when the client disconnects or the time is up."""
    deadline = time.monotonic() + state.cfg.request_timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            done, _ = await asyncio.wait({job.future}, timeout=min(0.25, max(left, 0)))
        except asyncio.CancelledError:  # the shutdown grace is over: stop generating it
            state.batcher.cancel(job)
            raise
        if done:
            try:
                return job.future.result()
            except APIError:
                raise
            except Exception as exc:  # the engine failed (e.g. an adapter that cannot load):
                # a clean 500, not an exception through uvicorn (which drops the connection)
                log.error("generation failed: %s", exc, exc_info=exc)
                raise APIError(500, "generation failed", "server_error") from exc
        if await request.is_disconnected():
            state.batcher.cancel(job)
            raise APIError(499, "client closed the request", code="client_closed")
        if left <= 0:
            state.batcher.cancel(job)
            raise APIError(
                504,
                f"no answer within {state.cfg.request_timeout_s} s",
                "timeout_error",
                code="timeout",
            )


async def _chat_stream(
    state: ServerState, job: Job, model: str, tools: str | None = None, ex: Exchange | None = None
) -> AsyncIterator[str]:
    chunk_id, created = (ex.id if ex else _id("chatcmpl")), int(time.time())
    calls = ToolStream(tools) if tools else None  # the reply's calls as tool_calls deltas

    def event(delta: dict, finish: str | None = None) -> str:
        body = {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    deadline = time.monotonic() + state.cfg.request_timeout_s
    text, finished = "", False
    try:
        yield event({"role": "assistant", "content": ""})
        while True:
            left = deadline - time.monotonic()
            try:
                item = await asyncio.wait_for(job.deltas.get(), timeout=max(left, 0.001))
            except TimeoutError:
                if ex:
                    ex.fail("generation timed out", 504)
                yield _error_event(APIError(504, "generation timed out", "timeout_error"))
                break
            if item is END:
                tokens = len(state.tokenizer(text, add_special_tokens=False)["input_ids"])
                reason = "length" if tokens >= job.params.max_new_tokens else "stop"
                reason = "tool_calls" if calls and calls.calls else reason
                if ex:
                    ex.ok([text], [reason], ex.prompt_tokens, tokens)
                for delta in calls.end() if calls else []:
                    yield event(delta)
                yield event({}, reason)
                finished = True
                break
            if isinstance(item, Exception):
                log.error("stream failed: %s", item)
                if ex:
                    ex.fail(f"generation failed: {item}", 500)
                yield _error_event(APIError(500, "generation failed", "server_error"))
                break
            text += item
            for delta in calls.feed(item) if calls else [{"content": item}]:
                yield event(delta)
        yield "data: [DONE]\n\n"
    finally:
        if not finished:  # client gone or error: stop generating at the next token
            state.batcher.cancel(job)
            if ex:
                ex.fail("client closed the stream", 499)  # a no-op after an error's fail


def _error_event(error: APIError) -> str:
    return f"data: {json.dumps(error.body())}\n\n"


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _tokens(completions) -> dict:
    """prompt and completion token counts of completions, as Exchange.ok takes them."""
    return {
        "prompt": sum(c.prompt_tokens for c in completions),
        "completion": sum(c.completion_tokens for c in completions),
    }


def _usage(completions) -> dict:
    prompt = sum(c.prompt_tokens for c in completions)
    generated = sum(c.completion_tokens for c in completions)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": generated,
        "total_tokens": prompt + generated,
    }


def _chat_body(model: str, c, tools: str | None = None, response_id: str | None = None) -> dict:
    message, called = reply_message(c.text, tools) if tools else ({}, False)
    message = message or {"role": "assistant", "content": c.text}
    reason = "tool_calls" if called else c.finish_reason
    choice = {"index": 0, "message": message, "finish_reason": reason}
    return _response("chatcmpl", "chat.completion", model, [choice], [c], response_id)


def _completion_body(model: str, results, response_id: str | None = None) -> dict:
    choices = [
        {"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
        for i, c in enumerate(results)
    ]
    return _response("cmpl", "text_completion", model, choices, results, response_id)


def _response(
    id_prefix: str,
    kind: str,
    model: str,
    choices: list[dict],
    completions,
    response_id: str | None = None,
) -> dict:
    """The OpenAI response envelope around `choices`."""
    return {
        "id": response_id or _id(id_prefix),
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _usage(completions),
    }
