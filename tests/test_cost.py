"""Cost model: target profiles, calibration and the pricing of fused kernels."""

from __future__ import annotations

import numpy as np
import pytest

from eqsat import cost
from eqsat.errors import TargetError
from eqsat.ir import Value


def test_roofline_takes_the_slower_of_compute_and_memory_plus_launch() -> None:
    p = cost.Profile("t", peak_flops=1e9, bandwidth=1e9, launch=1e-6)
    assert p.seconds(2e9, 1e6) == pytest.approx(2.0 + 1e-6)
    assert p.seconds(1e3, 3e9) == pytest.approx(3.0 + 1e-6)


def test_unknown_target_is_reported() -> None:
    with pytest.raises(TargetError, match="no cost profile"):
        cost.profile("tpu")


def test_calibrate_saves_a_profile_that_profile_then_uses(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EQSAT_CACHE", str(tmp_path))
    assert cost.profile("cpu") == cost.PROFILES["cpu"]
    prof, path = cost.calibrate("cpu", seconds=0.01)
    assert path.is_file() and path.parent == tmp_path / "profiles"
    assert prof.peak_flops > 1e7 and prof.bandwidth > 1e7 and 0 < prof.launch < 1e-3
    assert cost.profile("cpu") == prof
    with pytest.raises(TargetError):
        cost.calibrate("cuda")


def test_fused_elementwise_pays_one_read_one_write_one_launch() -> None:
    fused = pytest.importorskip("eqsat.ops.fused")
    del fused
    p = cost.PROFILES["cpu"]
    shape = (1, 64, 56, 56)
    x = Value("x", shape, np.dtype(np.float32))
    y = Value("y", shape, np.dtype(np.float32))
    out = Value("o", shape, np.dtype(np.float32))
    chain = sum(
        cost.op_seconds(op, ins, [out], {}, p)
        for op, ins in (("Add", [x, y]), ("Relu", [out]), ("Sigmoid", [out]))
    )
    attrs = {"body": "max(({0} + {1}), 0)", "dtype": "float32"}
    one = cost.op_seconds("FusedElementwise", [x, y], [out], attrs, p)
    nbytes = 3 * x.nbytes  # two inputs read, one output written
    assert one == pytest.approx(max(nbytes / p.bandwidth, 0.0) + p.launch, rel=0.5)
    assert one < chain
