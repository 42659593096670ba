"""Convs whose taps mostly read padding, split into bands of outputs that share their live taps.

:mod:`eqsat.lowering.cpu_taps` drops the kernel rows and columns that read nothing but padding for
every output. A tap that reads the input for only some outputs stays, and the GEMM multiplies the
zeros it reads elsewhere: DeepLabV3's ASPP conv, 3x3 taps dilated by 12 on a 16x16 map, reads
input through its outer taps for a quarter of the outputs only, so three quarters of its work was
zeros (13 ms, onnxruntime 2 ms: its NCHWc kernels skip padded taps).

Along each spatial axis, the outputs whose windows read the input through the same kernel indices
form a band (the live indices of one output are always a contiguous run). Every region of the
product of the axes' bands is a conv with no padding at all: of the input's crop that its live
taps read, by the kernel's live sub-block. The regions are concatenated back along each spatial
axis, innermost first. A fused epilogue goes with each region, its operands cropped where they
vary along a spatial axis.

Splitting multiplies each region's live taps only, but reads the weights of each region's taps
again and adds a crop, a conv and a copy per region, so :func:`worth_splitting` prices both sides
with a roofline of this module's constants and splits only where the split is clearly cheaper.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import numpy as np
from eqsat.lowering import cpu_taps

from eqsat import ops
from eqsat.ir import Graph, Node, Value
from eqsat.ops.conv import window_geometry

CONVS = frozenset({"Conv", "FusedConv"})
# The roofline: multiply-adds a second of one thread's GEMM on a mid-size product, bytes a
# second of weights streamed from cache, and the fixed price of one more region (its crop, its
# conv step and its share of the concatenation).
MACS_PER_SECOND = 5.0e10
WEIGHT_BYTES_PER_SECOND = 5.0e10
SECONDS_PER_REGION = 4.0e-6
# Split only where the bands' estimate is at most this fraction of the whole conv's.
SPLIT_GAIN = 0.7
# Beyond this many regions the graph grows more than any saving seen is worth.
MAX_REGIONS = 25


@dataclass(frozen=True)
class Band:
    """Outputs ``first``..``stop - 1`` along one axis, reading through kernel indices ``taps``."""

    first: int
    stop: int
    taps: range


def bands(size: int, out: int, kernel: int, stride: int, dilation: int, begin: int) -> list[Band]:
    """The bands of one spatial axis (see the module docstring), in output order."""
    result: list[Band] = []
    for o in range(out):
        start = o * stride - begin
        live = [k for k in range(kernel) if 0 <= start + k * dilation < size]
        taps = range(live[0], live[-1] + 1) if live else range(0)
        if result and result[-1].taps == taps:
            result[-1] = Band(result[-1].first, o + 1, taps)
        else:
            result.append(Band(o, o + 1, taps))
    return result


def _seconds(
    macs_per_tap_output: int, weights_per_tap: int, regions: list[tuple[int, int]]
) -> float:
    """The roofline's time for ``regions``, each (taps, outputs)."""
    return sum(
        macs_per_tap_output * taps * outputs / MACS_PER_SECOND
        + weights_per_tap * taps / WEIGHT_BYTES_PER_SECOND
        + SECONDS_PER_REGION
        for taps, outputs in regions
    )


def worth_splitting(node: Node) -> list[list[Band]] | None:
    """The bands of each spatial axis when splitting ``node`` is clearly cheaper, else None."""
    found = cpu_taps.per_axis(node)
    x, w = node.inputs[0], node.inputs[1]
    if found is None or x is None or w is None or x.dtype != w.dtype:
        return None
    window, per_axis = found
    kernel = tuple(w.shape[2:])
    axes = [bands(*args) for args in per_axis]
    count = int(np.prod([len(a) for a in axes]))
    if count == 1 or count > MAX_REGIONS or any(not b.taps for a in axes for b in a):
        return None
    batch, filters, per_group = x.shape[0], w.shape[0], w.shape[1]
    macs = batch * filters * per_group
    weight_bytes = filters * per_group * w.dtype.itemsize
    regions = [
        (
            int(np.prod([len(b.taps) for b in region])),
            int(np.prod([b.stop - b.first for b in region])),
        )
        for region in itertools.product(*axes)
    ]
    whole = [(int(np.prod(kernel)), int(np.prod(window.out)))]
    if _seconds(macs, weight_bytes, regions) > SPLIT_GAIN * _seconds(macs, weight_bytes, whole):
        return None
    return axes


