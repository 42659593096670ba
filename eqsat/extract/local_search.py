"""Greedy DAG extraction refined by local search: re-choose one e-class at a time.

Greedy-dag prices each e-node with its children's own best sets, so it misses choices that pay off
only through sharing elsewhere in the DAG. Starting from its answer, this strategy tries every other
e-node of every e-class in the extracted DAG; a move switches that one class and fills any class it
newly needs with greedy-dag's choice, and is kept when the whole DAG is still acyclic and cheaper.
Passes repeat until none improves or the time budget (``time_limit`` seconds, default a few times
greedy's own time) is spent. The answer is never worse than greedy-dag's.
"""

from __future__ import annotations

import math
import time
from typing import Any

from eqsat.extract import Choices, Extraction, Index, greedy_dag


def extract(
    egraph: dict[str, Any],
    roots: list[str],
    cost: dict[str, float] | None = None,
    *,
    time_limit: float | None = None,
    max_passes: int = 4,
) -> Extraction:
    start = time.perf_counter()
    idx = Index(egraph, cost)
    base = greedy_dag.extract(egraph, roots, cost)
    if time_limit is None:
        time_limit = max(0.5, 4 * (time.perf_counter() - start))
    deadline = start + time_limit
    roots = list(dict.fromkeys(roots))
    current = dict(base)
    best = _cost(idx, roots, current)
    for _ in range(max_passes):
        improved = False
        for c in _order(idx, roots, current):
            if time.perf_counter() > deadline:
                break
            before = set(_reach(idx, roots, current) or ())
            keep = current[c]
            for n in idx.classes[c]:
                if n == keep or not math.isfinite(idx.cost[n]):
                    continue
                if any(k not in current for k in idx.kids[n]):
                    continue
                current[c] = n
                total, partner = _cost(idx, roots, current), None
                if total >= best:
                    total, partner = _pair(idx, roots, current, c, before, best)
                if total < best - 1e-12 * abs(best):
                    best, keep, improved = total, n, True
                    if partner is not None:
                        current[partner[0]] = partner[1]
                        before = set(_reach(idx, roots, current) or ())
                current[c] = keep
            current[c] = keep
        if not improved or time.perf_counter() > deadline:
            break
    reach = _reach(idx, roots, current)
    choices: Choices = {c: current[c] for c in reach}
    return Extraction(choices, cost=best, seconds=time.perf_counter() - start)


def _pair(
    idx: Index, roots: list[str], current: Choices, c: str, before: set[str], best: float
) -> tuple[float, tuple[str, str] | None]:
    """Best second move that reuses a class the first move newly needs (sharing pays twice)."""
    reach = _reach(idx, roots, current)
    if reach is None:
        return math.inf, None
    found: tuple[float, tuple[str, str] | None] = (math.inf, None)
    for k in reach:
        if k in before:
            continue
        for p in idx.parents.get(k, ()):
            other = idx.nodes[p]["eclass"]
            if other == c or other not in before or current.get(other) == p:
                continue
            if any(x not in current for x in idx.kids[p]):
                continue
            old = current[other]
            current[other] = p
            total = _cost(idx, roots, current)
            current[other] = old
            if total < min(best, found[0]):
                found = (total, (other, p))
    return found


def _order(idx: Index, roots: list[str], choices: Choices) -> list[str]:
    """Classes of the current DAG with a choice to make, most expensive node first."""
    reach = _reach(idx, roots, choices) or []
    return sorted(
        (c for c in reach if len(idx.classes[c]) > 1), key=lambda c: -idx.cost[choices[c]]
    )


def _reach(idx: Index, roots: list[str], choices: Choices) -> list[str] | None:
    """Classes reachable through ``choices`` in topological order, or None on a cycle."""
    state: dict[str, int] = {}
    order: list[str] = []
    for root in roots:
        if root in state:
            continue
        stack = [(root, iter(idx.kids[choices[root]]))]
        state[root] = 1
        while stack:
            c, it = stack[-1]
            for k in it:
                s = state.get(k)
                if s == 1:
                    return None
                if s is None:
                    state[k] = 1
                    stack.append((k, iter(idx.kids[choices[k]])))
                    break
            else:
                stack.pop()
                state[c] = 2
                order.append(c)
    return order


def _cost(idx: Index, roots: list[str], choices: Choices) -> float:
    reach = _reach(idx, roots, choices)
    if reach is None:
        return math.inf
    return math.fsum(idx.cost[choices[c]] for c in reach)
