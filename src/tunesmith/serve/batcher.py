"""Micro-batching: a bounded queue of requests and one worker that generates them in groups.

The worker takes the oldest waiting request and every other waiting request of the same kind
that can share its batch (`Job.key`: same model and sampling parameters, up to the batch size),
and answers them with one engine call, run in a thread so the event loop keeps accepting
requests: `engine.generate` / `complete` for whole replies, `engine.stream_batch` for streams
(streams may differ in max_tokens and stop strings; each gets its own deltas). Only the worker
touches the model, so switching adapters needs no further locking.

A request whose client leaves or whose time is up is cancelled (`Batcher.cancel`): taken out
of the queue if it waits, or, if its batch is generating, stopped at its next token; a batch
stops as soon as every request in it is finished or cancelled.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tunesmith.models.engine import Completion, GenerationParams
from tunesmith.serve.registry import ModelRegistry

END = object()  # marks the end of a stream's deltas


class QueueFull(Exception):
    pass


@dataclass(eq=False)
class Job:
    kind: str  # chat | completion | stream
    model: str
    inputs: list  # conversations (chat, stream) or prompt strings (completion)
    params: GenerationParams
    future: asyncio.Future
    deltas: asyncio.Queue | None = None  # stream only
    cancelled: threading.Event = field(default_factory=threading.Event)

    def key(self) -> tuple:
        """Jobs with equal keys can share a batch."""
        p = self.params
        if self.kind == "stream":
            if p.seed is not None:
                return ("stream", id(self))  # a seeded stream alone: its samples repeat
            return ("stream", self.model, p.temperature, p.top_p)
        return (self.kind, self.model, p.max_new_tokens, p.temperature, p.top_p, *p.stop, p.seed)


class Batcher:
    def __init__(
        self, registry: ModelRegistry, max_queue: int, batch_size: int, batch_wait_s: float
    ):
        self.registry = registry
        self.max_queue, self.batch_size, self.batch_wait_s = max_queue, batch_size, batch_wait_s
        self.waiting: deque[Job] = deque()
        self.in_flight: list[Job] = []
        self.lock = threading.Lock()  # held around every use of the model
        self.stats = {"served": 0, "rejected": 0, "cancelled": 0, "batches": 0, "largest_batch": 0}
        self._arrived = asyncio.Event()
        self._seconds_per_batch = 1.0  # running estimate, for Retry-After
        self._task: asyncio.Task | None = None

    # queue side (event loop)
    def submit(self, job: Job) -> None:
        if len(self.waiting) >= self.max_queue:
            self.stats["rejected"] += 1
            raise QueueFull
        self.waiting.append(job)
        self._arrived.set()

    def cancel(self, job: Job) -> None:
        """Drop a job whose client left: out of the queue, or stopped at its next token."""
        job.cancelled.set()
        if job in self.waiting:
            self.waiting.remove(job)
        self.stats["cancelled"] += 1

    def retry_after(self) -> int:
        batches = math.ceil((len(self.waiting) + 1) / self.batch_size)
        return max(1, min(60, math.ceil(batches * self._seconds_per_batch)))

    # worker side
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, timeout: float) -> None:
        """Let queued and in-flight work finish for up to `timeout` s, then cancel the rest."""
        deadline = time.monotonic() + timeout
        while (self.waiting or self.in_flight) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        from tunesmith.serve.protocol import APIError

        for job in [*self.waiting, *self.in_flight]:
            job.cancelled.set()
            if not job.future.done():
                job.future.set_exception(
                    APIError(503, "the server is shutting down", "server_error")
                )
        self.waiting.clear()
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            self.in_flight = batch
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
            started = time.perf_counter()
            try:
                if batch[0].kind == "stream":
                    await asyncio.to_thread(self._stream, batch, asyncio.get_running_loop())
                else:
                    results = await asyncio.to_thread(self._generate, batch)
                    self._deliver(batch, results)
            except Exception as exc:  # a failed batch fails its requests, not the server
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
            finally:
                self.in_flight = []
                self.stats["batches"] += 1
                spent = time.perf_counter() - started
                self._seconds_per_batch = 0.8 * self._seconds_per_batch + 0.2 * spent

    async def _next_batch(self) -> list[Job]:
        while not self.waiting:
            self._arrived.clear()
            await self._arrived.wait()
        if self.batch_wait_s and len(self.waiting) < self.batch_size:
            await asyncio.sleep(self.batch_wait_s)  # let a burst of requests join one batch
        key = self.waiting[0].key()
        batch, size = [], 0
        for job in list(self.waiting):
            if job.key() == key and (not batch or size + len(job.inputs) <= self.batch_size):
                batch.append(job)
                size += len(job.inputs)
                self.waiting.remove(job)
        return [job for job in batch if not job.cancelled.is_set()]

    def _generate(self, batch: list[Job]) -> list[Completion]:
        inputs = [item for job in batch for item in job.inputs]
        cancelled = [job.cancelled for job in batch for _ in job.inputs]
        first = batch[0]
        with self.lock, self.registry.use(first.model) as engine:
            if first.kind == "chat":
                return engine.generate(inputs, first.params, cancelled)
            return engine.complete(inputs, first.params, cancelled)

    def _deliver(self, batch: list[Job], results: list[Completion]) -> None:
        start = 0
        for job in batch:
            part = results[start : start + len(job.inputs)]
            start += len(job.inputs)
            if not job.future.done() and not job.cancelled.is_set():
                job.future.set_result(part)
                self.stats["served"] += 1

    def _stream(self, batch: list[Job], loop: asyncio.AbstractEventLoop) -> None:
        ended: set[int] = set()

        def put(job: Job, item: Any) -> None:
            loop.call_soon_threadsafe(job.deltas.put_nowait, item)

        def emit(row: int, delta: str | None) -> None:
            if delta is None:
                ended.add(row)
            put(batch[row], END if delta is None else delta)

        try:
            with self.lock, self.registry.use(batch[0].model) as engine:
                engine.stream_batch(
                    [job.inputs[0] for job in batch],
                    [job.params for job in batch],
                    emit,
                    [job.cancelled for job in batch],
                )
            self.stats["served"] += sum(not job.cancelled.is_set() for job in batch)
        except Exception as exc:  # the streams still open get the error, then their end
            for row, job in enumerate(batch):
                if row not in ended:
                    put(job, exc)
                    put(job, END)
