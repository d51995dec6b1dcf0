"""Where the per-shard work of `clean` and `inspect` runs: this process, N processes, or Ray.

A shard is a chunk of records; the functions that work on one (clean_stream.clean_shard,
analyze.inspect_shard) are plain top-level functions of picklable arguments, so every engine runs
the very same code. `map_ordered` yields the results in shard order whatever the engine, with at
most `window` shards in flight, so memory stays bounded however many shards the input has.

- `serial`: in this process (num_proc=1).
- `processes`: a `multiprocessing` pool of num_proc spawned workers.
- `ray`: Ray tasks (`pip install 'tunesmith[ray]'`): on a running cluster when RAY_ADDRESS is set
  (or ray.init was called), else a local Ray with num_proc CPUs.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

from tunesmith.utils.errors import ConfigError

ENGINES = ("serial", "processes", "ray")
DEFAULT_CHUNK = 2048  # records per shard


def chunked(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def resolve_engine(num_proc: int, engine: str | None) -> str:
    if num_proc < 1:
        raise ConfigError(f"num_proc must be >= 1, got {num_proc}")
    if engine is None:
        return "serial" if num_proc == 1 else "processes"
    if engine not in ENGINES:
        raise ConfigError(f"engine: unknown engine '{engine}'; allowed: {', '.join(ENGINES)}")
    return engine


class Executor:
    """Runs `fn(shard)` for each shard, results in shard order. Use as a context manager."""

    def __init__(self, num_proc: int = 1, engine: str | None = None) -> None:
        self.engine = resolve_engine(num_proc, engine)
        self.num_proc = num_proc
        self._pool = None
        self._ray_fn: dict = {}
        self._ray_started = False

    def __enter__(self) -> Executor:
        if self.engine == "processes":
            # spawn: no inherited threads or locks (torch may be imported by the caller)
            self._pool = multiprocessing.get_context("spawn").Pool(self.num_proc)
        elif self.engine == "ray":
            self._ray_started = _ray_init(self.num_proc)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.terminate() if exc[0] else self._pool.close()
            self._pool.join()
            self._pool = None
        if self._ray_started:  # a Ray this run started; one the caller started stays up
            import ray

            ray.shutdown()
            self._ray_started = False

    def map_ordered(self, fn: Callable, shards: Iterable, window: int | None = None) -> Iterator:
        if self.engine == "serial":
            yield from map(fn, shards)
            return
        window = window or 2 * self.num_proc
        pending: deque = deque()
        submit = self._submit_ray if self.engine == "ray" else self._submit_pool
        wait = _ray_get if self.engine == "ray" else (lambda r: r.get())
        for shard in shards:
            pending.append(submit(fn, shard))
            if len(pending) >= window:
                yield wait(pending.popleft())
        while pending:
            yield wait(pending.popleft())

    def _submit_pool(self, fn: Callable, shard: Any):
        return self._pool.apply_async(fn, (shard,))

    def _submit_ray(self, fn: Callable, shard: Any):
        import ray

        remote = self._ray_fn.get(fn)
        if remote is None:
            remote = self._ray_fn[fn] = ray.remote(num_cpus=1)(fn)
        return remote.remote(shard)


def _ray_get(ref):
    import ray

    return ray.get(ref)


def _ray_init(num_proc: int) -> bool:
    """Connect to Ray; True when this call started it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "engine=ray needs Ray: pip install 'tunesmith[ray]' (or use --num-proc N, which "
            "runs the same shards on local processes)"
        ) from None
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)  # join the cluster the environment names
    else:
        ray.init(num_cpus=num_proc, include_dashboard=False, log_to_driver=False)
    return True
