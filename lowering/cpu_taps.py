"""Convolution taps that only ever read padding, dropped before lowering.

A dilated conv whose dilation is as large as its input (DeepLabV3's ASPP: 3x3 taps dilated by 12,
24 and 36 on a 14x14 map, padded by as much) reads nothing but zero padding through every tap
but the centre: the GEMM over all nine taps did nine times the work of the 1x1 conv it amounts to
(6.7x onnxruntime for deeplabv3_mobilenet_v3_large; the d=36 conv alone 20x). Along each spatial
axis, kernel index ``k`` reads input positions ``o * s - pad + k * d`` for the outputs ``o``; the
kernel indices for which none of those is inside the input are cut from both ends of the kernel,
with the padding shortened to match, which leaves every output's sum over the live taps as it was
(the dropped taps only ever added zeros) and the output's extent unchanged.
"""

from __future__ import annotations

import copy

import numpy as np

from eqsat.ir import Graph, Node, Value
from eqsat.ops.conv import Window, window_geometry

CONVS = frozenset({"Conv", "FusedConv"})


def _live(size: int, out: int, kernel: int, stride: int, dilation: int, begin: int) -> range:
    """The kernel indices along one axis that read an input position for some output."""
    live = []
    for k in range(kernel):
        first = k * dilation - begin  # what output 0 reads
        o = max(0, -(first // stride))  # the first output reading a position >= 0
        if o < out and first + o * stride < size:
            live.append(k)
    return range(live[0], live[-1] + 1) if live else range(0)


def per_axis(node: Node) -> tuple[Window, list[tuple[int, ...]]] | None:
    """A conv's window and, per spatial axis, (input size, outputs, kernel, stride, dilation,
    padding at the start): what :func:`_live` and :func:`eqsat.lowering.cpu_conv_bands.bands`
    take; None unless its weights are a constant and it has spatial axes."""
    x, w = node.inputs[0], node.inputs[1]
    if x is None or w is None or w.const is None or x.rank < 3:
        return None
    spatial, kernel = x.shape[2:], tuple(w.shape[2:])
    window = window_geometry(spatial, kernel, node.attrs)
    axes = zip(
        spatial, window.out, kernel, window.strides, window.dilations, window.begin, strict=True
    )
    return window, list(axes)


def _pruned(node: Node) -> Node | None:
    """``node`` without its dead kernel rows/columns, or None when it has none to drop."""
    found = per_axis(node)
    if found is None:
        return None
    window, axes = found
    x, w = node.inputs[0], node.inputs[1]
    assert x is not None and w is not None and w.const is not None
    kernel = tuple(w.shape[2:])
    ranges = [_live(*args) for args in axes]
    if any(len(r) == 0 for r in ranges) or all(
        len(r) == k for r, k in zip(ranges, kernel, strict=True)
    ):
        return None  # no live tap at all (all padding: leave it as it is), or nothing to drop
    begin = [
        b - r.start * d for b, r, d in zip(window.begin, ranges, window.dilations, strict=True)
    ]
    end = [
        e - (k - r.stop) * d
        for e, r, k, d in zip(window.end, ranges, kernel, window.dilations, strict=True)
    ]
    if min(begin + end) < 0:
        return None
    sliced = np.ascontiguousarray(
        w.const[(slice(None), slice(None), *(slice(r.start, r.stop) for r in ranges))]
    )
    weights = Value(f"{w.name}__live_taps", sliced.shape, w.dtype, sliced)
    attrs = dict(node.attrs)
    attrs.update(auto_pad="NOTSET", pads=[*begin, *end], kernel_shape=list(sliced.shape[2:]))
    return Node(
        node.op, [x, weights, *node.inputs[2:]], node.outputs, attrs, node.name, node.domain
    )


def prune(graph: Graph) -> Graph:
    """``graph`` with every conv's dead taps dropped (see the module docstring); ``graph``
    itself when no conv has any. The input graph is not changed."""
    nodes = []
    changed = False
    for node in graph.nodes:
        new = _pruned(node) if node.op in CONVS else None
        changed |= new is not None
        nodes.append(new or node)
    if not changed:
        return graph
    result = copy.copy(graph)
    result.nodes = nodes
    return result
