"""eqsat: a tensor-graph optimizer and compiler built on e-graphs.

Public API: :func:`load` an ONNX model (or build a :class:`Graph` in Python), :func:`compile` it for a
target, and ``run`` it on numpy arrays. Every error eqsat raises on purpose is an :class:`EqsatError`.
"""

from __future__ import annotations

from eqsat.errors import (
    EqsatError,
    InputError,
    LimitError,
    ModelLoadError,
    RuleError,
    ShapeError,
    TargetError,
    UnsupportedOperatorError,
)
from eqsat.ir import Graph, Node, Value
from eqsat.lowering import Executable
from eqsat.lowering import compile_graph as compile
from eqsat.onnx_io import load, save, to_onnx

__version__ = "0.1.0"

# The e-graph engine builds its egglog classes at import (about a second): load it on first use, so
# that loading and running a model does not pay for it.
_LAZY = {
    "Limits": "eqsat.egraph",
    "OptimizeReport": "eqsat.optimize",
    "OptimizeResult": "eqsat.optimize",
    "optimize": "eqsat.optimize",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'eqsat' has no attribute {name!r}")


__all__ = [
    "EqsatError",
    "Executable",
    "Graph",
    "InputError",
    "LimitError",
    "Limits",
    "ModelLoadError",
    "Node",
    "OptimizeReport",
    "OptimizeResult",
    "RuleError",
    "ShapeError",
    "TargetError",
    "UnsupportedOperatorError",
    "Value",
    "compile",
    "load",
    "optimize",
    "save",
    "to_onnx",
]
