"""The elementwise operator family: numbers, shape and dtype rules, scalar forms, ONNX node tests.

Each op runs through the builder API and ``eqsat.compile(...).run`` and is compared with onnxruntime
on a one-node model (the oracle for the tricky integer and rounding cases), its scalar template is
evaluated element by element against the reference, and the official ONNX backend node tests of
these ops run through the builder.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from scipy import special

import eqsat
from eqsat import ops
from eqsat.errors import ShapeError, UnsupportedOperatorError
from eqsat.ops.elementwise import ANY, SCALAR_FUNCTIONS, scalar_expr

OPS = [
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mod", "Neg", "Abs", "Reciprocal", "Sqrt",
    "Exp", "Log", "Erf", "Tanh", "Sigmoid", "HardSigmoid", "HardSwish", "Relu", "LeakyRelu", "Elu",
    "Softplus", "Gelu", "Clip", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Not", "And", "Or",
    "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "IsNaN", "Where", "Cast",
    "Identity", "Dropout",
]  # fmt: skip
FLOAT_ONLY = [
    "Reciprocal", "Sqrt", "Exp", "Log", "Erf", "Tanh", "Sigmoid", "HardSigmoid", "HardSwish",
    "LeakyRelu", "Elu", "Softplus", "Gelu", "Floor", "Ceil", "Round", "Sin", "Cos", "IsNaN",
    "Dropout",
]  # fmt: skip


# ------------------------------------------------------------------------------- helpers
@dataclass
class Case:
    op: str
    inputs: list[np.ndarray | None]
    attrs: dict[str, Any] = field(default_factory=dict)
    outputs: int = 1
    const: tuple[int, ...] = ()  # inputs bound as constants (those a shape rule reads)
    rtol: float = 1e-5
    atol: float = 1e-6


def build_graph(case: Case) -> tuple[eqsat.Graph, dict[str, np.ndarray]]:
    """A one-node graph made with the builder API, and the feeds for its inputs."""
    g = eqsat.Graph(case.op)
    values, feeds = [], {}
    for i, array in enumerate(case.inputs):
        if array is None or i in case.const:
            values.append(None if array is None else g.constant(array, f"c{i}"))
        else:
            values.append(g.input(f"in{i}", array.shape, array.dtype))
            feeds[f"in{i}"] = array
    result = g.op(case.op, *values, outputs=case.outputs, **case.attrs)
    for value in result if isinstance(result, tuple) else (result,):
        g.output(value)
    return g, feeds


def run_eqsat(op: str, inputs: list, attrs: dict | None = None, outputs: int = 1, const=()) -> list:
    g, feeds = build_graph(Case(op, inputs, attrs or {}, outputs, const))
    got = eqsat.compile(g).run(feeds)
    return [got[v.name] for v in g.outputs]


def one_node_model(case: Case) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The case as an opset-21 ONNX model made with onnx.helper, and its feeds."""
    names = [f"in{i}" if a is not None else "" for i, a in enumerate(case.inputs)]
    feeds = {n: a for n, a in zip(names, case.inputs, strict=True) if a is not None}
    outs = [f"out{i}" for i in range(case.outputs)]
    info = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for n, a in feeds.items()
    ]
    node = helper.make_node(case.op, names, outs, **case.attrs)
    outputs = [helper.make_value_info(n, onnx.TypeProto()) for n in outs]
    graph = helper.make_graph([node], case.op, info, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), feeds


