"""Helper for the cpu-target tests: compile a graph for ``cpu`` and check it against the numpy
reference target on random feeds."""

from __future__ import annotations

import numpy as np

import eqsat


def matches_numpy(
    graph: eqsat.Graph,
    rng: np.random.Generator,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    runs: int = 1,
) -> eqsat.Executable:
    """The cpu executable of ``graph``, after checking ``runs`` runs (later runs reuse the bound
    buffers and scratch) against the numpy target: same dtypes, values within rtol/atol."""
    feeds = {v.name: rng.standard_normal(v.shape).astype(v.dtype) for v in graph.inputs}
    want = eqsat.compile(graph, target="numpy").run(feeds)
    exe = eqsat.compile(graph, target="cpu")
    for _ in range(runs):
        got = exe.run(feeds)
        for name, expected in want.items():
            assert got[name].dtype == expected.dtype
            np.testing.assert_allclose(got[name], expected, rtol=rtol, atol=atol)
    return exe
