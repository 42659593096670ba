"""End-to-end benchmark: eqsat (target cpu) against onnxruntime on every zoo model, one process.

For each model: ``eqsat.optimize(model, target="cpu")`` (or plain load + compile with
``--no-optimize``), onnxruntime with all graph optimizations and with none, all at the same
thread count; latency min and median over ``--runs`` runs after warm-up (the three are run in
turn, one run each per round, so that load from other processes hits them alike), eqsat's ratio
to each,
optimize time, compile time with a cold and a warm kernel cache (each measured in a fresh process,
so imports and Numba's cache loading count), and the planned peak memory of eqsat's buffers.
Also a kernel micro-benchmark: a fused SiLU+add kernel's bandwidth as a fraction of a numpy copy's,
on one thread and as a step on the run's threads.
Writes the table as CSV and a PNG bar chart of the ratios (``--png``; needs matplotlib).

Any ONNX file can be benchmarked the same way with ``--model`` (repeatable), fed random inputs
(standard normal floats, integers in [0, 10)); ``--shape NAME=D1,D2,...`` fixes the inputs'
symbolic dimensions. Then only the named models run unless ``--models`` names zoo ones too.

    python bench/e2e.py [--models mlp resnet_block] [--runs 20] [--threads 2] [--csv out.csv]
                        [--png out.png] [--rules algebraic fusion]
    python bench/e2e.py --model my.onnx --shape input=1,3,224,224 --threads 1
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

try:
    from bench import models as zoo
except ImportError:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import models as zoo

OUT = Path(__file__).resolve().parent / "out"  # gitignored
# Runs of one engine in a row, with several threads (see _interleaved).
THREADED_BLOCK = 5

COLUMNS = [
    "model", "eqsat_min_ms", "eqsat_med_ms", "ort_all_min_ms", "ort_all_med_ms", "ort_none_min_ms",
    "ort_none_med_ms", "ratio_all", "ratio_none", "optimize_s", "compile_cold_s",
    "compile_warm_s", "peak_mb", "max_abs_err",
]  # fmt: skip

# Run in a fresh process: load (and optimize) one model, compile it for cpu, print the seconds.
_COMPILE_SCRIPT = """
import json, sys, time
sys.path.insert(0, {root!r})
import eqsat
from bench import e2e, models as zoo
entry = {entry}
start = time.perf_counter()
rules = {rules!r}
graph = {make_graph}
optimized = time.perf_counter()
eqsat.compile(graph, target="cpu")
print(json.dumps({{"compile_s": time.perf_counter() - optimized}}))
"""


def _graph_source(optimize: bool) -> str:
    if optimize:
        return "eqsat.optimize(entry.model(), rules, target='cpu', **entry.load_args()).graph"
    return "eqsat.load(entry.model(), **entry.load_args())"


def _timed(fn: Any, runs: int, warmup: int = 3) -> list[float]:
    return _interleaved([fn], runs, warmup)[0]


def _interleaved(fns: list[Any], runs: int, warmup: int = 3, block: int = 1) -> list[list[float]]:
    """Seconds per run of each of ``fns``, run in turn so that they see the same machine load:
    ``block`` runs of one, then ``block`` of the next, until each has run ``runs`` times.

    With several threads, onnxruntime's workers keep spinning after a run; a run of another
    engine right after it competes with them for the cores. So with ``block`` > 1 (the
    benchmark's setting for several threads) each block starts once the process's threads are
    idle (:func:`_settle`), and runs of one engine come in blocks. On the 2-core machine
    onnxruntime's worker spun for ~60 ms after each run of magika with 2 threads: eqsat's blocks
    of 5 runs fell entirely inside that window, and its minimum was 11.4 ms (no faster than one
    thread) against 6.7 ms when run alone. On a 16-core machine, with 16 threads, blocks alone
    took resnet_block's minimum from 5.1 to 3.2 ms for eqsat and from 1.9 to 1.0 ms for
    onnxruntime without optimizations (its two sessions slowed each other too).
    """
    for _ in range(warmup):
        for fn in fns:
            if block > 1:  # warm-up runs too: an executable's first runs tune its thread pool
                _settle()
            fn()
    times: list[list[float]] = [[] for _ in fns]
    clock = time.perf_counter
    done = 0
    while done < runs:
        count = min(block, runs - done)
        for fn, out in zip(fns, times, strict=True):
            if block > 1:
                _settle()
            for _ in range(count):
                start = clock()
                fn()
                out.append(clock() - start)
        done += count
    return times


def _settle(most: float = 0.5, poll: float = 0.005) -> float:
    """Wait (at most ``most`` seconds) until this process's threads use next to no CPU while
    the caller sleeps for ``poll`` seconds: another engine's spinning workers have gone to sleep.
    Returns the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < most:
        cpu = time.process_time()
        time.sleep(poll)
        if time.process_time() - cpu < 0.1 * poll:
            break
    return time.perf_counter() - start


def _ort_session(model: Any, level: Any, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def file_entry(path: str | Path, shapes: dict[str, tuple[int, ...]] | None = None) -> zoo.ZooEntry:
    """A zoo-like entry for an ONNX file: its inputs' symbolic dimensions fixed by ``shapes``,
    fed deterministic random inputs (:func:`eqsat.feeds.random_feeds`)."""
    import onnx

    import eqsat
    from eqsat.feeds import random_feeds

    model = Path(path).resolve()
    given = {k: tuple(v) for k, v in (shapes or {}).items()}
    try:  # only the shapes of inputs the model has: one --shape list serves several files
        names = {i.name for i in onnx.load(str(model), load_external_data=False).graph.input}
        given = {k: v for k, v in given.items() if k in names}
    except Exception:  # eqsat.load below reports what is wrong with the file
        pass
    graph = eqsat.load(model, input_shapes=given)  # checks the file and the shapes up front

    def feeds(seed: int) -> dict[str, np.ndarray]:
        return random_feeds(graph, seed)

    return zoo.ZooEntry(model.stem, "file", lambda: model, given, feeds)


def _entry_source(entry: zoo.ZooEntry) -> str:
    if entry.source == "file":
        return f"e2e.file_entry({str(entry.model())!r}, {entry.input_shapes!r})"
    return f"zoo.ZOO[{entry.name!r}]"


def compile_time(
    entry: zoo.ZooEntry, optimize: bool, cache: str, rules: list[str] | None = None
) -> float:
    root = str(Path(__file__).resolve().parents[1])
    script = _COMPILE_SCRIPT.format(
        root=root, entry=_entry_source(entry), rules=rules, make_graph=_graph_source(optimize)
    )
    env = {**os.environ, "EQSAT_KERNEL_CACHE": cache}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["compile_s"])


def bench_model(
    entry: zoo.ZooEntry,
    runs: int,
    threads: int,
    optimize: bool,
    compile_times: bool,
    rules: list[str] | None = None,
) -> dict[str, Any]:
    import onnxruntime as ort

    import eqsat

    name = entry.name
    model = entry.model()
    feeds = entry.feeds(0)
    start = time.perf_counter()
    if optimize:
        graph = eqsat.optimize(model, rules, target="cpu", **entry.load_args()).graph
    else:
        graph = eqsat.load(model, **entry.load_args())
    optimize_s = time.perf_counter() - start
    from eqsat.lowering import cpu

    executable = cpu.compile(graph, threads=threads)
    row: dict[str, Any] = {"model": name, "optimize_s": optimize_s}
    sessions = {
        "all": _ort_session(model, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, threads),
        "none": _ort_session(model, ort.GraphOptimizationLevel.ORT_DISABLE_ALL, threads),
    }
    eqsat_feeds = entry.input_feeds(0)  # without the inputs bound as constants at load
    fns = [lambda: executable.run(eqsat_feeds)]
    fns += [lambda s=s: s.run(None, feeds) for s in sessions.values()]
    timings = _interleaved(fns, runs, block=1 if threads == 1 else THREADED_BLOCK)
    for label, times in zip(["eqsat", "ort_all", "ort_none"], timings, strict=True):
        row[f"{label}_min_ms"] = min(times) * 1e3
        row[f"{label}_med_ms"] = float(np.median(times)) * 1e3
    for label in sessions:
        row[f"ratio_{label}"] = row["eqsat_min_ms"] / row[f"ort_{label}_min_ms"]
    reference = sessions["none"].run(None, feeds)
    got = list(executable.run(eqsat_feeds).values())
    row["max_abs_err"] = max(
        float(np.max(np.abs(g - w))) for g, w in zip(got, reference or [], strict=False)
    )
    row["peak_mb"] = executable.report["peak_bytes"] / 1e6
    if compile_times:
        with tempfile.TemporaryDirectory(prefix="eqsat-kernels-") as cache:
            row["compile_cold_s"] = compile_time(entry, optimize, cache, rules)
            row["compile_warm_s"] = compile_time(entry, optimize, cache, rules)
    return row


def kernel_bandwidth(threads: int = 1, elements: int = 1 << 23, runs: int = 20) -> dict[str, float]:
    """A generated SiLU(x) + y kernel against ``np.copyto`` of the same size, both into
    preallocated memory (so page faults of fresh outputs do not count against either).

    The kernel is timed twice: called alone on one thread (``kernel_gbs``: the code LLVM made of
    it), and as the step an executable with ``threads`` threads runs (``step_gbs``: split over
    eqsat's pool above its size threshold). The copy is numpy's, on one thread. A kernel that
    evaluates an exponential per element is memory-bound on a fast core, compute-bound on a slow
    one (a 1.7 GHz Zen 1 core: 1.65 ns per element in cache, the copy 0.75 ns from memory).
    """
    from eqsat.lowering import cpu

    f32 = np.dtype(np.float32)
    kernel = cpu.ElementwiseKernel(
        cpu.Lowering(threads=threads),
        "(({0} / (1 + exp(-{0}))) + {1})",
        [((elements,), f32, None), ((elements,), f32, None)],
        (elements,),
        f32,
    )
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, elements), np.float32)
    out = np.empty(elements, np.float32)
    step = kernel.bound(0, [1, 2], {0: out, 1: x, 2: y})
    kernel_times, step_times, copy_times = _interleaved(
        [lambda: kernel(out, [x, y]), lambda: step([]), lambda: np.copyto(out, x)], runs
    )
    moved = 3 * 4 * elements  # two reads and one write
    kernel_gbs = moved / min(kernel_times) / 1e9
    step_gbs = moved / min(step_times) / 1e9
    copy_gbs = 2 * 4 * elements / min(copy_times) / 1e9
    return {
        "threads": threads,
        "kernel_gbs": kernel_gbs,
        "step_gbs": step_gbs,
        "copy_gbs": copy_gbs,
        "fraction": kernel_gbs / copy_gbs,
        "step_fraction": step_gbs / copy_gbs,
    }


