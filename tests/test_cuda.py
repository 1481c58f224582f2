"""The CUDA module pyneg._cuda.

Tests marked ``cuda`` need a GPU and the module; they compare the GPU's alias
draws with the CPU kernels bit for bit, and the hierarchical-softmax kernels
with a plain PyTorch gather implementation on the same GPU. The others run
everywhere: the module (when built) imports, matches its stub, and reports no
device where there is none.
"""

from __future__ import annotations

import ast
import glob
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import pyneg
from pyneg import cuda
from pyneg._core import _testing
from pyneg.bench.cuda import balanced_tree, hs_gather_reference

needs_module = pytest.mark.skipif(not cuda.is_built(), reason="pyneg._cuda was not built (no nvcc at install time)")
needs_gpu = pytest.mark.skipif(
    not cuda.cuda_available(), reason="needs a CUDA device usable by torch and the pyneg._cuda module"
)


# ------------------------------------------------------- everywhere (no GPU)
@needs_module
def test_module_was_built_and_imports():
    from pyneg import _cuda

    folder = os.path.dirname(_cuda.__file__)
    assert glob.glob(os.path.join(folder, "_cuda*.so")), "no pyneg/_cuda*.so next to the module"
    assert isinstance(_cuda.device_count(), int) and _cuda.device_count() >= 0


@needs_module
def test_stub_lists_every_function():
    from pyneg import _cuda

    stub = ast.parse((Path(pyneg.__file__).parent / "_cuda.pyi").read_text())
    stubbed = {n.name for n in stub.body if isinstance(n, ast.FunctionDef)}
    assert stubbed == {n for n in dir(_cuda) if not n.startswith("_")}


def test_cuda_available_needs_module_and_device():
    assert pyneg.cuda_available() == (cuda.is_built() and torch.cuda.is_available() and cuda._cuda.device_count() > 0)
    if not torch.cuda.is_available():
        assert pyneg.cuda_available() is False


@needs_module
def test_python_layer_calls_the_bindings_with_their_argument_names():
    # pyneg/cuda.py calls pyneg._cuda by keyword only; every call must name
    # exactly the binding's arguments (checked here, without a GPU, against
    # the signatures pybind11 records in the docstrings).
    import re

    from pyneg import _cuda

    tree = ast.parse(Path(cuda.__file__).read_text())
    dicts = {}  # keyword dicts built once and passed with ** (common, _hs_pointers)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
            dicts[node.lineno] = {k.arg for k in node.keywords}
    calls = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == "_cuda"
    ]
    checked = set()
    for call in calls:
        name = call.func.attr
        sig = re.match(rf"{name}\((.*?)\) ->", getattr(_cuda, name).__doc__)
        params = {p.split(":")[0].strip() for p in sig.group(1).split(",") if p.strip()}
        if call.args:
            assert len(call.args) == len(params) == 1, f"{name} takes positional arguments"
            continue
        names = {k.arg for k in call.keywords if k.arg}
        if any(k.arg is None for k in call.keywords):  # **common / **_hs_pointers(...)
            extra = params - names
            assert any(extra == d for d in dicts.values()), f"{name}: no keyword set supplies {sorted(extra)}"
        else:
            assert names == params, name
        checked.add(name)
    assert {"alias_sample", "alias_sample_excluding", "alias_sample_unique", "hs_forward", "hs_backward"} <= checked


@needs_module
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a device")
def test_kernels_raise_clearly_without_a_device():
    from pyneg import _cuda

    with pytest.raises(RuntimeError, match="CUDA"):
        _cuda.alias_sample(0, 0, 1, 10, 1, 0, 1, 5)
    with pytest.raises(RuntimeError, match="CUDA"):
        _cuda.hs_forward("float32", 0, 0, 1, 1, 0, 1, 1, 1, 1, 1, 4, 2, 1, 1, 1)
    with pytest.raises(RuntimeError, match="built|device"):
        cuda.hs_forward(*(torch.zeros(1),) * 6)