def run_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    ort = pytest.importorskip("onnxruntime")
    model.ir_version = min(model.ir_version, 10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_same(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> None:
    want = np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
    else:
        np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------------- cases
RNG = np.random.default_rng(0)


def floats(*shape: int, lo: float = -3, hi: float = 3, dt: Any = np.float32) -> np.ndarray:
    return RNG.uniform(lo, hi, shape).astype(dt)


def ints(*shape: int, lo: int = -9, hi: int = 10, dt: Any = np.int32) -> np.ndarray:
    return RNG.integers(lo, hi, shape).astype(dt)


def nonzero(a: np.ndarray) -> np.ndarray:
    return np.where(a == 0, 1, a).astype(a.dtype)


def bools(*shape: int) -> np.ndarray:
    return RNG.integers(0, 2, shape).astype(bool)


F, I8, I32, I64, U8 = np.float32, np.int8, np.int32, np.int64, np.uint8
SPECIAL = np.array([0.0, -0.0, 0.5, -0.5, 1.5, 2.5, -2.5, np.inf, -np.inf, np.nan], F)


CASES: dict[str, Case] = {
    "add_bcast": Case("Add", [floats(3, 4), floats(4)]),
    "add_int8_wraps": Case("Add", [np.array([100, -100, 5], I8), np.array([100, -100, 3], I8)]),
    "add_f16": Case("Add", [floats(5, dt=np.float16), floats(5, dt=np.float16)], rtol=1e-3),
    "sub": Case("Sub", [floats(2, 3), floats(2, 1)]),
    "sub_uint8_wraps": Case("Sub", [np.array([1, 200], np.uint8), np.array([2, 100], np.uint8)]),
    "mul": Case("Mul", [floats(4), floats(1)]),
    "mul_int64": Case("Mul", [ints(6, dt=np.int64), ints(6, dt=np.int64)]),
    "div": Case("Div", [floats(3, 4), nonzero(floats(4))]),
    "div_int32_truncates": Case("Div", [ints(4, 5, lo=-50, hi=50), nonzero(ints(5))]),
    "div_int64": Case("Div", [np.array([-7, 7, -7, 7], I64), np.array([2, 2, -2, -2], I64)]),
    "div_uint8": Case("Div", [np.array([7, 200, 255], np.uint8), np.array([2, 3, 16], np.uint8)]),
    "pow": Case("Pow", [floats(6, lo=0.1), floats(6)]),
    "pow_float_int_exponent": Case("Pow", [floats(6), ints(6, lo=-3, hi=4, dt=np.int64)]),
    "pow_int": Case("Pow", [nonzero(ints(8, lo=-4, hi=5)), ints(8, lo=-2, hi=6)]),
    "pow_int_float_exponent": Case(
        "Pow", [ints(6, lo=1, hi=9, dt=np.int64), floats(6, lo=-1, hi=2.5)]
    ),
    "max3_bcast": Case("Max", [floats(2, 3), floats(3), floats(2, 1)]),
    "max_int": Case("Max", [ints(5), ints(5)]),
    "max_nan": Case("Max", [SPECIAL, SPECIAL[::-1].copy()]),
    "min1": Case("Min", [floats(4)]),
    "min_uint8": Case("Min", [ints(5, lo=0, hi=255, dt=U8), ints(5, lo=0, hi=255, dt=U8)]),
    "mod_int": Case("Mod", [ints(12, lo=-20, hi=20), nonzero(ints(12, lo=-6, hi=7))]),
    "mod_int_fmod": Case(
        "Mod", [ints(12, lo=-20, hi=20, dt=np.int64), nonzero(ints(12, dt=np.int64))],
        {"fmod": 1},
    ),
    "mod_float_fmod": Case("Mod", [floats(8, lo=-9, hi=9), nonzero(floats(8))], {"fmod": 1}),
    "mod_uint8": Case("Mod", [ints(6, lo=0, hi=255, dt=U8), ints(6, lo=1, hi=20, dt=U8)]),
    "neg": Case("Neg", [floats(5)]),
    "neg_int8": Case("Neg", [np.array([-128, -1, 0, 127], np.int8)]),
    "abs": Case("Abs", [floats(5)]),
    "abs_int16": Case("Abs", [ints(5, dt=np.int16)]),
    "sign": Case("Sign", [SPECIAL]),
    "sign_int": Case("Sign", [ints(7)]),
    "reciprocal": Case("Reciprocal", [nonzero(floats(6))]),
    "sqrt": Case("Sqrt", [floats(6, lo=0, hi=9)]),
    "exp": Case("Exp", [floats(6, lo=-90, hi=90)]),
    "log": Case("Log", [floats(6, lo=0, hi=100)]),
    "erf": Case("Erf", [floats(8)]),
    "tanh": Case("Tanh", [floats(8, lo=-10, hi=10)]),
    "sigmoid": Case("Sigmoid", [np.concatenate([floats(6), np.array([-100, 100, 0], F)])]),
    "sigmoid_f16": Case("Sigmoid", [floats(8, dt=np.float16)], rtol=1e-3, atol=1e-3),
    "hardsigmoid": Case("HardSigmoid", [floats(8, lo=-5, hi=5)], {"alpha": 0.3, "beta": 0.4}),
    "hardsigmoid_default": Case("HardSigmoid", [floats(8, lo=-5, hi=5)]),
    "hardswish": Case("HardSwish", [floats(8, lo=-5, hi=5)]),
    "relu": Case("Relu", [floats(6)]),
    "relu_int32": Case("Relu", [ints(6)]),
    "leakyrelu": Case("LeakyRelu", [floats(6)], {"alpha": 0.1}),
    "leakyrelu_default": Case("LeakyRelu", [floats(6)]),
    "elu": Case("Elu", [floats(6)], {"alpha": 2.0}),
    "softplus": Case("Softplus", [np.concatenate([floats(6), np.array([-100, 100, 0], F)])]),
    "gelu": Case("Gelu", [floats(8)]),
    "gelu_tanh": Case("Gelu", [floats(8)], {"approximate": "tanh"}),
    "gelu_f16": Case("Gelu", [floats(8, dt=np.float16)], rtol=1e-3, atol=1e-3),
    "clip": Case("Clip", [floats(3, 4), np.array(-1, F), np.array(1.5, F)]),
    "clip_min_only": Case("Clip", [floats(6), np.array(-1, F)]),
    "clip_max_only": Case("Clip", [floats(6), None, np.array(1, F)]),
    "clip_no_bounds": Case("Clip", [floats(6)]),
    "clip_min_above_max": Case("Clip", [floats(6), np.array(2, F), np.array(1, F)]),
    "clip_int": Case("Clip", [ints(6, lo=-300, hi=300), np.array(-3, I32), np.array(100, I32)]),
    "clip_nan": Case("Clip", [SPECIAL, np.array(-1, F), np.array(1, F)]),
    "floor": Case("Floor", [SPECIAL]),
    "ceil": Case("Ceil", [SPECIAL]),
    "round_half_to_even": Case("Round", [np.concatenate([SPECIAL, floats(4)])]),
    "sin": Case("Sin", [floats(6, lo=-10, hi=10)]),
    "cos": Case("Cos", [floats(6, lo=-10, hi=10)]),
    "not": Case("Not", [bools(2, 3)]),
    "and_bcast": Case("And", [bools(2, 3), bools(3)]),
    "or_bcast": Case("Or", [bools(2, 1), bools(3)]),
    "equal": Case("Equal", [ints(8, lo=0, hi=3), ints(8, lo=0, hi=3)]),
    "equal_float": Case("Equal", [SPECIAL, SPECIAL[::-1].copy()]),
    "equal_bool": Case("Equal", [bools(6), bools(6)]),
    "greater": Case("Greater", [floats(2, 3), floats(3)]),
    "greater_or_equal": Case("GreaterOrEqual", [ints(8, lo=0, hi=3), ints(8, lo=0, hi=3)]),
    "less": Case("Less", [ints(8, lo=0, hi=3, dt=np.uint16), ints(8, lo=0, hi=3, dt=np.uint16)]),
    "less_or_equal": Case("LessOrEqual", [floats(6), floats(1)]),
    "isnan": Case("IsNaN", [SPECIAL]),
    "isnan_f16": Case("IsNaN", [SPECIAL.astype(np.float16)]),
    "where_bcast": Case("Where", [bools(2, 1, 3), floats(4, 1), floats(3)]),
    "where_int64": Case("Where", [bools(5), ints(5, dt=np.int64), ints(1, dt=np.int64)]),
    "cast_float_to_int32": Case("Cast", [floats(8, lo=-100, hi=100)], {"to": TensorProto.INT32}),
    "cast_float_to_uint8": Case("Cast", [floats(8, lo=0, hi=255)], {"to": TensorProto.UINT8}),
    "cast_float_to_bool": Case("Cast", [SPECIAL], {"to": TensorProto.BOOL}),
    "cast_int32_to_int8": Case(
        "Cast", [np.array([200, -200, 1000, 5], np.int32)], {"to": TensorProto.INT8}
    ),
    "cast_int_to_float16": Case("Cast", [ints(6, lo=-3000, hi=3000)], {"to": TensorProto.FLOAT16}),
    "cast_bool_to_float": Case("Cast", [bools(6)], {"to": TensorProto.FLOAT}),
    "cast_double_to_float16": Case(
        "Cast", [floats(6, lo=-1e5, hi=1e5, dt=np.float64)], {"to": TensorProto.FLOAT16}
    ),
    "cast_float16_to_float": Case("Cast", [floats(6, dt=np.float16)], {"to": TensorProto.FLOAT}),
    "identity": Case("Identity", [floats(2, 3)]),
    "identity_bool": Case("Identity", [bools(4)]),
    "dropout_inference": Case(
        "Dropout", [floats(3, 4), np.array(0.5, F), np.array(False)], outputs=2, const=(1, 2)
    ),
    "dropout_plain": Case("Dropout", [floats(5)]),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_onnxruntime(name: str) -> None:
    case = CASES[name]
    got = run_eqsat(case.op, case.inputs, case.attrs, case.outputs, case.const)
    want = run_onnxruntime(*one_node_model(case))
    for g, w in zip(got, want, strict=True):
        assert_same(g, w, case.rtol, case.atol)


@pytest.mark.parametrize("name", sorted(CASES))
def test_exported_node_runs_on_onnxruntime(name: str) -> None:
    # Checks that the attributes eqsat fills in (defaults) export as a node onnxruntime accepts.
    case = CASES[name]
    g, feeds = build_graph(case)
    want = run_onnxruntime(eqsat.to_onnx(g), feeds)
    got = eqsat.compile(g).run(feeds)
    for value, w in zip(g.outputs, want, strict=True):
        assert_same(got[value.name], w, case.rtol, case.atol)


def test_every_op_is_covered() -> None:
    assert {c.op for c in CASES.values()} == set(OPS)


# ------------------------------------------------------------------------------- exact values
@pytest.mark.parametrize(
    ("op", "inputs", "attrs", "want"),
    [
        ("Round", [np.array([0.5, 1.5, 2.5, -0.5, -1.5, 2.4], F)], {}, [0, 2, 2, -0, -2, 2]),
        ("Div", [np.array([-7, 7, -7, 7], np.int32), np.array([2, 2, -2, -2], np.int32)], {},
         [-3, 3, 3, -3]),
        ("Mod", [np.array([-7, 7, -7, 7], np.int32), np.array([3, 3, -3, -3], np.int32)], {},
         [2, 1, -1, -2]),
        ("Mod", [np.array([-7, 7, -7, 7], np.int32), np.array([3, 3, -3, -3], np.int32)],
         {"fmod": 1}, [-1, 1, -1, 1]),
        ("Pow", [np.array([2, 3, -2, 1, -1], np.int32), np.array([3, -1, 3, -5, -3], np.int32)],
         {}, [8, 0, -8, 1, -1]),
        ("Pow", [np.array([2, 3, 5], np.int64), np.array([0.5, 1.5, -1.0], F)], {}, [1, 5, 0]),
        ("Cast", [np.array([-2.7, 2.7, -0.5, 0.0], F)], {"to": TensorProto.INT64}, [-2, 2, 0, 0]),
        # 'saturate' concerns float8 targets only; eqsat accepts it anywhere (onnxruntime refuses).
        ("Cast", [np.array([1.5, 1e5], F)], {"to": TensorProto.FLOAT16, "saturate": 0},
         [1.5, np.inf]),
        ("Clip", [np.array([-3, 0, 3], F), None, np.array(1, F)], {}, [-3, 0, 1]),
        ("HardSwish", [np.array([-4, -3, 0, 1, 3, 4], F)], {}, [0, 0, 0, 2 / 3, 3, 4]),
    ],
)  # fmt: skip
def test_exact_values(op: str, inputs: list, attrs: dict, want: list) -> None:
    (got,) = run_eqsat(op, inputs, attrs)
    np.testing.assert_allclose(got, np.asarray(want, got.dtype), rtol=1e-6)


def test_float64_matches_numpy() -> None:
    x = floats(9, dt=np.float64)
    inner = np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)
    for op, attrs, want in [
        ("Gelu", {}, x * (1 + special.erf(x / np.sqrt(2))) / 2),
        ("Gelu", {"approximate": "tanh"}, x * (1 + np.tanh(inner)) / 2),
        ("Erf", {}, special.erf(x)),
        ("Sin", {}, np.sin(x)),
    ]:
        (got,) = run_eqsat(op, [x], attrs)
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_dropout_mask_is_all_true() -> None:
    x = floats(2, 3)
    out, mask = run_eqsat("Dropout", [x, np.array(0.3, F)], outputs=2)
    np.testing.assert_array_equal(out, x)
    assert mask.dtype == np.bool_ and mask.shape == (2, 3) and mask.all()


# ------------------------------------------------------------------------------- shapes, dtypes
def test_broadcasting() -> None:
    a, b = floats(2, 1, 3), floats(4, 1)
    (got,) = run_eqsat("Add", [a, b])
    assert got.shape == (2, 4, 3)
    np.testing.assert_array_equal(got, a + b)
    c, x, y = bools(2, 1, 1), floats(1, 4, 1), floats(5)
    (got,) = run_eqsat("Where", [c, x, y])
    np.testing.assert_array_equal(got, np.where(c, x, y))
    (got,) = run_eqsat("Max", [a, b, floats(3)])
    assert got.shape == (2, 4, 3)


def test_scalar_bounds_do_not_broadcast() -> None:
    x = np.array(5.0, F)
    (got,) = run_eqsat("Clip", [x, np.array([1.0], F), np.array([[2.0]], F)])
    assert got.shape == () and got == 2.0


@pytest.mark.parametrize("op", FLOAT_ONLY)
def test_float_only_ops_reject_integers(op: str) -> None:
    g = eqsat.Graph()
    with pytest.raises(ShapeError, match="floating-point"):
        g.op(op, g.input("x", (3,), np.int32))


@pytest.mark.parametrize("op", ["Not", "And", "Or"])
def test_logical_ops_need_bool(op: str) -> None:
    g = eqsat.Graph()
    x = g.input("x", (3,), np.int32)
    with pytest.raises(ShapeError, match="bool"):
        g.op(op, *[x] * (1 if op == "Not" else 2))


@pytest.mark.parametrize(
    ("op", "dtypes", "attrs", "match"),
    [
        ("Neg", [np.uint8], {}, "does not take uint8"),
        ("Relu", [np.uint32], {}, "does not take uint32"),
        ("Add", [bool, bool], {}, "does not take bool"),
        ("Greater", [bool, bool], {}, "does not take bool"),
        ("Where", [np.int64, F, F], {}, "input 0 .* expected bool"),
        ("Where", [bool, F, np.float64], {}, "share one dtype"),
        ("Pow", [F, bool], {}, "input 1 .* expected numeric"),
        ("Clip", [F, np.float64], {}, "share one dtype"),
        ("Mod", [np.int32, np.int32], {"fmod": 2}, "fmod must be 0 or 1"),
        ("Gelu", [F], {"approximate": "fast"}, "'none' or 'tanh'"),
        ("Cast", [F], {}, "required attribute 'to'"),
        ("Cast", [F], {"to": TensorProto.BFLOAT16}, "BFLOAT16 is not supported"),
        ("Cast", [F], {"to": TensorProto.STRING}, "STRING is not supported"),
        ("Cast", [F], {"to": 99}, "not an ONNX data type"),
        ("Cast", [F], {"to": np.float32}, "data type number"),
        ("Dropout", [np.int32], {}, "floating-point"),
    ],
)
def test_rejected_signatures(op: str, dtypes: list, attrs: dict, match: str) -> None:
    g = eqsat.Graph()
    inputs = [g.input(f"x{i}", (3,), d) for i, d in enumerate(dtypes)]
    with pytest.raises(ShapeError, match=match):
        g.op(op, *inputs, **attrs)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda g: g.op("Add", g.input("a", (3,)), g.input("b", (4,))), "do not broadcast"),
        (lambda g: g.op("Mul", g.input("a", (3,)), g.input("b", (3,), I64)),
         r"share one dtype.*float32.*int64"),
        (lambda g: g.op("Clip", g.input("x", (3,)), g.input("lo", (3,))), "must be a scalar"),
        (lambda g: g.op("Add", g.input("x", (3,)), None), "required"),
        (lambda g: g.op("Max"), "takes 1.* inputs"),
        (lambda g: g.op("Dropout", g.input("x", (3,)), None, g.constant(np.array(True))),
         "training_mode true"),
        (lambda g: g.op("Dropout", g.input("x", (3,)), None, g.input("t", (), bool)),
         "compile time"),
    ],
)  # fmt: skip
def test_rejected_graphs(build: Callable[[eqsat.Graph], Any], match: str) -> None:
    with pytest.raises(ShapeError, match=match):
        build(eqsat.Graph())


