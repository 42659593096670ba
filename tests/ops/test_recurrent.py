"""LSTM, GRU and RNN against onnxruntime on one-node models, and their shape rules and costs.

Each case builds a one-node ONNX model (every input a graph input, so nothing folds), runs it
through the importer and the numpy target, compares every output with onnxruntime and does the
same for the model eqsat exports back (tests.onnx_testing.check); a few also run on ``cpu``.
onnxruntime refuses batch-major layers (layout 1), so those are checked against the time-major
layer on transposed inputs, with the outputs transposed back.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import eqsat
from eqsat import ops
from eqsat.errors import InputError, ShapeError
from tests.onnx_testing import check, model, ort_run, vi

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
SEQ, BATCH, SIZE, HIDDEN = 5, 3, 4, 6
ELEM = {np.dtype(np.float32): T.FLOAT, np.dtype(np.float64): T.DOUBLE, np.dtype(np.int32): T.INT32}


def arrays(
    op: str,
    *,
    seq: int = SEQ,
    batch: int = BATCH,
    size: int = SIZE,
    hidden: int = HIDDEN,
    num_dir: int = 1,
    layout: int = 0,
    bias: bool = True,
    initial: bool = True,
    peepholes: bool = False,
    lengths: list[int] | None = None,
    dtype: Any = np.float32,
    seed: int = 0,
    drop_trailing: bool = True,
) -> dict[str, np.ndarray | None]:
    """The inputs of one layer in ONNX order; ``None`` marks an omitted one (trailing omitted
    ones are dropped, as ONNX does, unless ``drop_trailing`` is false)."""
    rng = np.random.default_rng(seed)

    def rand(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(dtype)

    gates = GATES[op] * hidden
    x = rand(seq, batch, size) if layout == 0 else rand(batch, seq, size)
    state = (num_dir, batch, hidden) if layout == 0 else (batch, num_dir, hidden)
    inputs: dict[str, np.ndarray | None] = {
        "X": x,
        "W": rand(num_dir, gates, size, scale=0.5),
        "R": rand(num_dir, gates, hidden, scale=0.4),
        "B": rand(num_dir, 2 * gates, scale=0.3) if bias else None,
        "sequence_lens": None if lengths is None else np.array(lengths, np.int32),
        "initial_h": rand(*state, scale=0.5) if initial else None,
    }
    if op == "LSTM":
        inputs["initial_c"] = rand(*state, scale=0.5) if initial else None
        inputs["P"] = rand(num_dir, 3 * hidden, scale=0.3) if peepholes else None
    if not drop_trailing:
        return inputs
    # ONNX drops trailing omitted inputs.
    while inputs and list(inputs.values())[-1] is None:
        inputs.pop(list(inputs)[-1])
    return inputs


def layer_model(
    op: str, inputs: dict[str, np.ndarray | None], attrs: dict[str, Any], outputs: list[str]
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A one-node model; ``outputs`` holds "" for an omitted output."""
    names = [n if a is not None else "" for n, a in inputs.items()]
    node = h.make_node(op, names, outputs, hidden_size=HIDDEN, **attrs)
    feeds = {n: a for n, a in inputs.items() if a is not None}
    graph_inputs = [vi(n, list(a.shape), ELEM[a.dtype]) for n, a in feeds.items()]
    graph_outputs = [onnx.ValueInfoProto(name=o) for o in outputs if o]
    return model([node], graph_inputs, graph_outputs), feeds


def _to_time_major(name: str, array: np.ndarray) -> np.ndarray:
    return array.swapaxes(0, 1) if name in ("X", "initial_h", "initial_c") else array


def _batch_major_oracle(
    op: str,
    inputs: dict[str, np.ndarray | None],
    attrs: dict[str, Any],
    outputs: list[str],
) -> list[np.ndarray]:
    """onnxruntime's outputs for a layout-1 layer, from the same layer in layout 0."""
    time_major = {n: None if a is None else _to_time_major(n, a) for n, a in inputs.items()}
    proto, feeds = layer_model(op, time_major, {**attrs, "layout": 0}, outputs)
    got = ort_run(proto, feeds)
    present = [o for o in outputs if o]
    pairs = zip(present, got, strict=True)
    return [a.transpose(2, 0, 1, 3) if o == "Y" else a.swapaxes(0, 1) for o, a in pairs]


