"""An integer-numbered view of a serialized e-graph, for the fast heuristic extractors.

:class:`~eqsat.extract.Index` keeps the JSON's string ids, which the exact extractor wants; the
greedy and local-search extractors touch every e-node many times, so here e-classes and e-nodes are
numbered ``0..`` and everything is a list indexed by those numbers (a child list holds distinct
child e-classes).
"""

from __future__ import annotations

import math
from typing import Any

from eqsat.errors import EqsatError


class Dense:
    """E-classes ``0..classes-1`` and e-nodes ``0..len(node_ids)-1`` of a serialized e-graph."""

    def __init__(self, egraph: dict[str, Any], cost: dict[str, float] | None = None):
        nodes = egraph["nodes"]
        self.node_ids: list[str] = list(nodes)
        eclass = [node["eclass"] for node in nodes.values()]
        self.number: dict[str, int] = {c: i for i, c in enumerate(dict.fromkeys(eclass))}
        self.class_ids: list[str] = list(self.number)
        number = self.number
        self.node_class: list[int] = [number[c] for c in eclass]
        of_node = dict(zip(self.node_ids, self.node_class, strict=True))
        costs = [float(node.get("cost", 1.0)) for node in nodes.values()]
        if cost:
            for i, nid in enumerate(self.node_ids):
                given = cost.get(nid)
                if given is not None:
                    costs[i] = float(given)
        self.node_cost: list[float] = costs
        try:
            kids = [tuple({of_node[k]: None for k in node["children"]}) for node in nodes.values()]
        except KeyError as exc:
            raise EqsatError(
                f"e-node child {exc.args[0]} is not an e-node of the e-graph"
            ) from None
        self.kids: list[tuple[int, ...]] = kids
        n_classes = len(self.class_ids)
        self.class_nodes: list[list[int]] = [[] for _ in range(n_classes)]
        for i, c in enumerate(self.node_class):
            self.class_nodes[c].append(i)
        self.parents: list[list[int]] = [[] for _ in range(n_classes)]  # e-nodes using a class
        for i, ks in enumerate(kids):
            for k in ks:
                self.parents[k].append(i)

    @property
    def classes(self) -> int:
        return len(self.class_ids)

    def class_numbers(self, ids: list[str]) -> list[int]:
        """The numbers of e-class ids (each once, in order); an unknown id is an error."""
        out: dict[int, None] = {}
        for c in ids:
            if c not in self.number:
                raise EqsatError(f"root e-class {c} is not in the e-graph")
            out[self.number[c]] = None
        return list(out)

    def usable(self, n: int) -> bool:
        """Whether e-node ``n`` may be chosen at all (a finite cost, no child its own class)."""
        return math.isfinite(self.node_cost[n]) and self.node_class[n] not in self.kids[n]

    def choices(self, classes: list[int], choice: list[int]) -> dict[str, str]:
        """``{e-class id: e-node id}`` for ``classes``, from per-class e-node numbers."""
        cids, nids = self.class_ids, self.node_ids
        return {cids[c]: nids[choice[c]] for c in classes}
