"""Extraction strategies: pick one e-node per e-class so that the roots' cost is low.

Every strategy has one signature (principle 6) and works on any serialized e-graph in egglog's JSON
format (the format extraction-gym reads), including cyclic ones::

    extract(egraph: dict, roots: list[str], cost: dict[str, float] | None = None) -> {eclass: node}

``egraph`` is the parsed JSON (``{"nodes": {id: {"op", "children", "eclass", "cost"}}, ...}``),
``roots`` are e-class ids, ``cost`` maps node ids to costs (missing ones use the node's ``cost``;
``inf`` forbids a node). The answer covers every e-class reachable from the roots through the chosen
nodes, and the chosen nodes never form a cycle. Strategies: ``tree`` (each use of a shared e-class
pays for it again: egglog's own extraction) and ``greedy-dag`` (a shared e-class is paid once).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable
from typing import Any

from eqsat.errors import EqsatError

Choices = dict[str, str]
Extractor = Callable[[dict[str, Any], list[str], "dict[str, float] | None"], Choices]

STRATEGIES = {"tree": "eqsat.extract.tree", "greedy-dag": "eqsat.extract.greedy_dag"}
DEFAULT = "greedy-dag"


def get(name: str | Extractor | None) -> Extractor:
    """The extractor called ``name`` (a callable passes through)."""
    if name is None:
        name = DEFAULT
    if callable(name):
        return name
    if name not in STRATEGIES:
        raise EqsatError(f"unknown extractor {name!r}; available: {sorted(STRATEGIES)}")
    return importlib.import_module(STRATEGIES[name]).extract


class Index:
    """Classes, children classes and parents of a serialized e-graph, with effective costs."""

    def __init__(self, egraph: dict[str, Any], cost: dict[str, float] | None = None):
        nodes = egraph["nodes"]
        self.nodes = nodes
        self.classes: dict[str, list[str]] = {}
        self.kids: dict[str, list[str]] = {}  # distinct child e-classes
        self.uses: dict[str, list[str]] = {}  # child e-classes, once per use
        self.cost: dict[str, float] = {}
        self.parents: dict[str, list[str]] = {}
        for nid, node in nodes.items():
            self.classes.setdefault(node["eclass"], []).append(nid)
            c = cost.get(nid) if cost is not None else None
            self.cost[nid] = float(node.get("cost", 1.0) if c is None else c)
        for nid, node in nodes.items():
            uses = [nodes[k]["eclass"] for k in node["children"]]
            self.uses[nid] = uses
            kids = list(dict.fromkeys(uses))
            self.kids[nid] = kids
            for k in kids:
                self.parents.setdefault(k, []).append(nid)

    def leaves(self) -> Iterable[str]:
        return (nid for nid, kids in self.kids.items() if not kids)


def reachable(egraph: dict[str, Any], roots: Iterable[str], choices: Choices) -> list[str]:
    """E-classes reachable from ``roots`` through the chosen nodes (each once)."""
    nodes = egraph["nodes"]
    seen: dict[str, None] = {}
    stack = list(roots)
    while stack:
        c = stack.pop()
        if c in seen:
            continue
        seen[c] = None
        nid = choices.get(c)
        if nid is None:
            raise EqsatError(f"extraction chose no node for e-class {c}")
        stack.extend(nodes[k]["eclass"] for k in nodes[nid]["children"])
    return list(seen)


def dag_cost(
    egraph: dict[str, Any], roots: Iterable[str], choices: Choices, cost: dict[str, float] | None
) -> float:
    """Total cost of the chosen nodes reachable from ``roots``, each e-class counted once."""
    nodes = egraph["nodes"]
    total = 0.0
    for c in reachable(egraph, roots, choices):
        nid = choices[c]
        value = cost.get(nid) if cost is not None else None
        total += float(nodes[nid].get("cost", 1.0) if value is None else value)
    return total


def is_acyclic(egraph: dict[str, Any], roots: Iterable[str], choices: Choices) -> bool:
    nodes = egraph["nodes"]
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    for root in roots:
        stack = [(root, False)]
        while stack:
            c, leaving = stack.pop()
            if leaving:
                state[c] = 2
                continue
            if state.get(c) == 2:
                continue
            if state.get(c) == 1:
                return False
            state[c] = 1
            stack.append((c, True))
            for k in nodes[choices[c]]["children"]:
                kc = nodes[k]["eclass"]
                if state.get(kc) == 1:
                    return False
                if state.get(kc) != 2:
                    stack.append((kc, False))
    return True


def finite(x: float) -> bool:
    return not math.isinf(x) and not math.isnan(x)


__all__ = [
    "DEFAULT",
    "STRATEGIES",
    "Choices",
    "Index",
    "dag_cost",
    "get",
    "is_acyclic",
    "reachable",
]
