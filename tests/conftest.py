"""Shared test fixtures."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _no_compile_time_tuning(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests count the runs, maps and calls that their own runs make: multi-threaded compiles
    here make none of their own (:mod:`eqsat.lowering.cpu_tune`) but where a test asks for them
    (marker ``tuning``)."""
    if request.node.get_closest_marker("tuning") is None:
        from eqsat.lowering import cpu_tune

        monkeypatch.setattr(cpu_tune, "TUNE_SECONDS", 0.0)
