"""The compiled form every target returns: validated ``run(feeds) -> outputs`` over numpy arrays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from eqsat.errors import InputError
from eqsat.ir import Graph, Value


class Executable:
    """A graph compiled for one target. Subclasses implement :meth:`_execute`."""

    target = "abstract"

    def __init__(self, graph: Graph):
        self.graph = graph
        # Inputs bound to constants at load time are not fed.
        self.input_specs = [v for v in graph.inputs if v.const is None]

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run on ``{input name: array}``; returns ``{output name: array}``."""
        return self._execute(self.check_feeds(feeds))

    __call__ = run

    def check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return check_feeds(self.input_specs, feeds)

    def _execute(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} target={self.target} graph={self.graph.name!r}>"


def check_feeds(specs: Sequence[Value], feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``feeds`` as ``{name: array}`` for the graph inputs ``specs``: lists and scalars converted
    to arrays of the input's dtype; an :class:`~eqsat.errors.InputError` naming the input for a
    missing or unknown name, a wrong dtype or a wrong shape."""
    if not isinstance(feeds, Mapping):
        raise InputError(f"feeds must be a dict of input name -> array, got {type(feeds).__name__}")
    expected = {v.name for v in specs}
    missing = [n for n in expected if n not in feeds]
    unknown = [n for n in feeds if n not in expected]
    problems = []
    if missing:
        problems.append(f"missing input(s) {sorted(missing)}")
    if unknown:
        problems.append(f"unknown input(s) {sorted(unknown)}")
    if problems:
        wanted = ", ".join(f"{v.name}: {v.dtype}{list(v.shape)}" for v in specs)
        raise InputError(f"{'; '.join(problems)}; the graph takes {wanted or 'no inputs'}")
    checked = {}
    for spec in specs:
        array = feeds[spec.name]
        if not isinstance(array, np.ndarray):
            try:
                array = np.asarray(array)
            except Exception as exc:
                raise InputError(
                    f"input {spec.name!r}: not convertible to an array: {exc}"
                ) from None
            if array.dtype != spec.dtype and np.can_cast(array.dtype, spec.dtype, "same_kind"):
                array = array.astype(spec.dtype)  # Python scalars and lists take the input's dtype
        if array.dtype != spec.dtype:
            raise InputError(f"input {spec.name!r}: expected dtype {spec.dtype}, got {array.dtype}")
        if tuple(array.shape) != spec.shape:
            raise InputError(
                f"input {spec.name!r}: expected shape {list(spec.shape)}, got {list(array.shape)}"
            )
        checked[spec.name] = array
    return checked
