"""Greedy DAG extraction: an e-class's cost is the summed cost of the set of e-classes it needs.

For each e-node the set of e-classes below it is the union of its children's sets plus its own
class, so a sub-expression shared by several consumers is paid once (extraction-gym's
``greedy-dag``). An e-node whose children's sets already contain its own class would close a cycle
and is skipped, so the answer is always acyclic. Greedy: sets are combined from each child's best
choice, which is near-optimal on most real e-graphs (within 0.25% of the ILP on Tensat's ResNet-50
and VGG) but not exact: on Tensat's BERT it is 17% above, since merged nodes that share a sub-DAG
are priced at full cost each (greedy-ls closes that gap).
"""

from __future__ import annotations

import math
from typing import Any

from eqsat.extract import Choices, Index, bottom_up


def extract(
    egraph: dict[str, Any], roots: list[str], cost: dict[str, float] | None = None
) -> Choices:
    idx = Index(egraph, cost)

    # An e-class's value is the set of e-classes its choice needs: {e-class: cost of its node}.
    def price(
        nid: str, eclass: str, sets: dict[str, dict[str, float]]
    ) -> tuple[float, dict[str, float]] | None:
        kids = idx.kids[nid]
        if any(eclass in sets[k] for k in kids):
            return None  # would need its own class: a cycle
        merged: dict[str, float] = {}
        if kids:
            base = max(kids, key=lambda k: len(sets[k]))
            merged = dict(sets[base])
            for k in kids:
                if k != base:
                    merged.update(sets[k])
        merged[eclass] = idx.cost[nid]
        return math.fsum(merged.values()), merged

    return bottom_up(idx, price, slack=1e-15)