def test_unknown_attribute_is_rejected() -> None:
    g = eqsat.Graph()
    with pytest.raises(UnsupportedOperatorError, match="alpha"):
        g.op("Relu", g.input("x", (3,)), alpha=0.1)


# ------------------------------------------------------------------------------- folding, cost
def test_constant_inputs_fold_without_warnings() -> None:
    g = eqsat.Graph()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = g.op("Exp", g.constant(np.array([0.0, 1000.0], F)))
        z = g.op(
            "Div", g.constant(np.array([1, 7], np.int32)), g.constant(np.array([0, -2], np.int32))
        )
    np.testing.assert_array_equal(y.const, [1.0, np.inf])
    np.testing.assert_array_equal(z.const, [0, -3])  # x / 0 is undefined in ONNX


def test_cost() -> None:
    g = eqsat.Graph()
    x = g.input("x", (2, 3))
    y = g.op("Exp", x)
    cost = ops.get("Exp").cost([x], [y], y.producer.attrs)
    assert (cost.flops, cost.bytes_read, cost.bytes_written) == (60, 24, 24)
    m = g.op("Max", x, x, x)
    assert ops.get("Max").cost([x, x, x], [m], {}).flops == 2 * 6
    i = g.op("Identity", x)
    assert ops.get("Identity").cost([x], [i], {}).flops == 0


