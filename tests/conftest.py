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
