"""A byte bound on transformers' stop-string table cache.

`generate(stop_strings=...)` builds, per distinct set of stop strings, an int32 table of
vocabulary size x (stop strings x their length) and keeps the last 8 in a module-level cache
(`STOP_STRING_EMBEDDING_CACHE`). With a large vocabulary and long or repetitive stop strings
one table is hundreds of MB (a 10,000-character stop string: ~1.9 GB), and 8 of them stay in
memory. `bound_stop_string_cache` replaces that cache with one that also evicts the oldest
tables once their bytes pass a budget, and never keeps a table larger than the budget.
"""

from __future__ import annotations

from collections import OrderedDict

DEFAULT_MAX_BYTES = 256 * 2**20


def _nbytes(entry) -> int:
    table = entry[0] if isinstance(entry, tuple) else entry
    return int(getattr(table, "nbytes", 0) or 0)


class BoundedStopCache(OrderedDict):
    """An OrderedDict (LRU order, as transformers uses it) holding at most `max_bytes`."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, *args, **kwargs):
        self.max_bytes = max_bytes
        super().__init__(*args, **kwargs)

    def nbytes(self) -> int:
        return sum(_nbytes(v) for v in self.values())

    def __setitem__(self, key, value) -> None:
        if _nbytes(value) > self.max_bytes:
            return  # used for this generation only, never kept
        super().__setitem__(key, value)
        while len(self) > 1 and self.nbytes() > self.max_bytes:
            self.popitem(last=False)


def bound_stop_string_cache(max_bytes: int = DEFAULT_MAX_BYTES) -> BoundedStopCache | None:
    """Install (or re-size) the bounded cache in transformers; None if it has no such cache."""
    try:
        from transformers.generation import stopping_criteria
    except ImportError:  # pragma: no cover
        return None
    current = getattr(stopping_criteria, "STOP_STRING_EMBEDDING_CACHE", None)
    if isinstance(current, BoundedStopCache):
        current.max_bytes = max_bytes
        return current
    if not isinstance(current, OrderedDict):
        return None
    bounded = BoundedStopCache(max_bytes)
    stopping_criteria.STOP_STRING_EMBEDDING_CACHE = bounded  # looked up by name at each use
    return bounded