def run_case(
    op: str,
    attrs: dict[str, Any] | None = None,
    outputs: list[str] | None = None,
    *,
    cpu: bool = False,
    **kwargs: Any,
) -> eqsat.Graph:
    attrs = dict(attrs or {})
    num_dir = 2 if attrs.get("direction") == "bidirectional" else 1
    layout = attrs.get("layout", 0)
    inputs = arrays(op, num_dir=num_dir, layout=layout, **kwargs)
    outs = outputs or (["Y", "Y_h", "Y_c"] if op == "LSTM" else ["Y", "Y_h"])
    proto, feeds = layer_model(op, inputs, attrs, outs)
    if layout == 0:
        graph = check(proto, feeds, rtol=1e-4, atol=1e-5)
        want = ort_run(proto, feeds)
        targets = ["cpu"] if cpu else []
    else:
        graph = eqsat.load(proto)
        onnx.checker.check_model(eqsat.to_onnx(graph), full_check=True)
        want = _batch_major_oracle(op, inputs, attrs, outs)
        targets = ["numpy", "cpu"] if cpu else ["numpy"]
    for target in targets:
        got = eqsat.compile(graph, target=target).run(feeds)
        assert len(got) == len(want)
        for (name, value), expected in zip(got.items(), want, strict=True):
            assert value.dtype == expected.dtype and value.shape == expected.shape, name
            np.testing.assert_allclose(
                value, expected, rtol=1e-4, atol=1e-5, err_msg=f"{target}: {name}"
            )
    return graph


# ------------------------------------------------------------------ against onnxruntime
@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_directions_and_layouts(op: str, direction: str, layout: int) -> None:
    graph = run_case(op, {"direction": direction, "layout": layout})
    node = next(n for n in graph.nodes if n.op == op)
    num_dir = 2 if direction == "bidirectional" else 1
    y = (SEQ, num_dir, BATCH, HIDDEN) if layout == 0 else (BATCH, SEQ, num_dir, HIDDEN)
    assert node.outputs[0].shape == y


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_defaults_without_bias_or_initial_state(op: str) -> None:
    run_case(op, bias=False, initial=False)


@pytest.mark.parametrize(
    ("op", "outputs"),
    [
        ("RNN", ["", "Y_h"]),
        ("RNN", ["Y"]),
        ("GRU", ["", "Y_h"]),
        ("LSTM", ["", "Y_h"]),
        ("LSTM", ["", "", "Y_c"]),
        ("LSTM", ["Y", "", "Y_c"]),
    ],
)
def test_optional_outputs(op: str, outputs: list[str]) -> None:
    graph = run_case(op, {"direction": "bidirectional"}, outputs)
    node = next(n for n in graph.nodes if n.op == op)
    assert [v is not None for v in node.outputs] == [bool(o) for o in outputs]


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_sequence_lens_at_run_time(op: str, direction: str) -> None:
    # Shorter rows stop early: zero Y rows past their length, Y_h/Y_c from their last step.
    run_case(op, {"direction": direction}, lengths=[SEQ, 2, 4])
    run_case(op, {"direction": direction, "layout": 1}, lengths=[1, SEQ, 3])


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_clip(op: str) -> None:
    run_case(op, {"clip": 0.4, "direction": "bidirectional"})