def format_bandwidth(bw: dict[str, float]) -> str:
    return (
        f"fused SiLU+add kernel: {bw['kernel_gbs']:.1f} GB/s on one thread"
        f" ({bw['fraction']:.0%} of a numpy copy's {bw['copy_gbs']:.1f} GB/s);"
        f" as a step on {bw['threads']} thread(s): {bw['step_gbs']:.1f} GB/s"
        f" ({bw['step_fraction']:.0%})"
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'model':<22}{'eqsat ms':>18}{'ort-all ms':>18}{'ort-none ms':>18}"
    head += f"{'x all':>8}{'x none':>8}{'opt s':>7}{'cold s':>8}{'warm s':>8}{'MB':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:

        def pair(key: str, row: dict[str, Any] = r) -> str:
            return f"{row[key + '_min_ms']:.2f}/{row[key + '_med_ms']:.2f}"

        lines.append(
            f"{r['model']:<22}{pair('eqsat'):>18}{pair('ort_all'):>18}{pair('ort_none'):>18}"
            f"{r['ratio_all']:>8.2f}{r['ratio_none']:>8.2f}{r['optimize_s']:>7.1f}"
            f"{r.get('compile_cold_s', math.nan):>8.2f}{r.get('compile_warm_s', math.nan):>8.2f}"
            f"{r['peak_mb']:>7.1f}"
        )
    ratios = [r["ratio_all"] for r in rows]
    if ratios:
        geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        lines.append(f"geo-mean ratio to onnxruntime (all optimizations): {geo:.2f}")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: str, title: str) -> bool:
    """A bar chart of eqsat's latency ratio to onnxruntime per model; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [r["model"] for r in rows]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 2), 4.5))
    ax.bar(x - 0.2, [r["ratio_all"] for r in rows], 0.4, label="vs onnxruntime (all opts)")
    ax.bar(x + 0.2, [r["ratio_none"] for r in rows], 0.4, label="vs onnxruntime (no opts)")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("eqsat latency / onnxruntime latency (min)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/e2e.py", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models", nargs="*", default=None, choices=sorted(zoo.ZOO), help="zoo models (all)"
    )
    parser.add_argument(
        "--model", action="append", default=[], metavar="FILE.onnx", help="an ONNX file"
    )
    parser.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME=D1,D2,...",
        help="size of an input's symbolic dimensions, for --model files (repeatable)",
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads of both engines (default: the CPUs this process may use, within any "
        "container CPU quota)",
    )
    parser.add_argument("--csv", default=str(OUT / "e2e.csv"), help="where to write the table")
    parser.add_argument(
        "--png", default=str(OUT / "e2e.png"), help="where to plot the ratios ('' for none)"
    )
    # Until fusion is one of optimize()'s default families the benchmark names it.
    parser.add_argument("--rules", nargs="*", default=["algebraic", "fusion"])
    parser.add_argument("--no-optimize", action="store_true", help="load + compile, no rewrites")
    parser.add_argument("--no-compile-times", action="store_true", help="skip cold/warm runs")
    parser.add_argument("--no-kernel-bench", action="store_true")


def run(args: argparse.Namespace) -> int:
    from eqsat.lowering import cpu

    from eqsat.cli import parse_shapes

    if args.threads is None:
        args.threads = cpu.usable_cpus()
    shapes = parse_shapes(args.shape)
    names = args.models if args.models is not None else ([] if args.model else list(zoo.ZOO))
    entries = [zoo.ZOO[name] for name in names]
    entries += [file_entry(path, shapes) for path in args.model]
    rows = []
    for entry in entries:
        name = entry.name
        try:
            rows.append(
                bench_model(
                    entry,
                    args.runs,
                    args.threads,
                    not args.no_optimize,
                    not args.no_compile_times,
                    args.rules or None,
                )
            )
        except zoo.ZooDownloadError as exc:
            print(f"{name}: skipped, download failed: {exc}", file=sys.stderr)
            continue
        print(format_table(rows[-1:]).splitlines()[-2], flush=True)
    print()
    print(f"threads {args.threads}; latency min/median over {args.runs} runs")
    print(format_table(rows))
    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.csv}")
    title = f"eqsat cpu vs onnxruntime, {args.threads} thread(s)"
    if args.png and rows and plot(rows, args.png, title):
        print(f"wrote {args.png}")
    if not args.no_kernel_bench:
        print(format_bandwidth(kernel_bandwidth(args.threads)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
