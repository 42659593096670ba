"""Exact DAG extraction as a 0-1 integer program solved by HiGHS, acyclic on cyclic e-graphs too.

One binary ``x[n]`` per usable e-node: minimize ``sum cost[n] * x[n]`` subject to

* each root e-class picks one e-node, and no e-class picks more than one;
* a picked e-node's child e-classes pick one each (``x[n] <= sum(x[m] for m in child class)``);
* the picked nodes form no cycle.

Acyclicity is only at stake inside strongly connected components of the e-class graph, and is
enforced there in one of two ways. ``lazy`` (the default) solves without it, looks for cycles in the
answer and adds, for each cycle's (and each cyclic component's) set S of e-classes, the
subtour-elimination row "at most |S| - 1 classes of S pick a node with a child in S", then solves
again. ``order`` adds a topological level per e-class in a cyclic component (``level[c] >=
level[k] + 1`` when a node of ``c`` with child ``k`` is picked, the big-M form Tensat uses). Acyclic
e-graphs need neither and solve in one round. On cyclic e-graphs whose relaxation can cheat through
many distinct cycles (Tensat's VGG, ResNet-50, BERT: split/concat merges) both forms converge slowly;
when the time limit hits, the best valid answer found so far is returned (the greedy-ls answer
is the first incumbent, so there always is one) with the solver's lower bound, and :class:`Extraction`
carries the optimality gap.

Before solving, e-nodes that can never be part of a valid answer are dropped (infinite cost, a child
that is their own class, a child class with no buildable node) and so are dominated ones (same class,
no cheaper, and children a superset of another node's), which keeps the programs small.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from eqsat.errors import EqsatError
from eqsat.extract import Choices, Extraction, Index, dag_cost, find_cycle, sccs

DEFAULT_TIME_LIMIT = 60.0


def extract(
    egraph: dict[str, Any],
    roots: list[str],
    cost: dict[str, float] | None = None,
    *,
    time_limit: float = DEFAULT_TIME_LIMIT,
    acyclic: str = "lazy",
    initial: Choices | None = None,
    progress: Callable[[str], None] | None = None,
) -> Extraction:
    """The cheapest acyclic DAG extraction, or the best one found within ``time_limit`` seconds."""
    try:
        import highspy
    except ImportError:  # pragma: no cover - highspy is a dependency
        raise EqsatError("the ilp extractor needs highspy (pip install highspy)") from None
    if acyclic not in ("lazy", "order"):
        raise EqsatError(f"ilp: acyclic must be 'lazy' or 'order', not {acyclic!r}")
    start = time.perf_counter()
    idx = Index(egraph, cost)
    model = _Model(idx, roots)
    if initial is None:
        from eqsat.extract import local_search

        initial = local_search.extract(egraph, roots, cost)
    best: Choices | None = None
    best_cost = math.inf
    try:
        best_cost = dag_cost(egraph, roots, initial, cost)
        best = dict(initial)
    except EqsatError:
        pass

    h = highspy.Highs()
    h.silent()
    h.setOptionValue("mip_rel_gap", 1e-9)
    h.setOptionValue("mip_abs_gap", 1e-12)
    h.setOptionValue("random_seed", 0)
    model.build(h, order=acyclic == "order")
    lower = -math.inf
    rounds = 0
    status = "optimal"
    while True:
        left = time_limit - (time.perf_counter() - start)
        if left <= 0:
            status = "time limit"
            break
        h.setOptionValue("time_limit", max(left, 1e-3))
        # No setSolution warm start: with one, HiGHS 1.16 returned the start vector as the
        # solution of a run that reported a cheaper optimum. The incumbent is kept here instead.
        h.run()
        rounds += 1
        ms = h.modelStatusToString(h.getModelStatus()).lower()
        info = h.getInfo()
        bound = float(info.mip_dual_bound)
        if math.isfinite(bound):
            lower = max(lower, bound)
        if "infeasible" in ms:
            if best is None:
                raise EqsatError("ilp: the e-graph has no acyclic extraction from its roots")
            status = "optimal"  # the incumbent came from outside; nothing better exists
            lower = best_cost
            break
        values = np.asarray(h.getSolution().col_value)
        if values.size == 0:  # no solution within the limit
            status = "time limit"
            break
        found = model.choices(values)
        cycles = model.cycles(found)
        if not cycles and all(r in found for r in model.roots):
            found_cost = dag_cost(egraph, roots, found, cost)
            if found_cost < best_cost:
                best, best_cost = found, found_cost
            if "optimal" not in ms:
                status = "time limit"
            else:
                lower = max(lower, min(best_cost, float(h.getInfo().objective_function_value)))
            break
        if not cycles:  # an incomplete answer: the solver stopped early
            status = "time limit"
            break
        model.cut(h, cycles)
        if progress is not None:
            progress(f"ilp round {rounds}: {len(cycles)} cycles cut, bound {lower:.6g}")
        if "optimal" not in ms:
            status = "time limit"
            break
    if best is None:
        raise EqsatError(f"ilp: no valid extraction found within {time_limit:g} s")
    lower = min(lower, best_cost)
    gap = 0.0 if best_cost <= 0 else max(0.0, (best_cost - lower) / abs(best_cost))
    optimal = status == "optimal" or gap <= 1e-7
    return Extraction(
        best,
        cost=best_cost,
        lower_bound=lower,
        gap=gap,
        optimal=optimal,
        seconds=time.perf_counter() - start,
        detail=f"{rounds} solver rounds, {model.cuts} cycle cuts, {model.ncols} columns",
    )


class _Model:
    """The pruned e-graph and its program's columns and rows."""

    def __init__(self, idx: Index, roots: list[str]):
        self.idx = idx
        self.roots = list(dict.fromkeys(roots))
        usable = _usable(idx)
        # Only e-classes reachable from the roots through usable nodes matter.
        classes: dict[str, list[str]] = {}
        stack = list(self.roots)
        while stack:
            c = stack.pop()
            if c in classes:
                continue
            members = _undominated([n for n in idx.classes.get(c, ()) if n in usable], idx)
            if not members:
                raise EqsatError(f"ilp: e-class {c} has no usable e-node")
            classes[c] = members
            stack.extend(k for n in members for k in idx.kids[n] if k not in classes)
        self.classes = classes
        classes = self.classes
        self.col_nodes = [n for members in classes.values() for n in members]
        self.col = {n: i for i, n in enumerate(self.col_nodes)}
        self.ncols = len(self.col_nodes)
        self.comp = {}  # e-class -> id of its cyclic strongly connected component
        graph = {c: {k for n in ms for k in idx.kids[n]} for c, ms in self.classes.items()}
        for i, comp in enumerate(sccs(graph)):
            if len(comp) > 1:
                for c in comp:
                    self.comp[c] = i
        self.cuts = 0
        self._cut_sets: set[frozenset[str]] = set()

    def build(self, h: Any, order: bool) -> None:
        import highspy

        idx, n = self.idx, self.ncols
        costs = np.array([idx.cost[x] for x in self.col_nodes], dtype=np.float64)
        h.addCols(n, costs, np.zeros(n), np.ones(n), 0, [], [], [])
        h.changeColsIntegrality(
            n, np.arange(n, dtype=np.int32), np.full(n, highspy.HighsVarType.kInteger, np.uint8)
        )
        rows = _Rows()
        for c, members in self.classes.items():
            cols = [self.col[m] for m in members]
            lo = 1.0 if c in self.roots else 0.0
            rows.add(cols, [1.0] * len(cols), lo, 1.0)
        for members in self.classes.values():
            for m in members:
                for k in idx.kids[m]:
                    cols = [self.col[x] for x in self.classes[k]]
                    rows.add([*cols, self.col[m]], [1.0] * len(cols) + [-1.0], 0.0, math.inf)
        if order:
            self._order_rows(h, rows)
        rows.flush(h)

    def _order_rows(self, h: Any, rows: _Rows) -> None:
        size: dict[int, int] = {}
        for comp in self.comp.values():
            size[comp] = size.get(comp, 0) + 1
        level: dict[str, int] = {}
        for c in self.comp:
            level[c] = self.ncols + len(level)
        if not level:
            return
        k = len(level)
        h.addCols(
            k, np.zeros(k), np.zeros(k), np.array([size[self.comp[c]] - 1.0 for c in level]),
            0, [], [], [],
        )  # fmt: skip
        for c, members in self.classes.items():
            if c not in self.comp:
                continue
            big = float(size[self.comp[c]])
            for m in members:
                for kid in self.idx.kids[m]:
                    if self.comp.get(kid) == self.comp[c]:
                        # level[c] - level[kid] - big * x[m] >= 1 - big
                        rows.add([level[c], level[kid], self.col[m]], [1.0, -1.0, -big], 1 - big)

    def choices(self, values: np.ndarray) -> Choices:
        out: Choices = {}
        for c, members in self.classes.items():
            best = max(members, key=lambda m: values[self.col[m]])
            if values[self.col[best]] > 0.5:
                out[c] = best
        return out

    def cycles(self, choices: Choices) -> list[list[str]]:
        """Disjoint cycles of e-classes in ``choices``, as many as one pass finds."""
        found = []
        chosen = {c: self.idx.kids[n] for c, n in choices.items()}
        found.extend(comp for comp in sccs(chosen) if len(comp) > 1)
        blocked: set[str] = set()
        while True:
            cyc = find_cycle(self.idx, self.roots, choices, blocked)
            if cyc is None:
                return found
            found.append(cyc)
            blocked.update(cyc)

    def cut(self, h: Any, cycles: list[list[str]]) -> None:
        """For each set S of classes: at most |S| - 1 of them pick a node with a child in S.

        In an acyclic answer the lowest picked class of S has no child in S, so this holds; it
        is the subtour-elimination form, stronger than forbidding one cycle's edges.
        """
        rows = _Rows()
        seen = self._cut_sets
        for cyc in cycles:
            key = frozenset(cyc)
            if key in seen:
                continue
            seen.add(key)
            cols = [
                self.col[m]
                for c in cyc
                for m in self.classes[c]
                if any(k in key for k in self.idx.kids[m])
            ]
            rows.add(cols, [1.0] * len(cols), -math.inf, len(key) - 1.0)
            self.cuts += 1
        rows.flush(h)


