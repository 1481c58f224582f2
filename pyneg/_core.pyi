# Hand-written stubs for pyneg._core (checked against the module by
# tests/test_stubs.py). One section per csrc/bindings/register_<area>.cpp.
from typing import Any

import numpy as np
import numpy.typing as npt

# ---------------------------------------------------------------- register_alias
MAX_CLASSES: int

class AliasTable:
    def __init__(self, weights: npt.ArrayLike, name: str, probs_out: npt.NDArray[np.float64]) -> None: ...
    @staticmethod
    def from_probs(probs: npt.ArrayLike, name: str = "probs") -> AliasTable: ...
    @property
    def num_classes(self) -> int: ...
    @property
    def num_positive(self) -> int: ...
    @property
    def entries(self) -> npt.NDArray[np.uint64]: ...
    @property
    def mass(self) -> npt.NDArray[np.uint64]: ...
    def sample(self, seed: int, offset: int, out: npt.NDArray[np.int64], num_threads: int = 1) -> None: ...
    def sample_excluding(
        self,
        seed: int,
        offset: int,
        exclude: npt.ArrayLike,
        k: int,
        out: npt.NDArray[np.int64],
        num_threads: int = 1,
    ) -> None: ...
    def sample_unique(
        self,
        seed: int,
        offset: int,
        exclude: npt.ArrayLike,
        k: int,
        out: npt.NDArray[np.int64],
        tries: npt.NDArray[np.int64] | None = None,
        num_threads: int = 1,
    ) -> None: ...

def draw_randoms(seed: int, offset: int, out: npt.NDArray[np.uint64]) -> None: ...
def philox_isa() -> str: ...
def hardware_threads() -> int: ...

# --------------------------------------------------------------- register_memory
MAX_FREQUENCY_BUCKETS: int

def frequency_update(
    state: npt.NDArray[np.float64], ids: npt.ArrayLike, step: int, alpha: float, num_threads: int = 1
) -> None: ...
def frequency_estimate(
    state: npt.NDArray[np.float64], ids: npt.ArrayLike, step: int, log: bool, out: npt.NDArray[np.float32]
) -> None: ...
def frequency_bucket(id: int, k: int, num_buckets: int) -> int: ...
