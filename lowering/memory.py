"""Memory planning for compiled graphs: liveness-based buffer reuse and in-place elementwise updates.

A step either writes its outputs into buffers the plan provides ("planned": generated kernels,
GEMMs, convolutions) or returns arrays of its own (numpy reference fallbacks), which may be views
of its inputs (Reshape, Slice, Identity). So every value carries the set of planned buffers it may
alias, and a buffer stays live until the last read of any value aliasing it. Buffers that a graph
output may alias are allocated fresh on each run, since the caller keeps them.

Reuse is best fit over blocks of bytes; an elementwise step may write over an input that dies
there when both have the same shape and item size (each element is read before it is written).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Usage:
    """One step as the planner sees it: the slots it reads and writes."""

    reads: list[int]
    writes: list[int]
    planned: bool  # writes go to buffers the plan provides
    inplace: list[int] = field(default_factory=list)  # reads the first write may overwrite


@dataclass
class MemoryPlan:
    arrays: dict[int, np.ndarray]  # slot -> preallocated view, reused across runs
    fresh: set[int]  # planned slots allocated on every run (graph outputs may alias them)
    pool_bytes: int  # bytes of the reused blocks
    fresh_bytes: int  # bytes allocated per run for outputs
    naive_bytes: int  # what planned values would take without reuse
    fresh_specs: list[tuple[int, tuple[int, ...], np.dtype]] = field(default_factory=list)
    # slot -> the planned buffers (by slot) the value may alias; absent: feeds and constants
    roots: dict[int, frozenset[int]] = field(default_factory=dict)

    @property
    def peak_bytes(self) -> int:
        return self.pool_bytes + self.fresh_bytes


def plan_memory(
    usages: list[Usage], specs: dict[int, tuple[tuple[int, ...], np.dtype]], live_out: set[int]
) -> MemoryPlan:
    """Assign a buffer to every planned write. ``specs`` gives each slot's shape and dtype."""
    roots: dict[int, frozenset[int]] = {}
    for usage in usages:
        if usage.planned:
            for w in usage.writes:
                roots[w] = frozenset({w})
        else:
            inherited = frozenset().union(*(roots.get(r, frozenset()) for r in usage.reads))
            for w in usage.writes:
                roots[w] = inherited
    end: dict[int, int] = {}
    for i, usage in enumerate(usages):
        for r in usage.reads:
            for b in roots.get(r, ()):
                end[b] = max(end.get(b, -1), i)
    fresh = set().union(*(roots.get(s, frozenset()) for s in live_out)) if live_out else set()

    def nbytes(slot: int) -> int:
        shape, dtype = specs[slot]
        return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize

    blocks: list[np.ndarray] = []
    free: list[int] = []  # indices into blocks
    owner: dict[int, int] = {}  # buffer slot -> block index
    arrays: dict[int, np.ndarray] = {}
    naive = 0

    def release(slot: int) -> None:
        block = owner.pop(slot, None)
        if block is not None:
            free.append(block)

    for i, usage in enumerate(usages):
        if not usage.planned:
            continue
        for r in usage.inplace:
            if roots.get(r) == frozenset({r}) and end.get(r) == i and r in owner:
                release(r)
        for w in usage.writes:
            size = nbytes(w)
            naive += size
            if w in fresh:
                continue
            fits = [b for b in free if blocks[b].nbytes >= size]
            if fits:
                block = min(fits, key=lambda b: blocks[b].nbytes)
                free.remove(block)
            else:
                block = len(blocks)
                # 64-byte multiples keep every view's start aligned for vector loads.
                blocks.append(np.empty(max(64, -(-size // 64) * 64), np.uint8))
            owner[w] = block
            shape, dtype = specs[w]
            arrays[w] = blocks[block][:size].view(dtype).reshape(shape)
        for b in list(owner):
            if end.get(b, i) <= i:
                release(b)
    fresh_specs = [(s, *specs[s]) for s in sorted(fresh) if s in specs]
    fresh_bytes = sum(nbytes(s) for s, _, _ in fresh_specs)
    pool = sum(b.nbytes for b in blocks)
    return MemoryPlan(arrays, fresh, pool, fresh_bytes, naive, fresh_specs, roots)
