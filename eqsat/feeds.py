"""Deterministic random inputs for a graph, used by the CLI, verification and benchmarks."""

from __future__ import annotations

import numpy as np

from eqsat.ir import Graph, Value


def random_array(value: Value, rng: np.random.Generator) -> np.ndarray:
    """Values a real model expects: standard normal floats, small non-negative ints (ids, indices)."""
    if value.dtype.kind == "f":
        return rng.standard_normal(value.shape).astype(value.dtype)
    if value.dtype.kind == "b":
        return rng.random(value.shape) < 0.5
    return rng.integers(0, 10, size=value.shape).astype(value.dtype)


def random_feeds(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {v.name: random_array(v, rng) for v in graph.inputs if v.const is None}
