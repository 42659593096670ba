"""The cpu target's data-movement kernels (:mod:`eqsat.lowering.cpu_moves`): Transpose swaps,
Pad over extent-1 axes and GlobalMaxPool, exact against the numpy reference on small graphs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from eqsat.lowering import cpu_moves
from eqsat.lowering.cpu import Lowering

import eqsat

F32 = np.float32


def _exact(graph: eqsat.Graph, feeds: dict[str, np.ndarray], kind: str) -> eqsat.Executable:
    """Runs twice (the second run reuses bound buffers); every output equals the reference and
    the graph's node ran as a step of ``kind``."""
    want = eqsat.compile(graph, target="numpy").run(feeds)
    exe = eqsat.compile(graph, target="cpu")
    for _ in range(2):
        got = exe.run(feeds)
        for name, expected in want.items():
            assert got[name].dtype == expected.dtype
            np.testing.assert_array_equal(got[name], expected, err_msg=name)
    assert exe.report["reference_ops"] == {}
    assert kind in {s.kind for s in exe.steps}
    return exe


def test_swap_plan_matches_numpy_for_every_small_permutation() -> None:
    found = 0
    for rank in range(1, 5):
        for shape in itertools.product([1, 2, 3], repeat=rank):
            x = np.arange(int(np.prod(shape))).reshape(shape)
            for perm in itertools.permutations(range(rank)):
                plan = cpu_moves.swap_plan(shape, perm)
                if plan is None:
                    continue
                found += 1
                got = x.reshape(plan).transpose(0, 2, 1, 3)
                np.testing.assert_array_equal(got.reshape(-1), x.transpose(perm).reshape(-1))
    assert found > 100


