"""Extraction, cost-model and benchmark verbs: ``eqsat extract``, ``eqsat calibrate``, ``eqsat bench``.

``register(subparsers)`` adds them to the ``eqsat`` parser (see :mod:`eqsat.cli`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from eqsat import extract as extractors
from eqsat.errors import EqsatError, InputError


def cmd_extract(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InputError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), dict):
        raise InputError(f"{path}: expected egglog's serialized e-graph ({{'nodes': {{...}}}})")
    roots = [str(r) for r in (args.root or data.get("root_eclasses") or [])]
    if not roots:
        raise InputError(f"{path}: no root_eclasses in the file; give --root ECLASS")
    fn = extractors.get(args.extractor)
    kwargs: dict[str, Any] = {}
    if args.time_limit is not None:
        if args.extractor not in ("ilp", "greedy-ls"):
            raise InputError(f"--time-limit applies to ilp and greedy-ls, not {args.extractor}")
        kwargs["time_limit"] = args.time_limit
    t0 = time.perf_counter()
    choices = fn(data, roots, None, **kwargs)
    seconds = time.perf_counter() - t0
    if not extractors.is_acyclic(data, roots, choices):
        raise EqsatError(f"{args.extractor} returned a cyclic extraction")
    cost = extractors.dag_cost(data, roots, choices, None)
    kept = extractors.reachable(data, roots, choices)
    result: dict[str, Any] = {
        "extractor": args.extractor,
        "dag_cost": cost,
        "seconds": seconds,
        "choices": {c: choices[c] for c in kept},
    }
    line = f"{args.extractor}: DAG cost {cost:.6g} in {seconds:.3f} s ({len(kept)} e-classes)"
    if isinstance(choices, extractors.Extraction) and choices.gap is not None:
        result.update(lower_bound=choices.lower_bound, gap=choices.gap, optimal=choices.optimal)
        state = "optimal" if choices.optimal else f"gap {100 * choices.gap:.4f}% at the time limit"
        line += f", {state}"
    print(line)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from eqsat import cost

    before = cost.profile(args.target)
    prof, path = cost.calibrate(args.target, seconds=args.seconds, save=not args.dry_run)
    print(f"target {args.target} (before: {_describe(before)})")
    print(f"measured: {_describe(prof)}")
    print("not saved (--dry-run)" if args.dry_run else f"saved to {path}")
    return 0


def _describe(p: Any) -> str:
    return (
        f"peak {p.peak_flops / 1e9:.3g} GFLOP/s, bandwidth {p.bandwidth / 1e9:.3g} GB/s, "
        f"launch {p.launch * 1e6:.3g} us"
    )


# `eqsat bench KIND` runs the repository's bench/KIND.py: (module, help, entry point taking args).
BENCHMARKS = {
    "extraction": ("bench.extraction", "compare extraction strategies", "main_args"),
    "e2e": ("bench.e2e", "eqsat cpu against onnxruntime on the zoo, end to end", "run"),
}


def _bench_module(kind: str) -> Any:
    """bench/ is not installed: find it in the checkout eqsat runs from, or the current folder."""
    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        if (root / "bench" / f"{kind}.py").exists():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            return importlib.import_module(BENCHMARKS[kind][0])
    return None


def cmd_bench(args: argparse.Namespace) -> int:
    module = _bench_module(args.bench)
    if module is None:
        raise InputError(
            "eqsat bench needs the repository's bench/ folder (run it from a checkout)"
        )
    return getattr(module, BENCHMARKS[args.bench][2])(args)


def register(subparsers: Any) -> None:
    ext = subparsers.add_parser(
        "extract", help="extract from a serialized e-graph (egglog / extraction-gym JSON)"
    )
    ext.add_argument("file", help="e-graph JSON with nodes {id: {op, children, eclass, cost}}")
    ext.add_argument(
        "--extractor", default=extractors.DEFAULT, choices=sorted(extractors.STRATEGIES)
    )
    ext.add_argument("--root", action="append", help="root e-class (default: root_eclasses)")
    ext.add_argument("--time-limit", type=float, help="seconds, for ilp (default 60)")
    ext.add_argument("--out", metavar="RESULT.json", help="write extractor, cost, time, choices")
    ext.set_defaults(func=cmd_extract)

    cal = subparsers.add_parser("calibrate", help="measure a target's cost profile and save it")
    cal.add_argument("--target", default="cpu", choices=["cpu", "numpy"])
    cal.add_argument("--seconds", type=float, default=0.3, help="per micro-benchmark")
    cal.add_argument("--dry-run", action="store_true", help="measure and print, do not save")
    cal.set_defaults(func=cmd_calibrate)

    bench = subparsers.add_parser("bench", help="benchmarks")
    kinds = bench.add_subparsers(dest="bench", required=True)
    for kind, (_, help_text, _) in BENCHMARKS.items():
        parser = kinds.add_parser(kind, help=f"{help_text} (bench/{kind}.py)")
        module = _bench_module(kind)
        if module is not None:
            module.add_arguments(parser)
        parser.set_defaults(func=cmd_bench)
