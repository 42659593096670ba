"""Rule families, user rule files and folders, and numerical soundness checking of rules."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from egglog import eq, f64
from eqsat.rules import Family, resolve

from eqsat.egraph import E, T, splat
from eqsat.errors import RuleError
from eqsat.ir import Graph
from eqsat.optimize import optimize
from eqsat.rulecheck import check_rule, check_rules, format_checks

USER_RULE = textwrap.dedent(
    """
    from eqsat.egraph import E, T
    from eqsat.rules import Family

    mine = Family("mine")

    @mine.rewrite("relu-relu", caveat="exact")
    def _(x: T):
        return E.Relu(E.Relu(x)), E.Relu(x)
    """
)


def _rules(*names: str) -> list:
    found = {r.name: r for r in resolve("algebraic")[0]}
    return [found[n] for n in names]


def test_default_rules_are_the_algebraic_family() -> None:
    rules, extra = resolve(None)
    names = {r.name for r in rules}
    assert {"algebraic/mul-one", "algebraic/matmul-add-as-gemm", "algebraic/add-comm"} <= names
    assert not extra
    assert all(r.caveat for r in rules)  # every rule documents its floating-point behaviour


@pytest.mark.parametrize(
    "name",
    [
        "algebraic/mul-one",
        "algebraic/transpose-transpose-3",
        "algebraic/cast-cast-lossless",
        "algebraic/matmul-add-as-gemm",
        "algebraic/reshape-reshape",
        "algebraic/div-const-as-mul-1",
    ],
)
def test_check_rules_passes_sound_rules(name: str) -> None:
    (rule,) = _rules(name)
    result = check_rule(rule, samples=60)
    assert result.status == "ok", result
    assert result.compared > 0


def test_check_rules_catches_a_planted_wrong_rule() -> None:
    planted = Family("planted")

    @planted.rewrite("mul-two-is-identity")
    def _(x: T, c: T):
        return E.Mul(x, c), x, eq(splat(c)).to(f64(2.0))

    @planted.rewrite("sub-commutes")
    def _(x: T, y: T):
        return E.Sub(x, y), E.Sub(y, x)

    checks = check_rules(planted.rules, samples=80)
    assert [c.status for c in checks] == ["FAILED", "FAILED"], format_checks(checks)
    assert "max abs error" in checks[0].detail


def test_user_rule_file_and_folder(tmp_path: Path) -> None:
    folder = tmp_path / "my_rules"
    folder.mkdir()
    (folder / "relu.py").write_text(USER_RULE)
    g = Graph("g")
    x = g.input("x", (5,))
    g.output(g.op("Relu", g.op("Relu", x), outputs=["y"]))
    for spec in (folder, str(folder / "relu.py"), ["algebraic", folder]):
        result = optimize(g, rules=spec, target="numpy")
        assert result.report.matches.get("mine/relu-relu", 0) >= 1
        assert result.graph.op_counts() == {"Relu": 1}
    feeds = {"x": np.linspace(-2, 2, 5, dtype=np.float32)}
    np.testing.assert_array_equal(result.run(feeds)["y"], np.maximum(feeds["x"], 0))
    (checked,) = check_rules(resolve(folder)[0], samples=20)
    assert checked.status == "ok"


def test_bad_rule_specs_are_reported(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="not a family"):
        resolve("no-such-family")
    with pytest.raises(RuleError, match="no such rule file"):
        resolve(tmp_path / "missing.py")
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(RuleError, match="declares no rules"):
        resolve(tmp_path / "empty.py")