@pytest.mark.parametrize(
    ("shape", "perm", "kernel"),
    [
        ((1, 128, 4, 64), (0, 2, 1, 3), True),  # attention heads: row kernel
        ((2, 5, 3, 8), (0, 2, 1, 3), True),
        ((3, 7, 6), (1, 0, 2), True),  # time-major <-> batch-major
        ((1, 16, 256, 1), (0, 2, 1, 3), True),  # 1 KiB rows: the element kernel
        ((1, 6, 37), (0, 2, 1), True),
        ((2, 3, 128), (0, 2, 1), True),
        ((1, 13, 128), (0, 2, 1), True),  # 13 rows: a remainder past the 8-row blocks
        ((1, 17, 9, 2), (0, 2, 1, 3), True),  # rows of 2: one wider element
        ((2, 5, 2, 1, 7), (0, 3, 4, 1, 2), True),  # rows of 2 over an extent-1 axis
        ((2, 8, 5, 3), (0, 2, 3, 1), True),  # NCHW -> NHWC
        ((2, 3, 4, 5), (3, 1, 0, 2), False),  # not a swap: numpy's copy
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_transpose_exact(
    shape: tuple[int, ...], perm: tuple[int, ...], kernel: bool, dtype: type
) -> None:
    rng = np.random.default_rng(0)
    g = eqsat.Graph("transpose")
    x = g.input("x", shape, dtype)
    g.output(g.op("Transpose", x, perm=list(perm)), "y")
    feeds = {"x": (rng.standard_normal(shape) * 100).astype(dtype)}
    _exact(g, feeds, "copy")
    swap = cpu_moves.transpose(Lowering(threads=1), g.nodes[0])
    assert (swap is not None) == kernel


@pytest.mark.parametrize(
    ("i_", "j_", "order"),
    [
        (96, 392, True),  # NCHW -> NHWC: the shorter sweep, over 96 input rows
        (512, 13, False),  # ... over 13 output rows
        (1024, 64, True),  # output rows 4 KiB apart: never swept
        (64, 1024, None),  # input rows 4 KiB apart: swap_elements
        (21, 35, True),  # remainders on both sides of the 8x8 blocks
        (7, 40, None),  # fewer than 8 rows
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_transpose_by_register_blocks(i_: int, j_: int, order: bool | None, dtype: type) -> None:
    """4-byte swaps go by 8x8 blocks transposed in registers, in the order _block_order picks
    (either order is exact; the choice only moves the cache traffic)."""
    assert cpu_moves._block_order(i_, j_) is (order if order is not None else None)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((3, i_, j_)) * 1000).astype(dtype)
    raw = x.view(np.uint32)
    for by_columns in (False, True):
        out = np.empty((3, j_, i_), np.uint32)
        if i_ >= 8 and j_ >= 8:
            cpu_moves.swap_blocks32(raw, out, by_columns)
            np.testing.assert_array_equal(out.view(dtype), x.transpose(0, 2, 1))
    g = eqsat.Graph("transpose")
    v = g.input("x", (3, i_, j_), dtype)
    g.output(g.op("Transpose", v, perm=[0, 2, 1]), "y")
    _exact(g, {"x": x}, "copy")


@pytest.mark.parametrize(
    ("shape", "perm"), [((4, 2, 1, 8), (0, 2, 1, 3)), ((1, 3, 1, 5), (2, 1, 0, 3)), ((6,), (0,))]
)
def test_transpose_moving_unit_axes_is_a_view(
    shape: tuple[int, ...], perm: tuple[int, ...]
) -> None:
    g = eqsat.Graph("unit")
    x = g.input("x", shape)
    g.output(g.op("Transpose", g.op("Relu", x), perm=list(perm)), "y")
    exe = _exact(g, {"x": np.random.default_rng(8).standard_normal(shape).astype(F32)}, "view")
    assert cpu_moves.keeps_order(shape, perm)
    assert "copy" not in {s.kind for s in exe.steps}


def test_transpose_of_a_graph_input_view_and_chained() -> None:
    """A swap reading another step's planned output, and one feeding another."""
    rng = np.random.default_rng(1)
    g = eqsat.Graph("chain")
    x = g.input("x", (1, 32, 4, 16))
    t = g.op("Transpose", g.op("Relu", x), perm=[0, 2, 1, 3])
    g.output(g.op("Transpose", t, perm=[0, 2, 1, 3]), "y")
    g.output(t, "t")
    feeds = {"x": rng.standard_normal((1, 32, 4, 16)).astype(F32)}
    want = eqsat.compile(g, target="numpy").run(feeds)
    got = eqsat.compile(g, target="cpu").run(feeds)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.parametrize(
    ("shape", "pads", "mode"),
    [
        ((1, 17, 23, 1), [0, 0, 5, 0, 0, 0, 31, 0], "constant"),  # basic_pitch's stacking
        ((1, 17, 23, 1), [0, 2, 5, 0, 0, 1, 0, 0], "constant"),
        ((1, 9, 1), [0, 3, 0, 0, 2, 0], "reflect"),
        ((1, 9, 1), [0, 3, 0, 0, 2, 0], "edge"),
        ((2, 1, 7, 1), [0, 0, -2, 0, 0, 0, 3, 0], "wrap"),  # a crop and a wrap
    ],
)
def test_pad_drops_unpadded_unit_axes(shape: tuple[int, ...], pads: list[int], mode: str) -> None:
    rng = np.random.default_rng(2)
    g = eqsat.Graph("pad")
    x = g.input("x", shape)
    p = g.constant(np.array(pads, np.int64))
    g.output(g.op("Pad", x, p, g.constant(np.array(1.5, F32)), mode=mode), "y")
    _exact(g, {"x": rng.standard_normal(shape).astype(F32)}, "copy")


@pytest.mark.parametrize("shape", [(1, 512, 508), (2, 3, 5, 7), (1, 4, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_max_pool_exact(shape: tuple[int, ...], dtype: type) -> None:
    rng = np.random.default_rng(3)
    g = eqsat.Graph("gmp")
    x = g.input("x", shape, dtype)
    g.output(g.op("GlobalMaxPool", x), "y")
    data = rng.standard_normal(shape).astype(dtype)
    _exact(g, {"x": data}, "kernel")


@pytest.mark.parametrize("length", [40, 300], ids=["short-rows", "long-rows"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_max_pool_propagates_nan_and_inf(length: int, dtype: type) -> None:
    """Rows shorter than cpu_moves.SHORT_ROWS (a Numba loop that finds NaN from the bits) and
    longer ones (numpy's reduce) alike."""
    from eqsat.lowering import cpu_moves

    assert (length < cpu_moves.SHORT_ROWS) == (length == 40)
    g = eqsat.Graph("gmp_nan")
    x = g.input("x", (1, 6, length), dtype)
    g.output(g.op("GlobalMaxPool", x), "y")
    data = np.random.default_rng(4).standard_normal((1, 6, length)).astype(dtype)
    data[0, 0, 17] = np.nan
    data[0, 1, 0] = np.nan
    data[0, 2, length - 1] = np.inf
    data[0, 3, :] = -np.inf
    data[0, 4, length - 1] = -np.nan  # a NaN with its sign bit set
    y = eqsat.compile(g, target="cpu").run({"x": data})["y"].reshape(-1)
    assert np.isnan(y[0]) and np.isnan(y[1]) and np.isnan(y[4])
    assert y[2] == np.inf and y[3] == -np.inf
    assert y[5] == data[0, 5].max()


@pytest.mark.parametrize(
    ("shape", "axes", "keepdims", "rows"),
    [
        ((1, 17, 31), None, 0, True),  # basic_pitch's whole-tensor min/max
        ((1, 17, 31), [1, 2], 1, True),
        ((3, 5, 1, 7), [-1], 0, True),
        ((3, 5, 1, 7), [1, 2, 3], 1, True),
        ((3, 5, 7), [1], 1, False),  # a middle axis: cpu_small's kernel
        ((2, 1, 6), [0], 0, False),
    ],
)
@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_reduce_max_min_exact(
    shape: tuple[int, ...], axes: list[int] | None, keepdims: int, rows: bool, op: str
) -> None:
    rng = np.random.default_rng(6)
    g = eqsat.Graph("reduce")
    x = g.input("x", shape)
    args = [] if axes is None else [g.constant(np.array(axes, np.int64))]
    g.output(g.op(op, x, *args, keepdims=keepdims), "y")
    data = rng.standard_normal(shape).astype(F32)
    _exact(g, {"x": data}, "kernel")
    data.reshape(-1)[3] = np.nan
    want = eqsat.compile(g, target="numpy").run({"x": data})["y"]
    got = eqsat.compile(g, target="cpu").run({"x": data})["y"]
    np.testing.assert_array_equal(got, want)
    assert (cpu_moves.reduce_extreme(Lowering(threads=1), g.nodes[0]) is not None) == rows


@pytest.mark.parametrize(
    ("shape", "repeats", "dtype"),
    [
        ((1, 16, 8, 1, 4), [1, 1, 1, 2, 1], F32),  # tf2onnx's nearest UpSampling2D
        ((2, 3), [3, 1], np.int64),
        ((4,), [5], np.bool_),
        ((2, 1, 3), [1, 4, 1], F32),
        ((2, 3, 5), [1, 1, 3], np.float64),
    ],
)
def test_tile_along_one_axis_is_a_block_copy(shape: tuple, repeats: list, dtype: type) -> None:
    """Tile by constant repeats along one axis (it ran on the reference)."""
    g = eqsat.Graph("tile")
    x = g.input("x", shape, dtype)
    g.output(g.op("Tile", g.op("Identity", x), g.constant(np.array(repeats, np.int64))), "y")
    data = (np.random.default_rng(7).standard_normal(shape) * 10).astype(dtype)
    _exact(g, {"x": data}, "copy")


def test_tile_along_several_axes_stays_with_the_reference() -> None:
    g = eqsat.Graph("tile2")
    x = g.input("x", (2, 3))
    g.output(g.op("Tile", g.op("Relu", x), g.constant(np.array([3, 2], np.int64))), "y")
    feeds = {"x": np.random.default_rng(3).standard_normal((2, 3)).astype(F32)}
    exe = eqsat.compile(g, target="cpu")
    assert exe.report["reference_ops"] == {"Tile": 1}
    want = eqsat.compile(g, target="numpy").run(feeds)["y"]
    np.testing.assert_array_equal(exe.run(feeds)["y"], want)


def test_tile_into_a_concat_part() -> None:
    """A Tile whose output the planner places inside a Concat's buffer writes through the view."""
    g = eqsat.Graph("tile_concat")
    x = g.input("x", (2, 3))
    tiled = g.op("Tile", g.op("Relu", x), g.constant(np.array([2, 1], np.int64)))
    g.output(g.op("Concat", g.op("Neg", x), tiled, axis=0), "y")
    _exact(g, {"x": np.random.default_rng(9).standard_normal((2, 3)).astype(F32)}, "copy")


@pytest.mark.parametrize(("batch_axis", "time_axis"), [(1, 0), (0, 1)])
def test_reverse_sequence_with_constant_lengths_is_a_take(batch_axis: int, time_axis: int) -> None:
    """Keras' backward LSTMs (tf2onnx): ReverseSequence by constant lengths, full or not, as one
    take of positions found at compile time (it ran on the reference)."""
    shape = (5, 3, 4) if time_axis == 0 else (3, 5, 4)
    g = eqsat.Graph("reverse")
    x = g.input("x", shape)
    lengths = g.constant(np.array([5, 2, 4], np.int64))
    g.output(
        g.op("ReverseSequence", g.op("Relu", x), lengths, batch_axis=batch_axis,
             time_axis=time_axis), "y",
    )  # fmt: skip
    _exact(g, {"x": np.random.default_rng(4).standard_normal(shape).astype(F32)}, "copy")
