"""Exact DAG extraction as a 0-1 integer program solved by HiGHS, acyclic on cyclic e-graphs too.

One binary ``x[n]`` per usable e-node: minimize ``sum cost[n] * x[n]`` subject to

* each root e-class (and each e-class that every extraction contains) picks one e-node, and no
  e-class picks more than one;
* a picked e-node's child e-classes pick one each (``x[n] <= sum(x[m] for m in child class)``);
* inside a cyclic strongly connected component of the e-class graph, a picked e-class is needed by
  a picked parent (any answer can drop the e-classes it does not reach, so this loses nothing);
* the picked nodes form no cycle.

First the e-graph is pruned soundly (:mod:`eqsat.extract.prune`): nodes no acyclic extraction can
use (self-loops, nodes whose children always need their own e-class, unbuildable ones), dominated
nodes, and nodes that cannot be part of an answer cheaper than the greedy-ls incumbent.

Acyclicity (``acyclic="lazy"``, the default) is enforced by cycle cuts (:mod:`eqsat.extract.cuts`),
only inside cyclic components: a cutting-plane loop on the linear relaxation adds the rows its
fractional solutions violate (all the short cycles the relaxation cheats through, at once), then
the integer program is solved; if its answer has a cycle, that cycle's rows are added and it is
solved again. Every row is valid for every acyclic answer, so the solver's bound is a lower bound
of the true optimum, and the first acyclic answer of a solve that HiGHS proves optimal is optimal.
The incumbent's cost is passed as an objective cutoff, so "no better solution" (infeasible) proves
the incumbent optimal. ``acyclic="order"`` instead adds a topological level per e-class of a cyclic
component (``level[c] >= level[k] + 1`` when a node of ``c`` with child ``k`` is picked, the big-M
form Tensat uses); it is exact but its relaxation is weak. When the time limit hits, the best valid
answer found so far is returned with the solver's lower bound, and :class:`Extraction` carries the
optimality gap.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from eqsat.errors import EqsatError
from eqsat.extract import Choices, Extraction, Index, dag_cost, sccs
from eqsat.extract.cuts import Cut, Separator
from eqsat.extract.prune import Pruned, prune

DEFAULT_TIME_LIMIT = 60.0
ROOT_LP_SHARE = 0.5  # at most this share of the time limit goes to the root cutting-plane loop


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
    say = progress or (lambda msg: None)
    start = time.perf_counter()
    roots = list(dict.fromkeys(roots))
    idx = Index(egraph, cost)
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
    solve = _Solve(start, time_limit, best, best_cost)
    try:
        pruned = prune(idx, roots, best_cost)
    except ValueError:
        if best is None:
            raise EqsatError("ilp: the e-graph has no acyclic extraction from its roots") from None
        return solve.result(egraph, roots, cost, "optimal", "pruning left no cheaper answer")
    model = _Model(idx, roots, pruned)
    say(f"ilp: {model.ncols} columns after pruning ({_removed(pruned)}), "
        f"cyclic components {sorted(len(c) for c in model.components)[-4:]}")  # fmt: skip

    h = highspy.Highs()
    h.silent()
    h.setOptionValue("mip_rel_gap", 1e-9)
    h.setOptionValue("mip_abs_gap", 1e-12)
    h.setOptionValue("random_seed", 0)
    h.setOptionValue("threads", 1)  # deterministic
    model.build(h, order=acyclic == "order")
    sep = Separator(idx, model.classes, model.col, model.components)
    if acyclic == "lazy" and model.components:
        _root_loop(h, model, sep, solve, say)
    model.integral(h)
    status = _mip_loop(h, model, sep, solve, egraph, roots, cost, say)
    return solve.result(egraph, roots, cost, status, model.detail())


class _Solve:
    """The clock, the incumbent and the lower bound."""

    def __init__(self, start: float, limit: float, best: Choices | None, best_cost: float):
        self.start = start
        self.limit = limit
        self.best = best
        self.best_cost = best_cost
        self.lower = -math.inf
        self.rounds = 0

    def left(self) -> float:
        return self.limit - (time.perf_counter() - self.start)

    def offer(self, choices: Choices, cost: float) -> None:
        if cost < self.best_cost:
            self.best, self.best_cost = choices, cost

    def result(
        self,
        egraph: dict[str, Any],
        roots: list[str],
        cost: dict[str, float] | None,
        status: str,
        detail: str,
    ) -> Extraction:
        if self.best is None:
            raise EqsatError(f"ilp: no valid extraction found within {self.limit:g} s")
        best_cost = self.best_cost
        lower = best_cost if status == "optimal" else min(self.lower, best_cost)
        gap = 0.0 if best_cost <= 0 else max(0.0, (best_cost - lower) / abs(best_cost))
        return Extraction(
            self.best,
            cost=best_cost,
            lower_bound=lower,
            gap=gap,
            optimal=status == "optimal" or gap <= 1e-7,
            seconds=time.perf_counter() - self.start,
            detail=f"{self.rounds} solver rounds, {detail}",
        )


def _root_loop(h: Any, model: _Model, sep: Separator, solve: _Solve, say: Callable) -> None:
    """Cutting planes on the linear relaxation until it violates no cycle row (or stalls)."""
    budget = solve.start + ROOT_LP_SHARE * solve.limit
    history: list[float] = []
    while time.perf_counter() < budget:
        h.setOptionValue("time_limit", max(budget - time.perf_counter(), 1e-3))
        h.run()
        if "optimal" not in h.modelStatusToString(h.getModelStatus()).lower():
            return
        value = float(h.getInfo().objective_function_value)
        solve.lower = max(solve.lower, value)
        history.append(value)
        x = np.asarray(h.getSolution().col_value)
        cuts = sep.separate(x)
        say(f"ilp: relaxation {value:.6g}, {len(cuts)} cycle rows added")
        if not cuts:
            return
        model.add_cuts(h, cuts)
        if len(history) > 8 and history[-1] - history[-9] <= 1e-7 * max(1.0, abs(value)):
            return  # stalled: the integer solver's branching does the rest


def _mip_loop(
    h: Any,
    model: _Model,
    sep: Separator,
    solve: _Solve,
    egraph: dict[str, Any],
    roots: list[str],
    cost: dict[str, float] | None,
    say: Callable,
) -> str:
    while True:
        left = solve.left()
        if left <= 0:
            return "time limit"
        h.setOptionValue("time_limit", max(left, 1e-3))
        if math.isfinite(solve.best_cost):
            # Only strictly cheaper answers are of interest: the incumbent has the rest.
            h.setOptionValue("objective_bound", solve.best_cost)
        h.run()
        solve.rounds += 1
        ms = h.modelStatusToString(h.getModelStatus()).lower()
        info = h.getInfo()
        if "infeasible" in ms:
            if solve.best is None:
                raise EqsatError("ilp: the e-graph has no acyclic extraction from its roots")
            return "optimal"  # nothing cheaper than the incumbent satisfies valid rows
        bound = float(info.mip_dual_bound)
        if math.isfinite(bound):
            solve.lower = max(solve.lower, bound)
        x = np.asarray(h.getSolution().col_value)
        if x.size == 0 or int(info.primal_solution_status) == 0:
            return "time limit"
        cuts = sep.separate(np.round(x), tol=0.5)
        found = model.choices(x)
        if not cuts and all(r in found for r in model.roots):
            solve.offer(found, dag_cost(egraph, roots, found, cost))
            if "optimal" in ms:
                solve.lower = max(solve.lower, min(bound, solve.best_cost))
                return "optimal"
            return "time limit"
        if not cuts:
            return "time limit"  # an incomplete answer: the solver stopped early
        model.add_cuts(h, cuts)
        say(f"ilp round {solve.rounds}: {len(cuts)} cycle rows cut, bound {solve.lower:.6g}")


class _Model:
    """The pruned e-graph and its program's columns and rows."""

    def __init__(self, idx: Index, roots: list[str], pruned: Pruned):
        self.idx = idx
        self.roots = roots
        self.pruned = pruned
        self.classes = pruned.classes
        self.col_nodes = [n for members in self.classes.values() for n in members]
        self.col = {n: i for i, n in enumerate(self.col_nodes)}
        self.ncols = len(self.col_nodes)
        graph = {c: {k for n in ms for k in idx.kids[n]} for c, ms in self.classes.items()}
        self.components = [comp for comp in sccs(graph) if len(comp) > 1]
        self.comp = {c: i for i, comp in enumerate(self.components) for c in comp}
        self.cuts = 0
        self.conflicts = 0

    def build(self, h: Any, order: bool) -> None:
        idx, n = self.idx, self.ncols
        costs = np.array([idx.cost[x] for x in self.col_nodes], dtype=np.float64)
        h.addCols(n, costs, np.zeros(n), np.ones(n), 0, [], [], [])
        rows = _Rows()
        required = self.pruned.required | set(self.roots)
        for c, members in self.classes.items():
            cols = [self.col[m] for m in members]
            rows.add(cols, [1.0] * len(cols), 1.0 if c in required else 0.0, 1.0)
        parents: dict[str, list[int]] = {}
        for members in self.classes.values():
            for m in members:
                for k in idx.kids[m]:
                    parents.setdefault(k, []).append(self.col[m])
                    if k in required:
                        continue  # picked anyway
                    cols = [self.col[x] for x in self.classes[k]]
                    rows.add([*cols, self.col[m]], [1.0] * len(cols) + [-1.0], 0.0)
        for c in self.comp:
            if c not in required:
                # A picked e-class of a cyclic component has a picked parent that needs it.
                cols = [self.col[m] for m in self.classes[c]]
                ps = parents.get(c, [])
                rows.add([*ps, *cols], [1.0] * len(ps) + [-1.0] * len(cols), 0.0)
        for comp in self.components:
            for n, _k, ok in self.pruned.conflicts(comp):
                # n needs k, and k's other nodes need n's e-class: picking n picks one of ok.
                cols = [self.col[m] for m in ok]
                rows.add([self.col[n], *cols], [1.0] + [-1.0] * len(cols), -math.inf, 0.0)
                self.conflicts += 1
        if order:
            self._order_rows(h, rows)
        rows.flush(h)

    def integral(self, h: Any) -> None:
        import highspy

        n = self.ncols
        h.changeColsIntegrality(
            n, np.arange(n, dtype=np.int32), np.full(n, highspy.HighsVarType.kInteger, np.uint8)
        )

    def _order_rows(self, h: Any, rows: _Rows) -> None:
        level: dict[str, int] = {}
        for c in self.comp:
            level[c] = self.ncols + len(level)
        if not level:
            return
        k = len(level)
        size = [len(self.components[self.comp[c]]) for c in level]
        h.addCols(k, np.zeros(k), np.zeros(k), np.array(size, dtype=np.float64) - 1, 0, [], [], [])
        for c, members in self.classes.items():
            if c not in self.comp:
                continue
            big = float(len(self.components[self.comp[c]]))
            for m in members:
                for kid in self.idx.kids[m]:
                    if self.comp.get(kid) == self.comp[c]:
                        # level[c] - level[kid] - big * x[m] >= 1 - big
                        rows.add([level[c], level[kid], self.col[m]], [1.0, -1.0, -big], 1 - big)

    def add_cuts(self, h: Any, cuts: list[Cut]) -> None:
        rows = _Rows()
        for cols, vals in cuts:
            rows.add(cols, vals, -math.inf, 0.0)
        rows.flush(h)
        self.cuts += len(cuts)

    def choices(self, values: np.ndarray) -> Choices:
        out: Choices = {}
        for c, members in self.classes.items():
            best = max(members, key=lambda m: values[self.col[m]])
            if values[self.col[best]] > 0.5:
                out[c] = best
        return out

    def detail(self) -> str:
        return f"{self.cuts} cycle rows, {self.conflicts} conflict rows, {self.ncols} columns ({_removed(self.pruned)})"


def _removed(pruned: Pruned) -> str:
    parts = [f"{v} {k}" for k, v in pruned.removed.items() if v]
    return "pruned " + (", ".join(parts) if parts else "nothing")


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
