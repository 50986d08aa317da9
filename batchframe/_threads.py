"""The worker threads of this process that parse side by side (one per core)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["parse_pool"]

_POOL: dict[int, ThreadPoolExecutor] = {}
_LOCK = threading.Lock()


def parse_pool() -> ThreadPoolExecutor:
    """The pool of this process (a new one in a forked child, where the parent's threads are not)."""
    with _LOCK:
        pid = os.getpid()
        if pid not in _POOL:
            _POOL.clear()
            _POOL[pid] = ThreadPoolExecutor(
                max_workers=os.cpu_count() or 1, thread_name_prefix="batchframe-parse"
            )
        return _POOL[pid]