# ------------------------------------------------------------------------------- scalar forms
def default_attrs(op: str) -> dict[str, Any]:
    attrs = dict(ops.get(op).attrs)
    if op == "Cast":
        attrs["to"] = TensorProto.FLOAT
    return attrs


def test_every_elementwise_op_has_a_scalar_template() -> None:
    elementwise = {name for name, d in ops.OPS.items() if d.elementwise}
    assert set(OPS) <= elementwise
    for name in sorted(elementwise):
        opdef = ops.get(name)
        assert isinstance(opdef.scalar, str) and opdef.scalar, name
        operands = [f"x{i}" for i in range(min(opdef.max_inputs, 3))]
        tree = ast.parse(scalar_expr(name, operands, default_attrs(name)), mode="eval")
        calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call)}
        assert calls <= set(SCALAR_FUNCTIONS), (name, calls)
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert names <= set(operands) | calls | {"inf", "nan"}, (name, names)


def test_scalar_expr_variants() -> None:
    assert scalar_expr("Max", ["a"], {}) == "a"
    assert scalar_expr("Min", ["a", "b", "c"], {}) == "min(min(a, b), c)"
    assert scalar_expr("Clip", ["a"], {}) == "a"
    assert scalar_expr("Clip", ["a", None, "c"], {}) == "min(a, c)"
    assert scalar_expr("Clip", ["a", "b"], {}) == "max(a, b)"
    assert scalar_expr("Mod", ["a", "b"], {"fmod": 1}) == "fmod(a, b)"
    assert scalar_expr("LeakyRelu", ["a"], {"alpha": 0.5}) == "(a if a >= 0 else 0.5 * a)"
    assert scalar_expr("Cast", ["a"], {"to": 7, "saturate": 1}) == "cast(a, 7)"