class _Rows:
    """Rows collected in CSR form and passed to HiGHS in one call."""

    def __init__(self) -> None:
        self.lo: list[float] = []
        self.hi: list[float] = []
        self.starts: list[int] = []
        self.index: list[int] = []
        self.value: list[float] = []

    def add(self, cols: list[int], vals: list[float], lo: float, hi: float = math.inf) -> None:
        self.starts.append(len(self.index))
        self.index.extend(cols)
        self.value.extend(vals)
        self.lo.append(lo)
        self.hi.append(hi)

    def flush(self, h: Any) -> None:
        if not self.lo:
            return
        inf = h.getInfinity()
        lo = np.clip(np.array(self.lo), -inf, inf)
        hi = np.clip(np.array(self.hi), -inf, inf)
        h.addRows(
            len(self.lo), lo, hi, len(self.index), np.array(self.starts, dtype=np.int32),
            np.array(self.index, dtype=np.int32), np.array(self.value, dtype=np.float64),
        )  # fmt: skip


def _usable(idx: Index) -> set[str]:
    """E-nodes that could appear in some acyclic extraction, by a bottom-up worklist."""
    missing = {
        n: len(kids)
        for n, kids in idx.kids.items()
        if math.isfinite(idx.cost[n]) and idx.nodes[n]["eclass"] not in kids
    }
    built: set[str] = set()
    usable: set[str] = set()
    ready = [n for n, count in missing.items() if count == 0]
    while ready:
        n = ready.pop()
        usable.add(n)
        c = idx.nodes[n]["eclass"]
        if c in built:
            continue
        built.add(c)
        for parent in idx.parents.get(c, ()):
            if parent in missing:
                missing[parent] -= 1
                if missing[parent] == 0:
                    ready.append(parent)
    return usable


def _undominated(members: list[str], idx: Index) -> list[str]:
    """Drop nodes another node of the class beats: no dearer, with a subset of the children."""
    order = sorted(members, key=lambda n: (idx.cost[n], len(idx.kids[n]), n))
    kept: list[tuple[str, set[str]]] = []
    for n in order:
        kids = set(idx.kids[n])
        if any(k <= kids for _, k in kept):
            continue
        kept.append((n, kids))
    return [n for n, _ in kept]
