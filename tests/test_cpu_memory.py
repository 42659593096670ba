"""The CPU memory plan's concat hosting: parts written straight into their slice of the output.

Unit tests drive :func:`plan_memory` with hand-made step lists (which parts are eligible, how
long the host's block lives, no reuse or in-place update over it); graph tests compile small
channel concats and check results against the numpy reference target.
"""

from __future__ import annotations

import numpy as np
from eqsat.lowering.memory import Usage, plan_memory

import eqsat

F32 = np.float32


def _specs(**shapes: tuple[int, ...]) -> dict[int, tuple[tuple[int, ...], np.dtype]]:
    return {int(k[1:]): (shape, np.dtype(F32)) for k, shape in shapes.items()}


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.shares_memory(a, b))


def test_concat_parts_are_placed_in_their_slices() -> None:
    # 0: feed; 1, 2 = f(0); 3 = concat(1, 2); 4 = g(3) (the graph output)
    usages = [
        Usage([0], [1], True),
        Usage([0], [2], True),
        Usage([1, 2], [3], True, concat=[0, 8]),
        Usage([3], [4], True),
    ]
    specs = _specs(s0=(8,), s1=(1, 2, 4), s2=(1, 3, 4), s3=(1, 5, 4), s4=(1, 5, 4))
    plan = plan_memory(usages, specs, {4})
    assert plan.hosts == {1: (3, 0), 2: (3, 32)}
    host = plan.arrays[3]
    assert _address(plan.arrays[1]) == _address(host)
    assert _address(plan.arrays[2]) == _address(host) + 32
    assert plan.arrays[2].shape == (1, 3, 4) and plan.arrays[2].flags.c_contiguous
    assert plan.pool_bytes == 128  # the concat's 80 bytes, in one 64-byte-rounded block


def test_ineligible_parts_keep_buffers_of_their_own() -> None:
    # 1: also a graph output; 2: read twice; 3: a view step's result; 5: fine.
    usages = [
        Usage([0], [1], True),
        Usage([0], [2], True),
        Usage([0], [3], False),
        Usage([0], [5], True),
        Usage([1, 2, 2, 3, 5], [4], True, concat=[0, 4, 8, 12, 16]),
        Usage([4], [6], True),
    ]
    specs = _specs(s0=(4,), s1=(4,), s2=(4,), s3=(4,), s4=(20,), s5=(4,), s6=(20,))
    plan = plan_memory(usages, specs, {6, 1})
    assert plan.hosts == {5: (4, 64)}  # byte offset
    # An output allocated fresh per run hosts nothing.
    assert plan_memory(usages, specs, {4}).hosts == {}


def test_host_block_lives_until_the_last_read_of_a_part() -> None:
    # 3 = concat(1, 2) dies at step 3, but part 1 is read again at step 5: block reuse by 5 or 6
    # (and an in-place update of 3 at step 3) must leave 1 intact.
    usages = [
        Usage([0], [1], True),
        Usage([0], [2], True),
        Usage([1, 2], [3], True, concat=[0, 16]),
        Usage([3], [4], True, inplace=[3]),
        Usage([4], [5], True, inplace=[4]),
        Usage([5, 1], [6], True),
    ]
    specs = _specs(s0=(16,), s1=(16,), s2=(16,), s3=(32,), s4=(32,), s5=(32,), s6=(16,))
    plan = plan_memory(usages, specs, {6})
    assert set(plan.hosts) == {1, 2}
    for later in (4, 5):
        assert not _overlap(plan.arrays[later], plan.arrays[1])


def test_host_block_is_not_an_input_being_updated_in_place() -> None:
    # 3 = f(2) could overwrite 2 in place, but 3 lies at an offset in 4 = concat(1, 3): the
    # block 4 takes there must not be 2's (it would be written ahead of being read).
    usages = [
        Usage([0], [2], True),
        Usage([2], [3], True, inplace=[2]),
        Usage([0], [1], True),
        Usage([1, 3], [4], True, concat=[0, 2]),
        Usage([4], [5], True),
    ]
    specs = _specs(s0=(4,), s1=(2,), s2=(4,), s3=(4,), s4=(6,), s5=(6,))
    plan = plan_memory(usages, specs, {5})
    assert plan.hosts == {1: (4, 0), 3: (4, 8)}
    assert not _overlap(plan.arrays[3], plan.arrays[2])


