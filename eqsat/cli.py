"""The ``eqsat`` command line: ``eqsat run``, ``eqsat info``; from :mod:`eqsat.cli_optimize`
``eqsat optimize`` and ``eqsat check-rules``; from :mod:`eqsat.cli_bench` ``eqsat extract``,
``eqsat calibrate`` and ``eqsat bench``.

Every :class:`~eqsat.errors.EqsatError` (and every usage mistake, and a file that cannot be written)
is printed as one line, ``eqsat: error: ...``, on stderr with exit status 2; tracebacks are kept for
bugs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eqsat.errors import EqsatError, InputError, ShapeError, UnsupportedOperatorError

USAGE_ERROR = 2


class UsageError(Exception):
    """A command line argparse refused; main() prints it as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def parse_shapes(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """``["x=1,3,224,224", "mask=1x128"]`` -> ``{"x": (1, 3, 224, 224), "mask": (1, 128)}``."""
    shapes = {}
    for item in items:
        name, sep, dims = item.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
            if any(d < 0 for d in shape):
                raise ValueError
        except ValueError:
            raise InputError(
                f"--shape {item!r}: expected NAME=D1,D2,... with non-negative sizes "
                "(e.g. x=1,3,224,224)"
            ) from None
        shapes[name] = shape
    return shapes


def load_feeds(items: Sequence[str]) -> dict[str, np.ndarray]:
    """``["x=image.npy"]``: inputs read from .npy files (or every array of one .npz file)."""
    feeds: dict[str, np.ndarray] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            path, name = item, ""
        if not Path(path).is_file():
            raise InputError(f"--input {item!r}: no such file {path!r}")
        try:
            data = np.load(path, allow_pickle=False)
            if isinstance(data, np.lib.npyio.NpzFile):
                arrays = {k: data[k] for k in data.files}
                data.close()
            else:
                arrays = {name: data}
        except Exception as exc:
            raise InputError(
                f"--input {item!r}: cannot read {path!r} as .npy/.npz: {exc}"
            ) from None
        if "" in arrays:
            raise InputError(f"--input {item!r}: a .npy file needs a name, NAME=FILE.npy")
        feeds.update(arrays)
    return feeds


def _load(args: argparse.Namespace, feeds: dict[str, np.ndarray] | None = None) -> Any:
    from eqsat.onnx_io import load_proto, read_model

    model, where = read_model(args.model)
    shapes = parse_shapes(args.shape or [])
    if feeds:
        # An input given as a file fixes its own shape; --shape is only needed for the others.
        names = {vi.name for vi in model.graph.input}
        shapes.update({k: a.shape for k, a in feeds.items() if k in names and k not in shapes})
    return load_proto(model, where, input_shapes=shapes or None)


def _conform(feeds: dict[str, np.ndarray], specs: Sequence[Any]) -> dict[str, np.ndarray]:
    """Cast file inputs within their kind (float64 .npy for a float32 input, int32 for int64)."""
    out = dict(feeds)
    for spec in specs:
        array = out.get(spec.name)
        if array is not None and array.dtype != spec.dtype and array.dtype.kind == spec.dtype.kind:
            out[spec.name] = array.astype(spec.dtype)
    return out


def _count(text: str) -> int:
    """A non-negative count for argparse (``--repeat``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _stats(array: np.ndarray) -> str:
    if not array.size or array.dtype.kind not in "fiu":
        return ""
    return f"  min {array.min():.6g}  max {array.max():.6g}  mean {array.mean():.6g}"


def cmd_run(args: argparse.Namespace) -> int:
    import eqsat
    from eqsat.feeds import random_feeds

    start = time.perf_counter()
    given = load_feeds(args.input or [])
    graph = _load(args, given)
    loaded = time.perf_counter()
    report = None
    if args.optimize:
        result = eqsat.optimize(graph, target=args.target, verify=args.verify)
        graph, report = result.graph, result.report
    optimized = time.perf_counter()
    executable = eqsat.compile(graph, target=args.target)
    compiled = time.perf_counter()
    feeds = random_feeds(graph, seed=args.seed)
    feeds.update(_conform(given, executable.input_specs))
    # The first run pays one-time costs (kernels Numba compiles on first use when the kernel cache
    # is cold, fresh buffers' page faults, cold caches); it is timed on its own so that the
    # repeated runs measure what a server calling the model again would see.
    t0 = time.perf_counter()
    outputs = executable.run(feeds)
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        outputs = executable.run(feeds)
        times.append(time.perf_counter() - t0)
    print(f"model    {args.model}  ({len(graph.nodes)} nodes, target {args.target})")
    for value in executable.input_specs:
        source = "file" if value.name in given else f"random, seed {args.seed}"
        print(f"input    {value.name}: {value.dtype}{list(value.shape)}  ({source})")
    for name, array in outputs.items():
        print(f"output   {name}: {array.dtype}{list(array.shape)}{_stats(array)}")
    if graph.tail is not None:
        print(f"tail     {graph.tail.describe()}")
    if report is not None:
        fused = ", ".join(f"{op} {n}" for op, n in report.fused.items()) or "none"
        print(
            f"optimize kernels {report.kernels_before} -> {report.kernels_after}  "
            f"(fused: {fused}); cost {report.cost_before * 1e3:.3f} -> "
            f"{report.cost_after * 1e3:.3f} ms estimated; stopped by {report.stop_reason}"
            + (f"; verified, max error {report.max_error:.2g}" if report.verified else "")
        )
    print(
        f"time     load {loaded - start:.3f}s  optimize {optimized - loaded:.3f}s  "
        f"compile {compiled - optimized:.3f}s  first run {first * 1e3:.2f} ms (one-time costs)"
        + (
            f"  then min {min(times) * 1e3:.2f} ms  median {float(np.median(times)) * 1e3:.2f} ms"
            f"  ({len(times)} runs)"
            if times
            else ""
        )
    )
    if args.out:
        np.savez(args.out, **outputs)
        print(f"saved    {args.out}")
    return 0


def _signature(args: argparse.Namespace, unresolved: dict[str, str]) -> int:
    """``eqsat info`` on a model with symbolic inputs: what it declares, and what to pass."""
    from onnx import helper

    from eqsat.onnx_io import read_model

    model, _ = read_model(args.model)
    graph = model.graph
    initializers = {t.name for t in graph.initializer}

    def describe(vi: Any) -> str:
        tensor = vi.type.tensor_type
        try:
            dtype = str(np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)))
        except Exception:
            dtype = "?"
        dims = [
            str(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else d.dim_param or "?"
            for d in tensor.shape.dim
        ]
        return f"{dtype}[{', '.join(dims)}]" if tensor.HasField("shape") else f"{dtype}[?]"

    print(f"model   {args.model}: symbolic input shapes; give --shape for {sorted(unresolved)}")
    for vi in graph.input:
        if vi.name not in initializers:
            hint = f"  (--shape {vi.name}=...)" if vi.name in unresolved else ""
            print(f"input   {vi.name}: {describe(vi)}{hint}")
    for vi in graph.output:
        print(f"output  {vi.name}: {describe(vi)}")
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    print(f"nodes   {len(graph.node)} before folding")
    for op, count in sorted(counts.items()):
        print(f"  {op:<24} {count}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    try:
        graph = _load(args)
    except ShapeError as exc:
        unresolved = getattr(exc, "unresolved_inputs", None)
        if not unresolved or args.nodes:
            raise
        return _signature(args, unresolved)
    if args.nodes:
        print(graph.summary())
        return 0
    print(f"model   {args.model}: {len(graph.nodes)} nodes after folding")
    for value in graph.inputs:
        print(f"input   {value.name}: {value.dtype}{list(value.shape)}")
    for value in graph.outputs:
        print(f"output  {value.name}: {value.dtype}{list(value.shape)}")
    if graph.tail is not None:  # the outputs above then include the values it reads
        print(f"tail    {graph.tail.describe()}")
    params = sum(a.size for a in graph.initializers.values())
    print(f"weights {len(graph.initializers)} tensors, {params:,} elements")
    for op, count in graph.op_counts().items():
        print(f"  {op:<24} {count}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="eqsat", description="Tensor-graph optimizer and compiler built on e-graphs."
    )
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
    run.add_argument(
        "--input",
        action="append",
        metavar="NAME=FILE.npy",
        help="an input from a .npy file, or all inputs from one .npz file (repeatable); "
        "its array also fixes the input's shape",
    )
    run.add_argument(
        "--optimize", action="store_true", help="optimize with the e-graph rules before compiling"
    )
    run.add_argument("--verify", action="store_true", help="with --optimize: check the result")
    run.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    run.add_argument(
        "--repeat",
        type=_count,
        default=10,
        help="timed runs after the first, which is timed on its own (default 10; 0: only the first)",
    )
    run.add_argument("--out", metavar="FILE.npz", help="save the outputs")
    run.set_defaults(func=cmd_run)

    info = verbs.add_parser("info", help="show a model's inputs, outputs and operators")
    model_args(info)
    info.add_argument("--nodes", action="store_true", help="list every node")
    info.set_defaults(func=cmd_info)

    from eqsat import cli_bench, cli_optimize  # optimize, check-rules; extract, calibrate, bench

    cli_optimize.register(verbs)
    cli_bench.register(verbs)
    return parser


def _describe(exc: EqsatError) -> str:
    """The error as the user should read it; long lists of unsupported nodes are summarized.

    A quantized or custom-op model can have hundreds of unsupported nodes: one line per node would
    bury the point, so nodes are grouped by operator and reason, with the first few names.
    """
    if not isinstance(exc, UnsupportedOperatorError) or len(exc.unsupported) <= 3:
        return f"{type(exc).__name__}: {exc}"
    groups: dict[tuple[str, str], list[str]] = {}
    for op, node, why in exc.unsupported:
        groups.setdefault((op, why), []).append(node)
    parts = []
    for (op, why), nodes in groups.items():
        names = ", ".join(repr(n) for n in nodes[:3])
        if len(nodes) > 3:
            names += f" and {len(nodes) - 3} more"
        parts.append(f"{op} ({len(nodes)} node{'s' if len(nodes) > 1 else ''}: {names}): {why}")
    head = str(exc).splitlines()[0]
    return f"{type(exc).__name__}: {head} " + "; ".join(parts)


def _one_line(message: str) -> str:
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    return lines[0] + " " + "; ".join(lines[1:])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 error, 130 interrupted)."""
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except BrokenPipeError:  # `eqsat info model.onnx | head`: the reader left; leave quietly
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except UsageError as exc:
        message = str(exc)
    except EqsatError as exc:
        message = _describe(exc)
    except OSError as exc:  # e.g. --out in a folder that does not exist
        where = f"{exc.filename}: " if exc.filename else ""
        message = f"{where}{exc.strerror or exc}"
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    print(f"eqsat: error: {_one_line(message)}", file=sys.stderr)
    return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