@needs_module
def test_bindings_validate_before_touching_the_device():
    from pyneg import _cuda

    with pytest.raises(ValueError, match="dtype"):
        _cuda.hs_forward("float16", 0, 0, 1, 1, 0, 1, 1, 1, 1, 1, 4, 2, 1, 1, 1)
    with pytest.raises(ValueError, match="num_classes"):
        _cuda.alias_sample(0, 0, 1, 0, 1, 0, 1, 5)
    with pytest.raises(ValueError, match="null"):
        _cuda.alias_sample(0, 0, 0, 10, 1, 0, 1, 5)
    with pytest.raises(ValueError, match="capacity"):
        _cuda.alias_sample_unique(0, 0, 1, 10, 1, 1, 1, 1, 1, 0, 0, 0, 1, 20, 1, 24, 1, 1)


def _zipf(v, s=1.1):
    return 1.0 / np.arange(1, v + 1) ** s


def _sampler(v):
    return pyneg.AliasSampler(np.random.default_rng(v).random(v) * _zipf(v))


def test_prepared_exclusion_lists_as_uploaded():
    # What the CUDA path uploads: sorted, deduplicated lists with running masses.
    s = _sampler(50)
    mass = _testing.alias_table_mass(s._table).astype(object)
    ex = np.array([[7, 3, 7, -1], [-1, -1, -1, -1], [49, 0, 1, 2]], dtype=np.int64)
    offsets, ids, cum, allowed, rows_per_list, longest = _testing.alias_table_prepare_exclude(s._table, ex, 6, 0)
    assert offsets.tolist() == [0, 2, 2, 6] and ids.tolist() == [3, 7, 0, 1, 2, 49]
    assert rows_per_list == 2 and longest == 4
    assert cum.tolist() == [
        mass[3],
        mass[3] + mass[7],
        mass[0],
        mass[0] + mass[1],
        mass[0] + mass[1] + mass[2],
        mass[0] + mass[1] + mass[2] + mass[49],
    ]
    total = 50 * 2**32
    assert allowed.tolist() == [total - cum[1], total, total - cum[5]]
    assert _testing.alias_table_cumulative_mass(s._table).astype(object)[-1] == total
    with pytest.raises(ValueError, match="distinct"):
        _testing.alias_table_prepare_exclude(s._table, ex, 6, 48)


