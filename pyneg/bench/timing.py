"""Timing and memory measurement shared by the CLI and the pytest-benchmark suite."""

from __future__ import annotations

import ctypes
import gc
import statistics
import time
from typing import Any, Callable, List, Optional


def time_calls(
    fn: Callable[[Any], Any], state: Any, *, repeat: int = 7, min_time: float = 0.05, max_time: float = 5.0
) -> List[float]:
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


def peak_memory_bytes(fn: Callable[[Any], Any], state: Any) -> Optional[int]:
    """Peak resident memory that one call of ``fn(state)`` adds, in bytes.

    Runs the call in this process: frees what the allocator holds
    (``malloc_trim``), resets the kernel's peak-RSS counter (``VmHWM``, through
    ``/proc/self/clear_refs``), runs the call, and returns the new peak minus the
    resident size before the call. No fork, so it is safe after torch has
    started its thread pools. CPU memory only; returns ``None`` where the
    counter cannot be reset (not Linux, or a kernel older than 4.0).
    """
    gc.collect()
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    before = _status_bytes("VmRSS")
    fn(state)
    return max(0, _status_bytes("VmHWM") - before)


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def _malloc_trim() -> None:
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
