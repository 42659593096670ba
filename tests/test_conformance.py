"""The official ONNX backend node tests, run against the numpy reference target.

Every case whose nodes all use operators eqsat promises to support runs here; the ones we do not
pass are listed in ``EXCLUDED`` with the reason. A new failure is a test failure, never a silent skip.
The cases come from ``onnx.backend.test.case.node.collect_testcases`` (the wheel ships no data files).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import eqsat

SUPPORTED_OPS = set(
    """Add Sub Mul Div Pow Max Min Mod Neg Abs Reciprocal Sqrt Exp Log Erf Tanh Sigmoid HardSigmoid
    HardSwish Relu LeakyRelu Elu Softplus Gelu Clip Floor Ceil Round Sign Sin Cos Not And Or Equal
    Greater GreaterOrEqual Less LessOrEqual IsNaN Where Cast Identity Dropout MatMul Gemm Conv
    ConvTranspose MaxPool AveragePool GlobalAveragePool GlobalMaxPool BatchNormalization
    InstanceNormalization LayerNormalization Softmax LogSoftmax ReduceMean ReduceSum ReduceMax
    ReduceMin ReduceProd ArgMax Reshape Transpose Flatten Squeeze Unsqueeze Concat Split Slice Gather
    GatherElements Expand Tile Pad Resize Shape Size Constant ConstantOfShape Range If Einsum""".split()
)

# Cases of supported operators that eqsat does not pass, each with its reason.
EXCLUDED: dict[str, str] = {}


def _collect() -> dict[str, object]:
    from onnx.backend.test.case import node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = node.collect_testcases(None)
    chosen = {}
    for case in cases:
        ops = {n.op_type for n in case.model.graph.node}
        if ops and ops <= SUPPORTED_OPS:
            chosen[case.name] = case
    return chosen


CASES = _collect()


def _params() -> list:
    return [
        pytest.param(name, marks=pytest.mark.skip(reason=EXCLUDED[name])) if name in EXCLUDED else name
        for name in sorted(CASES)
    ]


@pytest.mark.parametrize("name", _params())
def test_node(name: str) -> None:
    case = CASES[name]
    graph = eqsat.load(case.model)
    executable = eqsat.compile(graph, target="numpy")
    names = [v.name for v in executable.input_specs]
    for inputs, expected in case.data_sets:
        declared = [vi.name for vi in case.model.graph.input][: len(inputs)]
        feeds = {n: np.asarray(a) for n, a in zip(declared, inputs, strict=True) if n in names}
        outputs = list(executable.run(feeds).values())
        assert len(outputs) == len(expected)
        for got, want in zip(outputs, expected, strict=True):
            want = np.asarray(want)
            assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
            if want.dtype.kind in "fc":
                np.testing.assert_allclose(got, want, rtol=case.rtol, atol=case.atol, equal_nan=True)
            else:
                np.testing.assert_array_equal(got, want)


def test_exclusions_are_current() -> None:
    """An exclusion that names no collected case is stale and must go."""
    assert not set(EXCLUDED) - set(CASES)