def test_nested_concats_share_one_block() -> None:
    usages = [
        Usage([0], [1], True),
        Usage([0], [2], True),
        Usage([1, 2], [3], True, concat=[0, 4]),
        Usage([0], [4], True),
        Usage([3, 4], [5], True, concat=[0, 8]),
        Usage([5], [6], True),
    ]
    specs = _specs(s0=(4,), s1=(4,), s2=(4,), s3=(8,), s4=(4,), s5=(12,), s6=(12,))
    plan = plan_memory(usages, specs, {6})
    base = _address(plan.arrays[5])
    offsets = {s: _address(plan.arrays[s]) - base for s in (1, 2, 3, 4)}
    assert offsets == {1: 0, 2: 16, 3: 0, 4: 32}
    assert plan.pool_bytes == 64  # 48 bytes of the outer concat: everything else is inside


def _conv_concat_graph(rng: np.random.Generator, keep_part: bool) -> eqsat.Graph:
    g = eqsat.Graph("concat")
    x = g.input("x", (1, 4, 6, 6))
    w1 = g.constant(rng.standard_normal((3, 4, 1, 1)).astype(F32), "w1")
    w2 = g.constant(rng.standard_normal((5, 4, 3, 3)).astype(F32), "w2")
    a = g.op("Relu", g.op("Conv", x, w1))
    b = g.op("Sigmoid", g.op("Conv", x, w2, pads=[1, 1, 1, 1]))
    c = g.op("Concat", a, b, x, axis=1)  # x: a feed, copied
    y = g.op("Tanh", g.op("Add", c, c))
    # b and a feed a second concat too (hosted by the first only); Abs(x) is hosted here.
    g.output(g.op("Mul", y, g.op("Concat", b, g.op("Abs", x), a, axis=1)), "y")
    # a read again after the concat's output died: by a kernel that could work in place.
    z = g.op("Exp", g.op("Neg", a))
    g.output(z, "z")
    if keep_part:
        g.output(b, "b")
    return g


def test_channel_concat_writes_in_place_and_matches_reference(rng: np.random.Generator) -> None:
    for keep_part in (False, True):
        g = _conv_concat_graph(rng, keep_part)
        feeds = {"x": rng.standard_normal((1, 4, 6, 6)).astype(F32)}
        want = eqsat.compile(g, target="numpy").run(feeds)
        exe = eqsat.compile(g, target="cpu")
        for _ in range(2):  # the second run reuses every planned buffer
            got = exe.run(feeds)
            for name, expected in want.items():
                np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-5)
        # Relu(a), Sigmoid(b) and Abs(x) write into their concats; b not when it is an output.
        assert len(exe.memory.hosts) == (2 if keep_part else 3)


def test_concat_after_the_axis_stays_a_copy(rng: np.random.Generator) -> None:
    g = eqsat.Graph("rows")
    x = g.input("x", (3, 4))
    c = g.op("Concat", g.op("Relu", x), g.op("Tanh", x), axis=1)
    g.output(g.op("Sigmoid", c), "y")
    feeds = {"x": rng.standard_normal((3, 4)).astype(F32)}
    exe = eqsat.compile(g, target="cpu")
    np.testing.assert_allclose(
        exe.run(feeds)["y"], eqsat.compile(g, target="numpy").run(feeds)["y"], rtol=1e-6
    )
    assert exe.memory.hosts == {}


def test_split_then_concat_places_the_split_input(rng: np.random.Generator) -> None:
    # YOLOv8's C2f: y = conv(x); a, b = split(y); concat(a, b, f(b)): y goes in the concat.
    g = eqsat.Graph("c2f")
    x = g.input("x", (1, 4, 5, 5))
    w = g.constant(rng.standard_normal((6, 4, 1, 1)).astype(F32), "w")
    wb = g.constant(rng.standard_normal((3, 3, 3, 3)).astype(F32), "wb")
    y = g.op("Relu", g.op("Conv", x, w))
    a, b = g.op("Split", y, g.constant(np.array([3, 3], np.int64)), axis=1, outputs=2)
    m = g.op("Relu", g.op("Conv", b, wb, pads=[1, 1, 1, 1]))
    c = g.op("Concat", a, b, m, axis=1)
    g.output(g.op("Sigmoid", c), "y")
    g.output(g.op("Tanh", b), "b")  # a split view read after the concat: its data must stay
    feeds = {"x": rng.standard_normal((1, 4, 5, 5)).astype(F32)}
    want = eqsat.compile(g, target="numpy").run(feeds)
    exe = eqsat.compile(g, target="cpu")
    for _ in range(2):
        got = exe.run(feeds)
        for name, expected in want.items():
            np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-5)
    concat = next(s for s in exe.steps if s.kind == "copy")
    assert len(exe.memory.hosts) == 2 and concat.run.__name__ == "_nothing"
