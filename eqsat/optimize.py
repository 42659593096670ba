"""The pipeline behind :func:`optimize`: load, encode, saturate, price, extract, decode, verify.

Never worse, never wrong (principle 4): the input graph is always in the e-graph, the extracted graph
is kept only when it costs no more than the input under the target's cost model and decodes into a
valid graph, and with ``verify=True`` only when it matches the input on random feeds. Otherwise the
input graph is returned and the report says why.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eqsat import cost as costs
from eqsat import extract as extractors
from eqsat.decode import View, _hashable, prune
from eqsat.egraph import Limits, saturate
from eqsat.encode import encode
from eqsat.errors import EqsatError
from eqsat.feeds import random_feeds
from eqsat.ir import Graph, subgraphs
from eqsat.onnx_io import load, to_onnx

VERIFY_RTOL, VERIFY_ATOL = 1e-3, 1e-4


@dataclass
class OptimizeReport:
    """What one optimization did; ``str(report)`` is a readable summary."""

    eclasses: int = 0
    enodes: int = 0
    iterations: int = 0
    stop_reason: str = ""
    matches: dict[str, int] = field(default_factory=dict)
    cost_before: float = 0.0  # seconds per run on the target's cost model
    cost_after: float = 0.0
    nodes_before: int = 0
    nodes_after: int = 0
    extractor: str = ""
    target: str = ""
    times: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    kept_input: str = ""  # why the input graph was returned unchanged, if it was
    verified: bool | None = None  # None: not asked for
    max_error: float | None = None
    invalid_enodes: int = 0  # e-nodes rejected as not shape-correct
    kernels_before: int = 0  # nodes that run at run time (not folded at compile time)
    kernels_after: int = 0
    fused: dict[str, int] = field(default_factory=dict)  # fused op -> how many were formed
    tail: str = ""  # the graph's run-time tail (eqsat.tail), described; not optimized

    def __str__(self) -> str:
        lines = [
            f"target {self.target}, extractor {self.extractor}",
            f"e-graph: {self.eclasses} e-classes, {self.enodes} e-nodes, {self.iterations} "
            f"iterations, stopped: {self.stop_reason}",
            f"cost: {self.cost_before * 1e3:.4f} ms -> {self.cost_after * 1e3:.4f} ms; "
            f"nodes: {self.nodes_before} -> {self.nodes_after}; "
            f"kernels: {self.kernels_before} -> {self.kernels_after}",
        ]
        if self.fused:
            lines.append(
                "fused ops formed: " + ", ".join(f"{k} {v}" for k, v in sorted(self.fused.items()))
            )
        if self.kept_input:
            lines.append(f"kept the input graph: {self.kept_input}")
        if self.tail:
            lines.append(f"then a {self.tail}")
        if self.verified is not None:
            lines.append(f"verified: {self.verified} (max abs error {self.max_error})")
        if self.matches:
            lines.append("rule matches:")
            width = max(len(k) for k in self.matches)
            for name, count in sorted(self.matches.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"  {name:<{width}}  {count}")
        lines.append("time: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in self.times.items()))
        return "\n".join(lines)


class OptimizeResult:
    """An optimized graph: ``.graph``, ``.run(feeds)``, ``.to_onnx()``, ``.report``."""

    def __init__(self, graph: Graph, original: Graph, target: str, report: OptimizeReport):
        self.graph = graph
        self.original = original
        self.target = target
        self.report = report
        self._executable: Any = None

    @property
    def executable(self) -> Any:
        if self._executable is None:
            from eqsat.lowering import compile_graph

            self._executable = compile_graph(self.graph, self.target)
        return self._executable

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return self.executable.run(feeds)

    __call__ = run

    def to_onnx(self) -> Any:
        return to_onnx(self.graph)

    def __repr__(self) -> str:
        return f"<OptimizeResult {self.graph!r} target={self.target}>"


def as_graph(
    graph: Any,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    constants: Mapping[str, Any] | None = None,
) -> Graph:
    if isinstance(graph, Graph):
        if input_shapes or constants:  # re-specialize through the importer
            return load(to_onnx(graph), input_shapes=input_shapes, constants=constants)
        return graph
    return load(graph, input_shapes=input_shapes, constants=constants)


def optimize(
    graph: Any,
    rules: Any = None,
    target: str = "cpu",
    extractor: Any = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    constants: Mapping[str, Any] | None = None,
    limits: Limits | Mapping[str, Any] | None = None,
    verify: bool = False,
) -> OptimizeResult:
    """Optimize ``graph`` (a path, ``onnx.ModelProto`` or :class:`Graph`) with equality saturation.

    ``rules``: None (the default families), family names, egglog rulesets, rule objects, or paths
    of rule modules/folders. ``extractor``: ``"greedy-dag"`` (default), ``"tree"`` or a callable of
    the extraction signature. ``limits``: :class:`~eqsat.egraph.Limits` or a dict of its fields.
    """
    from eqsat.rules import relevant, resolve

    times: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        times[phase] = times.get(phase, 0.0) + now - clock
        clock = now

    source = as_graph(graph, input_shapes, constants)
    lap("load")
    report = OptimizeReport(target=target, times=times)
    report.extractor = extractor if isinstance(extractor, str) else extractors.DEFAULT
    if callable(extractor):
        report.extractor = getattr(extractor, "__module__", "custom")
    prof = target if target in costs.PROFILES else "cpu"
    report.cost_before = report.cost_after = costs.graph_cost(source, prof)
    report.nodes_before = report.nodes_after = len(source.nodes)
    report.kernels_before = report.kernels_after = kernel_count(source)
    report.tail = "" if source.tail is None else source.tail.describe()
    result = OptimizeResult(source, source, target, report)
    if any(subgraphs(n) for n in source.nodes):
        report.kept_input = "the graph has control flow (If with subgraphs), not optimized yet"
        return result
    rule_list, extra = resolve(rules, deferred=False)
    rule_list = relevant(rule_list, {n.op for n in source.nodes}, rules)
    enc = encode(source)
    lap("encode")
    sat = saturate(enc, rule_list, Limits.of(limits), extra)
    report.iterations, report.stop_reason, report.matches = (
        sat.iterations,
        sat.stop_reason,
        sat.matches,
    )
    lap("saturate")
    serialized = prune(json.loads(enc.egraph._serialize().to_json()))
    try:
        view = View(serialized, enc)
    except EqsatError as exc:  # the input is not in the e-graph as encoded: an internal fault
        report.kept_input = f"reading the saturated e-graph failed: {exc}"
        warnings.warn(
            f"eqsat.optimize: {report.kept_input}; returning the input graph", stacklevel=2
        )
        lap("analyze")
        return result
    report.eclasses = len(view.classes)
    report.enodes = len(view.nodes)
    report.invalid_enodes = len(view.invalid)
    node_cost = price(view, prof)
    lap("analyze")
    roots = view.roots()
    original = view.original_choices()
    # Extractors see the tensor e-nodes only: attribute values, primitives and input lists
    # cost nothing and decoding reads them from the view.
    tensors = view.tensor_egraph(node_cost, keep=original)
    original = {c: n for c, n in original.items() if n in tensors["nodes"]}
    extract = extractors.get(extractor)
    try:
        choices = extract(tensors, roots, node_cost)
        if not extractors.is_acyclic(tensors, roots, choices):
            raise EqsatError("the extractor returned a cyclic choice")
        before = extractors.dag_cost(tensors, roots, original, node_cost)
        after = extractors.dag_cost(tensors, roots, choices, node_cost)
    except EqsatError as exc:
        report.kept_input = f"extraction failed: {exc}"
        lap("extract")
        return result
    lap("extract")
    if after > before * (1 + 1e-9):
        report.kept_input = f"extracted cost {after:.3g} s is above the input's {before:.3g} s"
        return result
    try:
        optimized = view.decode(choices)
    except EqsatError as exc:
        report.kept_input = f"decoding the extracted graph failed: {exc}"
        lap("decode")
        return result
    lap("decode")
    optimized.tail = source.tail  # the run-time tail reads the same outputs, in the same order
    new_cost = costs.graph_cost(optimized, prof)
    if new_cost > report.cost_before * (1 + 1e-9):
        report.kept_input = f"the decoded graph costs {new_cost:.3g} s, above the input's {report.cost_before:.3g} s"
        return result
    if verify:
        ok, err = compare(source, optimized)
        report.verified, report.max_error = ok, err
        lap("verify")
        if not ok:
            report.kept_input = f"verification failed (max abs error {err:.3g})"
            warnings.warn(
                f"eqsat.optimize: {report.kept_input}; returning the input graph", stacklevel=2
            )
            return result
    report.cost_after = new_cost
    report.nodes_after = len(optimized.nodes)
    report.kernels_after = kernel_count(optimized)
    report.fused = fused_counts(optimized, source)
    result.graph = optimized
    return result


class _Subset:
    """A view whose serialized nodes are narrowed to ``ids`` (what :func:`price` prices)."""

    def __init__(self, view: View, ids: list[str]):
        self._view = view
        self.raw = {nid: view.raw[nid] for nid in ids}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._view, name)


def price(view: View, prof: Any) -> dict[str, float]:
    """The cost of every tensor e-node (what extraction needs), each distinct e-node priced once.

    E-nodes with the same op, attributes and input and output types cost the same, and a
    saturated e-graph repeats them a lot (every block of a network, every way of writing one
    kernel): only one of each is priced with :func:`eqsat.cost.node_costs`.
    """
    groups: dict[tuple, list[str]] = {}
    singles: list[str] = []
    for nid, node in view.nodes.items():
        if node.kind != "op" or nid in view.invalid:
            singles.append(nid)
            continue
        folded = node.eclass in view.const_classes and view.is_const_node(node)
        try:
            key = (
                node.op,
                tuple(sorted((k, _hashable(v)) for k, v in node.attrs.items())),
                tuple(
                    None if c is None else _type_key(view.types.get(c))
                    for c in view.op_inputs(node)
                ),
                _type_key(view.types.get(node.eclass)),
                node.mask,
                folded,
            )
            hash(key)
        except TypeError:
            singles.append(nid)
            continue
        groups.setdefault(key, []).append(nid)
    reps = [ids[0] for ids in groups.values()]
    priced = costs.node_costs(_Subset(view, singles + reps), prof)  # type: ignore[arg-type]
    for ids in groups.values():
        for nid in ids[1:]:
            priced[nid] = priced[ids[0]]
    return priced


def _type_key(t: Any) -> Any:
    if t is None:
        return None
    if isinstance(t, list):
        return tuple(_type_key(x) for x in t)
    return (tuple(t[0]), np.dtype(t[1]).str)


def kernel_count(graph: Graph) -> int:
    """Nodes that run at run time: one kernel each (constant ones fold at compile time)."""
    return sum(
        1 for n in graph.nodes if not all(v is None or v.const is not None for v in n.outputs)
    )


def fused_counts(graph: Graph, source: Graph | None = None) -> dict[str, int]:
    """Fused and channels-last ops of ``graph`` (and composite ops the source did not have), with
    their counts."""
    from eqsat.ops.fused import FUSED_OPS

    # Channels-last convs are kernels a rule formed too (the NHWC pools are plain layout variants).
    own = FUSED_OPS | {"ConvNHWC", "FusedConvNHWC"}
    composite = {"LayerNormalization", "Softmax", "Gelu", "HardSwish"}
    before = source.op_counts() if source is not None else {}
    counts: dict[str, int] = {}
    for op, n in graph.op_counts().items():
        if op in own:
            counts[op] = n
        elif op in composite and n > before.get(op, 0):
            counts[op] = n - before.get(op, 0)
    return counts


def compare(a: Graph, b: Graph, seed: int = 0) -> tuple[bool, float]:
    """Run both graphs on the same random feeds with the numpy target; (match, max abs error)."""
    from eqsat.lowering import compile_graph

    feeds = random_feeds(a, seed)
    want = compile_graph(a, "numpy").run(feeds)
    got = compile_graph(b, "numpy").run(feeds)
    worst = 0.0
    ok = list(want) == list(got)
    for key, expected in want.items():
        actual = got.get(key)
        if actual is None or actual.shape != expected.shape or actual.dtype != expected.dtype:
            return False, float("inf")
        if expected.dtype.kind in "fc":
            with np.errstate(invalid="ignore"):
                diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
            finite = np.isfinite(expected) & np.isfinite(actual)
            if not np.array_equal(np.isnan(actual), np.isnan(expected)):
                ok = False
            # Rewrites may round differently: allow a few ulp of the dtype on top of the tolerance.
            eps = 8 * float(np.finfo(expected.dtype).eps)
            rtol, atol = max(VERIFY_RTOL, eps), max(VERIFY_ATOL, eps)
            bound = atol + rtol * np.abs(expected.astype(np.float64))
            if np.any(diff[finite] > bound[finite]):
                ok = False
            if finite.any():
                worst = max(worst, float(np.max(diff[finite])))
        elif not np.array_equal(actual, expected):
            ok = False
            worst = float("inf")
    return ok, worst