ACTIVATION_CASES = [
    ("RNN", ["Relu"], {}),
    ("RNN", ["Sigmoid", "Softsign"], {"direction": "bidirectional"}),
    ("RNN", ["LeakyRelu"], {"activation_alpha": [0.2]}),
    ("RNN", ["Elu"], {}),  # alpha defaults to 1.0
    ("RNN", ["Softplus"], {}),
    ("GRU", ["HardSigmoid", "Tanh"], {"activation_alpha": [0.3], "activation_beta": [0.4]}),
    ("GRU", ["Sigmoid", "ScaledTanh"], {"activation_alpha": [0.8], "activation_beta": [1.3]}),
    ("GRU", ["Sigmoid", "Affine"], {"activation_alpha": [0.7], "activation_beta": [0.1]}),
    ("LSTM", ["Sigmoid", "Softsign", "Relu"], {}),
    ("LSTM", ["HardSigmoid", "Tanh", "ThresholdedRelu"], {"activation_alpha": [0.25, 0.1]}),
    (
        "LSTM",
        ["Sigmoid", "Tanh", "Tanh", "HardSigmoid", "LeakyRelu", "Softsign"],
        {"direction": "bidirectional"},  # HardSigmoid 0.2/0.5 and LeakyRelu 0.01 by default
    ),
]


@pytest.mark.parametrize(("op", "activations", "attrs"), ACTIVATION_CASES)
def test_activations(op: str, activations: list[str], attrs: dict[str, Any]) -> None:
    run_case(op, {"activations": activations, **attrs})


def test_gru_linear_before_reset() -> None:
    run_case("GRU", {"linear_before_reset": 1, "direction": "bidirectional"}, cpu=True)
    run_case("GRU", {"linear_before_reset": 1, "layout": 1}, lengths=[2, SEQ, 1])


def test_lstm_peepholes_and_input_forget() -> None:
    run_case("LSTM", peepholes=True)
    run_case("LSTM", {"direction": "reverse"}, peepholes=True, lengths=[3, SEQ, 1])
    run_case("LSTM", {"input_forget": 1, "direction": "bidirectional"}, peepholes=True)


def _graph(op: str, inputs: dict[str, np.ndarray | None], **attrs: Any) -> eqsat.Graph:
    """A one-layer Graph built directly, every output kept."""
    g = eqsat.Graph(op.lower())
    values = [None if a is None else g.input(n, a.shape, a.dtype) for n, a in inputs.items()]
    for v in g.op(op, *values, outputs=3 if op == "LSTM" else 2, **attrs):
        g.output(v)
    return g


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_float64(op: str) -> None:
    # onnxruntime has no float64 recurrent kernels: compare with its float32 run of the same data.
    attrs = {"direction": "bidirectional", "layout": 0}
    inputs = arrays(op, num_dir=2, peepholes=True, lengths=[SEQ, 2, 4], dtype=np.float64)
    got = eqsat.compile(_graph(op, inputs, **attrs)).run(
        {n: a for n, a in inputs.items() if a is not None}
    )
    narrow = {
        n: a if a is None or a.dtype.kind == "i" else a.astype(np.float32)
        for n, a in inputs.items()
    }
    proto, feeds = layer_model(op, narrow, attrs, list(got))
    for (name, value), expected in zip(got.items(), ort_run(proto, feeds), strict=True):
        assert value.dtype == np.float64
        np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_cpu_target_falls_back_to_the_reference(op: str) -> None:
    run_case(op, {"direction": "bidirectional", "layout": 1}, cpu=True, lengths=[4, 1, SEQ])


def test_float16_is_computed_in_float32() -> None:
    inputs = arrays("LSTM", dtype=np.float16)
    got = eqsat.compile(_graph("LSTM", inputs)).run(
        {n: a for n, a in inputs.items() if a is not None}
    )
    wide = {n: None if a is None else a.astype(np.float32) for n, a in inputs.items()}
    want = eqsat.compile(_graph("LSTM", wide)).run({n: a for n, a in wide.items() if a is not None})
    for (name, a), b in zip(got.items(), want.values(), strict=True):
        assert a.dtype == np.float16
        # One rounding at the end: within float16 resolution of the float32 result.
        np.testing.assert_allclose(a.astype(np.float32), b, rtol=1e-3, atol=1e-3, err_msg=name)


def test_constant_layer_folds() -> None:
    g = eqsat.Graph("folded")
    inputs = arrays("GRU")
    consts = [None if a is None else g.constant(a, n) for n, a in inputs.items()]
    y_h = g.op("GRU", *consts, outputs=["", "yh"])[1]
    assert y_h.const is not None and y_h.shape == (1, BATCH, HIDDEN)


