"""The official ONNX backend node tests, run against the numpy reference target.

Every case whose nodes all use operators eqsat promises to support runs here; the ones we do not
pass are listed in ``EXCLUDED`` with the reason. A new failure is a test failure, never a silent skip.
The cases come from ``onnx.backend.test.case.node.collect_testcases`` (the wheel ships no data files).
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import eqsat
from eqsat.onnx_functions import expandable

SUPPORTED_OPS = set(
    [
        "NonMaxSuppression",
        "RoiAlign",
        "DeformConv",
        "CumProd",
        "TensorScatter",
        "BitCast",
        "Scan",
        "SequenceConstruct",
        "SequenceEmpty",
        "SequenceInsert",
        "SequenceErase",
        "SequenceAt",
        "SequenceLength",
        "SplitToSequence",
        "ConcatFromSequence",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pow",
        "Max",
        "Min",
        "Mod",
        "Neg",
        "Abs",
        "Reciprocal",
        "Sqrt",
        "Exp",
        "Log",
        "Erf",
        "Tanh",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Relu",
        "LeakyRelu",
        "Elu",
        "Softplus",
        "Gelu",
        "Clip",
        "Floor",
        "Ceil",
        "Round",
        "Sign",
        "Sin",
        "Cos",
        "Not",
        "And",
        "Or",
        "Equal",
        "Greater",
        "GreaterOrEqual",
        "Less",
        "LessOrEqual",
        "IsNaN",
        "Where",
        "Cast",
        "Identity",
        "Dropout",
        "MatMul",
        "Gemm",
        "Conv",
        "ConvTranspose",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "BatchNormalization",
        "InstanceNormalization",
        "LayerNormalization",
        "RMSNormalization",
        "Softmax",
        "LogSoftmax",
        "ReduceMean",
        "ReduceSum",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ArgMax",
        "Reshape",
        "Transpose",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Concat",
        "Split",
        "Slice",
        "Gather",
        "GatherElements",
        "Expand",
        "Tile",
        "Pad",
        "Resize",
        "Shape",
        "Size",
        "Constant",
        "ConstantOfShape",
        "Range",
        "If",
        "Einsum",
        "PRelu",
        "Sum",
        "Mean",
        "Selu",
        "Celu",
        "ThresholdedRelu",
        "Softsign",
        "Mish",
        "Shrink",
        "Tan",
        "Asin",
        "Acos",
        "Atan",
        "Sinh",
        "Cosh",
        "Asinh",
        "Acosh",
        "Atanh",
        "IsInf",
        "Xor",
        "BitwiseAnd",
        "BitwiseOr",
        "BitwiseXor",
        "BitwiseNot",
        "CastLike",
        "GroupNormalization",
        "LpNormalization",
        "MeanVarianceNormalization",
        "LRN",
        "Hardmax",
        "Trilu",
        "EyeLike",
        "GridSample",
        "DFT",
        "STFT",
        "MelWeightMatrix",
        "HannWindow",
        "HammingWindow",
        "BlackmanWindow",
        "QuantizeLinear",
        "DequantizeLinear",
        "LSTM",
        "GRU",
        "RNN",
        "QLinearConv",
        "QLinearMatMul",
        "Unique",
        "Compress",
        "ReverseSequence",
        "LpPool",
        "GlobalLpPool",
        "Det",
        "BitShift",
        "MaxUnpool",
        "Col2Im",
    ]
)

# Cases of supported operators that eqsat does not run, each with its reason. Keys are regular
# expressions matched against the whole case name.
EXCLUDED: dict[str, str] = {
    r".*(BFLOAT16|bfloat16|FLOAT8|FLOAT4|INT4|UINT4|INT2|UINT2|E8M0|e8m0).*": (
        "element type numpy cannot represent (bfloat16, float8, float4, 4- and 2-bit ints, e8m0)"
    ),
    r"test_equal_string.*": "string tensors are not supported",
    r"test_(sequence_insert_at_(back|front)|split_to_sequence_.*)": (
        "sequences as model inputs or outputs: eqsat models take and return tensors (sequences "
        "inside a model are kept as lists at import: tests/test_onnx_sequence.py)"
    ),
    r"test_batchnorm_.*_training_mode": "training mode: eqsat compiles inference graphs",
    r"test_training_dropout.*": "training mode: eqsat compiles inference graphs",
    r"test_(identity|if)_(opt|sequence|seq)": "sequence and optional types are not supported",
    r"test_attention_.*_bf16(_expanded)?": "bfloat16 tensors: numpy cannot represent them",
    r"test_(de)?quantizelinear_(e4m3fn.*|e5m2|float4e2m1|u?int[24])": (
        "float8, float4 and 4-/2-bit integer types: numpy cannot represent them"
    ),
    r"test_maxunpool_export_with_output_shape": (
        "eqsat follows onnxruntime (and PyTorch): I indexes the output of the given output_shape; "
        "the case's data index an output of the inferred shape, copied into output_shape's corner"
    ),
    r"test_bernoulli.*": "random numbers: eqsat compiles deterministic inference graphs",
    r"test_sequence_map.*": "sequence types are not supported",
    r"test_attention_4d_causal_fp16(_expanded)?": (
        "float16 chain: one output is one float16 ulp (4.9e-4 at 0.47) from the expected data, "
        "as onnxruntime's is too; rtol 1e-3 is finer than float16 resolution there"
    ),
}


def exclusion(name: str) -> str | None:
    for pattern, reason in EXCLUDED.items():
        if re.fullmatch(pattern, name):
            return reason
    return None


def _collect() -> dict[str, object]:
    from onnx.backend.test.case import node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = node.collect_testcases(None)
    chosen = {}
    for case in cases:
        ops = {n.op_type for n in case.model.graph.node}
        opset = max(
            (o.version for o in case.model.opset_import if o.domain in ("", "ai.onnx")), default=0
        )
        # Operators eqsat expands into their ONNX definitions (RMSNormalization, Swish, ...)
        # count as supported: their cases test the expansion end to end.
        expanded = {op for op in ops - SUPPORTED_OPS if expandable(op, "", opset)}
        if ops and ops <= SUPPORTED_OPS | expanded:
            chosen[case.name] = case
    return chosen


CASES = _collect()


def _params() -> list:
    return [
        pytest.param(name, marks=pytest.mark.skip(reason=exclusion(name)))
        if exclusion(name)
        else name
        for name in sorted(CASES)
    ]


def _array(data: object) -> np.ndarray:
    """Case data is numpy arrays, or TensorProtos where numpy has no matching dtype."""
    if isinstance(data, onnx.TensorProto):
        return numpy_helper.to_array(data)
    return np.asarray(data)


NEEDS_CONSTANT = re.compile(r"\('([^']+)'\) must be known at compile time")


def load_binding_shape_inputs(model, feeds: dict[str, np.ndarray]) -> eqsat.Graph:
    """Load ``model`` for the feeds' shapes, binding as constants the inputs that shapes depend on.

    eqsat compiles for static shapes, so such inputs are bound with ``constants=``, exactly as a user
    would; the error that asks for each one names it.
    """
    constants: dict[str, np.ndarray] = {}
    while True:
        try:
            shapes = {n: a.shape for n, a in feeds.items() if n not in constants}
            return eqsat.load(model, input_shapes=shapes, constants=constants)
        except eqsat.ShapeError as exc:
            match = NEEDS_CONSTANT.search(str(exc))
            if not match:
                raise
            if match.group(1) in feeds and match.group(1) not in constants:
                constants[match.group(1)] = feeds[match.group(1)]
                continue
            # A value computed from inputs (a function body's internals): bind the integer inputs,
            # the ones shapes are made of.
            integer_inputs = {n: a for n, a in feeds.items() if a.dtype.kind in "iu"}
            if not set(integer_inputs) - set(constants):
                raise
            constants.update(integer_inputs)


@pytest.mark.parametrize("name", _params())
def test_node(name: str) -> None:
    case = CASES[name]
    declared = [vi.name for vi in case.model.graph.input]
    for inputs, expected in case.data_sets:
        feeds = {n: _array(a) for n, a in zip(declared, inputs, strict=False)}
        graph = load_binding_shape_inputs(case.model, feeds)
        executable = eqsat.compile(graph, target="numpy")
        outputs = list(
            executable.run({v.name: feeds[v.name] for v in executable.input_specs}).values()
        )
        assert len(outputs) == len(expected)
        for got, want in zip(outputs, expected, strict=True):
            want = _array(want)
            assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
            if want.dtype.kind in "fc":
                np.testing.assert_allclose(
                    got, want, rtol=case.rtol, atol=case.atol, equal_nan=True
                )
            else:
                np.testing.assert_array_equal(got, want)


def test_exclusions_are_current() -> None:
    """An exclusion that matches no collected case is stale and must go."""
    stale = [p for p in EXCLUDED if not any(re.fullmatch(p, name) for name in CASES)]
    assert not stale
