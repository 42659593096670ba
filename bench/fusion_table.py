"""Before/after kernel counts of the zoo under the fusion rules (a Markdown table for the README).

``python -m bench.fusion_table [model ...]`` optimizes each zoo model with the algebraic and fusion
families (target cpu), checks the result against onnxruntime (rtol 1e-3, atol 1e-4) and prints one
row per model: kernels before and after, the fused ops formed, the optimization time, the e-graph's
tensor e-nodes and why saturation stopped.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from bench import models as zoo
from eqsat.optimize import optimize


def fusion_rules() -> list[Any]:
    from eqsat.rules import fusion

    return ["algebraic", *fusion.FAMILY_NAMES.values()]


def onnxruntime_outputs(model: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnx
    import onnxruntime as ort

    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def row(name: str) -> dict[str, Any]:
    entry = zoo.ZOO[name]
    model = entry.model()
    start = time.perf_counter()
    result = optimize(model, rules=fusion_rules(), target="cpu", **entry.load_args())
    seconds = time.perf_counter() - start
    want = onnxruntime_outputs(model, entry.feeds(0))
    got = result.run(entry.input_feeds(0))  # without the inputs bound as constants at load
    match = all(
        np.allclose(got[k], v, rtol=1e-3, atol=1e-4, equal_nan=True) for k, v in want.items()
    )
    report = result.report
    return {
        "model": name,
        "before": report.kernels_before,
        "after": report.kernels_after,
        "fused": report.fused,
        "bn_left": sum(
            n.op == "BatchNormalization"
            and n.inputs[0].producer is not None
            and n.inputs[0].producer.op in ("Conv", "FusedConv")
            for n in result.graph.nodes
        ),
        "match": match,
        "seconds": seconds,
        "kept": report.kept_input,
        "enodes": report.enodes,
        "stop": report.stop_reason,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | kernels before | kernels after | fused ops formed | BN after Conv | matches ORT "
        "| time | e-nodes | stopped |",
        "|---|---:|---:|---|---:|---|---:|---:|---|",
    ]
    for r in rows:
        fused = ", ".join(f"{k} {v}" for k, v in sorted(r["fused"].items())) or "-"
        lines.append(
            f"| {r['model']} | {r['before']} | {r['after']} | {fused} | {r['bn_left']} | "
            f"{'yes' if r['match'] else 'NO'} | {r['seconds']:.1f} s | {r['enodes']} | {r['stop']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(zoo.ZOO)
    rows = []
    for name in names:
        try:
            rows.append(row(name))
        except zoo.ZooDownloadError as exc:
            print(f"{name}: download failed: {exc}", file=sys.stderr)
    print(table(rows))
    return 0 if all(r["match"] and r["after"] < r["before"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
