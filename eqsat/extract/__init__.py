"""Extraction strategies: pick one e-node per e-class so that the roots' cost is low.

Every strategy has one signature (principle 6) and works on any serialized e-graph in egglog's JSON
format (the format extraction-gym reads), including cyclic ones::

    extract(egraph: dict, roots: list[str], cost: dict[str, float] | None = None) -> {eclass: node}

``egraph`` is the parsed JSON (``{"nodes": {id: {"op", "children", "eclass", "cost"}}, ...}``),
``roots`` are e-class ids, ``cost`` maps node ids to costs (missing ones use the node's ``cost``;
``inf`` forbids a node). The answer covers every e-class reachable from the roots through the
chosen nodes, and the chosen nodes never form a cycle. Strategies: ``tree`` (each use of a shared
e-class pays for it again: egglog's own extraction), ``greedy-dag`` (bottom-up, a shared e-class
paid once, then a few sweeps that re-pick e-classes given what the DAG already shares; see
:mod:`eqsat.extract.refine`), ``greedy-ls`` (those sweeps to a local optimum, with wider moves) and
``ilp`` (exact: a 0-1 program solved by HiGHS, with acyclicity constraints and a time limit). A
strategy may return an :class:`Extraction`, a dict with what the solver knows attached
(lower bound, gap, whether the answer is proven optimal).
"""

from __future__ import annotations

import importlib
import math
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from eqsat.errors import EqsatError

Choices = dict[str, str]
Extractor = Callable[[dict[str, Any], list[str], "dict[str, float] | None"], Choices]

STRATEGIES = {
    "tree": "eqsat.extract.tree",
    "greedy-dag": "eqsat.extract.greedy_dag",
    "greedy-ls": "eqsat.extract.local_search",
    "ilp": "eqsat.extract.ilp",
}
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


class Extraction(dict):
    """Choices ``{eclass: node}`` plus what the strategy knows about them."""

    def __init__(
        self,
        choices: Choices,
        *,
        cost: float,
        lower_bound: float | None = None,
        gap: float | None = None,
        optimal: bool = False,
        seconds: float = 0.0,
        detail: str = "",
    ):
        super().__init__(choices)
        self.cost = cost
        self.lower_bound = lower_bound
        self.gap = gap
        self.optimal = optimal
        self.seconds = seconds
        self.detail = detail


class Index:
    """Classes, children classes and parents of a serialized e-graph, with effective costs."""

    def __init__(self, egraph: dict[str, Any], cost: dict[str, float] | None = None):
        nodes = egraph["nodes"]
        self.nodes = nodes
        eclass = {nid: node["eclass"] for nid, node in nodes.items()}
        self.classes: dict[str, list[str]] = {}
        for nid, c in eclass.items():
            self.classes.setdefault(c, []).append(nid)
        self.cost: dict[str, float] = {
            nid: float(node.get("cost", 1.0)) for nid, node in nodes.items()
        }
        if cost:
            for nid in nodes:
                given = cost.get(nid)
                if given is not None:
                    self.cost[nid] = float(given)
        # child e-classes, once per use
        self.uses: dict[str, list[str]] = {
            nid: [eclass[k] for k in node["children"]] for nid, node in nodes.items()
        }
        # distinct child e-classes
        self.kids: dict[str, list[str]] = {
            nid: list(dict.fromkeys(uses)) if len(uses) > 1 else uses.copy()
            for nid, uses in self.uses.items()
        }
        self.parents: dict[str, list[str]] = {}
        for nid, kids in self.kids.items():
            for k in kids:
                self.parents.setdefault(k, []).append(nid)

    def leaves(self) -> Iterable[str]:
        return (nid for nid, kids in self.kids.items() if not kids)


def bottom_up(
    idx: Index,
    price: Callable[[str, str, dict[str, Any]], tuple[float, Any] | None],
    slack: float = 0.0,
) -> Choices:
    """A worklist fixpoint for bottom-up extractors (tree's; greedy-dag settles e-classes
    cheapest first on integer-numbered arrays instead, :mod:`eqsat.extract.greedy_dag`).

    An e-node is priced once every child e-class has a value: ``price(node, eclass, values)``
    returns ``(total, value)`` or ``None`` to skip the node. A strictly cheaper total (by more than
    ``slack`` relative) becomes the e-class's choice and re-queues its parents, so cycles are fine:
    a cycle can never undercut the path that first reached it.
    """
    best: dict[str, float] = {}
    values: dict[str, Any] = {}
    choice: Choices = {}
    queue = deque(idx.leaves())
    queued = set(queue)
    while queue:
        nid = queue.popleft()
        queued.discard(nid)
        if math.isinf(idx.cost[nid]) or any(k not in values for k in idx.kids[nid]):
            continue
        eclass = idx.nodes[nid]["eclass"]
        priced = price(nid, eclass, values)
        if priced is None:
            continue
        total, value = priced
        if total < best.get(eclass, math.inf) - slack * abs(total):
            best[eclass] = total
            values[eclass] = value
            choice[eclass] = nid
            for parent in idx.parents.get(eclass, ()):
                if parent not in queued:
                    queue.append(parent)
                    queued.add(parent)
    return choice


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


def find_cycle(
    idx: Index, roots: Iterable[str], choices: Choices, blocked: set[str] | None = None
) -> list[str] | None:
    """One cycle of e-classes through the chosen nodes reachable from ``roots`` (classes in
    ``blocked`` are skipped), in edge order, or None."""
    blocked = blocked or set()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    for root in roots:
        if root in blocked or state.get(root) or root not in choices:
            continue
        path: list[str] = [root]
        iters = [iter(idx.kids[choices[root]])]
        state[root] = 1
        while iters:
            for k in iters[-1]:
                if k in blocked or k not in choices:
                    continue
                if state.get(k) == 1:
                    return path[path.index(k) :]
                if k not in state:
                    state[k] = 1
                    path.append(k)
                    iters.append(iter(idx.kids[choices[k]]))
                    break
            else:
                iters.pop()
                state[path.pop()] = 2
    return None


def sccs(graph: dict[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components of ``graph`` (Tarjan's algorithm, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        work = [(start, iter(graph[start]))]
        while work:
            v, it = work[-1]
            for w in it:
                if w not in graph:
                    continue
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(graph[w])))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    u = work[-1][0]
                    low[u] = min(low[u], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    out.append(comp)
    return out


def finite(x: float) -> bool:
    return not math.isinf(x) and not math.isnan(x)


__all__ = [
    "DEFAULT",
    "STRATEGIES",
    "Choices",
    "Extraction",
    "Index",
    "dag_cost",
    "find_cycle",
    "get",
    "is_acyclic",
    "reachable",
    "sccs",
]
