"""The exact extractor's bounds and pruning against brute force on small cyclic e-graphs."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pytest

from eqsat import extract
from eqsat.extract import Index, ilp_bounds
from eqsat.extract.prune import prune

TENSAT = Path(__file__).parents[2] / "shared" / "egraphs" / "tensat"


def _egraph(nodes: dict[str, tuple[str, list[str], str, float]]) -> dict:
    """``{node: (op, child e-classes, e-class, cost)}`` in egglog's JSON (children are node ids:
    the first node of each child e-class)."""
    first: dict[str, str] = {}
    for k, (_, _, c, _) in nodes.items():
        first.setdefault(c, k)
    return {
        "nodes": {
            k: {"op": op, "children": [first[kc] for kc in kids], "eclass": c, "cost": cost}
            for k, (op, kids, c, cost) in nodes.items()
        }
    }


def _random(seed: int, classes: int = 7, per_class: int = 2) -> dict:
    """Nodes may point at any e-class (cycles, self-loops); one node per e-class points lower."""
    rng = random.Random(seed)
    nodes: dict[str, tuple[str, list[str], str, float]] = {"leaf": ("x", [], "c0", 1.0)}
    for c in range(1, classes):
        for j in range(per_class):
            kids = [f"c{rng.randrange(classes)}" for _ in range(rng.randrange(1, 3))]
            nodes[f"n{c}_{j}"] = ("op", kids, f"c{c}", float(rng.randint(0, 9)))
        nodes[f"b{c}"] = ("op", [f"c{rng.randrange(c)}"], f"c{c}", float(rng.randint(5, 20)))
    return _egraph(nodes)


def _merges(seed: int, classes: int = 6) -> dict:
    """Tensat-like merges: ``c = split_i(s)``, ``s = split(m)``, ``m = concat(a, b)`` or computed
    whole, with free splits, so that cycles are nearly free."""
    rng = random.Random(seed)
    nodes: dict[str, tuple[str, list[str], str, float]] = {"x": ("x", [], "c0", 0.0)}
    for c in range(1, classes):
        nodes[f"op{c}"] = ("conv", [f"c{rng.randrange(c)}"], f"c{c}", float(rng.randint(3, 9)))
    for j in range(2):
        a, b = rng.sample(range(1, classes), 2)
        nodes[f"cat{j}"] = ("concat", [f"c{a}", f"c{b}"], f"m{j}", float(rng.randint(0, 1)))
        nodes[f"big{j}"] = ("conv", [f"c{rng.randrange(min(a, b))}"], f"m{j}", 9.0)
        nodes[f"sp{j}"] = ("split", [f"m{j}"], f"s{j}", 0.0)
        nodes[f"a{j}"] = ("split0", [f"s{j}"], f"c{a}", 0.0)
        nodes[f"b{j}"] = ("split1", [f"s{j}"], f"c{b}", 0.0)
    nodes["root"] = ("add", [f"c{classes - 1}", f"c{classes - 2}", "m0"], "R", 1.0)
    return _egraph(nodes)


def _answers(g: dict, roots: list[str]):
    """Every valid extraction (roots chosen, closed, acyclic) as (reachable choices, cost)."""
    by_class: dict[str, list[str]] = {}
    for k, n in g["nodes"].items():
        by_class.setdefault(n["eclass"], []).append(k)
    names = sorted(by_class)
    seen = set()
    for pick in itertools.product(*(by_class[c] for c in names)):
        choices = dict(zip(names, pick, strict=True))
        if not extract.is_acyclic(g, roots, choices):
            continue
        reach = extract.reachable(g, roots, choices)
        key = tuple(sorted((c, choices[c]) for c in reach))
        if key not in seen:
            seen.add(key)
            yield dict(key), extract.dag_cost(g, roots, choices, None)


def _cases():
    for seed in range(12):
        yield _random(seed), ["c6"]
    for seed in range(12):
        yield _merges(seed), ["R"]


@pytest.mark.parametrize("case", range(24))
def test_path_bounds_never_exceed_any_answer_using_the_node(case: int) -> None:
    g, roots = list(_cases())[case]
    idx = Index(g)
    answers = list(_answers(g, roots))
    cheapest: dict[str, float] = {}
    for choices, cost in answers:
        for n in choices.values():
            cheapest[n] = min(cheapest.get(n, math.inf), cost)
    best = min(cost for _, cost in answers)
    everywhere = set.intersection(*(set(choices) for choices, _ in answers))
    for required in ((), everywhere):
        bound, lower = ilp_bounds.node_bounds(idx, set(idx.cost), roots, required)
        assert lower <= best + 1e-9
        for n, b in bound.items():
            assert b <= cheapest.get(n, math.inf) + 1e-9, n
    # With the e-classes every answer contains paid up front, the bound only gets better.
    plain, _ = ilp_bounds.node_bounds(idx, set(idx.cost), roots)
    assert all(b >= plain[n] - 1e-9 for n, b in bound.items())


@pytest.mark.parametrize("case", range(24))
def test_ilp_matches_brute_force_and_pruning_keeps_an_optimum(case: int) -> None:
    g, roots = list(_cases())[case]
    best = min(cost for _, cost in _answers(g, roots))
    pruned = prune(Index(g), roots, ub=best)
    kept = {n for ms in pruned.classes.values() for n in ms}
    assert any(set(ch.values()) <= kept for ch, cost in _answers(g, roots) if cost == best)
    assert pruned.lower <= best + 1e-9
    for acyclic in ("lazy", "order"):
        result = extract.get("ilp")(g, roots, acyclic=acyclic)
        assert all(r in result for r in roots)
        assert extract.is_acyclic(g, roots, result)
        extract.reachable(g, roots, result)  # closed: raises on a missing choice
        assert extract.dag_cost(g, roots, result, None) == pytest.approx(best)
        assert result.optimal and result.lower_bound <= best + 1e-9
        # Started from a worse incumbent, it still finds and proves the optimum.
        worst = max(_answers(g, roots), key=lambda t: t[1])[0]
        again = extract.get("ilp")(g, roots, acyclic=acyclic, initial=worst)
        assert extract.dag_cost(g, roots, again, None) == pytest.approx(best)
        assert again.optimal


def _chain() -> dict:
    """conv -> conv -> relu in sequence; A and B also come out of a merged conv M, split. The
    cycle A = split0(split(concat(A, B))) is free, but every answer pays a path from x to R."""
    return _egraph(
        {
            "x": ("x", [], "X", 0.0),
            "a": ("conv", ["X"], "A", 4.0),
            "a2": ("split0", ["S"], "A", 0.0),
            "b": ("conv", ["X"], "B", 4.0),
            "b2": ("split1", ["S"], "B", 0.0),
            "s": ("split", ["M"], "S", 0.0),
            "m": ("concat", ["A", "B"], "M", 0.0),
            "m2": ("conv", ["X"], "M", 5.0),
            "c": ("conv", ["A", "B"], "C", 3.0),
            "r": ("relu", ["C"], "R", 1.0),
        }
    )


def test_longest_path_bound_proves_a_chain_through_merge_cycles() -> None:
    g = _chain()
    idx = Index(g)
    height = ilp_bounds.heights(idx, set(idx.cost))
    assert height["A"] == 4.0 and height["M"] == 4.0 and height["R"] == 8.0
    depth = ilp_bounds.depths(idx, idx.classes, ["R"])
    assert depth["C"] == 1.0 and depth["A"] == 4.0 and depth["M"] == 4.0
    result = extract.get("ilp")(g, ["R"])
    assert extract.dag_cost(g, ["R"], result, None) == 9.0  # m2 shared by A and B: 5 + 3 + 1
    assert result.optimal and extract.is_acyclic(g, ["R"], result)
    # A cyclic "incumbent" (cost 4) must not be taken as an upper bound.
    cyclic = {"R": "r", "C": "c", "A": "a2", "B": "b2", "S": "s", "M": "m", "X": "x"}
    again = extract.get("ilp")(g, ["R"], initial=cyclic)
    assert extract.is_acyclic(g, ["R"], again) and again.cost == 9.0 and again.optimal


def test_a_cyclic_integer_answer_is_repaired_into_a_better_incumbent() -> None:
    import time

    from eqsat.extract import ilp

    g = _chain()
    # The solver's cyclic answer (A = split0(split(concat(A, B)))) and a valid incumbent that
    # computes A directly (13): greedy-dag over both their nodes finds the optimum, 9.
    cyclic = {"R": "r", "C": "c", "A": "a2", "B": "b2", "S": "s", "M": "m", "X": "x"}
    incumbent = {"R": "r", "C": "c", "A": "a", "B": "b2", "S": "s", "M": "m2", "X": "x"}
    assert extract.dag_cost(g, ["R"], incumbent, None) == 13.0
    solve = ilp._Solve(time.perf_counter(), 60.0, incumbent, 13.0)
    ilp._repair(g, ["R"], None, Index(g), cyclic, solve)
    assert solve.best_cost == 9.0 and extract.is_acyclic(g, ["R"], solve.best)


def test_path_bounds_are_skipped_with_negative_costs() -> None:
    g = _egraph({"x": ("x", [], "X", -1.0), "r": ("f", ["X"], "R", 2.0)})
    idx = Index(g)
    assert not ilp_bounds.applies(idx, idx.cost)
    pruned = prune(idx, ["R"], ub=1.0)
    assert pruned.lower == -math.inf and not pruned.bound
    result = extract.get("ilp")(g, ["R"])
    assert result.cost == 1.0 and result.optimal


@pytest.mark.skipif(not (TENSAT / "vgg.json").is_file(), reason="no ../shared e-graphs")
def test_ilp_proves_tensat_cyclic_vgg() -> None:
    g = json.loads((TENSAT / "vgg.json").read_text())
    roots = g["root_eclasses"]
    result = extract.get("ilp")(g, roots, time_limit=60.0)
    assert all(r in result for r in roots) and extract.is_acyclic(g, roots, result)
    assert result.optimal and result.seconds < 30.0
    assert extract.dag_cost(g, roots, result, None) == pytest.approx(4.85076, abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "bert_acyclic"])
def test_ilp_proves_tensat_bert(name: str) -> None:
    path = TENSAT / f"{name}.json"
    if not path.is_file():
        pytest.skip("no ../shared e-graphs")
    g = json.loads(path.read_text())
    roots = g["root_eclasses"]
    result = extract.get("ilp")(g, roots, time_limit=60.0)
    assert all(r in result for r in roots) and extract.is_acyclic(g, roots, result)
    extract.reachable(g, roots, result)
    assert result.optimal and result.seconds < 60.0
    best = {"bert": 0.70472, "bert_acyclic": 0.708439}[name]
    assert extract.dag_cost(g, roots, result, None) == pytest.approx(best, abs=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(not (TENSAT / "vgg.json").is_file(), reason="no ../shared e-graphs")
def test_ilp_proves_tensat_vgg_from_a_worse_incumbent() -> None:
    # From tree extraction (4.85238) the longest-path bound no longer prunes to a proof: the
    # integer program's cyclic answers are repaired into the optimum, which the bound proves.
    g = json.loads((TENSAT / "vgg.json").read_text())
    roots = g["root_eclasses"]
    start = extract.get("tree")(g, roots)
    assert extract.dag_cost(g, roots, start, None) > 4.8520
    result = extract.get("ilp")(g, roots, time_limit=60.0, initial=start)
    assert extract.is_acyclic(g, roots, result) and result.optimal
    assert extract.dag_cost(g, roots, result, None) == pytest.approx(4.85076, abs=1e-5)
