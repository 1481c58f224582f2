from __future__ import annotations

import pytest
import torch

import pyneg

# Every kernel test runs on each of these (CUDA only where a GPU is present).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return request.param
