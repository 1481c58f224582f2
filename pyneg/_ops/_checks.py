"""Argument checks of the public operators ``torch.ops.pyneg.*`` (memory, softmax, hsoftmax).

The ops are public API: a caller may hand them anything. Each op runs these
checks in its real kernels *and* in its fake kernel, so an eager call, a
compiled one and an exported one refuse the same input with the same error,
which names the op's argument. What they check needs no data (dtype, rank,
shape, device, layout), so they cost nothing per element; the checks that
need values (ids >= 0, trees) run in the real kernels only.

A meta tensor among real ones is refused here: the dispatcher would otherwise
send the whole call to the fake kernel, which returns uninitialised memory on
the other tensors' device.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Optional, Sequence, Tuple, TypeVar, cast

import torch
from torch._subclasses.fake_tensor import is_fake

INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
FLOAT_DTYPES = (torch.float32, torch.float64)


def _dtype_name(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")


def check(
    op: str,
    t: Optional[torch.Tensor],
    name: str,
    *,
    dtypes: Sequence[torch.dtype] = (),
    ndim: Optional[Iterable[int]] = None,
    shape: Optional[Tuple[Optional[int], ...]] = None,
) -> None:
    """One tensor argument of ``op``: strided, of one of ``dtypes`` and rank in ``ndim`` / of ``shape``
    (None entries: any size)."""
    if t is None:
        return
    where = f"pyneg::{op}: {name}"
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{where} must be a tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{where} must be a dense (strided) tensor, got layout {t.layout}")
    if dtypes and t.dtype not in dtypes:
        raise TypeError(f"{where} must be {' or '.join(map(_dtype_name, dtypes))}, got {_dtype_name(t.dtype)}")
    if ndim is not None:
        ranks = tuple(ndim)
        if t.dim() not in ranks:
            want = " or ".join(f"{r}-D" for r in ranks)
            raise ValueError(f"{where} must be {want}, got shape {tuple(t.shape)}")
    if shape is not None:
        if t.dim() != len(shape) or any(w is not None and w != s for w, s in zip(shape, t.shape)):
            want = "(" + ", ".join("*" if w is None else str(w) for w in shape) + ("," if len(shape) == 1 else "") + ")"
            raise ValueError(f"{where} must have shape {want}, got {tuple(t.shape)}")


def same_device(
    op: str, named: Sequence[Tuple[str, Optional[torch.Tensor]]], *, cpu_only: bool = False, real: bool = False
) -> None:
    """All tensor arguments on one device (CPU for ``cpu_only`` ops). All-meta calls pass in fake
    kernels (shape propagation); ``real`` kernels, which read data, refuse any meta tensor."""
    tensors = [(n, t) for n, t in named if isinstance(t, torch.Tensor)]
    if not tensors:
        return
    if real:
        for n, t in tensors:
            if t.device.type == "meta":
                raise ValueError(f"pyneg::{op}: {n} is a meta tensor, which holds no data")
    first_name, first = tensors[0]
    for n, t in tensors[1:]:
        if t.device != first.device:
            raise ValueError(
                f"pyneg::{op}: {n} is on {t.device} but {first_name} is on {first.device} "
                "(all tensor arguments must be on one device; a meta tensor holds no data)"
            )
    if cpu_only and first.device.type not in ("cpu", "meta"):
        raise ValueError(f"pyneg::{op} runs on the CPU, got {first_name} on {first.device}")


# Sparse tensors dispatch to sparse backends, where the ops have no kernel (torch's
# NotImplementedError "Could not run ... with arguments from the 'SparseCPU' backend"):
# a kernel there refuses them by name instead.
# Kept alive here: the registrations last as long as it.
_SPARSE_LIB = torch.library.Library("pyneg", "IMPL")  # type: ignore[no-untyped-call]
_SPARSE_KEYS = ("SparseCPU", "SparseCUDA", "SparseCsrCPU", "SparseCsrCUDA", "SparseMeta")


def refuse_sparse(op: str, names: Sequence[str]) -> None:
    """Registers, for the sparse dispatch keys of ``pyneg::<op>``, a kernel that names the sparse argument
    (``names``: the op's positional argument names, in order)."""

    def kernel(*args: object, **kwargs: object) -> None:
        for n, a in list(zip(names, args)) + list(kwargs.items()):
            if isinstance(a, torch.Tensor) and a.layout != torch.strided:
                raise TypeError(f"pyneg::{op}: {n} must be a dense (strided) tensor, got layout {a.layout}")
        raise TypeError(f"pyneg::{op} takes dense (strided) tensors only")

    for key in _SPARSE_KEYS:
        try:
            _SPARSE_LIB.impl(op, kernel, key)  # type: ignore[no-untyped-call]
        except (RuntimeError, ValueError, AttributeError):  # a key this torch build does not know
            pass


def rows(t: torch.Tensor) -> int | torch.SymInt:
    """``t.shape[0]`` (kept symbolic: no int()), or 0 for a 0-dim tensor (placeholder shapes of refused calls)."""
    return t.shape[0] if t.dim() else 0


def fake_refused(check: Callable[[], None], *tensors: object) -> bool:
    """Runs an op's static checks in its fake kernel; True when they refused the call while tracing.

    Under ``torch.compile`` / ``torch.export`` (fake tensors) an error raised
    here would reach the user wrapped in Dynamo's ``TorchRuntimeError``. So the
    fake kernel returns placeholder outputs instead, and the real kernel, which
    runs the same checks, raises the eager call's own ValueError or TypeError
    when the graph runs: eager and compiled calls refuse alike. Outside tracing
    (a call with real meta tensors) the error is raised at once.
    """
    try:
        check()
    except (ValueError, TypeError, MemoryError):
        if any(isinstance(t, torch.Tensor) and is_fake(t) for t in tensors):
            return True
        raise
    return False


# ----------------------------------------------------------- deferred refusals
_KINDS = {"ValueError": ValueError, "TypeError": TypeError, "MemoryError": MemoryError}


@torch.library.custom_op("pyneg::refuse", mutates_args=())
def refuse(like: torch.Tensor, kind: str, message: str) -> torch.Tensor:
    """Raises ``kind(message)`` when it runs: a refusal found while tracing, raised when the graph runs.

    A public function that refuses an argument in Python (a temperature, a
    reduction) raises at once eagerly; traced with ``fullgraph=True`` the same
    raise would end as Dynamo's "Unsupported: Observed exception". Its compiled
    road returns this op instead, so the compiled call raises the eager error.
    """
    raise _KINDS.get(kind, ValueError)(message)


@refuse.register_fake
def _refuse_fake(like: torch.Tensor, kind: str, message: str) -> torch.Tensor:
    # Also the op's Meta kernel: a graph run on real meta tensors (a refused meta input) raises too.
    if not is_fake(like):
        raise _KINDS.get(kind, ValueError)(message)
    return like.new_empty(())


# A refusal whose result the caller drops must still raise: kept by dead-code elimination
# (Dynamo's, AOTAutograd's and Inductor's graphs) as an assert is.
torch.fx.node.has_side_effect(torch.ops.pyneg.refuse.default)


def refuses_alike_compiled(loss: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``loss`` (a public function or method), whose argument refusals a compiled call raises as an eager one.

    Traced (``torch.compile``, ``fullgraph=True``), a ValueError or TypeError
    raised by the argument checks would reach the user as Dynamo's
    "Unsupported: Observed exception"; it is caught here while tracing and
    becomes the op ``pyneg::refuse``, which raises the same error when the
    graph runs. Eager calls are untouched.
    """
    return _refusing(loss, None)


_F = TypeVar("_F", bound=Callable[..., Any])


def refuses_alike_compiled_as(result: Callable[[torch.Tensor], Any]) -> Callable[[_F], _F]:
    """:func:`refuses_alike_compiled` for a call that returns ``result(r)`` of the refusal ``r``
    (a 0-dim tensor from ``pyneg::refuse``): the result's dtype or NamedTuple the caller's
    traced code expects (draws are int64, log-probabilities float64), every part of it
    depending on ``r``, so none can be used before the refusal has raised."""

    def wrap(fn: _F) -> _F:
        return cast(_F, _refusing(fn, result))

    return wrap


def _refusing(fn: Callable[..., Any], result: Optional[Callable[[torch.Tensor], Any]]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except (ValueError, TypeError, MemoryError) as e:
            like = None
            for a in (*args, *kwargs.values()):  # a plain loop: Dynamo traces it (not a generator)
                if isinstance(a, torch.Tensor) and like is None:
                    like = a
            # No tensor argument (ids given as a list): a CPU scalar carries the refusal.
            deferred: torch.Tensor = refuse(torch.zeros(()) if like is None else like, type(e).__name__, str(e))
            return deferred if result is None else result(deferred)

    return wrapper
