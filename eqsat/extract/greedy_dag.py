"""Greedy DAG extraction: an e-class's cost is the summed cost of the set of e-classes it needs.

Bottom-up (extraction-gym's ``greedy-dag``): for each e-node the set of e-classes below it is the
union of its children's sets plus its own class, so a sub-expression shared by several consumers is
paid once. An e-node whose children's sets already contain its own class would close a cycle and
is skipped. E-classes are settled cheapest first (Knuth's generalization of Dijkstra: a set costs
at least as much as each child's), so every e-node is priced once, from its children's final sets;
each set is then the exact closure of final choices and the answer is acyclic. Sets are Python
integers used as bit sets, one bit per e-class: a union is one ``|``, and a child's cost is added
as its own total less what it shares with the largest child's set (or the sum of what it adds).

Bottom-up pricing uses each child's own best set, so it cannot see that two classes would share a
node neither picks alone: on Tensat's BERT two matmuls of one input are cheaper as one merged
matmul split in two, but each split alone is priced with the whole merged matmul, which puts plain
greedy 17% above the optimum. So up to ``sweeps`` re-picking sweeps follow
(:mod:`eqsat.extract.refine`): each e-class of the extracted DAG tries its other e-nodes given what
the rest of the DAG already shares, and a switch that newly needs a class is offered together with
the best switch of another DAG class that reuses it (so the two matmuls switch to the splits
together). A switch is kept when the whole DAG gets cheaper and stays acyclic. ``sweeps=0`` gives
the plain bottom-up answer.
"""

from __future__ import annotations

import heapq
import math
import re
import time
from typing import Any

from eqsat.errors import EqsatError
from eqsat.extract import Extraction
from eqsat.extract.dense import Dense
from eqsat.extract.refine import Solution, improve

SLACK = 1e-15  # relative: a new set must be cheaper by more than summation noise
SWEEPS = 3  # re-picking sweeps at most (two reach the optimum on Tensat's BERT)


def extract(
    egraph: dict[str, Any],
    roots: list[str],
    cost: dict[str, float] | None = None,
    *,
    sweeps: int = SWEEPS,
) -> Extraction:
    """Bottom-up greedy-dag, then up to ``sweeps`` re-picking sweeps (0: the plain greedy)."""
    start = time.perf_counter()
    d = Dense(egraph, cost)
    sol = solution(d, d.class_numbers(roots), choose(d))
    improve(sol, passes=sweeps)
    return Extraction(sol.choices(), cost=sol.total, seconds=time.perf_counter() - start)


def solution(d: Dense, roots: list[int], choice: list[int]) -> Solution:
    """The DAG that ``choice`` picks from ``roots``."""
    for r in roots:
        if choice[r] < 0:
            raise EqsatError(f"no finite-cost acyclic extraction for e-class {d.class_ids[r]}")
    sol = Solution(d, roots, choice)
    if not sol.valid:  # cannot happen: each set is the exact closure of final choices
        raise EqsatError("greedy-dag found no valid (closed, acyclic) extraction")
    return sol


def choose(d: Dense) -> list[int]:
    """Per e-class the e-node number greedy-dag chooses (-1: none has a finite acyclic cost)."""
    kids, node_cost, node_class, parents = d.kids, d.node_cost, d.node_class, d.parents
    n_classes = d.classes
    bits = [0] * n_classes  # the set of classes a class's choice needs, as a bit set
    total = [math.inf] * n_classes
    paid = [0.0] * n_classes  # the cost of the node each class has chosen
    choice = [-1] * n_classes
    final = bytearray(n_classes)
    missing = [len(ks) for ks in kids]  # children without a final set yet
    heap: list[tuple[float, int]] = []
    ready = [n for n, ks in enumerate(kids) if not ks]
    inf = math.inf
    bound = all(x >= 0.0 for x in node_cost)  # sets cost at least their largest part's total
    while True:
        for n in ready:
            c = node_class[n]
            own = node_cost[n]
            if final[c] or own == inf or own != own:
                continue
            ks = kids[n]
            if ks:
                base, t = ks[0], total[ks[0]]
                for k in ks:
                    if total[k] > t:
                        base, t = k, total[k]
                if bound and t + own >= total[c] - SLACK * abs(t + own):
                    continue  # cannot beat the class's current set: it only grows from base's
                acc = bits[base]
                for k in ks:
                    if k != base:
                        b = bits[k]
                        common = b & acc
                        if common != b:
                            # Sum whichever part is smaller: what the child adds, or what it
                            # shares (a final set holds final classes only, so a child's total
                            # is exactly the sum over its set).
                            extra = b ^ common
                            if not common:
                                t += total[k]
                            else:
                                nc, ne = common.bit_count(), extra.bit_count()
                                if nc < ne:
                                    t += total[k] - _sum_bits(common, nc, paid)
                                else:
                                    t += _sum_bits(extra, ne, paid)
                            acc |= b
                bit = 1 << c
                if acc & bit:
                    continue  # needs its own class: a cycle
                t += own
                acc |= bit
            else:
                t, acc = own, 1 << c
            if t < total[c] - SLACK * abs(t):
                total[c], bits[c], paid[c], choice[c] = t, acc, own, n
                heapq.heappush(heap, (t, c))
        ready = []
        # The cheapest open class is final: every set is at least as dear as each child's.
        while heap:
            t, c = heapq.heappop(heap)
            if not final[c] and t == total[c]:
                break
        else:
            return choice
        final[c] = 1
        for p in parents[c]:
            missing[p] -= 1
            if missing[p] == 0:
                ready.append(p)


_NONZERO = re.compile(rb"[^\x00]")
_BYTE_BITS = [tuple(i for i in range(8) if b >> i & 1) for b in range(256)]


def _sum_bits(x: int, count: int, paid: list[float]) -> float:
    """The sum of ``paid`` over the ``count`` bits of ``x``. Mostly one bit; many are found by
    a scan of the bytes (bit tricks on an integer of thousands of bits cost a pass over it)."""
    if count <= 4:
        s = 0.0
        while x:
            i = x.bit_length() - 1
            s += paid[i]
            x ^= 1 << i
        return s
    raw = x.to_bytes((x.bit_length() + 7) >> 3, "little")
    s = 0.0
    for m in _NONZERO.finditer(raw):
        j = m.start()
        base = j << 3
        for i in _BYTE_BITS[raw[j]]:
            s += paid[base + i]
    return s
