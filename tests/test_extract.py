"""Extraction strategies on hand-made serialized e-graphs (the extraction-gym JSON format)."""

from __future__ import annotations

import math

import pytest

from eqsat import extract


def _egraph(nodes: dict[str, tuple[str, list[str], str, float]]) -> dict:
    return {
        "nodes": {
            k: {"op": op, "children": kids, "eclass": c, "cost": cost}
            for k, (op, kids, c, cost) in nodes.items()
        },
        "root_eclasses": [],
        "class_data": {},
    }


# r = f(s, s) where s is either a shared expensive "big" (cost 10) or a "small" per use (cost 6)
# that itself needs a private helper "h" (cost 1). Tree cost prefers ... r via g(a, b) (each 7).
SHARED = _egraph(
    {
        "x": ("x", [], "X", 0.0),
        "big": ("big", ["x"], "S", 10.0),
        "r1": ("f", ["big", "big"], "R", 1.0),
        "a": ("a", ["x"], "A", 7.0),
        "b": ("b", ["x"], "B", 7.0),
        "r2": ("g", ["a", "b"], "R", 1.0),
    }
)


def test_tree_counts_shared_classes_per_use_and_dag_once() -> None:
    tree = extract.get("tree")(SHARED, ["R"])
    dag = extract.get("greedy-dag")(SHARED, ["R"])
    assert tree["R"] == "r2"  # tree: f costs 1 + 10 + 10 = 21 > g's 1 + 7 + 7 = 15
    assert dag["R"] == "r1"  # DAG: f costs 1 + 10 = 11 < 15
    assert extract.dag_cost(SHARED, ["R"], dag, None) == 11.0
    assert extract.dag_cost(SHARED, ["R"], tree, None) == 15.0


@pytest.mark.parametrize("name", sorted(extract.STRATEGIES))
def test_cyclic_egraph_gives_acyclic_choice(name: str) -> None:
    # Class A holds x and t(t(A)) (as after transpose-transpose); B = t(A) holds t(A) only.
    g = _egraph(
        {
            "x": ("x", [], "A", 0.0),
            "tt": ("t", ["t1"], "A", 0.0),
            "t1": ("t", ["x"], "B", 1.0),
            "root": ("relu", ["tt"], "R", 1.0),
        }
    )
    choices = extract.get(name)(g, ["R"])
    assert choices["A"] == "x"
    assert extract.is_acyclic(g, ["R"], choices)
    assert not extract.is_acyclic(g, ["R"], {"R": "root", "A": "tt", "B": "t1"})


@pytest.mark.parametrize("name", sorted(extract.STRATEGIES))
def test_infinite_cost_forbids_a_node(name: str) -> None:
    cost = {"r1": math.inf}
    choices = extract.get(name)(SHARED, ["R"], cost)
    assert choices["R"] == "r2"


def test_unknown_extractor_is_reported() -> None:
    with pytest.raises(Exception, match="unknown extractor"):
        extract.get("nope")
