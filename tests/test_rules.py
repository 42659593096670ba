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


def _padded_conv(x_shape: tuple[int, ...], pads: list[int], value: float | None = None,
                 mode: str = "constant", conv_pads: list[int] | None = None,
                 strides: list[int] | None = None) -> Graph:  # fmt: skip
    rng = np.random.default_rng(5)
    g = Graph("padded")
    x = g.input("x", x_shape)
    spatial = len(x_shape) - 2
    channels = x_shape[1] + pads[1] + pads[len(x_shape) + 1]
    w = g.constant(rng.standard_normal((4, channels, *[3] * spatial)).astype(np.float32))
    b = g.constant(rng.standard_normal(4).astype(np.float32))
    v = None if value is None else g.constant(np.float32(value))
    p = g.op("Pad", x, g.constant(np.array(pads, np.int64)), v, mode=mode)
    attrs = {"strides": strides or [2] * spatial, "pads": conv_pads or []}
    g.output(g.op("Conv", p, w, b, **attrs))
    return g


@pytest.mark.parametrize(
    ("rule", "x_shape", "pads", "value", "conv_pads"),
    [
        ("pad-into-conv-2d", (1, 3, 9, 9), [0, 0, 0, 0, 0, 0, 1, 1], None, None),
        ("pad-into-conv-2d-value", (2, 2, 8, 7), [0, 0, 1, 0, 0, 0, 2, 1], 0.0, None),
        ("pad-into-conv-2d-padded", (1, 3, 9, 9), [0, 0, 1, 2, 0, 0, 0, 1], None, [1, 0, 1, 1]),
        ("pad-into-conv-1d", (1, 2, 11), [0, 0, 3, 0, 0, 1], None, None),
        ("pad-into-conv-3d-value-padded", (1, 2, 5, 6, 5), [0, 0, 1, 0, 1, 0, 0, 1, 1, 0], 0.0,
         [0, 1, 0, 1, 0, 1]),
    ],
)  # fmt: skip
def test_a_zero_pad_folds_into_the_conv_after_it(
    rule: str, x_shape: tuple, pads: list, value: float | None, conv_pads: list | None
) -> None:
    """Keras' ZeroPadding2D before a strided conv (tf2onnx's MobileNet, EfficientNet, ResNet-50):
    the Pad's zeros become the conv's own pads, exactly."""
    from eqsat.rulecheck import RuleCheck, _check_instance

    (found,) = _rules(f"algebraic/{rule}")
    check = RuleCheck(found.name, "")
    g = _padded_conv(x_shape, pads, value, conv_pads=conv_pads)
    assert _check_instance(found, g, check) == ""
    assert check.fired == 1 and check.compared >= 1, check
    optimized = optimize(g, target="cpu").graph
    assert [n.op for n in optimized.nodes if n.op != "Identity"] == ["Conv"]
    feeds = {"x": np.random.default_rng(6).standard_normal(x_shape).astype(np.float32)}
    import eqsat

    (want,) = eqsat.compile(g, target="numpy").run(feeds).values()
    (got,) = eqsat.compile(optimized, target="cpu").run(feeds).values()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("pads", "value", "mode"),
    [
        ([0, 1, 0, 0, 0, 0, 0, 0], None, "constant"),  # the channels padded
        ([0, 0, 1, 1, 0, 0, -1, 0], None, "constant"),  # a crop
        ([0, 0, 1, 1, 0, 0, 1, 1], 1.0, "constant"),  # padded with ones
        ([0, 0, 1, 1, 0, 0, 1, 1], None, "reflect"),
    ],
)
def test_pads_a_conv_cannot_take_stay(pads: list, value: float | None, mode: str) -> None:
    g = _padded_conv((1, 3, 9, 9), pads, value, mode)
    assert "Pad" in [n.op for n in optimize(g, target="cpu").graph.nodes]
