"""Models whose shapes depend on the data load with a run-time tail (eqsat.tail) and match
onnxruntime on every target, optimized or not, and through an ONNX round trip."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import eqsat
from eqsat.errors import DataDependentShapeError, ShapeError

RNG = np.random.default_rng(7)


def _model(nodes, inputs, outputs, inits=(), opset=13):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
        list(inits),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _ort(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds), strict=True))


def _check(got, want):
    assert list(got) == list(want)
    for name, expected in want.items():
        assert got[name].shape == expected.shape, name
        assert got[name].dtype == expected.dtype, name
        np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-6, err_msg=name)


def _nonzero_model():
    """MatMul -> Relu (static), then NonZero of a mask of it and what follows (the tail); the
    tail also reads the graph input and an initializer, and one output stays static."""
    w = numpy_helper.from_array(RNG.standard_normal((6, 6)).astype(np.float32), "w")
    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Greater", ["r", "half"], ["mask"]),
        helper.make_node("NonZero", ["mask"], ["nz"]),
        helper.make_node("Transpose", ["nz"], ["idx"], perm=[1, 0]),
        helper.make_node("GatherND", ["r", "idx"], ["picked"]),
        helper.make_node("GatherND", ["x", "idx"], ["from_input"]),
        helper.make_node("Mul", ["picked", "half"], ["scaled"]),
        helper.make_node("Sigmoid", ["r"], ["s"]),
        helper.make_node("ReduceSum", ["picked"], ["total"], keepdims=0),
    ]
    outputs = [
        ("scaled", TensorProto.FLOAT),
        ("s", TensorProto.FLOAT),
        ("total", TensorProto.FLOAT),
        ("from_input", TensorProto.FLOAT),
        ("idx", TensorProto.INT64),
    ]
    return _model(nodes, [("x", TensorProto.FLOAT, [4, 6])], outputs, [w, half])


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_nonzero_tail_matches_onnxruntime(target):
    model = _nonzero_model()
    graph = eqsat.load(model)
    assert graph.tail is not None
    assert graph.tail.ops == {"NonZero": 1, "Transpose": 1, "GatherND": 2, "Mul": 1, "ReduceSum": 1}
    assert "NonZero" in graph.tail.first and "run-time tail" in graph.summary()
    exe = eqsat.compile(graph, target)
    for seed in range(3):  # a different number of selected elements each time
        feeds = {"x": np.random.default_rng(seed).standard_normal((4, 6)).astype(np.float32)}
        _check(exe.run(feeds), _ort(model, feeds))


def test_optimized_graph_keeps_its_tail_and_exports():
    model = _nonzero_model()
    result = eqsat.optimize(model, target="cpu", verify=True)
    assert result.graph.tail is not None and result.report.verified
    feeds = {"x": RNG.standard_normal((4, 6)).astype(np.float32)}
    want = _ort(model, feeds)
    _check(eqsat.compile(result.graph, "cpu").run(feeds), want)
    # The unoptimized graph exports to a plain ONNX model that onnxruntime runs.
    exported = eqsat.to_onnx(eqsat.load(model))
    _check(_ort(exported, feeds), want)
    # The optimized one (eqsat ops inside) loads back with its tail.
    reloaded = eqsat.load(result.to_onnx())
    assert reloaded.tail is not None
    _check(eqsat.compile(reloaded, "numpy").run(feeds), want)


def test_topk_of_a_data_dependent_k():
    """k counts the positive inputs: TopK's output shape depends on the data."""
    nodes = [
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.float32(0))),
        helper.make_node("Greater", ["x", "zero"], ["pos"]),
        helper.make_node("Cast", ["pos"], ["posi"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["posi"], ["k"], keepdims=1),
        helper.make_node("Exp", ["x"], ["e"]),
        helper.make_node("TopK", ["e", "k"], ["values", "indices"]),
    ]
    model = _model(
        nodes,
        [("x", TensorProto.FLOAT, [10])],
        [("values", TensorProto.FLOAT), ("indices", TensorProto.INT64)],
    )
    graph = eqsat.load(model)
    assert graph.tail is not None and "TopK" in graph.tail.first
    exe = eqsat.compile(graph, "cpu")
    for seed in range(3):
        feeds = {"x": np.random.default_rng(seed).standard_normal(10).astype(np.float32)}
        _check(exe.run(feeds), _ort(model, feeds))


