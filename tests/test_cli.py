"""The ``eqsat`` command line: ``run`` and ``info`` on tiny models, and its one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from eqsat.cli import main, parse_shapes
from eqsat.errors import InputError

F = np.float32
W = np.arange(12, dtype=F).reshape(4, 3) / 10


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    """y = Relu(x @ w + b) with a symbolic batch dimension, and z = x * 2 (an integer-free output)."""
    nodes = [
        h.make_node("MatMul", ["x", "w"], ["m"]),
        h.make_node("Add", ["m", "b"], ["a"]),
        h.make_node("Relu", ["a"], ["y"]),
        h.make_node("Mul", ["x", "two"], ["z"]),
    ]
    inits = [
        onnx.numpy_helper.from_array(W, "w"),
        onnx.numpy_helper.from_array(np.full(3, -0.5, F), "b"),
        onnx.numpy_helper.from_array(np.array(2.0, F), "two"),
    ]
    graph = h.make_graph(
        nodes,
        "tiny",
        [h.make_tensor_value_info("x", T.FLOAT, ["batch", 4])],
        [
            h.make_tensor_value_info("y", T.FLOAT, None),
            h.make_tensor_value_info("z", T.FLOAT, None),
        ],
        initializer=inits,
    )
    path = tmp_path / "tiny.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8), path)
    return path


def expected(x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ W - 0.5, 0)


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("eqsat: error: "), err
    assert "Traceback" not in err
    return err


def test_parse_shapes() -> None:
    assert parse_shapes(["x=1,3,224,224", "a=b=2x3", "s="]) == {
        "x": (1, 3, 224, 224),
        "a=b": (2, 3),
        "s": (),
    }
    for bad in ("x", "=1,2", "x=1,a", "x=-1,2"):
        with pytest.raises(InputError, match="--shape"):
            parse_shapes([bad])


def test_run_random_inputs_and_out(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.npz"
    assert (
        main(["run", str(model_path), "--shape", "x=2,4", "--repeat", "3", "--out", str(out)]) == 0
    )
    text = capsys.readouterr().out
    assert "input    x: float32[2, 4]  (random, seed 0)" in text
    assert "output   y: float32[2, 3]" in text and "first run" in text and "(3 runs)" in text
    saved = np.load(out)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(F)  # eqsat.feeds' random input
    np.testing.assert_allclose(saved["y"], expected(x), rtol=1e-6)
    np.testing.assert_allclose(saved["z"], 2 * x)


def test_run_inputs_from_files_fix_the_shape(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.linspace(-1, 1, 20).reshape(5, 4)  # float64: cast to the input's float32
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "o.npz"
    assert (
        main(["run", str(model_path), "--input", f"x={tmp_path / 'x.npy'}", "--out", str(out)]) == 0
    )
    assert "input    x: float32[5, 4]  (file)" in capsys.readouterr().out
    np.testing.assert_allclose(np.load(out)["y"], expected(x.astype(F)), rtol=1e-6)
    np.savez(tmp_path / "all.npz", x=x[:1].astype(F))
    assert main(["run", str(model_path), "--input", str(tmp_path / "all.npz")]) == 0
    assert "output   y: float32[1, 3]" in capsys.readouterr().out


def test_info(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(model_path), "--shape", "x=7,4"]) == 0
    text = capsys.readouterr().out
    assert "input   x: float32[7, 4]" in text and "output  y: float32[7, 3]" in text
    assert "weights 3 tensors, 16 elements" in text and "MatMul" in text
    assert main(["info", str(model_path), "--shape", "x=1x4", "--nodes"]) == 0
    text = capsys.readouterr().out
    assert "= MatMul(x, w)" in text and "= Relu(" in text


def test_info_without_shapes_shows_the_signature(
    model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", str(model_path)]) == 0
    text = capsys.readouterr().out
    assert "give --shape for ['x']" in text
    assert "input   x: float32[batch, 4]  (--shape x=...)" in text
    assert "nodes   4 before folding" in text and "MatMul" in text


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "{tmp}/missing.onnx"], "missing.onnx: no such file"),
        (["run", "{model}"], "--shape"),  # symbolic batch, no --shape
        (["info", "{model}", "--nodes"], "--shape"),
        (["run", "{model}", "--shape", "x=2"], "rank"),
        (["run", "{model}", "--shape", "x=2,5"], "fixed to 4"),
        (["run", "{model}", "--shape", "nope=1,4"], "'nope'"),
        (["run", "{model}", "--shape", "x:1,4"], "--shape"),
        (["run", "{model}", "--shape", "x=2,4", "--target", "warp"], "'warp'"),
        (["run", "{model}", "--shape", "x=2,4", "--input", "x={tmp}/no.npy"], "no.npy"),
        (["run", "{model}", "--shape", "x=2,4", "--input", "{tmp}/bad.npy"], "needs a name"),
        (["run", "{model}", "--shape", "x=2,4", "--out", "{tmp}/no/such/dir/o.npz"], "no"),
        (["run", "{model}", "--shape", "x=2,4", "--repeat", "many"], "invalid int"),
        (["run", "{model}", "--shape", "x=2,4", "--repeat", "-1"], "0 or more"),
        (["info", "{unsupported}"], "'first'"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_errors_are_one_line(
    model_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    needle: str,
) -> None:
    np.save(tmp_path / "bad.npy", np.ones((2, 4), F))
    nodes = [h.make_node("Foo", ["x"], ["a"], name="first"), h.make_node("Bar", ["a"], ["y"])]
    graph = h.make_graph(
        nodes,
        "u",
        [h.make_tensor_value_info("x", T.FLOAT, [1])],
        [h.make_tensor_value_info("y", T.FLOAT, [1])],
    )
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), tmp_path / "u.onnx")
    paths = {
        "tmp": str(tmp_path),
        "model": str(model_path),
        "unsupported": str(tmp_path / "u.onnx"),
    }
    assert main([a.format(**paths) for a in argv]) == 2
    assert needle in error_line(capsys)


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(verb in text for verb in ("run", "info", "optimize", "check-rules"))
    assert main(["run", "--help"]) == 0
    assert "--shape" in capsys.readouterr().out


def test_python_dash_m(model_path: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    ok = subprocess.run(
        [sys.executable, "-m", "eqsat", "run", str(model_path), "--shape", "x=3,4"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "output   y: float32[3, 3]" in ok.stdout
    (tmp_path / "junk.onnx").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    bad = subprocess.run(
        [sys.executable, "-m", "eqsat", "info", str(tmp_path / "junk.onnx")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("eqsat: error: ModelLoadError: ") and "junk.onnx" in bad.stderr
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_run_and_info_show_the_run_time_tail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model whose output shape depends on the data runs, optimized and verified."""
    nodes = [
        h.make_node("Relu", ["x"], ["r"]),
        h.make_node("NonZero", ["r"], ["nz"]),
        h.make_node("Transpose", ["nz"], ["idx"], perm=[1, 0]),
    ]
    graph = h.make_graph(
        nodes,
        "tailed",
        [h.make_tensor_value_info("x", T.FLOAT, [2, 3])],
        [h.make_tensor_value_info("idx", T.INT64, None)],
    )
    path = tmp_path / "tailed.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)]), path)
    out = tmp_path / "o.npz"
    args = ["run", str(path), "--optimize", "--verify", "--target", "cpu", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "tail     run-time tail of 2 node(s)" in text and "NonZero" in text
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(F)  # the CLI's random input
    np.testing.assert_array_equal(np.load(out)["idx"], np.argwhere(x > 0))
    assert main(["info", str(path)]) == 0
    assert "tail    run-time tail of 2 node(s)" in capsys.readouterr().out
