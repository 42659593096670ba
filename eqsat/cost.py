"""Target profiles and the cost of e-nodes: a roofline over the op table's FLOP and byte counts.

The cost of one e-node executing on a target is ``max(flops / peak, bytes / bandwidth) + launch``
seconds, from :attr:`OpDef.cost <eqsat.ops.OpDef.cost>` evaluated on the e-class types. E-nodes
whose inputs are all constants cost nothing: they are folded at compile time (principle 3), and so
are graph inputs, constants and output projections. These numbers are a first model; calibration
per machine refines the profiles: :func:`calibrate` measures peak FLOP/s (a float32 matmul),
bandwidth (a large copy) and per-kernel dispatch (a one-element ufunc call) with short
micro-benchmarks and saves them under ``$EQSAT_CACHE`` (default ``~/.cache/eqsat``)/profiles; a saved
profile replaces the shipped default of its target from then on.

A fused e-node (``FusedElementwise``, ``FusedConv``, ...) is one kernel: its op's cost reads each
input once and writes the output once, and it pays one launch, so fusing a chain of N elementwise
ops saves N - 1 launches and the intermediate tensors' round trips through memory.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from eqsat import ops
from eqsat.errors import TargetError
from eqsat.ir import Graph, Value

if TYPE_CHECKING:
    from eqsat.decode import ENode, View


def is_plain(raw: dict) -> bool:
    from eqsat.decode import is_plain as plain

    return plain(raw)


@dataclass(frozen=True)
class Profile:
    """What one target can do per second, and what starting one kernel costs."""

    name: str
    peak_flops: float  # FLOP/s
    bandwidth: float  # bytes/s
    launch: float  # seconds per kernel

    def seconds(self, flops: float, nbytes: float) -> float:
        return max(flops / self.peak_flops, nbytes / self.bandwidth) + self.launch


PROFILES: dict[str, Profile] = {
    # numpy: one interpreted dispatch per node, single-threaded ufuncs.
    "numpy": Profile("numpy", 5e9, 8e9, 5e-6),
    "cpu": Profile("cpu", 50e9, 15e9, 1e-6),
    "cuda": Profile("cuda", 30e12, 1.5e12, 5e-6),
}


def profile_dir() -> Path:
    root = os.environ.get("EQSAT_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "eqsat"
    return base / "profiles"


def saved_profile(target: str) -> Profile | None:
    """The profile :func:`calibrate` saved for ``target`` on this machine, if any."""
    path = profile_dir() / f"{target}.json"
    try:
        data = json.loads(path.read_text())
        return Profile(
            str(data["name"]), float(data["peak_flops"]), float(data["bandwidth"]),
            float(data["launch"]),
        )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None


def profile(target: str | Profile) -> Profile:
    if isinstance(target, Profile):
        return target
    if target not in PROFILES:
        raise TargetError(f"no cost profile for target {target!r}; known: {sorted(PROFILES)}")
    return saved_profile(target) or PROFILES[target]


def _best_of(fn: Callable[[], object], seconds: float) -> float:
    """Fastest of repeated calls of ``fn`` within about ``seconds`` (at least 3 calls)."""
    fn()  # warm up (page faults, BLAS thread start)
    best, spent, calls = math.inf, 0.0, 0
    while calls < 3 or spent < seconds:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent, calls = min(best, dt), spent + dt, calls + 1
    return best


def measure(target: str = "cpu", seconds: float = 0.3) -> Profile:
    """Measure a target's profile with micro-benchmarks of about ``seconds`` each.

    ``numpy`` and ``cpu`` time numpy (BLAS matmul, memory copy, ufunc dispatch) on this machine;
    ``cuda`` is not measured here (its kernels need a device), so asking for it is an error.
    """
    if target not in ("numpy", "cpu"):
        raise TargetError(f"calibration measures the numpy and cpu targets, not {target!r}")
    rng = np.random.default_rng(0)
    n = 512
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    peak = 2.0 * n**3 / _best_of(lambda: np.matmul(a, b, out=out), seconds)
    src = np.ones(8 << 20, np.float32)  # 32 MiB: past the caches
    dst = np.empty_like(src)
    bandwidth = 2.0 * src.nbytes / _best_of(lambda: np.copyto(dst, src), seconds)
    x, y = np.ones(1, np.float32), np.empty(1, np.float32)

    def dispatch() -> None:
        for _ in range(100):
            np.add(x, x, out=y)

    launch = _best_of(dispatch, seconds) / 100
    return Profile(target, peak, bandwidth, launch)


def calibrate(target: str = "cpu", seconds: float = 0.3, save: bool = True) -> tuple[Profile, Path]:
    """Measure ``target``'s profile and (by default) save it for :func:`profile` to use."""
    prof = measure(target, seconds)
    path = profile_dir() / f"{target}.json"
    if save:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(prof), indent=1) + "\n")
        tmp.replace(path)
    return prof, path


def op_seconds(
    op: str, inputs: list[Value | None], outputs: list[Value | None], attrs: dict, prof: Profile
) -> float:
    c = ops.get(op).cost(inputs, outputs, attrs)
    return prof.seconds(c.flops, c.bytes_read + c.bytes_written)


def node_costs(view: View, target: str | Profile = "numpy") -> dict[str, float]:
    """Cost in seconds of every e-node of a serialized e-graph (``inf`` for unusable ones).

    Non-tensor e-nodes (attributes, primitives, lists) cost 0; egglog function entries (shape,
    dtype, ...) are ``inf`` so that no extractor reaches a tensor through them.
    """
    prof = profile(target)
    costs: dict[str, float] = {}
    for nid, raw in view.raw.items():
        node = view.nodes.get(nid)
        if node is None:
            costs[nid] = 0.0 if is_plain(raw) else math.inf
        elif nid in view.invalid:
            costs[nid] = math.inf
        elif node.kind != "op" or (node.eclass in view.const_classes and view.is_const_node(node)):
            costs[nid] = 0.0
        else:
            costs[nid] = _enode_seconds(view, node, prof)
    return costs


def _fake(view: View, eclass: str | None, name: str) -> Value | None:
    if eclass is None:
        return None
    shape, dt = view.types[eclass]
    return Value(name, tuple(shape), np.dtype(dt))


def _enode_seconds(view: View, node: ENode, prof: Profile) -> float:
    ins = [_fake(view, c, f"i{k}") for k, c in enumerate(view.op_inputs(node))]
    t = view.types.get(node.eclass)
    if t is None:
        return math.inf
    if node.mask == "1":
        outs: list[Value | None] = [Value("o", tuple(t[0]), np.dtype(t[1]))]
    else:
        outs = [None if x is None else Value(f"o{k}", tuple(x[0]), x[1]) for k, x in enumerate(t)]
    try:
        return op_seconds(node.op, ins, outs, node.attrs, prof)
    except Exception:
        return math.inf


def graph_cost(graph: Graph, target: str | Profile = "numpy") -> float:
    """Cost of running ``graph`` once: every node not computable at compile time."""
    prof = profile(target)
    total = 0.0
    for node in graph.nodes:
        if all(v is None or v.const is not None for v in node.outputs):
            continue
        total += op_seconds(node.op, node.inputs, node.outputs, node.attrs, prof)
    return total