class _Builder:
    """New nodes for one split conv, their values named after it."""

    def __init__(self, node: Node):
        self.node, self.nodes = node, []
        self.count = itertools.count()

    def name(self, what: str) -> str:
        return f"{self.node.name}__band_{what}{next(self.count)}"

    def constant(self, array: np.ndarray, what: str) -> Value:
        array = np.ascontiguousarray(array)
        return Value(self.name(what), array.shape, array.dtype, array)

    def add(
        self, op: str, inputs: list[Value | None], attrs: dict, out: Value | None = None
    ) -> Value:
        opdef = ops.get(op, self.node.name)
        full = opdef.complete_attrs(dict(attrs), self.node.name)
        node = Node(
            op,
            inputs,
            [],
            full,
            self.name(op.lower()),
            self.node.domain if op == self.node.op else "",
        )
        if out is None:
            ((shape, dtype),) = opdef.infer(inputs, full, 1)
            out = Value(node.name, shape, dtype, None, node)
        node.outputs.append(out)
        self.nodes.append(node)
        return out

    def crop(self, value: Value, axes: list[int], spans: list[tuple[int, int, int]]) -> Value:
        """``value`` cut to ``spans`` (start, stop, step) along ``axes``; itself where that
        cuts nothing."""
        kept = [
            (axis, span)
            for axis, span in zip(axes, spans, strict=True)
            if span[:2] != (0, value.shape[axis]) or span[2] != 1
        ]
        if not kept:
            return value
        if value.const is not None:
            index = [slice(None)] * value.rank
            for axis, span in kept:
                index[axis] = slice(*span)
            return self.constant(value.const[tuple(index)], "const")
        starts, stops, steps = (
            self.constant(np.array([span[i] for _, span in kept], np.int64), what)
            for i, what in enumerate(("starts", "stops", "steps"))
        )
        at = self.constant(np.array([axis for axis, _ in kept], np.int64), "axes")
        return self.add("Slice", [value, starts, stops, at, steps], {})


def _tap_span(band: Band, tap: int, geometry: tuple[int, int, int]) -> tuple[int, int, int]:
    """The input positions kernel index ``tap`` reads for the outputs of ``band``: (start,
    stop, step). ``geometry`` is the axis's (stride, dilation, padding at the start)."""
    stride, dilation, begin = geometry
    start = band.first * stride - begin + tap * dilation
    return start, start + (band.stop - band.first - 1) * stride + 1, stride


def _band_span(band: Band, geometry: tuple[int, int, int]) -> tuple[int, int, int]:
    """The input positions that the live taps of ``band`` read, as one crop (start, stop, 1)."""
    first = _tap_span(band, band.taps.start, geometry)
    last = _tap_span(band, band.taps.stop - 1, geometry)
    return first[0], last[1], 1


