"""Check a model's run-time tail against onnxruntime on onnxruntime's own values at the split.

End to end, a detector with random weights scores many boxes equally, and the last float32 bits
of its heads then decide which of the tied boxes survive a top-k or NMS: eqsat and onnxruntime may
both be right and still disagree. This tool isolates the tail (see :mod:`eqsat.tail`): it adds
the values the tail reads (the *boundary*) to the model's outputs, runs the model on onnxruntime
once, hands those very values to ``graph.tail.run``, and compares every output of the model.
Equal inputs leave no room for ties to differ, so any difference is the tail's.

    python bench/tail_check.py model.onnx [--shape x=1,3,320,320] [--seeds 2]

Prints, per seed, each output's shape and max abs difference, and the tail's run time; exits 1
when an output differs by more than ``--atol`` (shapes must be equal), 2 when the model has no
tail.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort

import eqsat
from eqsat.cli import parse_shapes
from eqsat.feeds import random_feeds


def check(path: str, shapes: dict, seeds: int, atol: float) -> int:
    graph = eqsat.load(path, input_shapes=shapes)
    tail = graph.tail
    if tail is None:
        print(f"{path}: no run-time tail (every shape is static)")
        return 2
    print(tail.describe()[:300])
    model = onnx.load(path)
    declared = {o.name for o in model.graph.output}
    model.graph.output.extend(
        onnx.ValueInfoProto(name=name) for name, _ in tail.boundary if name not in declared
    )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    failed = False
    for seed in range(seeds):
        feeds = random_feeds(graph, seed)
        values = dict(zip(names, session.run(None, feeds), strict=True))
        static: list[np.ndarray | None] = [None] * len(graph.outputs)
        for name, index in [*tail.boundary, *tail.outputs]:
            if index is not None:
                static[index] = values[name]
        start = time.perf_counter()
        got = tail.run(static)
        seconds = time.perf_counter() - start
        for name, _ in tail.outputs:
            mine, theirs = np.asarray(got[name]), np.asarray(values[name])
            if mine.shape != theirs.shape:
                print(f"seed {seed} {name}: shape {mine.shape}, onnxruntime {theirs.shape}")
                failed = True
                continue
            diff = (
                float(np.abs(mine.astype(np.float64) - theirs.astype(np.float64)).max())
                if mine.size
                else 0.0
            )
            failed |= diff > atol
            print(f"seed {seed} {name}: {mine.dtype}{list(mine.shape)} max abs diff {diff:.3g}")
        print(f"seed {seed}: tail ran in {seconds * 1e3:.1f} ms")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--shape", action="append", default=[], help="NAME=D1,D2,...")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--atol", type=float, default=1e-4)
    args = parser.parse_args(argv)
    return check(args.model, parse_shapes(args.shape), args.seeds, args.atol)


if __name__ == "__main__":
    sys.exit(main())
