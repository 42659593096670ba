"""Extraction-strategy benchmark: cost, time and gap to the ILP optimum on real e-graphs.

For every zoo model (saturated with the default rules, priced with the target's cost model, and cut
to the tensor e-nodes reachable from its outputs, as :func:`eqsat.optimize.optimize` does) and
every JSON e-graph file given (egglog's serialized format, e.g. Tensat's in
``../shared/egraphs/tensat/``), each strategy extracts; the table shows the e-graph's size, the
extraction time, the DAG cost, whether the answer is valid (roots chosen, closed, acyclic), the gap
to the ILP's answer and the ILP's proven optimality gap. For zoo models, ``--measure`` also runs each
extracted graph on the target and reports the Spearman rank correlation between predicted cost and
measured time. Writes ``extraction.md``, ``extraction.csv`` and (with matplotlib) ``extraction.png``
(cost gap against extraction time) into ``--out``.

    python -m bench.extraction [FILE.json ...] [--no-zoo] [--models a,b] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eqsat import extract as extractors

STRATEGIES = ("tree", "greedy-dag", "greedy-ls", "ilp")


@dataclass
class Case:
    """One e-graph to extract from."""

    name: str
    egraph: dict[str, Any]
    roots: list[str]
    cost: dict[str, float] | None = None
    run: Callable[[dict[str, str]], float] | None = None  # choices -> measured seconds


@dataclass
class Row:
    egraph: str
    strategy: str
    eclasses: int
    enodes: int
    seconds: float
    cost: float
    valid: bool
    gap_to_ilp: float = math.nan  # (cost - ilp cost) / ilp cost
    ilp_gap: float = math.nan  # the ILP's own proven optimality gap
    measured: float = math.nan
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def json_case(path: str | Path) -> Case:
    data = json.loads(Path(path).read_text())
    roots = [str(r) for r in data.get("root_eclasses", [])]
    if not roots:
        raise SystemExit(f"{path}: no root_eclasses")
    return Case(Path(path).stem, data, roots)


def zoo_case(name: str, target: str, measure: bool) -> Case:
    """Saturate a zoo model as optimize() does and price its e-nodes for ``target``."""
    from eqsat.rules import resolve

    from bench import models
    from eqsat import cost as costs
    from eqsat.decode import View, prune
    from eqsat.egraph import Limits, saturate
    from eqsat.encode import encode
    from eqsat.optimize import as_graph, price

    entry = models.get(name)
    graph = as_graph(entry.model(), **entry.load_args())
    rules, extra = resolve(None)
    enc = encode(graph)
    saturate(enc, rules, Limits.of(None), extra)
    serialized = prune(json.loads(enc.egraph._serialize().to_json()))
    view = View(serialized, enc)
    prof = target if target in costs.PROFILES else "cpu"
    node_cost = price(view, prof)
    # As optimize() does: extractors see the tensor e-nodes reachable from the roots only.
    tensors = view.tensor_egraph(node_cost, keep=view.original_choices())
    run = None
    if measure:
        feeds = entry.input_feeds(0)  # without the inputs bound as constants at load

        def run(choices: dict[str, str]) -> float:
            from eqsat.lowering import compile_graph

            exe = compile_graph(view.decode(choices), target)
            exe.run(feeds)
            best = math.inf
            for _ in range(5):
                t0 = time.perf_counter()
                exe.run(feeds)
                best = min(best, time.perf_counter() - t0)
            return best

    return Case(name, tensors, view.roots(), node_cost, run)


def bench_case(
    case: Case, strategies: Sequence[str], ilp_limit: float, log: Callable[[str], None]
) -> list[Row]:
    classes = {n["eclass"] for n in case.egraph["nodes"].values()}
    rows = []
    for name in strategies:
        log(f"{case.name}: {name} ...")
        fn = extractors.get(name)
        kwargs = {"time_limit": ilp_limit} if name == "ilp" else {}
        t0 = time.perf_counter()
        try:
            choices = fn(case.egraph, case.roots, case.cost, **kwargs)
        except Exception as exc:  # one failing strategy must not sink the table
            rows.append(Row(case.name, name, len(classes), len(case.egraph["nodes"]), math.nan,
                            math.nan, False, note=f"{type(exc).__name__}: {exc}"))  # fmt: skip
            continue
        seconds = time.perf_counter() - t0
        valid = _valid(case, choices)
        cost = (
            extractors.dag_cost(case.egraph, case.roots, choices, case.cost) if valid else math.inf
        )
        row = Row(case.name, name, len(classes), len(case.egraph["nodes"]), seconds, cost, valid)
        if isinstance(choices, extractors.Extraction) and choices.gap is not None:
            row.ilp_gap = choices.gap
            row.note = ("optimal" if choices.optimal else "time limit") + f"; {choices.detail}"
        if case.run is not None and valid:
            try:
                row.measured = case.run(dict(choices))
            except Exception as exc:
                row.note += f" run failed: {type(exc).__name__}: {exc}"
        rows.append(row)
        log(f"{case.name}: {name} cost {cost:.6g} in {seconds:.3f} s")
    ilp = next((r for r in rows if r.strategy == "ilp" and r.valid), None)
    if ilp is not None:
        for r in rows:
            if r.valid:
                r.gap_to_ilp = (r.cost - ilp.cost) / ilp.cost if ilp.cost else 0.0
    return rows


def _valid(case: Case, choices: dict[str, str]) -> bool:
    try:
        extractors.reachable(case.egraph, case.roots, choices)
    except Exception:
        return False
    return all(r in choices for r in case.roots) and extractors.is_acyclic(
        case.egraph, case.roots, choices
    )


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 3:
        return math.nan
    from scipy.stats import spearmanr

    return float(spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic)


def markdown(rows: Sequence[Row]) -> str:
    head = ("e-graph", "strategy", "classes", "nodes", "time s", "DAG cost", "valid",
            "vs ILP", "ILP gap", "measured ms", "note")  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = (
            r.egraph, r.strategy, str(r.eclasses), str(r.enodes), f"{r.seconds:.3f}",
            f"{r.cost:.6g}", "yes" if r.valid else "NO", _pct(r.gap_to_ilp), _pct(r.ilp_gap),
            "" if math.isnan(r.measured) else f"{r.measured * 1e3:.3f}", r.note,
        )  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows: Sequence[Row]) -> str:
    """How far each strategy is from the ILP and how fast, over all e-graphs."""
    out = []
    by_graph: dict[str, dict[str, Row]] = {}
    for r in rows:
        by_graph.setdefault(r.egraph, {})[r.strategy] = r
    for name in STRATEGIES:
        gaps = [g[name].gap_to_ilp for g in by_graph.values() if name in g]
        gaps = [x for x in gaps if math.isfinite(x)]
        ratios = [
            g["ilp"].seconds / g[name].seconds
            for g in by_graph.values()
            if name in g and "ilp" in g and g[name].seconds > 0 and math.isfinite(g[name].seconds)
        ]
        if gaps:
            speed = f", {_geo(ratios):.3g}x faster than ILP (geomean)" if name != "ilp" else ""
            out.append(
                f"- {name}: worst {_pct(max(gaps))} / mean {_pct(sum(gaps) / len(gaps))} above "
                f"ILP{speed}"
            )
    beaten = [r for r in rows if r.valid and math.isfinite(r.gap_to_ilp) and r.gap_to_ilp < -1e-9]
    out.append(
        "- ILP beaten: " + (", ".join(f"{r.egraph}/{r.strategy}" for r in beaten) or "never")
    )
    measured = [r for r in rows if math.isfinite(r.measured)]
    if measured:
        rho = spearman([r.cost for r in measured], [r.measured for r in measured])
        out.append(f"- rank correlation predicted cost vs measured time: {rho:.3f}")
    return "\n".join(out)


def _geo(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x > 0 and math.isfinite(x)]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else math.nan


def _pct(x: float) -> str:
    return "" if math.isnan(x) else f"{100 * x:.3f}%"


def write(rows: Sequence[Row], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    md = out / "extraction.md"
    md.write_text(markdown(rows) + "\n\n" + summary(rows) + "\n")
    written.append(md)
    path = out / "extraction.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["egraph", "strategy", "eclasses", "enodes", "seconds", "dag_cost", "valid",
                    "gap_to_ilp", "ilp_gap", "measured_seconds", "note"])  # fmt: skip
        for r in rows:
            w.writerow([r.egraph, r.strategy, r.eclasses, r.enodes, r.seconds, r.cost, r.valid,
                        r.gap_to_ilp, r.ilp_gap, r.measured, r.note])  # fmt: skip
    written.append(path)
    png = plot(rows, out / "extraction.png")
    if png is not None:
        written.append(png)
    return written


def plot(rows: Sequence[Row], path: Path) -> Path | None:
    """Cost gap to the ILP against extraction time, one marker per strategy (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in STRATEGIES:
        pts = [(r.seconds, 100 * r.gap_to_ilp) for r in rows
               if r.strategy == name and math.isfinite(r.gap_to_ilp)]  # fmt: skip
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("extraction time (s)")
    ax.set_ylabel("DAG cost above ILP (%)")
    ax.set_title("extraction strategies")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(
    files: Sequence[str] = (),
    models: Sequence[str] | None = None,
    strategies: Sequence[str] = STRATEGIES,
    target: str = "cpu",
    ilp_limit: float = 60.0,
    measure: bool = False,
    out: str | Path = "bench-results",
    log: Callable[[str], None] | None = None,
) -> list[Row]:
    """Benchmark ``strategies`` on zoo ``models`` (None: all) and JSON e-graph ``files``."""
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    rows: list[Row] = []
    if models is None:
        from bench.models import ZOO

        models = list(ZOO)
    for name in models:
        say(f"{name}: saturating ...")
        try:
            case = zoo_case(name, target, measure)
        except Exception as exc:  # e.g. a zoo download that is not available offline
            say(f"{name}: skipped ({type(exc).__name__}: {exc})")
            continue
        rows.extend(bench_case(case, strategies, ilp_limit, say))
    for path in files:
        rows.extend(bench_case(json_case(path), strategies, ilp_limit, say))
    written = write(rows, Path(out))
    print(markdown(rows))
    print()
    print(summary(rows))
    print("wrote " + ", ".join(str(p) for p in written))
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", help="serialized e-graph JSON files (egglog format)")
    p.add_argument("--models", help="comma-separated zoo models (default: all)")
    p.add_argument("--no-zoo", action="store_true", help="only the JSON files")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--target", default="cpu")
    p.add_argument("--ilp-time-limit", type=float, default=60.0)
    p.add_argument("--measure", action="store_true", help="run extracted zoo graphs, timed")
    p.add_argument("--out", default="bench-results", help="folder for .md, .csv, .png")


def main_args(args: argparse.Namespace) -> int:
    models: list[str] | None = None
    if args.no_zoo:
        models = []
    elif args.models:
        models = [m for m in args.models.split(",") if m]
    strategies = [s for s in args.strategies.split(",") if s]
    for s in strategies:
        extractors.get(s)  # unknown names fail before any work
    run(args.files, models, strategies, args.target, args.ilp_time_limit, args.measure, args.out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.extraction", description=__doc__)
    add_arguments(p)
    return main_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
