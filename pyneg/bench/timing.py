"""Timing and memory measurement shared by the CLI and the pytest-benchmark suite."""
from __future__ import annotations

import gc
import os
import resource
import statistics
import time
from typing import Any, Callable, List


def time_calls(fn: Callable[[Any], Any], state: Any, *, repeat: int = 7, min_time: float = 0.05,
               max_time: float = 5.0) -> List[float]:
    """Seconds per call of ``fn(state)``: ``repeat`` samples after one warm-up call.

    Each sample averages enough back-to-back calls to last ``min_time``; the
    whole measurement stops early once ``max_time`` has been spent.
    """
    fn(state)  # warm-up: first-touch page faults, lazy caches, thread start
    t0 = time.perf_counter()
    fn(state)
    one = max(time.perf_counter() - t0, 1e-9)
    inner = max(1, int(min_time / one))
    samples = []
    spent = 0.0
    for _ in range(repeat):
        gc.disable()
        try:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn(state)
            dt = time.perf_counter() - t0
        finally:
            gc.enable()
        samples.append(dt / inner)
        spent += dt
        if spent > max_time and len(samples) >= 3:
            break
    return samples


def median(samples: List[float]) -> float:
    return statistics.median(samples)


def peak_memory_bytes(fn: Callable[[Any], Any], state: Any) -> int:
    """Peak resident memory that one call of ``fn(state)`` adds, in bytes.

    The call runs in a forked child, whose peak RSS (ru_maxrss) minus its RSS at
    the fork is what the call allocated and touched. CPU only; Linux only.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            before = _current_rss_bytes()
            fn(state)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            os.write(w, str(max(0, peak - before)).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    return int(data or 0)


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