def _split(node: Node, axes: list[list[Band]]) -> list[Node]:
    """The nodes that compute ``node``'s output band by band."""
    x, w = node.inputs[0], node.inputs[1]
    spatial = x.shape[2:]
    window = window_geometry(spatial, tuple(w.shape[2:]), node.attrs)
    base = int(node.attrs.get("num_base_inputs", len(node.inputs)))
    extras = node.inputs[base:]
    out = node.outputs[0]
    build = _Builder(node)
    weights: dict[tuple[tuple[range, ...], bool], Value] = {}
    rank = len(spatial)
    geometry = list(zip(window.strides, window.dilations, window.begin, strict=True))

    def region(chosen: tuple[Band, ...], target: Value | None) -> Value:
        """The output over one band of each axis: a conv of the input's crop by the live
        sub-kernel, or, with several taps and one group, a 1x1 conv of the taps' crops stacked
        on the channels (an im2col of the region alone: the sub-conv's lowering computes whole
        rows of its crop, four times the work for a 4x4 corner of a 16x16 map)."""
        taps = tuple(band.taps for band in chosen)
        count = int(np.prod([len(t) for t in taps]))
        gathered = count > 1 and int(node.attrs.get("group", 1)) == 1
        key = (taps, gathered)
        if key not in weights:
            block = w.const[(slice(None), slice(None), *(slice(t.start, t.stop) for t in taps))]
            if gathered:  # channel t * C + c of the stack is channel c of tap t (row-major)
                block = np.moveaxis(block, 1, -1).reshape(block.shape[0], -1, *[1] * rank)
            weights[key] = build.constant(block, "weights")
        spatial_axes = list(range(2, 2 + rank))
        if gathered:
            parts = [
                build.crop(
                    x,
                    spatial_axes,
                    [_tap_span(b, k, g) for b, k, g in zip(chosen, at, geometry, strict=True)],
                )
                for at in itertools.product(*taps)
            ]
            part = build.add("Concat", parts, {"axis": 1})
        else:
            part = build.crop(
                x, spatial_axes, [_band_span(b, g) for b, g in zip(chosen, geometry, strict=True)]
            )
        operands = []
        for extra in extras:
            if extra is None:
                operands.append(None)
                continue
            lead = out.rank - extra.rank
            axes_here = [2 + i - lead for i in range(rank) if 2 + i - lead >= 0]
            spans = [
                (band.first, band.stop, 1) if extra.shape[axis] != 1 else (0, 1, 1)
                for band, axis in zip(chosen[rank - len(axes_here) :], axes_here, strict=True)
            ]
            operands.append(build.crop(extra, axes_here, spans))
        attrs = dict(node.attrs)
        if gathered:
            attrs.update(kernel_shape=[1] * rank, strides=[1] * rank, dilations=[1] * rank)
        else:
            attrs.update(
                kernel_shape=[len(t) for t in taps],
                dilations=[g[1] if len(t) > 1 else 1 for t, g in zip(taps, geometry, strict=True)],
            )
        attrs.update(auto_pad="NOTSET", pads=[0] * (2 * rank))
        inputs = [part, weights[key], *node.inputs[2:base], *operands]
        return build.add(node.op, inputs, attrs, target)

    def assemble(axis: int, chosen: tuple[Band, ...], target: Value | None) -> Value:
        """The output over the bands ``chosen`` of the outer axes, into ``target`` if given."""
        if axis == len(axes):
            return region(chosen, target)
        if len(axes[axis]) == 1:
            return assemble(axis + 1, (*chosen, axes[axis][0]), target)
        parts = [assemble(axis + 1, (*chosen, band), None) for band in axes[axis]]
        return build.add("Concat", parts, {"axis": 2 + axis}, target)

    assemble(0, (), out)
    return build.nodes


def split(graph: Graph) -> tuple[Graph, int]:
    """``graph`` with every conv that :func:`worth_splitting` picks computed band by band, and
    how many were; ``graph`` itself when none is. The input graph is not changed."""
    nodes: list[Node] = []
    count = 0
    for node in graph.nodes:
        axes = worth_splitting(node) if node.op in CONVS and node.outputs[0] is not None else None
        if axes is None:
            nodes.append(node)
            continue
        nodes.extend(_split(node, axes))
        count += 1
    if not count:
        return graph, 0
    result = copy.copy(graph)
    result.nodes = nodes
    return result, count
