"""LSTM, GRU and RNN on the cpu target (eqsat.lowering.cpu_recurrent) against the numpy reference.

Every case compiles a one-node graph, checks that no reference step is left and compares every
output with the numpy target (and a few with onnxruntime). Weights are constants, as in exported
models, unless a case feeds them; sizes are tiny except where a case crosses the kernel's switch
from its own small products to BLAS.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from eqsat.lowering import cpu_recurrent

import eqsat
from eqsat.errors import InputError
from tests.cpu_testing import record_pool_maps
from tests.ops.test_recurrent import ACTIVATION_CASES
from tests.ops.test_recurrent import arrays as layer_inputs

F32 = np.float32
F64 = np.dtype(np.float64)


def layer(
    op: str,
    attrs: dict[str, Any] | None = None,
    *,
    seq: int = 5,
    batch: int = 3,
    size: int = 4,
    hidden: int = 6,
    dtype: Any = F32,
    bias: bool = True,
    initial: bool = True,
    peepholes: bool = False,
    lengths: list[int] | None = None,
    fed_weights: bool = False,
    outputs: list[str] | None = None,
    seed: int = 0,
) -> tuple[eqsat.Graph, dict[str, np.ndarray]]:
    """A one-node graph of ``op`` and its feeds."""
    attrs = dict(attrs or {})
    num_dir = 2 if attrs.get("direction") == "bidirectional" else 1
    arrays = layer_inputs(
        op, seq=seq, batch=batch, size=size, hidden=hidden, num_dir=num_dir,
        layout=attrs.get("layout", 0), bias=bias, initial=initial, peepholes=peepholes,
        lengths=lengths, dtype=dtype, seed=seed, drop_trailing=False,
    )  # fmt: skip
    g = eqsat.Graph(op)
    feeds = {}
    values = []
    for name, array in arrays.items():
        if array is None:
            values.append(None)
        elif name in ("W", "R", "B", "P") and not fed_weights:
            values.append(g.constant(array, name))
        else:
            values.append(g.input(name, array.shape, array.dtype))
            feeds[name] = array
    outs = outputs or (["Y", "Y_h", "Y_c"] if op == "LSTM" else ["Y", "Y_h"])
    result = g.op(op, *values, outputs=outs, hidden_size=hidden, **attrs)
    results = result if isinstance(result, tuple) else (result,)
    present = [v for v in results if v is not None]
    for name, value in zip([o for o in outs if o], present, strict=True):
        g.output(value, name)
    return g, feeds


def check(graph: eqsat.Graph, feeds: dict[str, np.ndarray], rtol: float = 1e-5) -> Any:
    want = eqsat.compile(graph, target="numpy").run(feeds)
    exe = eqsat.compile(graph, target="cpu")
    assert exe.report["reference_ops"] == {}
    for _ in range(2):  # the second run reuses the planned buffers
        got = exe.run(feeds)
        assert list(got) == list(want)
        for name, expected in want.items():
            assert got[name].dtype == expected.dtype and got[name].shape == expected.shape
            np.testing.assert_allclose(got[name], expected, rtol=rtol, atol=1e-5, err_msg=name)
    return exe


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_directions_and_layouts(op: str, direction: str, layout: int) -> None:
    check(*layer(op, {"direction": direction, "layout": layout}))


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("layout", [0, 1])
def test_sequence_lens(op: str, layout: int) -> None:
    attrs = {"direction": "bidirectional", "layout": layout}
    check(*layer(op, attrs, lengths=[5, 2, 0]))
    check(*layer(op, {"direction": "reverse", "layout": layout}, lengths=[1, 5, 3]))


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_defaults_clip_and_fed_weights(op: str) -> None:
    check(*layer(op, bias=False, initial=False))
    check(*layer(op, {"clip": 0.4, "direction": "bidirectional"}))
    check(*layer(op, {"direction": "bidirectional"}, fed_weights=True, lengths=[4, 5, 1]))


@pytest.mark.parametrize(
    ("op", "outputs"),
    [("RNN", ["", "Y_h"]), ("GRU", ["Y"]), ("LSTM", ["", "", "Y_c"]), ("LSTM", ["Y", "", "Y_c"])],
)
def test_omitted_outputs(op: str, outputs: list[str]) -> None:
    check(*layer(op, {"direction": "bidirectional"}, outputs=outputs))


def test_lstm_peepholes_and_input_forget() -> None:
    check(*layer("LSTM", {"direction": "bidirectional"}, peepholes=True, lengths=[5, 3, 4]))
    check(*layer("LSTM", {"input_forget": 1, "clip": 0.7}, peepholes=True))


@pytest.mark.parametrize("linear", [0, 1])
def test_gru_linear_before_reset(linear: int) -> None:
    check(*layer("GRU", {"linear_before_reset": linear, "direction": "bidirectional"}))


# Each activation form is a kernel of its own (several seconds to compile on a cold cache): two
# run by default, the rest under -m slow.
FAST_ACTIVATIONS = {5, 8}


@pytest.mark.parametrize(
    ("op", "activations", "attrs"),
    [
        pytest.param(*case, marks=[] if k in FAST_ACTIVATIONS else [pytest.mark.slow])
        for k, case in enumerate(ACTIVATION_CASES)
    ],
)
def test_activations(op: str, activations: list[str], attrs: dict[str, Any]) -> None:
    check(*layer(op, {"activations": activations, **attrs}))


def test_directions_with_different_activations() -> None:
    attrs = {"direction": "bidirectional", "activations": ["Tanh", "Relu"]}
    check(*layer("RNN", attrs, lengths=[5, 1, 3]))


@pytest.mark.parametrize("op", ["GRU", "LSTM"])
def test_blas_paths(op: str) -> None:
    # Batches and projections above SMALL_ROWS rows take BLAS instead of the kernel's loop.
    batch = cpu_recurrent.SMALL_ROWS + 3
    check(*layer(op, {"direction": "bidirectional"}, batch=batch, hidden=9, size=7), rtol=1e-4)
    check(*layer(op, seq=1, batch=1, hidden=33, size=130), rtol=1e-4)


@pytest.mark.parametrize("op", ["LSTM", "RNN"])
@pytest.mark.parametrize("layout", [0, 1])
def test_stepped_large_batch(op: str, layout: int) -> None:
    # LSTM and RNN above SMALL_ROWS batch rows step in Python around numpy's BLAS.
    batch = cpu_recurrent.SMALL_ROWS + 2
    lengths = [4, 0, 2, 4, 1, 3, 4, 4, 2, 1]
    peep = {"peepholes": True} if op == "LSTM" else {}
    for attrs in ({"direction": "bidirectional", "layout": layout}, {"direction": "reverse"}):
        graph, feeds = layer(op, attrs, seq=4, batch=batch, lengths=lengths, **peep)
        check(graph, feeds, rtol=1e-4)
    check(*layer(op, {"layout": layout, "clip": 0.5}, seq=3, batch=batch, fed_weights=True))
    if op == "LSTM":
        check(*layer(op, {"input_forget": 1}, seq=3, batch=batch, outputs=["", "", "Y_c"]))


def directions_on_two_threads(
    monkeypatch: pytest.MonkeyPatch, graph: eqsat.Graph, feeds: dict[str, np.ndarray],
    bad_lengths: np.ndarray,
) -> None:  # fmt: skip
    """Compiled for two threads (every step big enough to split), the layer runs its two
    directions as one map of two chunks per run, matches the numpy reference run after run, and
    a bad ``sequence_lens`` is an InputError."""
    from eqsat.lowering import cpu

    sizes = record_pool_maps(monkeypatch)
    monkeypatch.setattr(cpu, "PARALLEL_FLOPS", 1.0)
    want = eqsat.compile(graph, target="numpy").run(feeds)
    exe = cpu.compile(graph, threads=2)
    sizes.clear()
    for _ in range(3):
        got = exe.run(feeds)
        for name, expected in want.items():
            np.testing.assert_allclose(got[name], expected, rtol=1e-4, atol=1e-5)
    assert sizes == [2, 2, 2]
    with pytest.raises(InputError, match="sequence_lens"):
        exe.run({**feeds, "sequence_lens": bad_lengths})


@pytest.mark.parametrize("layout", [0, 1])
def test_stepped_directions_on_two_threads(monkeypatch: pytest.MonkeyPatch, layout: int) -> None:
    """A bidirectional stepped layer (many batch rows) runs each direction's whole sequence as a
    chunk, with one kernel for both directions or one each."""
    batch = cpu_recurrent.SMALL_ROWS + 2
    lengths = [4, 0, 2, 4, 1, 3, 4, 4, 2, 1]
    bad = np.array([4] * (batch - 1) + [7], np.int32)
    for op, attrs in (
        ("LSTM", {"direction": "bidirectional", "layout": layout}),
        ("RNN", {"direction": "bidirectional", "layout": layout, "activations": ["Tanh", "Relu"]}),
    ):
        graph, feeds = layer(op, attrs, seq=4, batch=batch, lengths=lengths)
        directions_on_two_threads(monkeypatch, graph, feeds, bad)


@pytest.mark.parametrize(
    ("op", "attrs", "seq"),
    [("LSTM", {}, 3), ("LSTM", {"layout": 1}, 12), ("GRU", {}, 12),
     ("GRU", {"linear_before_reset": 1}, 3), ("RNN", {"activations": ["Tanh", "Relu"]}, 3)],
)  # fmt: skip
def test_layer_directions_on_two_threads(
    monkeypatch: pytest.MonkeyPatch, op: str, attrs: dict[str, Any], seq: int
) -> None:
    """Unstepped (a few batch rows), each direction's kernel is a chunk, on scratch of its own,
    after the input projection (the kernel's own for a few rows, BLAS's for more: seq 12)."""
    graph, feeds = layer(op, {"direction": "bidirectional", **attrs}, seq=seq, lengths=[seq, 2, 1])
    directions_on_two_threads(monkeypatch, graph, feeds, np.array([seq, seq + 1, 1], np.int32))


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_stepped_dtypes_and_read_only_input(dtype: Any) -> None:
    # The stepped path reads X in its kernels (each step's rows go next to h): float16 through
    # its float32 copy, a read-only feed through a copy of its own.
    batch = cpu_recurrent.SMALL_ROWS + 1
    rtol = 1e-5 if dtype == np.float64 else 2e-3
    attrs = {"direction": "bidirectional", "layout": 1}
    check(
        *layer("LSTM", attrs, batch=batch, dtype=dtype, lengths=[5, 2, 3, 5, 1, 0, 4, 5, 5]), rtol
    )
    graph, feeds = layer("RNN", {"direction": "reverse"}, batch=batch, dtype=dtype)
    feeds["X"].flags.writeable = False
    check(graph, feeds, rtol)


def test_stacked_weights() -> None:
    rng = np.random.default_rng(1)
    wt, rt = rng.standard_normal((3, 2 * 8)), rng.standard_normal((2, 5, 8))
    bias = rng.standard_normal((2, 8))
    stacked = cpu_recurrent.stacked_weights(wt, bias, rt)
    h, x = rng.standard_normal((4, 5)), rng.standard_normal((4, 3))
    for d in range(2):
        want = h @ rt[d] + x @ wt[:, 8 * d : 8 * (d + 1)] + bias[d]
        np.testing.assert_allclose(np.hstack([h, x, np.ones((4, 1))]) @ stacked[d], want)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_float64_and_float16(dtype: Any) -> None:
    rtol = 1e-5 if dtype == np.float64 else 2e-3
    check(*layer("LSTM", {"direction": "bidirectional"}, dtype=dtype, lengths=[5, 2, 3]), rtol)
    check(*layer("GRU", {"linear_before_reset": 1}, dtype=dtype), rtol)


def test_bad_sequence_lens_is_an_input_error() -> None:
    graph, feeds = layer("LSTM", lengths=[5, 2, 3])
    exe = eqsat.compile(graph, target="cpu")
    with pytest.raises(InputError, match="sequence_lens"):
        exe.run({**feeds, "sequence_lens": np.array([5, 6, 1], np.int32)})


def test_matches_onnxruntime() -> None:
    from onnx import TensorProto as T
    from onnx import helper as h

    from tests.onnx_testing import init, model, ort_run, vi

    rng = np.random.default_rng(3)
    hidden, size = 16, 8
    w = (rng.standard_normal((2, 4 * hidden, size)) * 0.3).astype(F32)
    r = (rng.standard_normal((2, 4 * hidden, hidden)) * 0.3).astype(F32)
    b = (rng.standard_normal((2, 8 * hidden)) * 0.1).astype(F32)
    node = h.make_node(
        "LSTM", ["X", "W", "R", "B"], ["Y", "Y_h", "Y_c"], hidden_size=hidden,
        direction="bidirectional",
    )  # fmt: skip
    proto = model(
        [node],
        [vi("X", [7, 2, size])],
        [vi(n, None, T.FLOAT) for n in ("Y", "Y_h", "Y_c")],
        [init("W", w), init("R", r), init("B", b)],
    )
    feeds = {"X": rng.standard_normal((7, 2, size)).astype(F32)}
    exe = eqsat.compile(eqsat.load(proto), target="cpu")
    assert exe.report["reference_ops"] == {}
    got = exe.run(feeds)
    for name, want in zip(("Y", "Y_h", "Y_c"), ort_run(proto, feeds), strict=True):
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5, err_msg=name)


def test_kernel_source_inlines_the_form() -> None:
    acts = [("hardsigmoid", 0.2, 0.5), ("tanh", 0.0, 0.0), ("relu", 0.0, 0.0)]
    source = cpu_recurrent.kernel_source("LSTM", acts, np.dtype(F32))
    assert "def kernel(" in source and "tanh_f32" in source and "fmax" in source
    assert "A0_0 = np.float32(0.2)" in source and "return fmax(x0, A2_0)" in source
    plain = cpu_recurrent.kernel_source("RNN", [("tanh", 0.0, 0.0)], F64)
    assert "return np.tanh(x0)" in plain and "np.dot" not in plain
    assert "np.dot" in cpu_recurrent.kernel_source("RNN", [("tanh", 0.0, 0.0)], F64, blas=True)
