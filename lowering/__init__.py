"""Lowering targets: each compiles an optimized :class:`eqsat.Graph` into an :class:`Executable`.

The protocol is one function per target module, ``compile(graph) -> Executable``. ``numpy`` is the
reference target and is always available; other targets import their runtime lazily so that a
missing toolchain is reported as a :class:`~eqsat.errors.TargetError` naming the target.
"""

from __future__ import annotations

import importlib

from eqsat.lowering.executable import Executable

from eqsat.errors import TargetError
from eqsat.ir import Graph

TARGETS = {"numpy": "eqsat.lowering.numpy", "cpu": "eqsat.lowering.cpu"}


def compile_graph(graph: Graph, target: str = "numpy") -> Executable:
    """Compile ``graph`` for ``target`` (one of :data:`TARGETS`)."""
    if target not in TARGETS:
        raise TargetError(f"unknown target {target!r}; available: {sorted(TARGETS)}")
    module = importlib.import_module(TARGETS[target])
    return module.compile(graph)


__all__ = ["TARGETS", "Executable", "compile_graph"]
