"""The CPU target against the ONNX backend node tests and onnxruntime on the model zoo.

Node tests: every case the numpy target runs (tests/test_conformance.py) also runs on ``cpu``; a
representative subset by default (one case per generated-kernel family, conv and GEMM variants),
all of them under ``-m slow``, since each new kernel form costs a Numba compilation the first time.
Zoo: every zoo model on ``cpu`` matches onnxruntime (no graph optimizations) within rtol 1e-3,
atol 1e-4; the PP-OCR models (seconds of compilation when the kernel cache is cold) are slow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import eqsat
from tests import test_conformance as conformance
from tests import test_zoo

# One or two cases per kind of code path: generated kernels (float math, broadcasting, bools,
# Where, Clip), BLAS (MatMul, Gemm), conv (im2col, grouped, strided, padded) and fallbacks.
DEFAULT = [
    "test_add_bcast", "test_sigmoid", "test_tanh", "test_erf", "test_exp", "test_gelu_default_1",
    "test_softplus", "test_clip_default_min", "test_where_example", "test_greater_bcast",
    "test_leakyrelu", "test_elu", "test_hardswish", "test_max_example", "test_pow",
    "test_matmul_3d", "test_gemm_all_attributes", "test_gemm_transposeB",
    "test_conv_with_strides_padding", "test_conv_with_autopad_same", "test_basic_conv_with_padding",
    "test_softmax_axis_1", "test_maxpool_2d_pads", "test_layer_normalization_2d_axis0",
]  # fmt: skip
CASES = {n: c for n, c in conformance.CASES.items() if conformance.exclusion(n) is None}


def _params() -> list[Any]:
    return [
        pytest.param(name, marks=[] if name in DEFAULT else [pytest.mark.slow])
        for name in sorted(CASES)
    ]


def test_default_subset_is_current() -> None:
    assert not set(DEFAULT) - set(CASES)


@pytest.mark.parametrize("name", _params())
def test_node(name: str) -> None:
    case = CASES[name]
    declared = [vi.name for vi in case.model.graph.input]
    for inputs, expected in case.data_sets:
        feeds = {n: conformance._array(a) for n, a in zip(declared, inputs, strict=False)}
        graph = conformance.load_binding_shape_inputs(case.model, feeds)
        executable = eqsat.compile(graph, target="cpu")
        fed = {v.name: feeds[v.name] for v in executable.input_specs}
        outputs = list(executable.run(fed).values())
        assert len(outputs) == len(expected)
        for got, want in zip(outputs, expected, strict=True):
            want = conformance._array(want)
            assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
            if want.dtype.kind in "fc":
                np.testing.assert_allclose(
                    got, want, rtol=case.rtol, atol=case.atol, equal_nan=True
                )
            else:
                np.testing.assert_array_equal(got, want)


def _zoo_params() -> list[Any]:
    return [
        pytest.param(name, marks=[pytest.mark.slow] if entry.source == "ppocr" else [], id=name)
        for name, entry in test_zoo.zoo.ZOO.items()
    ]


@pytest.mark.parametrize("name", _zoo_params())
def test_zoo_matches_onnxruntime(name: str) -> None:
    entry = test_zoo.zoo.ZOO[name]
    model = test_zoo._model(entry)
    feeds = entry.feeds(0)
    graph = eqsat.load(model, **entry.load_args())
    got = eqsat.compile(graph, target="cpu").run(entry.input_feeds(0))
    want = test_zoo._run_ort(model, feeds)
    assert list(got) == list(want)
    for key, expected in want.items():
        np.testing.assert_allclose(got[key], expected, rtol=1e-3, atol=1e-4, err_msg=key)
