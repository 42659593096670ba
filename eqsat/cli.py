"""The ``eqsat`` command line: ``eqsat run``, ``eqsat info``.

Every :class:`~eqsat.errors.EqsatError` is printed as one clear line on stderr with exit status 2;
tracebacks are kept for bugs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from eqsat.errors import EqsatError, InputError


def parse_shapes(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """``["x=1,3,224,224", "mask=1,128"]`` -> ``{"x": (1, 3, 224, 224), "mask": (1, 128)}``."""
    shapes = {}
    for item in items:
        name, sep, dims = item.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError:
            raise InputError(f"--shape {item!r}: expected NAME=D1,D2,... (e.g. x=1,3,224,224)") from None
    return shapes


def load_feeds(items: Sequence[str]) -> dict[str, np.ndarray]:
    """``["x=image.npy"]``: inputs read from .npy files (or every array of one .npz file)."""
    feeds: dict[str, np.ndarray] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            path, name = item, ""
        if not Path(path).exists():
            raise InputError(f"--input {item!r}: no such file {path!r}")
        try:
            data = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise InputError(f"--input {item!r}: cannot read {path!r} as .npy/.npz: {exc}") from None
        if isinstance(data, np.lib.npyio.NpzFile):
            feeds.update({k: data[k] for k in data.files})
        elif not name:
            raise InputError(f"--input {item!r}: a .npy file needs a name, NAME=FILE.npy")
        else:
            feeds[name] = data
    return feeds


def _load(args: argparse.Namespace):  # noqa: ANN202
    import eqsat

    shapes = parse_shapes(args.shape or [])
    return eqsat.load(args.model, input_shapes=shapes or None)


def cmd_run(args: argparse.Namespace) -> int:
    import eqsat
    from eqsat.feeds import random_feeds

    start = time.perf_counter()
    graph = _load(args)
    loaded = time.perf_counter()
    executable = eqsat.compile(graph, target=args.target)
    compiled = time.perf_counter()
    feeds = random_feeds(graph, seed=args.seed)
    feeds.update(load_feeds(args.input or []))
    times = []
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        outputs = executable.run(feeds)
        times.append(time.perf_counter() - t0)
    print(f"model    {args.model}  ({len(graph.nodes)} nodes, target {args.target})")
    for value in executable.input_specs:
        print(f"input    {value.name}: {value.dtype}{list(value.shape)}")
    for name, array in outputs.items():
        stats = ""
        if array.size and array.dtype.kind in "fiu":
            stats = f"  min {array.min():.6g}  max {array.max():.6g}  mean {array.mean():.6g}"
        print(f"output   {name}: {array.dtype}{list(array.shape)}{stats}")
    print(
        f"time     load {loaded - start:.3f}s  compile {compiled - loaded:.3f}s  "
        f"run min {min(times) * 1e3:.2f} ms  median {float(np.median(times)) * 1e3:.2f} ms"
        f"  ({len(times)} runs)"
    )
    if args.out:
        np.savez(args.out, **outputs)
        print(f"saved    {args.out}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    graph = _load(args)
    if args.nodes:
        print(graph.summary())
        return 0
    print(f"model   {args.model}: {len(graph.nodes)} nodes after folding")
    for value in graph.inputs:
        print(f"input   {value.name}: {value.dtype}{list(value.shape)}")
    for value in graph.outputs:
        print(f"output  {value.name}: {value.dtype}{list(value.shape)}")
    params = sum(a.size for a in graph.initializers.values())
    print(f"weights {len(graph.initializers)} tensors, {params:,} elements")
    for op, count in graph.op_counts().items():
        print(f"  {op:<24} {count}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eqsat", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("model", help="path of an .onnx file")
        p.add_argument(
            "--shape",
            action="append",
            metavar="NAME=D1,D2,...",
            help="static shape for an input with symbolic dimensions (repeatable)",
        )

    run = verbs.add_parser("run", help="load, compile and run a model on random or given inputs")
    model_args(run)
    run.add_argument("--target", default="numpy", help="lowering target (default: numpy)")
    run.add_argument("--input", action="append", metavar="NAME=FILE.npy", help="input from a file")
    run.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    run.add_argument("--repeat", type=int, default=1, help="how many timed runs")
    run.add_argument("--out", metavar="FILE.npz", help="save the outputs")
    run.set_defaults(func=cmd_run)

    info = verbs.add_parser("info", help="show a model's inputs, outputs and operators")
    model_args(info)
    info.add_argument("--nodes", action="store_true", help="list every node")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EqsatError as exc:
        print(f"eqsat: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
