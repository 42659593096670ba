"""eqsat: a tensor-graph optimizer and compiler built on e-graphs.

Public API: :func:`load` an ONNX model (or build a :class:`Graph` in Python), :func:`compile` it for a
target, and ``run`` it on numpy arrays. Every error eqsat raises on purpose is an :class:`EqsatError`.
"""

from __future__ import annotations

from eqsat.egraph import Limits
from eqsat.errors import (
    DataDependentShapeError,
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
from eqsat.optimize import OptimizeReport, OptimizeResult, optimize

__version__ = "0.1.0"


__all__ = [
    "DataDependentShapeError",
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
