from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

# Property tests explore the same examples on every run (CI must not be flaky)
# and leave no example database behind.
settings.register_profile("pyneg", derandomize=True, database=None)
settings.load_profile("pyneg")

# Ranks spawned by the distributed tests talk over loopback only, whatever the
# machine's hostname resolves to.
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

# Every kernel test runs on each of these (CUDA only where a GPU is present).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return request.param


def _pyneg_root() -> str:
    """The folder that holds the pyneg package this test session imported."""
    import pyneg

    return os.path.dirname(os.path.dirname(os.path.abspath(pyneg.__file__)))


@pytest.fixture
def run_child():
    """Runs Python source in a child process that imports the same pyneg as the tests.

    For the cases whose failure mode is a crash (a write through a handed-out
    tensor, a concurrent writer while a kernel runs): the fixture fails the test
    when the child dies of a signal (SIGSEGV, a glibc abort, an ASan report) or
    hangs past ``timeout``, and returns the finished process so the test can also
    assert what the child printed.
    """
    import signal
    import subprocess
    import sys
    import textwrap

    def run(source: str, *, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_pyneg_root(), env.get("PYTHONPATH")]))
        try:
            proc = subprocess.run(
                [sys.executable, "-P", "-c", textwrap.dedent(source)],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"child process hung for more than {timeout} s:\n{textwrap.dedent(source)}")
        if proc.returncode < 0:
            name = signal.Signals(-proc.returncode).name
            pytest.fail(f"child process died of {name}:\n{textwrap.dedent(source)}\nstderr:\n{proc.stderr[-4000:]}")
        return proc

    return run