def test_a_unique_row_drawn_alone_equals_its_row_in_a_call():
    # The CUDA path finishes rows that exhaust their candidates with the CPU
    # kernel, one row at a time at position offset + row * k: that must give
    # the row of a whole call (here rows taking the exponential race).
    s = pyneg.AliasSampler(_zipf(300, 2.0))
    ex = np.array([[0, 1, 2, -1], [3, -1, -1, -1]], dtype=np.int64)
    whole = np.empty((4, 280), np.int64)
    tries = np.empty(4, np.int64)
    _testing.alias_table_sample_unique(s._table, 32, 7, ex, 280, whole, tries, 2)
    for row in range(4):
        one = np.empty((1, 280), np.int64)
        tr = np.empty(1, np.int64)
        _testing.alias_table_sample_unique(s._table, 32, 7 + row * 280, ex[row // 2 : row // 2 + 1], 280, one, tr, 1)
        assert np.array_equal(one[0], whole[row]) and tr[0] == tries[row]


def _emulate(s, mode, seed, offset, exclude, rows, k):
    out = np.full((rows, k), -7, np.int64)
    tries = np.full(rows, -7, np.int64)
    ex = np.full((1, 1), -1, np.int64) if exclude is None else np.asarray(exclude, np.int64).reshape(len(exclude), -1)
    s._table._emulate_device(mode, seed, offset, ex, k, out, tries)
    return torch.from_numpy(out), torch.from_numpy(tries)


@pytest.mark.parametrize("v", [1, 7, 1000, 300_000])
@pytest.mark.parametrize("offset", [0, 1, 2**33 + 5])
def test_gpu_thread_schedule_emulated_on_cpu_matches_cpu_kernels(v, offset):
    # The CUDA kernels are grid-stride loops over cpu/alias_threads.h; running
    # those per-thread functions serially checks which thread draws what.
    s = _sampler(v)
    for rows, k in ((1, 1), (1, 2), (1, 1001), (40, 25)):
        got, _ = _emulate(s, 0, 0xDEADBEEF, offset, None, rows, k)
        assert torch.equal(got, s.sample((rows, k), seed=0xDEADBEEF, offset=offset))
    if v > 1:
        positives = torch.arange(300) * 7 % v
        got, _ = _emulate(s, 1, 11, offset, positives.reshape(-1, 1), 300, 37)
        assert torch.equal(got, s.sample((300, 37), exclude=positives, seed=11, offset=offset))
    if v >= 20:
        lists = np.random.default_rng(1).integers(-1, 20, (60, 9))
        got, _ = _emulate(s, 1, 12, offset, lists, 120, 13)
        assert torch.equal(
            got, s.sample((120, 13), exclude=torch.from_numpy(lists).repeat_interleave(2, 0), seed=12, offset=offset)
        )
    if v >= 1000:
        got, tries = _emulate(s, 2, 13, offset, None, 200, 50)
        want, want_tries = s._sample((200, 50), None, True, None, 13, offset, None, None)
        assert torch.equal(got, want) and torch.equal(tries, want_tries)


def test_gpu_thread_schedule_emulated_for_cdf_and_race_rows():
    w = np.ones(2000)
    w[5], w[9] = 1e6, 1e5
    s = pyneg.AliasSampler(w)
    ex = np.array([[5, 9], [5, -1], [9, -1], [-1, -1]])
    got, _ = _emulate(s, 1, 21, 0, ex, 4, 500)
    assert torch.equal(got, s.sample((4, 500), exclude=torch.from_numpy(ex), seed=21))
    # Rows that exhaust their candidates are flagged (-1) for the CPU to finish;
    # the others match the CPU kernel.
    s = pyneg.AliasSampler(_zipf(300, 1.5))
    got, tries = _emulate(s, 2, 32, 3, None, 64, 150)
    want, want_tries = s._sample((64, 150), None, True, None, 32, 3, None, None)
    done = tries >= 0
    assert bool(done.any()) and bool((~done).any()), "want both kinds of rows"
    assert torch.equal(got[done], want[done]) and torch.equal(tries[done], want_tries[done])
    assert bool((want_tries[~done] > 8 * 150 + 1024).all())


# ------------------------------------------------------------- on a GPU only


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("v", [1, 7, 1000, 300_000])
@pytest.mark.parametrize("offset", [0, 1, 2**33 + 5])
def test_plain_draws_match_cpu_bit_for_bit(v, offset):
    s = _sampler(v)
    for n in (1, 2, 1001, 100_000):
        cpu = s.sample(n, seed=0xDEADBEEF, offset=offset)
        gpu = s.sample(n, seed=0xDEADBEEF, offset=offset, device="cuda")
        assert gpu.device.type == "cuda"
        assert torch.equal(gpu.cpu(), cpu)
    out = torch.empty((40, 25), dtype=torch.int64, device="cuda")
    res = s.sample((40, 25), seed=3, out=out)
    assert res.data_ptr() == out.data_ptr() and torch.equal(out.cpu(), s.sample((40, 25), seed=3))


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("v", [1000, 300_000])
def test_excluding_draws_match_cpu_bit_for_bit(v):
    s = _sampler(v)
    positives = torch.arange(300) * 7 % v
    assert torch.equal(
        s.sample((300, 37), exclude=positives, seed=11, offset=5, device="cuda").cpu(),
        s.sample((300, 37), exclude=positives, seed=11, offset=5),
    )
    lists = torch.from_numpy(np.random.default_rng(1).integers(-1, 20, (60, 9)))
    assert torch.equal(
        s.sample((60, 13), exclude=lists, seed=12, device="cuda").cpu(), s.sample((60, 13), exclude=lists, seed=12)
    )
    assert torch.equal(
        s.sample(60, exclude=positives[:60], seed=2, device="cuda").cpu(), s.sample(60, exclude=positives[:60], seed=2)
    )


@pytest.mark.cuda
@needs_gpu
def test_heavily_excluded_rows_use_the_same_exact_cdf():
    w = np.ones(2000)
    w[5], w[9] = 1e6, 1e5
    s = pyneg.AliasSampler(w)
    ex = torch.tensor([[5, 9], [5, -1], [9, -1], [-1, -1]])
    gpu = s.sample((4, 500), exclude=ex, seed=21, device="cuda").cpu()
    assert torch.equal(gpu, s.sample((4, 500), exclude=ex, seed=21))
    assert not (gpu[0] == 5).any() and not (gpu[0] == 9).any()


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("v", [1000, 300_000])
def test_unique_draws_match_cpu_bit_for_bit(v, monkeypatch):
    s = _sampler(v)
    assert torch.equal(
        s.sample((200, 50), unique=True, seed=13, offset=2, device="cuda").cpu(),
        s.sample((200, 50), unique=True, seed=13, offset=2),
    )
    monkeypatch.setattr(cuda, "_UNIQUE_SCRATCH_BYTES", 7 * 128 * 8)  # chunks of 7 rows
    assert torch.equal(
        s.sample((200, 50), unique=True, seed=13, offset=2, device="cuda").cpu(),
        s.sample((200, 50), unique=True, seed=13, offset=2),
    )
    lists = torch.from_numpy(np.random.default_rng(1).integers(-1, 20, (60, 9)))
    cpu, cpu_tries = s._sample((60, 13), lists, True, None, 14, 0, None, None)
    gpu, gpu_tries = s._sample((60, 13), lists, True, None, 14, 0, torch.device("cuda"), None)
    assert torch.equal(gpu.cpu(), cpu) and torch.equal(gpu_tries, cpu_tries)


@pytest.mark.cuda
@needs_gpu
def test_unique_rows_finished_by_the_race_match_cpu():
    # k close to V with skewed weights: rows exhaust their candidate budget
    # and are finished by the exponential race.
    s = pyneg.AliasSampler(_zipf(300, 2.0))
    ex = torch.tensor([[0, 1, 2, -1], [3, -1, -1, -1]])
    cpu, cpu_tries = s._sample((2, 280), ex, True, None, 32, 0, None, None)
    gpu, gpu_tries = s._sample((2, 280), ex, True, None, 32, 0, torch.device("cuda"), None)
    assert torch.equal(gpu.cpu(), cpu) and torch.equal(gpu_tries, cpu_tries)
    assert int(cpu_tries.max()) > 8 * 280 + 1024  # the race was taken


def test_balanced_tree_and_gather_reference_give_a_distribution():
    # The reference the GPU kernels are compared with, checked on the CPU:
    # for any input, the probabilities of all V classes sum to 1.
    for v in (2, 3, 37, 1000):
        offsets, nodes, codes = balanced_tree(v)
        assert offsets.numel() == v + 1 and int(nodes.max()) == v - 2 and int(nodes.min()) == 0
        assert bool((nodes[offsets[:-1]] == 0).all()), "paths start at the root"
        x = torch.randn(3, 4, dtype=torch.float64)
        w = torch.randn(v - 1, 4, dtype=torch.float64)
        b = torch.randn(v - 1, dtype=torch.float64)
        nll = torch.stack([hs_gather_reference(x, w, b, torch.full((3,), c), offsets, nodes, codes) for c in range(v)])
        torch.testing.assert_close(torch.exp(-nll).sum(0), torch.ones(3, dtype=torch.float64))


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("v,d", [(2, 1), (37, 5), (1000, 128)])
def test_hsoftmax_matches_gather_reference(dtype, with_bias, v, d):
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(v * d)
    offsets, nodes, codes = balanced_tree(v, dev)
    b = 257
    x = torch.randn(b, d, device=dev, dtype=dtype, generator=g, requires_grad=True)
    w = (0.3 * torch.randn(v - 1, d, device=dev, dtype=dtype, generator=g)).requires_grad_()
    bias = (0.1 * torch.randn(v - 1, device=dev, dtype=dtype, generator=g)).requires_grad_() if with_bias else None
    target = torch.randint(0, v, (b,), device=dev, generator=g)
    ref = hs_gather_reference(x, w, bias, target, offsets, nodes, codes)
    nll = cuda.hs_forward(
        x.detach(), w.detach(), target, offsets, nodes, codes, None if bias is None else bias.detach()
    )
    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nll, ref.detach(), **tol)
    grad = torch.rand(b, device=dev, dtype=dtype, generator=g)
    ref.backward(grad)
    gx, gw, gb = cuda.hs_backward(
        grad, x.detach(), w.detach(), target, offsets, nodes, codes, None if bias is None else bias.detach()
    )
    torch.testing.assert_close(gx, x.grad, **tol)
    torch.testing.assert_close(gw, w.grad, **tol)
    if with_bias:
        torch.testing.assert_close(gb, bias.grad, **tol)
    else:
        assert gb is None
    # Gradients are accumulated into given buffers.
    acc = torch.ones_like(w)
    cuda.hs_backward(grad, x.detach(), w.detach(), target, offsets, nodes, codes, grad_weight=acc)
    torch.testing.assert_close(acc, w.grad + 1, **tol)


@pytest.mark.cuda
@needs_gpu
def test_hsoftmax_validates_inputs():
    dev = torch.device("cuda")
    offsets, nodes, codes = balanced_tree(5, dev)
    x = torch.randn(3, 4, device=dev)
    w = torch.randn(4, 4, device=dev)
    with pytest.raises(ValueError, match="target"):
        cuda.hs_forward(x, w, torch.tensor([0, 5, 1], device=dev), offsets, nodes, codes)
    with pytest.raises(TypeError, match="nodes"):
        cuda.hs_forward(x, w, torch.tensor([0, 1, 1], device=dev), offsets, nodes.long(), codes)
    with pytest.raises(ValueError, match="device"):
        cuda.hs_forward(x, w.cpu(), torch.tensor([0, 1, 1], device=dev), offsets, nodes, codes)


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [False, True])
def test_hierarchical_softmax_module_on_gpu_matches_cpu(dtype, bias):
    counts = torch.from_numpy(_zipf(500, 1.1) * 1e4).round() + 1
    torch.manual_seed(0)
    cpu = pyneg.HierarchicalSoftmax(counts, 16, bias=bias, dtype=dtype)
    with torch.no_grad():
        cpu.weight.normal_(0, 0.3)
        if bias:
            cpu.bias.normal_(0, 0.3)
    gpu = pyneg.HierarchicalSoftmax(counts, 16, bias=bias, dtype=dtype, device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(64, 16, dtype=dtype, requires_grad=True)
    xg = x.detach().cuda().requires_grad_()
    target = torch.randint(0, 500, (64,))
    cpu(x, target, reduction="sum").backward()
    loss = gpu(xg, target.cuda(), reduction="sum")
    loss.backward()
    assert torch.allclose(loss.cpu(), cpu(x, target, reduction="sum").detach(), rtol=1e-5, atol=1e-5)
    assert torch.allclose(xg.grad.cpu(), x.grad, rtol=1e-5, atol=1e-5)
    assert torch.allclose(gpu.weight.grad.cpu(), cpu.weight.grad, rtol=1e-5, atol=1e-5)
    if bias:
        assert torch.allclose(gpu.bias.grad.cpu(), cpu.bias.grad, rtol=1e-5, atol=1e-5)
