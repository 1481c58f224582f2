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
    def prepare_exclude(
        self, exclude: npt.ArrayLike, rows: int, unique_k: int = 0
    ) -> tuple[
        npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.uint64], npt.NDArray[np.uint64], int, int
    ]: ...
    def cumulative_mass(self) -> npt.NDArray[np.uint64]: ...

def draw_randoms(seed: int, offset: int, out: npt.NDArray[np.uint64]) -> None: ...
def philox_isa() -> str: ...
def hardware_threads() -> int: ...