def eval_scalar(case: Case) -> np.ndarray:
    """Evaluate an op's scalar expression element by element, as a generated kernel would."""
    present = [a for a in case.inputs if a is not None]
    shape = np.broadcast_shapes(*(a.shape for i, a in enumerate(case.inputs) if a is not None))
    if case.op in ("Clip", "Dropout"):
        shape = case.inputs[0].shape
    names = [f"x{i}" if a is not None else None for i, a in enumerate(case.inputs)]
    code = compile(
        scalar_expr(case.op, names, {**default_attrs(case.op), **case.attrs}), "", "eval"
    )
    wide = [a.astype(F) if a.dtype == np.float16 else a for a in present]
    arrays = [np.broadcast_to(a.reshape(()) if a.size == 1 and i else a, shape) for i, a in
              enumerate(wide)]  # fmt: skip
    env: dict[str, Any] = {"__builtins__": {}, **SCALAR_FUNCTIONS, "inf": np.inf, "nan": np.nan}
    out = []
    with np.errstate(all="ignore"):
        for index in np.ndindex(*shape):
            scope = {n: a[index] for n, a in zip([n for n in names if n], arrays, strict=True)}
            out.append(eval(code, env, scope))
    return np.array(out).reshape(shape)


# Division on integers follows C in the scalar language, not Python's `/` that this evaluator uses.
@pytest.mark.parametrize("name", sorted(n for n in CASES if n not in {"div_int32_truncates",
                                        "div_int64", "div_uint8"}))  # fmt: skip
