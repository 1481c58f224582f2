"""Small knowledge graphs that ship inside an installed package (no download).

PyKEEN's wheel holds Nations, Kinships and UMLS as tab-separated label
triples (``pykeen/datasets/<name>/{train,valid,test}.txt``). This reads them
without importing PyKEEN: entities and relations get ids in the sorted order
of their labels in the training split, and valid/test triples with a label
unseen in training are dropped (as PyKEEN's triples factories do).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch

BUNDLED = ("nations", "kinships", "umls")


class BundledKG(NamedTuple):
    name: str
    train: torch.Tensor  # (T, 3) int64 [head, relation, tail]
    valid: torch.Tensor
    test: torch.Tensor
    num_entities: int
    num_relations: int


def pykeen_dataset_dir(name: str) -> Optional[str]:
    """The folder holding ``name``'s split files in the installed PyKEEN, or None."""
    spec = importlib.util.find_spec("pykeen")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        d = os.path.join(root, "datasets", name)
        if os.path.exists(os.path.join(d, "train.txt")):
            return d
    return None


def _read(path: str) -> List[Tuple[str, str, str]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 3:
                out.append((parts[0], parts[1], parts[2]))
    return out


def load_bundled_kg(name: str) -> Optional[BundledKG]:
    """Nations, Kinships or UMLS from the installed PyKEEN wheel; None when PyKEEN is absent."""
    if name not in BUNDLED:
        raise ValueError(f"name must be one of {BUNDLED}, got {name!r}")
    d = pykeen_dataset_dir(name)
    if d is None:
        return None
    splits = {s: _read(os.path.join(d, f"{s}.txt")) for s in ("train", "valid", "test")}
    ents = sorted({x for h, _, t in splits["train"] for x in (h, t)})
    rels = sorted({r for _, r, _ in splits["train"]})
    e_id: Dict[str, int] = {e: i for i, e in enumerate(ents)}
    r_id: Dict[str, int] = {r: i for i, r in enumerate(rels)}

    def ids(rows: List[Tuple[str, str, str]]) -> torch.Tensor:
        kept = [(e_id[h], r_id[r], e_id[t]) for h, r, t in rows if h in e_id and t in e_id and r in r_id]
        return torch.tensor(kept, dtype=torch.int64).reshape(-1, 3)

    return BundledKG(name, ids(splits["train"]), ids(splits["valid"]), ids(splits["test"]), len(ents), len(rels))
