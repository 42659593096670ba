"""Single-conv benchmark of the window convs MobileNet-style models spend their time in: depthwise
(group = channels) and small-group convs with a hard-swish epilogue, each as a one-node model
that eqsat optimizes and compiles for the cpu target, against onnxruntime with all its
optimizations on the same model, both on the same thread count, interleaved in one process.

    python bench/window_convs.py [--threads 1] [--runs 200]

Prints per shape eqsat's and onnxruntime's best time and their ratio, then the geometric mean of
the ratios; outputs are checked against onnxruntime first (a wrong kernel is not timed).

A one-node model makes onnxruntime convert to and from its blocked NCHWc layout around the conv,
which a whole network pays once: inside MobileNetV3, onnxruntime's depthwise convs ran 1.5-3x
faster than here alone (``docs/benchmarks.md``, twelfth round). Read these ratios as the kernels
against onnxruntime's kernel plus its layout conversions.
"""

from __future__ import annotations

import argparse
import math
import time
from functools import partial
from typing import Any

import numpy as np
from eqsat.lowering import cpu
from onnx import TensorProto, helper, numpy_helper

import eqsat

# (channels, plane size, kernel, stride, group width): depthwise ones from MobileNetV3 and
# EfficientNet, then RegNetY-400MF's groups of 8.
SHAPES = [
    (16, 112, 3, 1, 1), (64, 112, 3, 2, 1), (72, 56, 3, 1, 1), (72, 56, 5, 2, 1),
    (120, 28, 5, 1, 1), (240, 14, 3, 1, 1), (672, 14, 5, 2, 1), (960, 7, 5, 1, 1),
    (48, 112, 3, 2, 8), (104, 28, 3, 1, 8), (440, 14, 3, 2, 8),
]  # fmt: skip


def conv_model(channels: int, size: int, kernel: int, stride: int, width: int) -> Any:
    """Conv (+ bias) then HardSwish, NCHW, "same" padding."""
    rng = np.random.default_rng(channels * size + kernel)
    weights = rng.standard_normal((channels, width, kernel, kernel)).astype(np.float32) * 0.2
    bias = rng.standard_normal(channels).astype(np.float32)
    out = (size + 2 * (kernel // 2) - kernel) // stride + 1
    pads = [kernel // 2] * 4
    conv = helper.make_node(
        "Conv", ["x", "w", "b"], ["c"], group=channels // width, strides=[stride, stride],
        pads=pads, kernel_shape=[kernel, kernel],
    )  # fmt: skip
    graph = helper.make_graph(
        [conv, helper.make_node("HardSwish", ["c"], ["y"])],
        "window_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, out, out])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _best(fn: Any, runs: int) -> float:
    best = math.inf
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args(argv)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    print(f"threads {args.threads}; best of {args.runs} runs, interleaved in blocks of 10")
    print(f"{'channels':>8} {'plane':>5} {'kernel':>6} {'stride':>6} {'group':>5}"
          f" {'eqsat us':>9} {'ort us':>8} {'ratio':>6}")  # fmt: skip
    ratios = []
    for channels, size, kernel, stride, width in SHAPES:
        model = conv_model(channels, size, kernel, stride, width)
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        graph = eqsat.optimize(model, target="cpu").graph
        exe = cpu.compile(graph, threads=args.threads)
        feeds = {"x": np.random.default_rng(0).standard_normal((1, channels, size, size))}
        feeds["x"] = feeds["x"].astype(np.float32)
        got, want = exe.run(feeds)["y"], session.run(None, feeds)[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        ours = theirs = math.inf
        run_ours, run_theirs = partial(exe.run, feeds), partial(session.run, None, feeds)
        for _ in range(max(1, args.runs // 10)):
            ours = min(ours, _best(run_ours, 10))
            theirs = min(theirs, _best(run_theirs, 10))
        ratios.append(ours / theirs)
        print(f"{channels:>8} {size:>5} {kernel:>4}x{kernel} {stride:>6} {width:>5}"
              f" {ours * 1e6:>9.1f} {theirs * 1e6:>8.1f} {ours / theirs:>6.2f}")  # fmt: skip
    print(f"geo-mean ratio: {math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}")


if __name__ == "__main__":
    main()
