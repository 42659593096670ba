"""Bad input gives the documented eqsat error, naming the file, node, op or input; never a
traceback from a dependency, never a hang: missing, empty, truncated, random and non-ONNX files,
unsupported operators and dtypes, symbolic shapes, bad input_shapes/constants/feeds, undefined
values and cycles.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx_testing import F, init, model, vi

import eqsat
from eqsat.errors import (
    EqsatError,
    InputError,
    ModelLoadError,
    ShapeError,
    UnsupportedOperatorError,
)


@pytest.fixture
def small_model_bytes() -> bytes:
    nodes = [
        h.make_node("MatMul", ["x", "w"], ["m"]),
        h.make_node("Add", ["m", "b"], ["a"]),
        h.make_node("Relu", ["a"], ["y"]),
    ]
    inits = [init("w", np.arange(12, dtype=F).reshape(4, 3)), init("b", np.ones(3, F))]
    proto = model(nodes, [vi("x", [2, 4])], [vi("y", [2, 3])], inits, producer_name="test")
    proto.metadata_props.add(key="author", value="eqsat tests")
    return proto.SerializeToString()


def test_missing_file_directory_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"nope\.onnx: no such file"):
        eqsat.load(tmp_path / "nope.onnx")
    with pytest.raises(ModelLoadError, match="is a directory"):
        eqsat.load(tmp_path)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"empty\.onnx: the file is empty"):
        eqsat.load(empty)
    with pytest.raises(ModelLoadError, match="cannot load a model from a int"):
        eqsat.load(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("image.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10" + bytes(64)),
        ("model.json", json.dumps({"graph": {"node": [{"op_type": "Relu"}]}}).encode()),
        ("notes.txt", b"hello, this is not a model\n" * 10),
        ("zeros.onnx", bytes(100)),
    ],
)
def test_non_onnx_files(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ModelLoadError, match=name):
        eqsat.load(path)


def test_random_bytes() -> None:
    rng = np.random.default_rng(0)
    for size in (1, 7, 64, 1000, 5000):
        for _ in range(20):
            data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            with pytest.raises(EqsatError):
                eqsat.load(data)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated_file(tmp_path: Path, small_model_bytes: bytes, fraction: float) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(small_model_bytes[: int(len(small_model_bytes) * fraction)])
    with pytest.raises(ModelLoadError, match=r"model\.onnx"):
        eqsat.load(path)


def test_every_truncation_is_an_error_or_the_right_model(small_model_bytes: bytes) -> None:
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(F)
    want = eqsat.compile(eqsat.load(small_model_bytes)).run({"x": x})["y"]
    loaded = 0
    for end in range(len(small_model_bytes)):
        try:
            graph = eqsat.load(small_model_bytes[:end])
        except ModelLoadError:
            continue
        loaded += 1  # protobuf parsed a prefix: it must be the whole model (metadata cut only)
        np.testing.assert_array_equal(eqsat.compile(graph).run({"x": x})["y"], want)
    assert loaded < 40


def test_unsupported_ops_listed_at_once() -> None:
    nodes = [
        h.make_node("FancyOp", ["x"], ["a"], name="first"),
        h.make_node("Relu", ["a"], ["b"], name="attr", fancy=3),
        h.make_node("OtherOp", ["b"], ["c"], name="second"),
        h.make_node("Custom", ["c"], ["y"], name="third", domain="com.example"),
    ]
    proto = model(nodes, [vi("x", [2])], [vi("y", None)])
    proto.opset_import.append(h.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedOperatorError) as info:
        eqsat.load(proto)
    found = {(op, node) for op, node, _ in info.value.unsupported}
    assert found == {
        ("FancyOp", "first"),
        ("Relu", "attr"),
        ("OtherOp", "second"),
        ("Custom", "third"),
    }
    message = str(info.value)
    assert "'first'" in message and "'second'" in message and "com.example" in message
    assert "['fancy']" in message


def test_unsupported_ops_inside_branches_and_beside_them() -> None:
    body = h.make_graph(
        [h.make_node("Mystery", ["x"], ["t"], name="deep")], "b", [], [vi("t", [2])]
    )
    nodes = [
        h.make_node("If", ["cond"], ["y"], then_branch=body, else_branch=body, name="if"),
        h.make_node("RandomUniformLike", ["x"], ["r"], name="draw"),
    ]
    proto = model(nodes, [vi("x", [2]), vi("cond", [], T.BOOL)], [vi("y", None)])
    with pytest.raises(UnsupportedOperatorError) as info:
        eqsat.load(proto)
    reasons = {node: why for _, node, why in info.value.unsupported}
    assert set(reasons) >= {"deep", "draw"}
    assert reasons["deep"] == reasons["draw"] == "operator not implemented"


def test_dead_branch_problems_do_not_matter_live_ones_are_listed() -> None:
    bad = h.make_graph([h.make_node("Mystery", ["x"], ["t"], name="bad")], "b", [], [vi("t", [2])])
    worse = h.make_graph(
        [h.make_node("Weird", ["x"], ["e"], name="worse")], "w", [], [vi("e", [2])]
    )
    good = h.make_graph([h.make_node("Neg", ["x"], ["g"])], "g", [], [vi("g", [2])])
    node = h.make_node("If", ["cond"], ["y"], then_branch=good, else_branch=bad)
    proto = model([node], [vi("x", [2]), vi("cond", [], T.BOOL)], [vi("y", None)])
    graph = eqsat.load(proto, constants={"cond": np.array(True)})
    assert graph.op_counts() == {"Neg": 1}
    with pytest.raises(UnsupportedOperatorError, match="Mystery"):
        eqsat.load(proto, constants={"cond": np.array(False)})
    node = h.make_node("If", ["cond"], ["y"], then_branch=worse, else_branch=bad)
    proto = model([node], [vi("x", [2]), vi("cond", [], T.BOOL)], [vi("y", None)])
    with pytest.raises(UnsupportedOperatorError) as info:
        eqsat.load(proto)
    assert {n for _, n, _ in info.value.unsupported} == {"bad", "worse"}


def test_symbolic_dims_need_input_shapes() -> None:
    proto = model(
        [h.make_node("Add", ["x", "z"], ["y"])],
        [vi("x", ["batch", 3, "width"]), vi("z", [2, 3, 1]), vi("s", None)],
        [vi("y", None)],
    )
    with pytest.raises(ShapeError) as info:
        eqsat.load(proto)
    message = str(info.value)
    assert "'x'" in message and "batch" in message and "width" in message
    assert "'s'" in message and "'z'" not in message and "input_shapes" in message
    # The fix is spelled out with the fixed sizes filled in, for Python and for the CLI.
    assert "input_shapes={'x': (?, 3, ?), 's': (...)}" in message
    assert "--shape x=?,3,? --shape s=..." in message


def test_cli_summarizes_many_unsupported_nodes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A dynamically quantized LSTM model has dozens of nodes of a few unsupported kinds: one
    # error line, grouped by operator, naming the first nodes of each.
    from eqsat.cli import main

    nodes = [h.make_node("Mystery", ["x"], ["t0"], name="m0")]
    nodes += [h.make_node("Mystery", [f"t{i}"], [f"t{i + 1}"], name=f"m{i}") for i in range(1, 9)]
    nodes.append(h.make_node("Odd", ["t9"], ["y"], name="odd", domain="com.example"))
    proto = model(nodes, [vi("x", [2])], [vi("y", None)])
    proto.opset_import.append(h.make_opsetid("com.example", 1))
    path = tmp_path / "many.onnx"
    onnx.save(proto, path)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("eqsat: error: UnsupportedOperatorError: ")
    assert "10 node(s) use unsupported operators ['Mystery', 'Odd']" in err
    assert "Mystery (9 nodes: 'm0', 'm1', 'm2' and 6 more)" in err
    assert "Odd (1 node: 'odd'): custom domain 'com.example'" in err


def test_input_shapes_errors() -> None:
    proto = model([h.make_node("Relu", ["x"], ["y"])], [vi("x", ["n", 3])], [vi("y", None)])
    with pytest.raises(ShapeError, match=r"'x'.*rank 3.*rank 2"):
        eqsat.load(proto, input_shapes={"x": (1, 3, 4)})
    with pytest.raises(ShapeError, match=r"'x': dimension 1 is fixed to 3.*given 5"):
        eqsat.load(proto, input_shapes={"x": (2, 5)})
    with pytest.raises(InputError, match=r"'nope'.*not an input.*\['x'\]"):
        eqsat.load(proto, input_shapes={"x": (2, 3), "nope": (1,)})
    with pytest.raises(InputError, match=r"constants names 'y'"):
        eqsat.load(proto, input_shapes={"x": (2, 3)}, constants={"y": np.ones(1)})
    with pytest.raises(ShapeError, match="negative"):
        eqsat.load(proto, input_shapes={"x": (-1, 3)})
    with pytest.raises(InputError, match="sequence of ints"):
        eqsat.load(proto, input_shapes={"x": "abc"})
    with pytest.raises(ShapeError, match=r"'x'.*fixed to 3"):
        eqsat.load(proto, constants={"x": np.ones((2, 4), F)})
    undeclared = model([h.make_node("Relu", ["x"], ["y"])], [vi("x", None)], [vi("y", None)])
    assert eqsat.load(undeclared, input_shapes={"x": [4, 1]}).outputs[0].shape == (4, 1)
    graph = eqsat.load(proto, constants={"x": [[1, -2, 3]]})
    assert graph.nodes == [] and graph.outputs[0].const.tolist() == [[1.0, 0.0, 3.0]]


def test_feed_errors() -> None:
    proto = model(
        [h.make_node("Add", ["x", "n"], ["y"])], [vi("x", [2, 3]), vi("n", [2, 3])], [vi("y", None)]
    )
    exe = eqsat.compile(eqsat.load(proto))
    ok = np.ones((2, 3), F)
    assert exe.run({"x": ok, "n": [[1, 2, 3], [4, 5, 6]]})["y"].dtype == F
    with pytest.raises(InputError, match=r"'x': expected dtype float32, got float64"):
        exe.run({"x": ok.astype(np.float64), "n": ok})
    with pytest.raises(InputError, match=r"'n': expected shape \[2, 3\], got \[3, 2\]"):
        exe.run({"x": ok, "n": ok.T})
    with pytest.raises(InputError, match=r"missing input\(s\) \['n'\]"):
        exe.run({"x": ok})
    with pytest.raises(InputError, match=r"unknown input\(s\) \['z'\]"):
        exe.run({"x": ok, "n": ok, "z": ok})
    with pytest.raises(InputError, match="dict"):
        exe.run([ok, ok])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="'x'"):
        exe.run({"x": [[1, 2], [3]], "n": ok})


@pytest.mark.parametrize(
    ("elem", "name"), [(T.STRING, "STRING"), (T.BFLOAT16, "BFLOAT16"), (T.COMPLEX64, "COMPLEX64")]
)
def test_unsupported_dtypes(elem: int, name: str) -> None:
    proto = model(
        [h.make_node("Identity", ["x"], ["y"])], [vi("x", [2], elem)], [vi("y", None, elem)]
    )
    with pytest.raises(UnsupportedOperatorError, match=rf"input x.*{name}"):
        eqsat.load(proto)


def test_bfloat16_initializer_is_reported() -> None:
    tensor = h.make_tensor("w", T.BFLOAT16, [2], [1.0, 2.0])
    proto = model(
        [h.make_node("Add", ["x", "w"], ["y"])], [vi("x", [2])], [vi("y", None)], [tensor]
    )
    with pytest.raises(UnsupportedOperatorError, match=r"initializer w.*BFLOAT16"):
        eqsat.load(proto)


def test_undefined_value_and_cycle() -> None:
    proto = model(
        [h.make_node("Relu", ["ghost"], ["y"], name="r")], [vi("x", [2])], [vi("y", None)]
    )
    with pytest.raises(ModelLoadError, match=r"node 'r' \(Relu\) reads 'ghost'"):
        eqsat.load(proto)
    proto = model([h.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("z", None)])
    with pytest.raises(ModelLoadError, match="graph output reads 'z'"):
        eqsat.load(proto)
    nodes = [
        h.make_node("Add", ["x", "b"], ["a"], name="n1"),
        h.make_node("Relu", ["a"], ["b"], name="n2"),
    ]
    proto = model(nodes, [vi("x", [2])], [vi("b", None)])
    with pytest.raises(ModelLoadError, match="cycle"):
        eqsat.load(proto)
    nodes = [h.make_node("Relu", ["x"], ["a"]), h.make_node("Neg", ["x"], ["a"], name="again")]
    with pytest.raises(ModelLoadError, match="produced by two nodes"):
        eqsat.load(model(nodes, [vi("x", [2])], [vi("a", None)]))


def test_duplicate_inputs_and_no_outputs() -> None:
    proto = model(
        [h.make_node("Relu", ["x"], ["y"])], [vi("x", [2]), vi("x", [2])], [vi("y", None)]
    )
    with pytest.raises(ModelLoadError, match=r"inputs \['x'\] are declared more than once"):
        eqsat.load(proto)
    proto = model([h.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [])
    with pytest.raises(ModelLoadError, match="no outputs"):
        eqsat.load(proto)


def test_bad_node_errors_name_the_node_and_file(tmp_path: Path) -> None:
    proto = model(
        [h.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        [vi("x", [2, 3])],
        [vi("y", None)],
        [init("w", np.ones((4, 5), F))],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(proto, path)
    with pytest.raises(ShapeError, match=r"bad.onnx: node 'mm' \(MatMul\)"):
        eqsat.load(path)
    proto = model([h.make_node("Relu", ["x"], ["y"], alpha=1.0)], [vi("x", [2])], [vi("y", None)])
    with pytest.raises(UnsupportedOperatorError, match="alpha"):
        eqsat.load(proto)


def test_old_opset_and_missing_opset() -> None:
    proto = model([h.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("y", None)], opset=6)
    proto.opset_import[0].version = 0  # no such opset: ONNX's start at 1
    with pytest.raises(ModelLoadError, match="opset 0"):
        eqsat.load(proto)
    proto = model([h.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("y", None)])
    del proto.opset_import[:]
    proto.opset_import.append(h.make_opsetid("ai.onnx.ml", 3))
    with pytest.raises(ModelLoadError, match=r"no standard ONNX opset.*ai\.onnx\.ml"):
        eqsat.load(proto)
    proto = model([h.make_node("Gelu", ["x"], ["y"])], [vi("x", [2])], [vi("y", None)], opset=13)
    with pytest.raises(UnsupportedOperatorError, match=r"Gelu.*opset 13"):
        eqsat.load(proto)


def test_corrupt_tensor_data_and_missing_external_data(tmp_path: Path) -> None:
    tensor = init("w", np.ones((4, 4), F))
    tensor.raw_data = tensor.raw_data[:10]  # fewer bytes than 16 floats
    proto = model(
        [h.make_node("Add", ["x", "w"], ["y"])], [vi("x", [4, 4])], [vi("y", None)], [tensor]
    )
    with pytest.raises(ModelLoadError, match=r"initializer 'w': unreadable tensor data"):
        eqsat.load(proto)
    proto = model(
        [h.make_node("Add", ["x", "w"], ["y"])],
        [vi("x", [64, 64])],
        [vi("y", None)],
        [init("w", np.ones((64, 64), F))],
    )
    path = tmp_path / "ext.onnx"
    onnx.save(proto, path, save_as_external_data=True, location="ext.bin", size_threshold=0)
    graph = eqsat.load(path)
    assert graph["w"].const.sum() == 64 * 64
    (tmp_path / "ext.bin").unlink()
    with pytest.raises(ModelLoadError, match=r"ext\.onnx: cannot read external tensor data"):
        eqsat.load(path)


def test_runtime_if_with_branches_of_different_shapes() -> None:
    then = h.make_graph([h.make_node("Neg", ["x"], ["t"])], "then", [], [vi("t", None)])
    other = h.make_graph([h.make_node("ReduceSum", ["x"], ["e"])], "else", [], [vi("e", None)])
    node = h.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other, name="branchy")
    proto = model([node], [vi("x", [2]), vi("cond", [], T.BOOL)], [vi("y", None)])
    # Which shape comes out depends on the run-time condition: the If runs in the run-time tail.
    graph = eqsat.load(proto)
    assert graph.tail is not None and "'branchy' (If)" in graph.tail.first
    assert "which branch runs depends on the input(s) ['cond']" in graph.tail.first
    exe = eqsat.compile(graph)
    x = np.array([1.0, 2.0], np.float32)
    assert exe.run({"x": x, "cond": np.array(True)})["y"].tolist() == [-1.0, -2.0]
    assert exe.run({"x": x, "cond": np.array(False)})["y"].tolist() == [3.0]
    assert eqsat.load(proto, constants={"cond": np.array(False)}).outputs[0].shape == (1,)


def test_data_dependent_shape_is_named() -> None:
    """A detector's box filter: NonZero of a run-time value (static shapes only)."""
    nodes = [
        h.make_node("Greater", ["scores", "t"], ["keep"]),
        h.make_node("NonZero", ["keep"], ["idx"]),
    ]
    proto = model(nodes, [vi("scores", [1, 100])], [vi("idx", None, T.INT64)],
                  [init("t", np.array(0.5, np.float32))])  # fmt: skip
    # It loads with a run-time tail that names where the shapes start to depend on the data.
    tailed = eqsat.load(proto)
    assert re.search(r"NonZero.*'keep'.*depends on the data", tailed.tail.first)
    run = eqsat.compile(tailed).run({"scores": np.array([[0.1] * 98 + [0.9, 0.7]], np.float32)})
    assert run["idx"].tolist() == [[0, 0], [98, 99]]
    # On a value known at load time it folds, as before.
    scores = np.array([[0.1, 0.9, 0.7]], np.float32)
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 3
    graph = eqsat.load(proto, constants={"scores": scores})
    assert graph.outputs[0].const.tolist() == [[0, 0], [1, 2]]
