"""Random single-node models against onnxruntime: finds the geometries where eqsat is slow.

The zoo exercises the geometries its models have; a model eqsat has not seen may have others.
This draws random convs (1-D and 2-D, kernels from 1x1 to 11x11 and whole-width windows,
strides up to 4, dilations, groups, batches) or random other ops (MatMul, Transpose, reductions,
Softmax, pools, Resize, LayerNormalization, Pad, Gather, Concat, Slice), builds each as a
one-node ONNX model (a conv with a random activation after it), checks eqsat's output against
onnxruntime's and times both on the same thread count in one process.

    python bench/geometry_sweep.py --kind conv --seed 1 --count 60 [--threads 1] [--flag 1.5]

Prints one line per model, slowest ratio first: eqsat's time over onnxruntime's, both in us,
the relative error, the geometry; ``<<<`` marks ratios above ``--flag`` and ``ERR`` outputs
off by more than 1e-4 (relative to the largest), ``FAIL`` a model eqsat rejected. Each model
takes the best of at least 5 runs within ~0.12 s. The session of 2026-11-28 (thirteenth) fixed
what seeds 1-4 found (``docs/benchmarks.md``).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from eqsat.lowering import cpu
from onnx import TensorProto, helper, numpy_helper

import eqsat

Model = tuple[Any, dict[str, np.ndarray], str]


def _best(run: Callable[[], object], budget: float = 0.12) -> float:
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < budget and len(times) < 200):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return min(times)


def _model(nodes: list[Any], inputs: dict[str, np.ndarray], inits: list[Any]) -> Any:
    graph = helper.make_graph(
        nodes, "sweep",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(a.shape)) for n, a in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in nodes[-1].output],
        inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def random_conv(pick: random.Random, rng: np.random.Generator) -> Model | None:
    """A random Conv (with a Relu or Sigmoid after it, or not), or None for a draw out of range."""
    n = pick.choice([1, 1, 1, 2, 4, 8])
    c = pick.choice([1, 3, 4, 8, 16, 24, 32, 64, 96, 128, 256])
    group, kind = 1, pick.random()
    if kind < 0.2:
        group, m = c, c * pick.choice([1, 1, 2])
    elif kind < 0.3 and c >= 8:
        group = pick.choice([g for g in (2, 4, 8) if c % g == 0])
        m = group * pick.choice([2, 4, 8])
    else:
        m = pick.choice([1, 4, 8, 16, 24, 32, 48, 64, 100, 128, 256])
    if pick.random() < 0.25:  # 1-D
        length = pick.choice([16, 50, 100, 400, 1600, 8000])
        k, s, d = (
            pick.choice([1, 2, 3, 5, 7, 11, 31]),
            pick.choice([1, 1, 2, 3, 4, 8]),
            pick.choice([1, 1, 2, 4]),
        )
        if (k - 1) * d + 1 > length:
            return None
        shape, kernel, strides, dilations = (n, c, length), [k], [s], [d]
        pads = [pick.choice([0, k // 2])] * 2
    else:
        h = pick.choice([1, 7, 14, 20, 28, 40, 56, 80, 112, 160, 224])
        w = pick.choice([h, h, 1, 7, 64, 200])
        kh, kw = pick.choice([(1, 1), (3, 3), (3, 3), (5, 5), (7, 7), (1, 3), (3, 1), (1, 7), (7, 1),
                              (2, 2), (4, 4), (1, w), (3, w)])  # fmt: skip
        if kh > h or kw > w:
            return None
        s = 1 if (kh, kw) == (1, w) else pick.choice([1, 1, 2, 2, 4])
        if (kh, kw) in ((2, 2), (4, 4)) and pick.random() < 0.5:
            s = kh
        d = pick.choice([1, 1, 1, 2]) if max(kh, kw) <= 3 else 1
        if (kh - 1) * d + 1 > h or (kw - 1) * d + 1 > w:
            return None
        shape, kernel, strides, dilations = (n, c, h, w), [kh, kw], [s, s], [d, d]
        pads = [pick.choice([0, kh // 2]), pick.choice([0, kw // 2])] * 2
    positions = int(np.prod(shape)) // c // max(1, int(np.prod(strides)))
    macs = positions * (c // group) * m * int(np.prod(kernel))
    if int(np.prod(shape)) * 4 > 64 << 20 or not 1e4 <= macs <= 3e8:
        return None
    fan_in = c // group * int(np.prod(kernel))
    w_ = (rng.standard_normal((m, c // group, *kernel)) / np.sqrt(fan_in)).astype(np.float32)
    b_ = rng.standard_normal(m).astype(np.float32)
    act = pick.choice(["Relu", "Sigmoid", None])
    conv = helper.make_node("Conv", ["x", "w", "b"], ["c" if act else "y"], strides=strides,
                            pads=pads, dilations=dilations, group=group)  # fmt: skip
    nodes = [conv] + ([helper.make_node(act, ["c"], ["y"])] if act else [])
    x = rng.standard_normal(shape).astype(np.float32)
    inits = [numpy_helper.from_array(w_, "w"), numpy_helper.from_array(b_, "b")]
    desc = f"Conv x{shape} w{w_.shape} s{strides} d{dilations} p{pads} g{group} {act}"
    return _model(nodes, {"x": x}, inits), {"x": x}, desc


def _dims(pick: random.Random, rank: int) -> list[int]:
    dims = [
        pick.choice([1, 2, 3, 4, 7, 8, 16, 32, 49, 64, 128, 197, 256, 512]) for _ in range(rank)
    ]
    while int(np.prod(dims)) > (4 << 20):
        dims[pick.randrange(rank)] = max(1, dims[pick.randrange(rank)] // 4)
    return dims


def random_op(pick: random.Random, rng: np.random.Generator) -> Model | None:
    """A random node of another op than Conv, or None for a draw out of range."""
    kind = pick.choice(["MatMul", "Transpose", "Reduce", "Softmax", "Pool", "Resize",
                        "LayerNormalization", "Pad", "Gather", "Concat", "Slice"])  # fmt: skip
    arrays: dict[str, np.ndarray] = {}
    consts: dict[str, np.ndarray] = {}
    if kind == "MatMul":
        lead = pick.choice([[], [1], [4], [2, 3], [12]])
        m, k, n = (pick.choice([1, 3, 16, 49, 64, 128, 197, 256, 512]) for _ in range(3))
        arrays["x"] = rng.standard_normal([*lead, m, k]).astype(np.float32)
        weights = rng.standard_normal([k, n] if pick.random() < 0.6 else [*lead, k, n])
        (consts if weights.ndim == 2 else arrays)["w"] = (weights / np.sqrt(k)).astype(np.float32)
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
    elif kind == "Transpose":
        rank = pick.choice([3, 4, 5])
        perm = list(range(rank))
        pick.shuffle(perm)
        arrays["x"] = rng.standard_normal(_dims(pick, rank)).astype(np.float32)
        node = helper.make_node("Transpose", ["x"], ["y"], perm=perm)
    elif kind == "Reduce":
        rank = pick.choice([2, 3, 4])
        arrays["x"] = rng.standard_normal(_dims(pick, rank)).astype(np.float32)
        consts["axes"] = np.array(sorted(pick.sample(range(rank), pick.randint(1, rank))), np.int64)
        op = pick.choice(["ReduceMean", "ReduceSum", "ReduceMax", "ReduceL2"])
        node = helper.make_node(op, ["x", "axes"], ["y"], keepdims=pick.choice([0, 1]))
    elif kind == "Softmax":
        rank = pick.choice([2, 3, 4])
        arrays["x"] = rng.standard_normal(_dims(pick, rank)).astype(np.float32)
        op = pick.choice(["Softmax", "LogSoftmax"])
        node = helper.make_node(op, ["x"], ["y"], axis=pick.randrange(rank))
    elif kind == "Pool":
        size = [pick.choice([7, 14, 28, 56, 112]) for _ in range(2)]
        k, s = pick.choice([2, 3, 5]), pick.choice([1, 2])
        if k > min(size):
            return None
        shape = [pick.choice([1, 2]), pick.choice([3, 16, 64, 256]), *size]
        arrays["x"] = rng.standard_normal(shape).astype(np.float32)
        pads = [k // 2] * 4 if pick.random() < 0.5 else [0] * 4
        node = helper.make_node(pick.choice(["MaxPool", "AveragePool"]), ["x"], ["y"],
                                kernel_shape=[k, k], strides=[s, s], pads=pads)  # fmt: skip
    elif kind == "Resize":
        size = [pick.choice([7, 14, 20, 40, 80]) for _ in range(2)]
        arrays["x"] = rng.standard_normal([1, pick.choice([3, 16, 64, 256]), *size]).astype(
            np.float32
        )
        scale = pick.choice([2.0, 0.5, 1.5, 4.0])
        consts["scales"] = np.array([1, 1, scale, scale], np.float32)
        node = helper.make_node("Resize", ["x", "", "scales"], ["y"],
                                mode=pick.choice(["nearest", "linear"]))  # fmt: skip
    elif kind == "LayerNormalization":
        shape = _dims(pick, pick.choice([2, 3]))
        arrays["x"] = rng.standard_normal(shape).astype(np.float32)
        consts["g"] = rng.standard_normal(shape[-1]).astype(np.float32)
        consts["b"] = rng.standard_normal(shape[-1]).astype(np.float32)
        node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1)
    elif kind == "Pad":
        arrays["x"] = rng.standard_normal(_dims(pick, 4)).astype(np.float32)
        consts["pads"] = np.array([pick.choice([0, 1, 2, 3]) for _ in range(8)], np.int64)
        node = helper.make_node("Pad", ["x", "pads"], ["y"],
                                mode=pick.choice(["constant", "reflect", "edge"]))  # fmt: skip
    elif kind == "Gather":
        shape = _dims(pick, pick.choice([2, 3]))
        axis = pick.randrange(len(shape))
        arrays["x"] = rng.standard_normal(shape).astype(np.float32)
        count = pick.choice([[1], [7], [64], [4, 16]])
        consts["idx"] = rng.integers(0, shape[axis], size=count).astype(np.int64)
        node = helper.make_node("Gather", ["x", "idx"], ["y"], axis=axis)
    elif kind == "Concat":
        shape = _dims(pick, 4)
        arrays["x"] = rng.standard_normal(shape).astype(np.float32)
        consts["c2"] = rng.standard_normal(shape).astype(np.float32)
        node = helper.make_node("Concat", ["x", "c2"], ["y"], axis=pick.randrange(4))
    else:  # Slice, then a Relu (a slice alone may be a view)
        shape = _dims(pick, 4)
        axis = pick.randrange(4)
        first = pick.randrange(shape[axis])
        arrays["x"] = rng.standard_normal(shape).astype(np.float32)
        for name, value in (("st", first), ("en", pick.randint(first + 1, shape[axis])),
                            ("ax", axis), ("sp", pick.choice([1, 2]))):  # fmt: skip
            consts[name] = np.array([value], np.int64)
        node = helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["s"])
        model = _model([node, helper.make_node("Relu", ["s"], ["y"])], arrays,
                       [numpy_helper.from_array(v, k) for k, v in consts.items()])  # fmt: skip
        return model, arrays, f"Slice x{shape} axis {axis} from {first}"
    inits = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    shapes = {k: list(v.shape) for k, v in arrays.items()}
    small = {k: v.tolist() for k, v in consts.items() if v.size <= 8}
    return _model([node], arrays, inits), arrays, f"{node.op_type} {shapes} {attrs} {small}"


def sweep(kind: str, seed: int, count: int, threads: int, flag: float) -> list[str]:
    """``count`` random models (``kind`` "conv" or "ops"), checked and timed; their report lines,
    slowest ratio first."""
    import onnxruntime as ort  # the peer, in benchmarks only

    pick, lines = random.Random(seed), []
    draw = random_conv if kind == "conv" else random_op
    for i in range(count):
        made = draw(pick, np.random.default_rng(seed * 1000 + i))
        if made is None:
            continue
        model, feeds, desc = made
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(model.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])  # fmt: skip
            want = session.run(None, feeds)
        except Exception:  # onnxruntime rejects it too: not a geometry to compare
            continue
        try:
            exe = cpu.compile(eqsat.optimize(model, target="cpu").graph, threads=threads)
            got = list(exe.run(feeds).values())
        except eqsat.EqsatError as error:
            lines.append(f"FAIL {desc}: {type(error).__name__}: {str(error)[:160]}")
            continue
        error = max(
            float(np.abs(g - w).max() / (np.abs(w).max() + 1e-9)) if g.shape == w.shape else np.inf
            for g, w in zip(got, want, strict=True)
        )
        ours = _best(lambda exe=exe, feeds=feeds: exe.run(feeds))
        theirs = _best(lambda s=session, feeds=feeds: s.run(None, feeds))
        marks = (" <<<" if ours / theirs > flag and ours > 5e-6 else "") + (
            " ERR" if error > 1e-4 else ""
        )
        lines.append(
            f"{ours / theirs:6.2f} {ours * 1e6:9.1f} {theirs * 1e6:9.1f} {error:8.1e}  {desc}{marks}"
        )
    # Failures first, then the slowest ratios.
    return sorted(
        lines, key=lambda line: -np.inf if line.startswith("FAIL") else -float(line.split()[0])
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["conv", "ops"], default="conv")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--flag", type=float, default=1.5, help="mark ratios above this")
    args = parser.parse_args(argv)
    print(" ratio  eqsat us    ort us  rel err  model")
    lines = sweep(args.kind, args.seed, args.count, args.threads, args.flag)
    for line in lines:
        print(line)
    return 1 if any(" ERR" in line or line.startswith("FAIL") for line in lines) else 0


if __name__ == "__main__":
    raise SystemExit(main())
