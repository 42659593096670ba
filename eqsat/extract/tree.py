"""Tree extraction: each e-class costs its cheapest e-node plus its children's costs.

This is egglog's own extraction (bottom-up, to a fixpoint, so cyclic e-graphs are fine): a shared
e-class is paid once per use, so on DAG-shaped models the totals over-count and the choice can
differ from the cheapest graph. It is fast and exact for trees.
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
        if any(k not in best for k in kids):
            continue
        total = node_cost + sum(best[k] for k in idx.uses[nid])
        c = idx.nodes[nid]["eclass"]
        # Strict improvement only: a cycle can never undercut the path that first reached it.
        if total < best.get(c, math.inf):
            best[c] = total
            choice[c] = nid
            for parent in idx.parents.get(c, ()):
                if parent not in queued:
                    queue.append(parent)
                    queued.add(parent)
    return choice
