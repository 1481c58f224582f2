"""What each call of a distributed failure test did on this rank (run in spawned ranks)."""

from __future__ import annotations

import time
from typing import Callable, Dict, Tuple


def outcomes(calls: Dict[str, Callable[[], object]]) -> Dict[str, Tuple[str, str, float]]:
    """name -> (exception type name or "no error", message, seconds the call took)."""
    outcome = {}
    for name, call in calls.items():
        start = time.monotonic()
        try:
            call()
            outcome[name] = ("no error", "", time.monotonic() - start)
        except Exception as e:  # recorded for the test to check
            outcome[name] = (type(e).__name__, str(e), time.monotonic() - start)
    return outcome
