"""A thread-safe, byte-budgeted LRU cache with single-flight loading.

Used for decoded images, volumes and encoded JPEGs. Each entry has a size in bytes (given,
or taken from ``.nbytes`` / ``len()``); the sum never exceeds ``max_bytes``; an entry larger
than the whole budget is returned to the caller but not kept.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Any, Callable, Hashable

log = logging.getLogger(__name__)

_MISSING = object()


def size_of(value: Any) -> int:
    n = getattr(value, "nbytes", None)
    if n is not None:
        return int(n)
    try:
        return len(value)
    except TypeError:
        raise TypeError(f"give nbytes for a {type(value).__name__} value") from None


class ByteLRU:
    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = int(max_bytes)
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._inflight: dict[Hashable, Future] = {}
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.loads = 0
        self.rejected = 0

    # ------------------------------------------------------------------ basic ops
    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            item = self._data.get(key, _MISSING)
            if item is _MISSING:
                self.misses += 1
                return default
            self._data.move_to_end(key)
            self.hits += 1
            return item[0]

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def put(self, key: Hashable, value: Any, nbytes: int | None = None) -> bool:
        """Store ``value``; returns False when it is larger than the budget (not kept)."""
        n = size_of(value) if nbytes is None else int(nbytes)
        if n < 0:
            raise ValueError("nbytes must be >= 0")
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if n > self.max_bytes:
                self.rejected += 1
                return False
            while self._bytes + n > self.max_bytes and self._data:
                _, (_, en) = self._data.popitem(last=False)
                self._bytes -= en
                self.evictions += 1
            self._data[key] = (value, n)
            self._bytes += n
            return True

    def pop(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            item = self._data.pop(key, None)
            if item is None:
                return default
            self._bytes -= item[1]
            return item[0]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def current_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "entries": len(self._data),
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
                "loads": self.loads,
                "rejected": self.rejected,
            }

    # ------------------------------------------------------------------ single flight
    def get_or_load(self, key: Hashable, loader: Callable[[], Any],
                    nbytes: Callable[[Any], int] | None = None) -> Any:
        """Return the cached value or call ``loader()`` once for all concurrent callers.

        Waiters share the loader's result (or its exception, which is not cached).
        """
        with self._lock:
            item = self._data.get(key, _MISSING)
            if item is not _MISSING:
                self._data.move_to_end(key)
                self.hits += 1
                return item[0]
            self.misses += 1
            fut = self._inflight.get(key)
            owner = fut is None
            if owner:
                fut = Future()
                self._inflight[key] = fut
                self.loads += 1
        if not owner:
            return fut.result()
        try:
            value = loader()
        except BaseException as exc:
            with self._lock:
                self._inflight.pop(key, None)
            fut.set_exception(exc)
            raise
        try:
            self.put(key, value, None if nbytes is None else nbytes(value))
        finally:
            with self._lock:
                self._inflight.pop(key, None)
            fut.set_result(value)
        return value
