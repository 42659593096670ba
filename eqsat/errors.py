"""The eqsat exception hierarchy: every error a user can meet is one of these.

Each error names what it is about (the file, node, op or input) so that a user can act on it without
reading a traceback from inside a dependency.
"""

from __future__ import annotations


class EqsatError(Exception):
    """Base class of every error eqsat raises on purpose."""


class ModelLoadError(EqsatError):
    """A model file or proto could not be read: missing, corrupt, truncated or not ONNX."""


class UnsupportedOperatorError(EqsatError):
    """The graph uses operators (or operator variants) eqsat does not implement.

    ``unsupported`` lists every offending ``(op, node name, reason)`` at once, not only the first.
    """

    def __init__(self, unsupported: list[tuple[str, str, str]]):
        self.unsupported = list(unsupported)
        lines = [f"  {op} (node {node!r}): {why}" for op, node, why in self.unsupported]
        ops = sorted({op for op, _, _ in self.unsupported})
        super().__init__(
            f"{len(self.unsupported)} node(s) use unsupported operators {ops}:\n" + "\n".join(lines)
        )


class ShapeError(EqsatError):
    """Shapes or dtypes do not fit an operator, or a shape cannot be determined statically."""


class DataDependentShapeError(ShapeError):
    """A shape depends on run-time data (NonZero of a run-time value, a Reshape to a computed
    shape, ...). :func:`eqsat.load` does not raise it: the nodes from there on become the graph's
    run-time tail (see :mod:`eqsat.tail`). Building such a node in Python raises it."""


class InputError(EqsatError):
    """Feeds given to ``run`` are missing, unexpected, or of the wrong shape or dtype."""


class LimitError(EqsatError):
    """A resource limit was exceeded where no partial result can be returned."""


class RuleError(EqsatError):
    """A rewrite rule or rule module is malformed or does not type-check."""


class TargetError(EqsatError):
    """An unknown target, or a target whose runtime is unavailable on this machine."""
