"""pyneg's microbenchmarks: ``python -m pyneg.bench [--quick]``.

Workloads are defined once (see :mod:`pyneg.bench.workload`), one module per
area; :mod:`pyneg.bench.registry` finds every module of this package that
defines ``WORKLOADS``. Each serves both the CLI and the pytest-benchmark suite
in ``bench/``.

Adding a workload with a ratio target is one change: append a
:class:`Workload` to an area module's ``WORKLOADS`` list (or create
``pyneg/bench/<area>.py`` with such a list; it is picked up by name)::

    Workload(
        name="mine_topk_N1e6",                # unique; the table's row
        group="mining",
        description="top 64 of 10^6 candidates for 4,096 queries, d = 128",
        setup=lambda quick: make_state(n=10**5 if quick else 10**6),  # not timed
        run=pyneg_way,                        # run(state) -> result, timed
        baselines={"matmul + topk": torch_way},   # name -> fn(state), timed
        check=check_agree,                    # raises AssertionError if they disagree
        items=4096,
        targets=(Target("ratio", 1, "matmul + topk"),              # >= 1x its speed
                 Target("peak_memory_ratio", 10, "matmul + topk")),  # <= 1/10 its memory
        target_size={"N": 10**6},             # the size DESIGN.md states the target for
        size=lambda st: {"N": st.n},          # the size this state was built with
        measure_memory=True,                  # needed by peak_memory_ratio
    )

Every target is a ratio (``value`` <= 1 reads "at most 1/value times the
baseline's time"), against a baseline measured in the same run; absolute rates
are shown as throughput, never judged. A target is judged where ``size(state)
== target_size``: a ``--quick`` run that shrinks the workload reports "full
size only" instead of a verdict. The JSON (``results.json``) keeps, per target,
the measured ratio, whether it was judged and the verdict.
"""

from pyneg.bench.workload import Target, Workload

__all__ = ["Target", "Workload"]
