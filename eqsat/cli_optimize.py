"""Command-line verbs of the e-graph engine: ``eqsat optimize`` and ``eqsat check-rules``.

:func:`register` adds both to the ``eqsat`` parser's sub-commands; their handlers return an exit
status and let :class:`~eqsat.errors.EqsatError` reach ``eqsat.cli.main``, which prints it.
"""

from __future__ import annotations

import argparse
from typing import Any


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    if args.iterations is not None:
        limits["iterations"] = args.iterations
    if args.max_nodes is not None:
        limits["nodes"] = args.max_nodes
    if args.seconds is not None:
        limits["seconds"] = args.seconds
    return limits


def cmd_optimize(args: argparse.Namespace) -> int:
    import onnx

    from eqsat.cli import parse_shapes
    from eqsat.optimize import optimize

    result = optimize(
        args.model,
        rules=args.rules or None,
        target=args.target,
        extractor=args.extractor,
        input_shapes=parse_shapes(args.shape or []) or None,
        limits=_limits(args),
        verify=args.verify,
    )
    print(f"model    {args.model}")
    print(result.report)
    if args.out:
        onnx.save(result.to_onnx(), args.out)
        print(f"saved    {args.out}")
    return 0


def cmd_check_rules(args: argparse.Namespace) -> int:
    from eqsat.rulecheck import check_rules, format_checks
    from eqsat.rules import resolve

    rules, extra = resolve(args.paths or None)
    checks = check_rules(rules, samples=args.samples, seed=args.seed)
    print(format_checks(checks))
    if extra:
        print(f"({len(extra)} plain egglog ruleset(s) cannot be instantiated and were not checked)")
    failed = [c for c in checks if c.status == "FAILED"]
    for c in failed:
        print(f"\n{c.name}: {c.detail}")
    return 1 if failed else 0


def register(subparsers: Any) -> None:
    """Add ``optimize`` and ``check-rules`` to an argparse sub-command set."""
    opt = subparsers.add_parser("optimize", help="optimize a model with equality saturation")
    opt.add_argument("model", help="path of an .onnx file")
    opt.add_argument(
        "--shape",
        action="append",
        metavar="NAME=D1,D2,...",
        help="static shape for an input with symbolic dimensions (repeatable)",
    )
    opt.add_argument(
        "--rules",
        action="append",
        metavar="FAMILY|PATH",
        help="rule family name or rule file/folder (repeatable; default: the built-in families)",
    )
    opt.add_argument("--target", default="numpy", help="target whose cost model to use")
    opt.add_argument("--extractor", default="greedy-dag", help="greedy-dag (default) or tree")
    opt.add_argument("--iterations", type=int, help="saturation iteration limit")
    opt.add_argument("--max-nodes", type=int, help="e-node limit")
    opt.add_argument("--seconds", type=float, help="saturation time limit")
    opt.add_argument("--verify", action="store_true", help="compare with the input on random data")
    opt.add_argument("-o", "--out", metavar="FILE.onnx", help="save the optimized model")
    opt.set_defaults(func=cmd_optimize)

    chk = subparsers.add_parser(
        "check-rules", help="check rewrite rules numerically on random instances"
    )
    chk.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="rule files/folders or family names (default: the default families)",
    )
    chk.add_argument("--samples", type=int, default=200, help="random instances tried per rule")
    chk.add_argument("--seed", type=int, default=0, help="random seed")
    chk.set_defaults(func=cmd_check_rules)
