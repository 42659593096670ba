"""Tree extraction: each e-class costs its cheapest e-node plus its children's costs.

This is egglog's own extraction (bottom-up, to a fixpoint, so cyclic e-graphs are fine): a shared
e-class is paid once per use, so on DAG-shaped models the totals over-count and the choice can
differ from the cheapest graph. It is fast and exact for trees.
"""

from __future__ import annotations

from typing import Any

from eqsat.extract import Choices, Index, bottom_up


def extract(
    egraph: dict[str, Any], roots: list[str], cost: dict[str, float] | None = None
) -> Choices:
    idx = Index(egraph, cost)

    def price(nid: str, eclass: str, best: dict[str, float]) -> tuple[float, float]:
        total = idx.cost[nid] + sum(best[k] for k in idx.uses[nid])
        return total, total

    return bottom_up(idx, price)
