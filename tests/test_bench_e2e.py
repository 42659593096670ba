"""bench/e2e.py on a zoo model and on an ONNX file given by path: the table, CSV and errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench import e2e
from eqsat.errors import ModelLoadError, ShapeError


def _model_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Sigmoid", ["h"], ["s"]),
        helper.make_node("Mul", ["h", "s"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "silu_head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [w],
    )
    path = tmp_path / "silu_head.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as f:
        return {row["model"]: row for row in csv.DictReader(f)}


def test_e2e_benchmarks_a_file_and_a_zoo_model(tmp_path: Path) -> None:
    table = tmp_path / "e2e.csv"
    args = ["--model", str(_model_file(tmp_path)), "--shape", "x=3,8", "--models", "mlp"]
    args += ["--runs", "2", "--threads", "1", "--csv", str(table), "--png", ""]
    assert e2e.main([*args, "--no-kernel-bench"]) == 0
    rows = _rows(table)
    assert set(rows) == {"mlp", "silu_head"}
    for row in rows.values():
        assert float(row["max_abs_err"]) < 1e-4
        assert float(row["ratio_all"]) > 0 and float(row["ratio_none"]) > 0
        assert float(row["compile_warm_s"]) > 0  # a fresh process compiled the same model


def test_e2e_file_errors_name_the_file(tmp_path: Path) -> None:
    path = _model_file(tmp_path)
    with pytest.raises(ShapeError, match="batch"):  # a symbolic dimension left without a size
        e2e.file_entry(path)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ModelLoadError, match=r"broken\.onnx"):
        e2e.file_entry(broken, {"x": (1, 8)})


def test_interleaved_runs_each_engine_in_blocks() -> None:
    order: list[str] = []
    times = e2e._interleaved(
        [lambda: order.append("a"), lambda: order.append("b")], runs=7, warmup=1, block=3
    )
    assert [len(t) for t in times] == [7, 7]
    assert "".join(order) == "ab" + "aaabbb" + "aaabbb" + "ab"  # warm-up, then blocks of 3


def test_settle_waits_for_spinning_threads_of_the_process() -> None:
    """A block of runs starts once another engine's spinning workers have gone idle."""
    import threading

    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    threading.Timer(0.2, stop.set).start()
    waited = e2e._settle(most=5.0)
    spinner.join()
    assert 0.15 <= waited < 4.0
    assert e2e._settle(most=5.0) < 1.0  # nothing spins: back after a poll or a few


def test_kernel_bandwidth_times_the_kernel_alone_and_as_a_pooled_step() -> None:
    bw = e2e.kernel_bandwidth(threads=2, elements=1 << 18, runs=2)
    assert bw["threads"] == 2
    for key in ("kernel_gbs", "step_gbs", "copy_gbs", "fraction", "step_fraction"):
        assert bw[key] > 0
    line = e2e.format_bandwidth(bw)
    assert "on one thread" in line and "as a step on 2 thread(s)" in line


def test_window_convs_check_and_time_each_shape(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """bench/window_convs.py: a depthwise and a grouped conv, checked against onnxruntime and
    timed; a row per shape and the geometric mean of the ratios."""
    from bench import window_convs

    monkeypatch.setattr(window_convs, "SHAPES", [(8, 12, 3, 2, 1), (16, 10, 3, 1, 8)])
    window_convs.main(["--runs", "2"])
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.split()[:1] in (["8"], ["16"])]
    assert [row[:5] for row in rows] == [
        ["8", "12", "3x3", "2", "1"],
        ["16", "10", "3x3", "1", "8"],
    ]
    assert all(float(row[5]) > 0 and float(row[6]) > 0 for row in rows)
    assert lines[-1].startswith("geo-mean ratio: ")


@pytest.mark.parametrize("kind", ["conv", "ops"])
def test_geometry_sweep_checks_and_times_random_models(
    kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """bench/geometry_sweep.py: a few random single-node models, each checked against
    onnxruntime (no ERR, no FAIL: exit status 0) and timed, slowest ratio first."""
    from bench import geometry_sweep

    assert geometry_sweep.main(["--kind", kind, "--seed", "3", "--count", "6"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert lines and not any("ERR" in line or line.startswith("FAIL") for line in lines)
    ratios = [float(line.split()[0]) for line in lines]
    assert ratios == sorted(ratios, reverse=True) and all(r > 0 for r in ratios)
