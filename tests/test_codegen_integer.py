"""Integer and bool elementwise kernels (eqsat.lowering.codegen's typed path) against numpy.

Every case compiles a tiny graph for the cpu target, checks that no node fell back to the numpy
reference and compares every output bit for bit with the numpy target: integer arithmetic wraps,
divides toward zero and takes remainders as the ops table's reference does, casts truncate
toward zero. Inputs include negatives, zero and values near the integer limits; NaN or
out-of-range float -> int casts are undefined in ONNX and not tested.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from eqsat.lowering import codegen, codegen_typed
from onnx import TensorProto as T
from onnx import helper as h

import eqsat
from tests.onnx_testing import model, ort_run, vi

I32, I64, F32, F64 = np.int32, np.int64, np.float32, np.float64
ELEM = {np.dtype(t): e for t, e in [(I32, T.INT32), (I64, T.INT64), (F32, T.FLOAT), (bool, T.BOOL)]}
ELEM |= {np.dtype(t): e for t, e in [(F64, T.DOUBLE), (np.int8, T.INT8), (np.uint8, T.UINT8)]}
# The oskut_scads index normalisation before a Gather: x < 0 ? x + n : x, on float x cast to int.
OSKUT_BODY = (
    "((cast((cast(cast({0}, (6)), (1)) < (0.0)), (6)) * (cast({0}, (6)) + {1})) + "
    "(cast({0}, (6)) * cast((not (cast(cast({0}, (6)), (1)) < (0.0))), (6))))"
)


def ints(dtype: Any) -> np.ndarray:
    """Edge values of an integer dtype: its limits, around zero, a few ordinary ones."""
    info = np.iinfo(dtype)
    values = [info.min, info.min + 1, info.max, info.max - 1, -7, -3, -2, -1, 0, 1, 2, 3, 7, 100]
    return np.array([v for v in values if info.min <= v <= info.max], dtype)


def sample(dtype: Any) -> np.ndarray:
    """14 values of ``dtype``: integer edge values, bools, or floats with halves and signs."""
    kind = np.dtype(dtype).kind
    values = {"b": [True, False], "f": [-2.5, -1.0, -0.0, 0.5, 3.0, 1e6]}.get(kind)
    return np.resize(ints(dtype) if values is None else values, 14).astype(dtype)


def same(graph: eqsat.Graph, feeds: dict[str, np.ndarray]) -> eqsat.Executable:
    """The cpu executable of ``graph`` after checking it equals the numpy target exactly."""
    want = eqsat.compile(graph, target="numpy").run(feeds)
    exe = eqsat.compile(graph, target="cpu")
    assert exe.report["reference_ops"] == {}
    for _ in range(2):  # the second run reuses the planned buffers
        got = exe.run(feeds)
        for name, expected in want.items():
            assert got[name].dtype == expected.dtype, name
            np.testing.assert_array_equal(got[name], expected, err_msg=name)
    return exe


def onnx_graph(
    nodes: list[Any], inputs: dict[str, np.ndarray], outputs: dict[str, Any]
) -> eqsat.Graph:
    ins = [vi(n, list(a.shape), ELEM[a.dtype]) for n, a in inputs.items()]
    outs = [vi(n, None, ELEM[np.dtype(d)]) for n, d in outputs.items()]
    return eqsat.load(model(nodes, ins, outs))


def binary(op: str, a: np.ndarray, b: np.ndarray, out: Any = None, **attrs: Any) -> None:
    """One ONNX ``op`` on a row of ``a`` against a column of ``b`` (every pair), checked."""
    feeds = {"a": a.reshape(1, -1), "b": b.reshape(-1, 1)}
    node = h.make_node(op, ["a", "b"], ["y"], **attrs)
    same(onnx_graph([node], feeds, {"y": out or a.dtype.type}), feeds)


@pytest.mark.parametrize("dtype", [I32, I64])
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul"])
def test_wrapping_arithmetic(op: str, dtype: Any) -> None:
    binary(op, ints(dtype), ints(dtype))


@pytest.mark.parametrize("dtype", [I32, I64, np.uint8])
def test_division_truncates_toward_zero(dtype: Any) -> None:
    # x / 0 is undefined in ONNX; the kernel gives the reference's 0 rather than trapping, and
    # MIN / -1 wraps to MIN as in numpy.
    binary("Div", ints(dtype), ints(dtype))


@pytest.mark.parametrize("dtype", [I32, I64])
@pytest.mark.parametrize("fmod", [0, 1])
def test_mod_sign_rules(dtype: Any, fmod: int) -> None:
    binary("Mod", ints(dtype), ints(dtype), fmod=fmod)


def test_division_and_mod_match_onnxruntime() -> None:
    a = np.array([-7, -6, -1, 0, 1, 5, 7, 2**31 - 1], I32).reshape(1, -1)
    b = np.array([-3, -2, 2, 3, 5], I32).reshape(-1, 1)  # no zero divisor: undefined in ONNX
    nodes = [h.make_node("Div", ["a", "b"], ["q"]), h.make_node("Mod", ["a", "b"], ["r"])]
    nodes.append(h.make_node("Mod", ["a", "b"], ["f"], fmod=1))
    ins = [vi("a", [1, 8], T.INT32), vi("b", [5, 1], T.INT32)]
    proto = model(nodes, ins, [vi(n, None, T.INT32) for n in "qrf"])
    feeds = {"a": a, "b": b}
    exe = eqsat.compile(eqsat.load(proto), target="cpu")
    assert exe.report["reference_ops"] == {}
    got = exe.run(feeds)
    for name, want in zip("qrf", ort_run(proto, feeds), strict=True):
        np.testing.assert_array_equal(got[name], want, err_msg=name)


@pytest.mark.parametrize(
    ("src", "dst"),
    [(F32, I32), (F32, I64), (F64, I32), (I64, I32), (I32, I64), (I32, np.int8), (I32, np.uint8),
     (I32, F32), (I64, F32), (I64, F64), (I32, bool), (F32, bool), (bool, I32), (bool, F32),
     (np.uint8, I64)],
)  # fmt: skip
def test_casts(src: Any, dst: Any) -> None:
    if np.dtype(src).kind == "f":
        # Truncation toward zero, halves, large values that still fit the target.
        x = np.array([-2.7, -2.5, -1.0, -0.5, -0.0, 0.0, 0.4, 0.5, 1.5, 2.7, 1e5, -1e5, 123456.7])
        x = np.concatenate([x, [2.0e9, -2.0e9]]) if dst in (I64, bool) or src == F64 else x
    elif src is bool:
        x = np.array([True, False, True])
    else:
        x = ints(src)
    feeds = {"x": x.astype(src)}
    nodes = [h.make_node("Cast", ["x"], ["y"], to=ELEM[np.dtype(dst)])]
    same(onnx_graph(nodes, feeds, {"y": dst}), feeds)


@pytest.mark.parametrize("dtype", [I32, I64])
def test_unary_min_max_and_bits(dtype: Any) -> None:
    x = ints(dtype)
    feeds = {"x": x, "y": x[::-1].copy()}
    nodes = [
        h.make_node("Neg", ["x"], ["neg"]),
        h.make_node("Abs", ["x"], ["abs"]),
        h.make_node("Sign", ["x"], ["sign"]),
        h.make_node("Relu", ["x"], ["relu"]),
        h.make_node("Min", ["x", "y"], ["min"]),
        h.make_node("Max", ["x", "y"], ["max"]),
        h.make_node("BitwiseAnd", ["x", "y"], ["and"]),
        h.make_node("BitwiseXor", ["x", "y"], ["xor"]),
        h.make_node("BitwiseNot", ["x"], ["not"]),
    ]
    names = ["neg", "abs", "sign", "relu", "min", "max", "and", "xor", "not"]
    same(onnx_graph(nodes, feeds, dict.fromkeys(names, dtype)), feeds)


def test_comparisons_logic_and_where() -> None:
    a = np.array([-3, -1, 0, 0, 2, 5, 2**31 - 1], I32)
    feeds = {"a": a, "b": np.array([-3, 0, 0, -1, 3, 5, 2**31 - 2], I32)}
    feeds["f"] = np.array([-3.5, -1.0, 0.0, -0.0, 2.5, 5.0, 2.0**31], F32)
    nodes = [
        h.make_node("Less", ["a", "b"], ["lt"]),
        h.make_node("GreaterOrEqual", ["a", "b"], ["ge"]),
        h.make_node("Equal", ["a", "b"], ["eq"]),
        h.make_node("Not", ["lt"], ["nlt"]),
        h.make_node("And", ["lt", "eq"], ["and"]),
        h.make_node("Or", ["nlt", "eq"], ["or"]),
        h.make_node("Not", ["or"], ["n2"]),
        h.make_node("Where", ["or", "a", "b"], ["where"]),
        h.make_node("Cast", ["f"], ["fi"], to=T.INT32),
        h.make_node("Greater", ["fi", "a"], ["gt"]),
    ]
    outputs = dict.fromkeys(["lt", "ge", "eq", "nlt", "and", "or", "n2", "gt"], bool)
    same(onnx_graph(nodes, feeds, outputs | {"where": I32, "fi": I32}), feeds)


def test_oskut_index_normalisation() -> None:
    # FusedElementwise on float32 (48, 21) and an int32 scalar -> int32: index + n where negative.
    g = eqsat.Graph("index")
    x = g.input("x", (48, 21))
    n = g.input("n", (), np.int32)
    g.output(g.op("FusedElementwise", x, n, body=OSKUT_BODY, dtype="int32"), "y")
    rng = np.random.default_rng(0)
    x = rng.integers(-30, 30, size=(48, 21)).astype(F32)
    x[0, :8] = [-0.5, -0.0, 0.0, 0.7, -1.0, -29.9, 2.0e9, -2.0e9]  # truncation, zeros, large
    same(g, {"x": x, "n": np.array(30, I32)})


@pytest.mark.parametrize(
    ("body", "dtypes", "out"),
    [
        # Literals take the integer operand's dtype (0.5 truncates to 0, 2 stays int32).
        ("(({0} * 0.5) + ({0} / 2))", [I32], I32),
        # Mixed int32 and float32 arithmetic is float64 in numpy, then converted.
        ("(({0} + {1}) * 3)", [I32, F32], F32),
        # Narrow integers wrap at their own width; bool + bool is or, bool * bool is and.
        ("(({0} * {0}) + 100)", [np.int8], np.int8),
        ("(({0} + {1}) if ({0} * {1}) else (not {1}))", [bool, bool], bool),
        # A comparison of bool with a float literal, and integer min/max with literals.
        ("cast((({0} < 0.5) and ({1} >= -2)), (7))", [bool, I64], I64),
        ("max(min({0}, 5), -(3))", [I64], I64),
        ("mod(({0} - 1), 4)", [I32], I32),
    ],
)
def test_fused_bodies(body: str, dtypes: list[Any], out: Any) -> None:
    g = eqsat.Graph("body")
    values = {f"x{k}": sample(d) for k, d in enumerate(dtypes)}
    ins = [g.input(name, a.shape, a.dtype) for name, a in values.items()]
    g.output(g.op("FusedElementwise", *ins, body=body, dtype=np.dtype(out).name), "y")
    same(g, values)


@pytest.mark.parametrize(
    ("body", "dtypes"),
    [
        ("mod({0}, {1})", [F32, F32]),  # float mod: numpy's sign rules, not generated
        ("({0} / {1})", [I32, F32]),  # the reference floor-divides an int by a float
        ("({0} + 1000)", [np.int8]),  # the literal does not fit int8: the reference's error
        ("(1 + 2)", []),  # literal arithmetic: numpy scalars typed unlike literals
    ],
)
def test_unsupported_stays_on_the_reference(body: str, dtypes: list[Any]) -> None:
    out = np.result_type(*dtypes) if dtypes else np.dtype(I64)
    with pytest.raises(codegen.Unsupported):
        codegen_typed.translate_typed(body, [np.dtype(d) for d in dtypes], out)


def test_alias_of_another_dtype_reads_the_operand() -> None:
    # An int32 result may be planned into a float32 operand's buffer of the same size: the
    # kernel must read the float operand, not the int bytes it is writing.
    source = codegen.kernel_source(
        "cast({0}, (6))", [np.dtype(F32)], np.dtype(I32), ((True,),), False, alias=0
    )
    assert "x0_ = x0[i0]" in source