# ------------------------------------------------------------------ shape rules and cost
def _layer(op: str, inputs: dict[str, np.ndarray | None], **attrs: Any) -> Any:
    g = eqsat.Graph("bad")
    values = [None if a is None else g.input(n, a.shape, a.dtype) for n, a in inputs.items()]
    return g.op(op, *values, outputs=2, **attrs)


@pytest.mark.parametrize(
    ("op", "change", "attrs", "message"),
    [
        ("LSTM", {"W": np.zeros((1, 20, SIZE), np.float32)}, {}, r"W must have shape \[1, 24, 4\]"),
        ("GRU", {"R": np.zeros((1, 18, 5), np.float32)}, {}, r"W must have shape \[1, 15, 4\]"),
        ("RNN", {}, {"direction": "bidirectional"}, r"W must have shape \[2, 6, 4\]"),
        ("RNN", {}, {"direction": "sideways"}, "direction must be one of"),
        ("RNN", {}, {"hidden_size": 7}, "hidden_size is 7"),
        ("RNN", {}, {"layout": 2}, "layout must be 0 or 1"),
        ("RNN", {}, {"activations": ["Swish"]}, "unknown activation 'Swish'"),
        ("GRU", {}, {"activations": ["Sigmoid"]}, "activations must list 2"),
        ("LSTM", {}, {"clip": -1.0}, "clip must be positive"),
        ("RNN", {"X": np.zeros((SEQ, BATCH), np.float32)}, {}, "must be 3-D"),
        ("RNN", {"X": np.zeros((SEQ, BATCH, SIZE), np.int32)}, {}, "X must be float"),
        ("RNN", {"B": np.zeros((1, 6), np.float32)}, {}, r"B must have shape \[1, 12\]"),
        ("RNN", {"initial_h": np.zeros((1, 2, 6), np.float32)}, {}, "initial_h must have shape"),
        ("RNN", {"B": np.zeros((1, 12), np.float64)}, {}, "B has dtype float64"),
    ],
)
def test_shape_errors(
    op: str, change: dict[str, np.ndarray], attrs: dict[str, Any], message: str
) -> None:
    inputs = {**arrays(op), **change}
    with pytest.raises(ShapeError, match=message):
        _layer(op, inputs, **attrs)


def test_sequence_lens_out_of_range_is_caught() -> None:
    g = eqsat.Graph("lengths")
    inputs = arrays("RNN")
    x, w, r, b, _, h0 = (
        None if a is None else g.input(n, a.shape, a.dtype) for n, a in inputs.items()
    )
    lengths = g.constant(np.array([1, SEQ + 1, 2], np.int32), "lengths")
    with pytest.raises(ShapeError, match=r"sequence_lens \[1, 6, 2\] must lie in \[0, 5\]"):
        g.op("RNN", x, w, r, b, lengths, h0, outputs=2)
    # Fed at run time, a bad length is the feed's fault.
    inputs = arrays("RNN", lengths=[1, 2, 3])
    runnable = eqsat.compile(_graph("RNN", inputs))
    feeds = {n: a for n, a in inputs.items() if a is not None}
    with pytest.raises(InputError, match=r"sequence_lens \[-1, 2, 3\] must lie in \[0, 5\]"):
        runnable.run({**feeds, "sequence_lens": np.array([-1, 2, 3], np.int32)})


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_cost_counts_both_matmuls_per_step(op: str) -> None:
    inputs = arrays(op, num_dir=2)
    g = _graph(op, inputs, direction="bidirectional")
    node = g.outputs[0].producer
    cost = ops.get(op).cost(node.inputs, node.outputs, node.attrs)
    gates = GATES[op] * HIDDEN
    matmuls = 2 * SEQ * 2 * BATCH * gates * (SIZE + HIDDEN)
    from eqsat.ops.recurrent import ELEMENTWISE_FLOPS

    assert cost.flops == matmuls + 2 * SEQ * ELEMENTWISE_FLOPS[op] * BATCH * HIDDEN
    assert cost.bytes_read == sum(a.nbytes for a in inputs.values() if a is not None)
    assert cost.bytes_written == sum(v.nbytes for v in node.outputs)