def test_if_whose_branches_differ_in_shape():
    """A run-time condition choosing between outputs of different shapes."""
    then = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    other = helper.make_graph(
        [helper.make_node("Concat", ["x", "x"], ["o"], axis=0)],
        "else",
        [],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["sum"], keepdims=0),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.float32(0))),
        helper.make_node("Greater", ["sum", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
        helper.make_node("Neg", ["y"], ["z"]),
    ]
    model = _model(nodes, [("x", TensorProto.FLOAT, [3])], [("z", TensorProto.FLOAT)])
    for target in ("numpy", "cpu"):
        exe = eqsat.compile(eqsat.load(model), target)
        for x in ([1.0, 2.0, 3.0], [-1.0, -2.0, 0.5], [4.0, 5.0, 6.0]):
            feeds = {"x": np.array(x, np.float32)}
            _check(exe.run(feeds), _ort(model, feeds))
        # The tail is steered by one bool: each of its values compiled it once, statically.
        assert set(exe.specialized) == {(True,), (False,)}
        assert all(type(e).__name__ != "TailExecutable" for e in exe.specialized.values())


def test_static_models_have_no_tail():
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    graph = eqsat.load(_model(nodes, [("x", TensorProto.FLOAT, [2])], [("y", TensorProto.FLOAT)]))
    assert graph.tail is None
    assert type(eqsat.compile(graph, "cpu")).__name__ == "CpuExecutable"


def test_graphs_built_in_python_refuse_data_dependent_shapes():
    g = eqsat.Graph()
    x = g.input("x", (5,), np.bool_)
    with pytest.raises(DataDependentShapeError, match="depends on the data"):
        g.op("NonZero", x)
    assert issubclass(DataDependentShapeError, ShapeError)


def test_tail_feeds_are_checked():
    exe = eqsat.compile(eqsat.load(_nonzero_model()), "cpu")
    with pytest.raises(eqsat.InputError, match="expected shape"):
        exe.run({"x": np.zeros((3, 6), np.float32)})


def test_tail_errors_name_the_node():
    """A tail node that fails at run time is reported by name, as an eqsat error."""
    nodes = [
        helper.make_node("NonZero", ["x"], ["nz"]),
        helper.make_node("Reshape", ["nz", "shape"], ["y"], name="bad_reshape"),
    ]
    shape = numpy_helper.from_array(np.array([5], np.int64), "shape")
    model = _model(nodes, [("x", TensorProto.FLOAT, [4])], [("y", TensorProto.INT64)], [shape])
    exe = eqsat.compile(eqsat.load(model), "numpy")
    with pytest.raises(eqsat.EqsatError, match="bad_reshape"):
        exe.run({"x": np.array([1, 0, 2, 0], np.float32)})


def _loop_model(trip_from_data: bool):
    """A Loop summing x's rows into a carried value and scanning each partial sum; its trip
    count is a constant, or the number of positive entries of x (data-dependent)."""
    body = helper.make_graph(
        [
            helper.make_node("Gather", ["x", "i"], ["row"], axis=0),
            helper.make_node("Add", ["acc", "row"], ["acc_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Mul", ["acc_out", "two"], ["scan"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc", TensorProto.FLOAT, [3]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [3]),
            helper.make_tensor_value_info("scan", TensorProto.FLOAT, [3]),
        ],
    )
    inits = [
        numpy_helper.from_array(np.array(True), "true"),
        numpy_helper.from_array(np.zeros(3, np.float32), "zeros"),
        numpy_helper.from_array(np.float32(2), "two"),
        numpy_helper.from_array(np.int64(3), "three"),
        numpy_helper.from_array(np.float32(0), "zero"),
        numpy_helper.from_array(np.int64(4), "four"),
    ]
    nodes = [
        helper.make_node("Greater", ["x", "zero"], ["pos"]),
        helper.make_node("Cast", ["pos"], ["posi"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["posi"], ["count"], keepdims=0),
        helper.make_node("Min", ["count", "four"], ["trip_data"]),
        helper.make_node(
            "Loop",
            ["trip_data" if trip_from_data else "three", "true", "zeros"],
            ["total", "partials"],
            body=body,
            name="summing_loop",
        ),
    ]
    return _model(
        nodes,
        [("x", TensorProto.FLOAT, [4, 3])],
        [("total", TensorProto.FLOAT), ("partials", TensorProto.FLOAT)],
        inits,
    )


@pytest.mark.parametrize("trip_from_data", [False, True])
def test_loop_over_run_time_values(trip_from_data):
    model = _loop_model(trip_from_data)
    graph = eqsat.load(model)
    if trip_from_data:
        assert graph.tail is not None and "summing_loop" in graph.tail.first
    else:  # three iterations over the run-time x: unrolled into the static graph
        assert graph.tail is None and "Loop" not in graph.op_counts()
    exe = eqsat.compile(graph, "cpu")
    for seed in range(3):
        feeds = {"x": np.random.default_rng(seed).standard_normal((4, 3)).astype(np.float32)}
        _check(exe.run(feeds), _ort(model, feeds))


def test_loop_over_constants_unrolls_at_load():
    model = _loop_model(trip_from_data=True)
    x = np.array([[1, -1, 2], [0.5, 3, -2], [1, 1, 1], [-1, -1, -1]], np.float32)
    graph = eqsat.load(model, constants={"x": x})
    assert graph.tail is None and not graph.nodes
    want = _ort(model, {"x": x})
    _check({v.name: v.const for v in graph.outputs}, want)


def test_heads_on_zero_detections():
    """Nothing selected: the tail's Conv and ConvTranspose run on an empty batch, as a detector's
    mask or keypoint head does when no box passes its threshold."""
    weights = RNG.standard_normal((3, 2, 3, 3)).astype(np.float32)
    up = RNG.standard_normal((3, 2, 2, 2)).astype(np.float32)
    nodes = [
        helper.make_node("Greater", ["scores", "half"], ["keep"]),
        helper.make_node("NonZero", ["keep"], ["nz"]),
        helper.make_node("Squeeze", ["nz", "axis0"], ["idx"]),
        helper.make_node("Gather", ["features", "idx"], ["picked"], axis=0),
        helper.make_node("Conv", ["picked", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["conv", "up"], ["y"], strides=[2, 2]),
    ]
    inits = [
        numpy_helper.from_array(np.float32(0.5), "half"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(weights, "w"),
        numpy_helper.from_array(up, "up"),
    ]
    model = _model(
        nodes,
        [("scores", TensorProto.FLOAT, [5]), ("features", TensorProto.FLOAT, [5, 2, 4, 4])],
        [("y", TensorProto.FLOAT)],
        inits,
    )
    exe = eqsat.compile(eqsat.load(model), "cpu")
    features = RNG.standard_normal((5, 2, 4, 4)).astype(np.float32)
    for scores in ([0.1, 0.2, 0.3, 0.4, 0.0], [0.1, 0.9, 0.3, 0.7, 0.0]):
        feeds = {"scores": np.array(scores, np.float32), "features": features}
        got = exe.run(feeds)
        _check(got, _ort(model, feeds))
    assert got["y"].shape == (2, 2, 8, 8)


def test_tail_check_tool(tmp_path, capsys):
    """bench/tail_check.py: the tail, fed onnxruntime's values at the split, matches it."""
    from bench import tail_check

    path = tmp_path / "tailed.onnx"
    onnx.save(_nonzero_model(), path)
    assert tail_check.main([str(path), "--seeds", "2"]) == 0
    text = capsys.readouterr().out
    assert "seed 1 scaled: float32[" in text and "max abs diff 0" in text
    static = tmp_path / "static.onnx"
    relu = [helper.make_node("Relu", ["x"], ["y"])]
    onnx.save(_model(relu, [("x", TensorProto.FLOAT, [2])], [("y", TensorProto.FLOAT)]), static)
    assert tail_check.main([str(static)]) == 2


def test_if_with_a_branch_that_does_not_fit_the_shapes():
    """Silero VAD's form: a branch for another sample rate cannot be typed with the given chunk
    size. Only the branch that runs matters (as in onnxruntime): the If goes to the tail, and
    the report says which input to bind to compile it."""
    narrow = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape8"], ["t"])],  # 6 elements cannot be 2x4
        "narrow",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    wide = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape6"], ["e"])],
        "wide",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
    )
    inits = [
        numpy_helper.from_array(np.array([2, 4], np.int64), "shape8"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "shape6"),
        numpy_helper.from_array(np.int64(8000), "rate8k"),
    ]
    nodes = [
        helper.make_node("Equal", ["sr", "rate8k"], ["is8k"]),
        helper.make_node(
            "If", ["is8k"], ["y"], then_branch=narrow, else_branch=wide, name="by_rate"
        ),
        helper.make_node("Relu", ["y"], ["z"]),
    ]
    model = _model(
        nodes,
        [("x", TensorProto.FLOAT, [6]), ("sr", TensorProto.INT64, [])],
        [("z", TensorProto.FLOAT)],
        inits,
    )
    graph = eqsat.load(model)
    assert graph.tail is not None and "['sr']" in graph.tail.first
    result = eqsat.optimize(graph, target="cpu")
    assert "bind ['sr']" in str(result.report)
    feeds = {"x": RNG.standard_normal(6).astype(np.float32), "sr": np.array(16000, np.int64)}
    exe = eqsat.compile(result.graph, "cpu")
    _check(exe.run(feeds), _ort(model, feeds))
    assert type(exe.specialized[(False,)]).__name__ == "CpuExecutable"  # compiled, not reference
    # The other branch does not fit: it cannot be compiled, and running it fails by name.
    with pytest.raises(eqsat.ShapeError, match="Reshape"):
        exe.run({**feeds, "sr": np.array(8000, np.int64)})
    assert exe.specialized[(True,)] is None
    bound = eqsat.load(model, constants={"sr": np.array(16000, np.int64)})
    assert bound.tail is None


def _stepping_loop(trip: int, cond_from_data: bool = False):
    """acc <- acc * 0.5 + x, ``trip`` times, scanning each acc; x is a run-time input."""
    body_nodes = [
        helper.make_node("Mul", ["acc", "half"], ["scaled"]),
        helper.make_node("Add", ["scaled", "x"], ["acc_out"]),
        helper.make_node("Identity", ["acc_out"], ["scan"]),
    ]
    if cond_from_data:
        body_nodes.append(helper.make_node("ReduceSum", ["acc_out"], ["total"], keepdims=0))
        body_nodes.append(helper.make_node("Less", ["total", "big"], ["cond_out"]))
    else:
        body_nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    body = helper.make_graph(
        body_nodes,
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc", TensorProto.FLOAT, [2, 3]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("scan", TensorProto.FLOAT, [2, 3]),
        ],
    )
    inits = [
        numpy_helper.from_array(np.int64(trip), "trip"),
        numpy_helper.from_array(np.array(True), "true"),
        numpy_helper.from_array(np.float32(0.5), "half"),
        numpy_helper.from_array(np.float32(50.0), "big"),
    ]
    nodes = [
        helper.make_node("Relu", ["x"], ["start"]),
        helper.make_node("Loop", ["trip", "true", "start"], ["final", "steps"], body=body),
        helper.make_node("Sigmoid", ["final"], ["y"]),
    ]
    return _model(
        nodes,
        [("x", TensorProto.FLOAT, [2, 3])],
        [("y", TensorProto.FLOAT), ("steps", TensorProto.FLOAT)],
        inits,
    )


@pytest.mark.parametrize("trip", [3, 200])
def test_loop_of_known_trip_count_over_run_time_values_is_unrolled(trip: int):
    """tf2onnx-style loops (a fixed trip count over run-time values) join the static graph, so
    they are optimized and compiled, not run on the reference: beyond MAX_UNROLLED iterations
    too where the body is small (a Keras LSTM's 100 steps)."""
    model = _stepping_loop(trip=trip)
    graph = eqsat.load(model)
    assert graph.tail is None and "Loop" not in graph.op_counts()
    exe = eqsat.compile(eqsat.optimize(graph, target="cpu").graph, "cpu")
    feeds = {"x": RNG.standard_normal((2, 3)).astype(np.float32)}
    _check(exe.run(feeds), _ort(model, feeds))


def test_loops_that_cannot_be_unrolled_go_to_the_tail():
    from eqsat.onnx_loop import unroll_limit

    feeds = {"x": np.abs(RNG.standard_normal((2, 3))).astype(np.float32) + 1}
    body = next(n for n in _stepping_loop(trip=1).graph.node if n.op_type == "Loop").attribute[0].g
    for model, reason in [
        (_stepping_loop(trip=unroll_limit(body) + 1), "more than"),
        (_stepping_loop(trip=100, cond_from_data=True), "condition is computed"),
    ]:
        graph = eqsat.load(model)
        assert graph.tail is not None and reason in graph.tail.first
        for target in ("cpu", "numpy"):
            exe = eqsat.compile(graph, target)
            for _ in range(2):  # the second run reuses the compiled body
                _check(exe.run(feeds), _ort(model, feeds))
            # The Loop ran on its body compiled once (eqsat.onnx_loop_compiled).
            assert [type(b).__name__ for b in exe.loop_bodies.values()] == [
                "CpuExecutable" if target == "cpu" else "NumpyExecutable"
            ]


def test_a_long_loop_whose_state_grows_falls_back_to_the_import():
    """A tail's long Loop whose loop-carried value changes shape (a growing Concat) cannot run
    on one compiled body: it is unrolled over constants as before, with the same results."""
    from eqsat.onnx_loop import unroll_limit

    body = helper.make_graph(
        [
            helper.make_node("Concat", ["acc", "row"], ["acc_out"], axis=0),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "grow",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None),
        ],
    )
    trip = unroll_limit(body) + 1
    model = _model(
        [
            helper.make_node("Relu", ["x"], ["row"]),
            helper.make_node("Loop", ["trip", "true", "row"], ["grown"], body=body),
        ],
        [("x", TensorProto.FLOAT, [1, 3])],
        [("grown", TensorProto.FLOAT)],
        [
            numpy_helper.from_array(np.int64(trip), "trip"),
            numpy_helper.from_array(np.array(True), "true"),
        ],
    )
    feeds = {"x": RNG.standard_normal((1, 3)).astype(np.float32)}
    graph = eqsat.load(model)
    assert graph.tail is not None
    got = eqsat.compile(graph, "cpu").run(feeds)
    assert got["grown"].shape == (trip + 1, 3)
    _check(got, _ort(model, feeds))


def test_run_time_if_is_compiled_per_condition():
    """An If on a run-time condition (a scripted model's): the convs before it are optimized as
    usual, and each branch, with what follows, is optimized and compiled the first time its
    condition value comes up."""

    def conv(name, cin, cout, x, y):
        w = RNG.standard_normal((cout, cin, 3, 3)).astype(np.float32) * 0.2
        nodes = [
            helper.make_node("Conv", [x, f"{name}_w"], [f"{name}_c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"{name}_c"], [y]),
        ]
        return nodes, [numpy_helper.from_array(w, f"{name}_w")]

    stem, stem_w = conv("stem", 3, 8, "x", "h")
    then_nodes, then_w = conv("then", 8, 8, "h", "t")
    else_nodes, else_w = conv("else", 8, 8, "h", "e")
    head, head_w = conv("head", 8, 4, "y", "out")
    branch = [("then", then_nodes, then_w, "t"), ("else", else_nodes, else_w, "e")]
    then, other = (
        helper.make_graph(n, k, [], [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)], w)
        for k, n, w, o in branch
    )
    nodes = [
        *stem,
        helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0),
        helper.make_node("Greater", ["m", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
        *head,
    ]
    inits = [*stem_w, *head_w, numpy_helper.from_array(np.float32(0), "zero")]
    model = _model(
        nodes, [("x", TensorProto.FLOAT, [1, 3, 12, 12])], [("out", TensorProto.FLOAT)], inits
    )
    result = eqsat.optimize(model, target="cpu")
    assert not result.report.kept_input and result.report.fused.get("FusedConv") == 1
    assert result.graph.tail.ops == {"If": 1, "Conv": 1, "Relu": 1}
    exe = eqsat.compile(result.graph, "cpu")
    for sign in (1.0, -1.0, 1.0):
        feeds = {"x": (np.abs(RNG.standard_normal((1, 3, 12, 12))) * sign).astype(np.float32)}
        _check(exe.run(feeds), _ort(model, feeds))
    assert set(exe.specialized) == {(True,), (False,)}
    assert all(type(e).__name__ == "CpuExecutable" for e in exe.specialized.values())


def test_tail_runs_do_not_trigger_garbage_collections(monkeypatch):
    """Loading a tail allocates many short-lived objects; the cyclic collector is paused while
    it loads and runs (it had scanned the whole process every few runs), and left as found."""
    import gc

    from eqsat import onnx_io, tail_lean

    model = _nonzero_model()
    exe = eqsat.compile(eqsat.load(model), "cpu")
    feeds = {"x": RNG.standard_normal((4, 6)).astype(np.float32)}
    seen = []

    def recording(real):
        def call(*args, **kwargs):
            seen.append(gc.isenabled())
            return real(*args, **kwargs)

        return call

    # The lean run (tail_lean) where it can, else the load: either way with the collector off.
    monkeypatch.setattr(onnx_io, "load_proto", recording(onnx_io.load_proto))
    monkeypatch.setattr(tail_lean, "run", recording(tail_lean.run))
    try:
        _check(exe.run(feeds), _ort(model, feeds))
        assert seen == [False] and gc.isenabled()
        gc.disable()
        exe.run(feeds)
        assert seen == [False, False] and not gc.isenabled()
    finally:
        gc.enable()


def test_a_tail_that_splits_again(monkeypatch):
    """Bound to its boundary values, a tail can hold a node too large to fold feeding a
    data-dependent one, and so split again (Mask R-CNN's tail). Its outputs are read by the
    model's names: reading the inner split's list raised a bare KeyError for its boundary."""
    monkeypatch.setattr(eqsat.ir, "FOLD_LIMIT_ELEMENTS", 1000)
    consts = [
        helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))
        for name, array in (("zero", np.float32(0)), ("wide", np.array([300, 8], np.int64)))
    ]
    nodes = [
        *consts,
        helper.make_node("Greater", ["x", "zero"], ["pos"]),
        helper.make_node("NonZero", ["pos"], ["nz"]),  # the tail starts here
        helper.make_node("Cast", ["nz"], ["nzf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["nzf"], ["k"], keepdims=0),
        helper.make_node("Expand", ["x", "wide"], ["xb"]),  # 2400 elements: not folded
        helper.make_node("Add", ["xb", "k"], ["big"]),
        helper.make_node("ReduceMean", ["big"], ["m"], keepdims=0),
        helper.make_node("Less", ["x", "m"], ["sel"]),
        helper.make_node("NonZero", ["sel"], ["y"]),  # data-dependent again, inside the tail
    ]
    model = _model(nodes, [("x", TensorProto.FLOAT, [8])], [("y", TensorProto.INT64)], opset=17)
    feeds = {"x": np.array([3, -1, 2, 0.5, -2, 4, 1, -3], np.float32)}
    want = _ort(model, feeds)
    for target in ("numpy", "cpu"):
        _check(eqsat.compile(eqsat.load(model), target=target).run(feeds), want)


def _detector_like_model(opset: int):
    """A post-processing tail in the shape torchvision's exporter writes: NonZero of a score
    mask, per-box gathers, an old-opset ReduceMin (axes an attribute before opset 18), TopK of
    a data-dependent k and an If on whether anything was found."""
    found = helper.make_graph(
        [helper.make_node("Mul", ["kept", "two"], ["doubled"])],
        "found",
        [],
        [helper.make_tensor_value_info("doubled", TensorProto.FLOAT, None)],
    )
    empty = helper.make_graph(
        [helper.make_node("Identity", ["kept"], ["same"])],
        "empty",
        [],
        [helper.make_tensor_value_info("same", TensorProto.FLOAT, None)],
    )
    reduce = (
        helper.make_node("ReduceMin", ["boxes", "one"], ["low"], keepdims=0)
        if opset >= 18
        else helper.make_node("ReduceMin", ["boxes"], ["low"], axes=[1], keepdims=0)
    )
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["scores"]),
        helper.make_node("Greater", ["scores", "half"], ["mask"]),
        helper.make_node("NonZero", ["mask"], ["nz"]),
        helper.make_node("Squeeze", ["nz", "zero_axis"], ["idx"]),
        helper.make_node("Gather", ["b", "idx"], ["boxes"], axis=0),
        reduce,
        helper.make_node("Shape", ["low"], ["count"]),
        helper.make_node("TopK", ["low", "count"], ["kept", "order"]),
        helper.make_node("Size", ["kept"], ["n"]),
        helper.make_node("Greater", ["n", "zero"], ["any"]),
        helper.make_node("If", ["any"], ["out"], then_branch=found, else_branch=empty),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array([0], np.int64), "zero_axis"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
    ]
    inputs = [("x", TensorProto.FLOAT, [12]), ("b", TensorProto.FLOAT, [12, 4])]
    outputs = [("out", TensorProto.FLOAT), ("order", TensorProto.INT64)]
    return _model(nodes, inputs, outputs, inits, opset=opset)


@pytest.mark.parametrize("opset", [17, 18])
def test_tails_run_lean_and_match_the_load(opset):
    """A tail of ordinary ops (Ifs included) runs node by node through the references
    (eqsat.tail_lean), not by loading it as a model each run: the same numbers, onnxruntime's."""
    from eqsat import onnx_io

    model = _detector_like_model(opset)
    exe = eqsat.compile(eqsat.load(model), "cpu")
    assert exe.tail is not None
    loads = []
    real = onnx_io.load_proto

    def load_proto(*args, **kwargs):
        loads.append(1)
        return real(*args, **kwargs)

    for seed, scale in ((0, 1.0), (1, 1.0), (2, -100.0)):  # the last finds nothing
        rng = np.random.default_rng(seed)
        feeds = {
            "x": (rng.standard_normal(12) * scale).astype(np.float32),
            "b": rng.standard_normal((12, 4)).astype(np.float32),
        }
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(onnx_io, "load_proto", load_proto)
            lean = exe.run(feeds)
        _check(lean, _ort(model, feeds))
        exe.tail._walks["lean"] = None  # the load, for comparison
        loaded = exe.run(feeds)
        del exe.tail._walks["lean"]
        for name, value in loaded.items():
            np.testing.assert_array_equal(lean[name], value)
    assert loads == []


def test_tails_the_lean_run_cannot_take_fall_back_to_the_load():
    """A Loop in the tail (or any node the lean run refuses) loads the tail as before."""
    from eqsat import tail_lean

    model = _loop_model(trip_from_data=True)
    graph = eqsat.load(model)
    assert graph.tail is not None and tail_lean.plan(graph.tail.model) is None
    exe = eqsat.compile(graph, "numpy")
    for seed in range(2):
        feeds = {"x": np.random.default_rng(seed).standard_normal((4, 3)).astype(np.float32)}
        _check(exe.run(feeds), _ort(model, feeds))
