"""Memory planning for compiled graphs: liveness-based buffer reuse and in-place elementwise updates.

A step either writes its outputs into buffers the plan provides ("planned": generated kernels,
GEMMs, convolutions) or returns arrays of its own (numpy reference fallbacks), which may be views
of its inputs (Reshape, Slice, Identity). So every value carries the set of planned buffers it may
alias, and a buffer stays live until the last read of any value aliasing it. Buffers that a graph
output may alias are allocated fresh on each run, since the caller keeps them.

Reuse is best fit over blocks of bytes; an elementwise step may write over an input that dies
there when both have the same shape and item size (each element is read before it is written).

A concatenation whose parts are contiguous slices of its output (every dimension before the axis
is 1: NCHW batch-1 channel concats) declares their offsets (:attr:`Usage.concat`); the plan then
places each eligible part's buffer inside the output's ("hosts" it), so its producer writes there
directly and the concat has nothing left to copy. Concats of concats nest. The host's block is
taken at the first write of anything it hosts and kept until the last read of any of it.
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
    # Element offsets of ``reads`` in the one write, when the step only copies each read into a
    # contiguous slice of it there (a Concat): the plan may place the reads there instead.
    concat: list[int] = field(default_factory=list)


@dataclass
class MemoryPlan:
    arrays: dict[int, np.ndarray]  # slot -> preallocated view, reused across runs
    fresh: set[int]  # planned slots allocated on every run (graph outputs may alias them)
    pool_bytes: int  # bytes of the reused blocks
    fresh_bytes: int  # bytes allocated per run for outputs
    naive_bytes: int  # what planned values would take without reuse
    fresh_specs: list[tuple[int, tuple[int, ...], np.dtype]] = field(default_factory=list)
    # slot -> the planned buffers (by slot) the value may alias; absent: feeds and constants.
    # A hosted slot's buffer lies inside its host's (see ``hosts``); roots do not repeat that.
    roots: dict[int, frozenset[int]] = field(default_factory=dict)
    # slot -> (host slot, byte offset): the slot's buffer is that slice of the host's buffer
    hosts: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def peak_bytes(self) -> int:
        return self.pool_bytes + self.fresh_bytes


def plan_memory(
    usages: list[Usage], specs: dict[int, tuple[tuple[int, ...], np.dtype]], live_out: set[int]
) -> MemoryPlan:
    """Assign a buffer to every planned write. ``specs`` gives each slot's shape and dtype."""
    roots: dict[int, frozenset[int]] = {}
    writer: dict[int, int] = {}  # planned slot -> index of the step writing it
    for i, usage in enumerate(usages):
        if usage.planned:
            for w in usage.writes:
                roots[w] = frozenset({w})
                writer[w] = i
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

    hosts = _hosts(usages, specs, writer, fresh)
    # Hosts of hosts resolve to the outermost one, whose block is taken at the first write of
    # anything inside it and lives until the last read of any of it.
    top: dict[int, tuple[int, int]] = {}  # slot -> (outermost host, byte offset in it)
    for slot in hosts:
        host, offset = slot, 0
        while host in hosts:
            outer, step = hosts[host]
            host, offset = outer, offset + step
        top[slot] = (host, offset)
    hosting = {host for host, _ in top.values()}
    for slot, (host, _) in top.items():
        end[host] = max(end.get(host, writer[host]), end.get(slot, -1))

    blocks: list[np.ndarray] = []
    free: list[int] = []  # indices into blocks
    owner: dict[int, int] = {}  # buffer slot -> block index
    arrays: dict[int, np.ndarray] = {}
    naive = 0

    def release(slot: int) -> None:
        block = owner.pop(slot, None)
        if block is not None:
            free.append(block)

    def allocate(slot: int, avoid: set[int]) -> None:
        size = nbytes(slot)
        fits = [b for b in free if blocks[b].nbytes >= size and b not in avoid]
        if fits:
            block = min(fits, key=lambda b: blocks[b].nbytes)
            free.remove(block)
        else:
            block = len(blocks)
            # 64-byte multiples keep every view's start aligned for vector loads.
            blocks.append(np.empty(max(64, -(-size // 64) * 64), np.uint8))
        owner[slot] = block

    def view(slot: int, buffer: int, offset: int) -> np.ndarray:
        shape, dtype = specs[slot]
        data = blocks[owner[buffer]][offset : offset + nbytes(slot)]
        return data.view(dtype).reshape(shape)

    for i, usage in enumerate(usages):
        if not usage.planned:
            continue
        dying = set()  # blocks of inputs this step may overwrite element by element
        for r in usage.inplace:
            # A host's block holds other values than r: never written over.
            if (
                roots.get(r) == frozenset({r})
                and end.get(r) == i
                and r in owner
                and r not in hosting
            ):
                dying.add(owner[r])
                release(r)
        for w in usage.writes:
            naive += nbytes(w)
            if w in fresh:
                continue
            host, offset = top.get(w, (w, 0))
            if host not in owner:
                # A hosted write lands at an offset in its host's block, which must not be an
                # input still being read (an in-place update is only safe at the same address).
                allocate(host, dying if host != w else set())
            arrays[w] = view(w, host, offset)
        for b in list(owner):
            if end.get(b, i) <= i:
                release(b)
    fresh_specs = [(s, *specs[s]) for s in sorted(fresh) if s in specs]
    fresh_bytes = sum(nbytes(s) for s, _, _ in fresh_specs)
    pool = sum(b.nbytes for b in blocks)
    return MemoryPlan(arrays, fresh, pool, fresh_bytes, naive, fresh_specs, roots, hosts)


def _hosts(
    usages: list[Usage],
    specs: dict[int, tuple[tuple[int, ...], np.dtype]],
    writer: dict[int, int],
    fresh: set[int],
) -> dict[int, tuple[int, int]]:
    """Slot -> (concat output, byte offset) for the concat parts placed inside their output.

    A part qualifies when it is a planned buffer of its own (not a feed, constant or view), not
    fresh, of the output's dtype, read once by that concat and hosted by no other one; the
    output must be planned and not fresh. Later reads of a part stay correct because the host's
    block lives until them and nothing writes over it (no reuse, no in-place update).
    """
    hosts: dict[int, tuple[int, int]] = {}
    for usage in usages:
        if not usage.concat or not usage.planned or len(usage.writes) != 1:
            continue
        out = usage.writes[0]
        if out in fresh or out not in writer:
            continue
        dtype = np.dtype(specs[out][1])
        size = int(np.prod(specs[out][0], dtype=np.int64))
        for slot, offset in zip(usage.reads, usage.concat, strict=True):
            if (
                slot in writer
                and slot not in fresh
                and slot not in hosts
                and slot != out
                and usage.reads.count(slot) == 1
                and np.dtype(specs[slot][1]) == dtype
                and 0 <= offset <= size - int(np.prod(specs[slot][0], dtype=np.int64))
            ):
                hosts[slot] = (out, offset * dtype.itemsize)
    return hosts