def test_scalar_template_matches_reference(name: str) -> None:
    case = CASES[name]
    (got,) = run_eqsat(case.op, case.inputs, case.attrs, 1, case.const)
    want = eval_scalar(case).astype(got.dtype)
    tol = 1e-3 if got.dtype == np.float16 else 1e-6
    assert_same(got, want, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------- ONNX node tests
NODE_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"
# Inputs the shape rule reads at compile time, so the test binds them as constants.
CONST_INPUTS = {"Dropout": (1, 2)}
SKIP = {
    "test_identity_sequence": "sequence values: eqsat graphs hold tensors only",
    "test_identity_opt": "optional values: eqsat graphs hold tensors only",
    "test_dropout_random_old": "opset-7 'ratio' attribute: the importer drops it (onnx_upgrade)",
}
# Cases eqsat must refuse with a ShapeError rather than compute.
REJECTED = {
    name: "Dropout in training mode is random; eqsat compiles inference graphs"
    for name in (
        "test_training_dropout", "test_training_dropout_default",
        "test_training_dropout_default_mask", "test_training_dropout_mask",
        "test_training_dropout_zero_ratio", "test_training_dropout_zero_ratio_mask",
    )
}  # fmt: skip
DataSets = Callable[[], list[tuple[list[Any], list[Any]]]]


def _from_files(case_dir: Path) -> list[tuple[list[Any], list[Any]]]:
    def tensors(folder: Path, kind: str) -> list[Any]:
        files = sorted(folder.glob(f"{kind}_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
        return [onnx.load_tensor(str(p)) for p in files]

    return [
        (tensors(d, "input"), tensors(d, "output"))
        for d in sorted(case_dir.glob("test_data_set_*"))
    ]


def official_cases(data_dir: Path = NODE_DATA) -> dict[str, tuple[onnx.ModelProto, DataSets]]:
    """Single-node ONNX backend tests of this family: from the data files when onnx ships
    them, else generated in memory by onnx's own case modules (wheels ship no data files)."""
    mine = set(OPS)
    found: dict[str, tuple[onnx.ModelProto, DataSets]] = {}
    if data_dir.is_dir() and any(data_dir.iterdir()):
        for case_dir in sorted(data_dir.iterdir()):
            model = onnx.load(str(case_dir / "model.onnx"))
            if len(model.graph.node) == 1 and model.graph.node[0].op_type in mine:
                found[case_dir.name] = (model, lambda d=case_dir: _from_files(d))
        return found
    from onnx.backend.test.case import node as node_cases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for op in sorted(mine):
            snake = re.sub(r"(?<!^)(?=[A-Z])", "_", op).lower()
            for module in {op.lower(), f"{op.lower()}_", snake}:
                full = f"{node_cases.__name__}.{module}"
                if importlib.util.find_spec(full) is not None:
                    importlib.import_module(full)
    for case in node_cases._NodeTestCases:
        nodes = case.model.graph.node
        if len(nodes) == 1 and nodes[0].op_type in mine:
            found[case.name] = (case.model, lambda c=case: c.data_sets)
    return found


OFFICIAL = official_cases()


def _as_array(value: Any) -> Any:
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return np.asarray(value) if isinstance(value, np.generic) else value


def _unsupported(arrays: list[Any]) -> str | None:
    for a in arrays:
        if not isinstance(a, np.ndarray):
            return f"{type(a).__name__} values are not tensors"
        if a.dtype not in ANY:
            return f"dtype {a.dtype} is not supported by eqsat"
    return None


def _attr(attribute: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(attribute)
    return value.decode() if isinstance(value, bytes) else value


def test_official_cases_read_from_data_files(tmp_path: Path) -> None:
    # The layout onnx's source tree has: <case>/model.onnx, <case>/test_data_set_0/input_0.pb ...
    for name in ("test_clip_default_max", "test_dropout_default_mask"):
        model, data_sets = OFFICIAL[name]
        (tmp_path / name / "test_data_set_0").mkdir(parents=True)
        onnx.save(model, str(tmp_path / name / "model.onnx"))
        inputs, outputs = data_sets()[0]
        for kind, arrays in (("input", inputs), ("output", outputs)):
            for i, a in enumerate(arrays):
                path = tmp_path / name / "test_data_set_0" / f"{kind}_{i}.pb"
                path.write_bytes(numpy_helper.from_array(_as_array(a)).SerializeToString())
    found = official_cases(tmp_path)
    assert sorted(found) == ["test_clip_default_max", "test_dropout_default_mask"]
    inputs, outputs = found["test_clip_default_max"][1]()[0]
    want_inputs, want_outputs = OFFICIAL["test_clip_default_max"][1]()[0]
    for got, want in zip([*inputs, *outputs], [*want_inputs, *want_outputs], strict=True):
        np.testing.assert_array_equal(_as_array(got), _as_array(want))


def test_official_cases_were_found() -> None:
    ops_found = {model.graph.node[0].op_type for model, _ in OFFICIAL.values()}
    assert len(OFFICIAL) > 200
    assert ops_found == set(OPS)


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.skip(reason=SKIP[n])) if n in SKIP else n
     for n in sorted(OFFICIAL)],
)  # fmt: skip
def test_onnx_node(name: str) -> None:
    model, data_sets = OFFICIAL[name]
    node = model.graph.node[0]
    attrs = {a.name: _attr(a) for a in node.attribute}
    for raw_inputs, raw_outputs in data_sets():
        inputs = [_as_array(a) for a in raw_inputs]
        outputs = [_as_array(a) for a in raw_outputs]
        reason = _unsupported(inputs + outputs)
        if reason:
            pytest.skip(reason)
        present = iter(inputs)
        arrays = [next(present) if n else None for n in node.input]
        const = CONST_INPUTS.get(node.op_type, ())
        if name in REJECTED:
            with pytest.raises(ShapeError, match="training"):
                run_eqsat(node.op_type, arrays, attrs, len(node.output), const)
            continue
        got = run_eqsat(node.op_type, arrays, attrs, len(node.output), const)
        for g, want in zip(got, outputs, strict=True):
            assert_same(g, want, rtol=1e-3, atol=1e-5)
