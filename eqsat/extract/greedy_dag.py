"""Greedy DAG extraction: an e-class's cost is the summed cost of the set of e-classes it needs.

For each e-node the set of e-classes below it is the union of its children's sets plus its own
class, so a sub-expression shared by several consumers is paid once (extraction-gym's
``greedy-dag``). An e-node whose children's sets already contain its own class would close a cycle
and is skipped, so the answer is always acyclic. Greedy: sets are combined from each child's best
choice, which is near-optimal on real e-graphs (within ~0.3% of ILP on Tensat's), not exact.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from eqsat.extract import Choices, Index


def extract(
    egraph: dict[str, Any], roots: list[str], cost: dict[str, float] | None = None
) -> Choices:
    idx = Index(egraph, cost)
    best: dict[str, float] = {}
    sets: dict[str, dict[str, float]] = {}  # e-class -> {e-class: cost of its chosen node}
    choice: Choices = {}
    queue = deque(idx.leaves())
    queued = set(queue)
    while queue:
        nid = queue.popleft()
        queued.discard(nid)
        node_cost = idx.cost[nid]
        if math.isinf(node_cost):
            continue
        kids = idx.kids[nid]
        if any(k not in sets for k in kids):
            continue
        c = idx.nodes[nid]["eclass"]
        if any(c in sets[k] for k in kids):
            continue  # would need its own class: a cycle
        if kids:
            base = max(kids, key=lambda k: len(sets[k]))
            merged = dict(sets[base])
            for k in kids:
                if k != base:
                    merged.update(sets[k])
        else:
            merged = {}
        merged[c] = node_cost
        total = math.fsum(merged.values())
        if total < best.get(c, math.inf) - 1e-15 * abs(total):
            best[c] = total
            sets[c] = merged
            choice[c] = nid
            for parent in idx.parents.get(c, ()):
                if parent not in queued:
                    queue.append(parent)
                    queued.add(parent)
    return choice
