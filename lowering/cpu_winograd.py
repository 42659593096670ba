"""Winograd F(4x4, 3x3) convolution for 3x3 stride-1 convs: about 4x fewer multiply-adds than GEMM.

im2col + GEMM spends as long copying (9x the input, beyond the caches) as multiplying. Winograd
F(4x4, 3x3) computes each 4x4 block of outputs ("tile") from a 6x6 block of the padded input:

    Y = A^T [ sum_c (G g_mc G^T) * (B^T d_c B) ] A

with ``*`` elementwise over the 36 positions of a transformed tile. Summing over input channels
for each of the 36 positions is a matrix product, so a conv becomes

1. the input transform ``V[36, C, tiles]`` (a Numba kernel, each half of ``B^T d B`` done as a
   loop over contiguous rows so that it vectorizes);
2. 36 GEMMs ``M[k] = U[k] @ V[k]`` through BLAS, with ``U[36, M, C]`` the filters transformed
   once, at compile time (weights are constants);
3. the output transform ``A^T m A`` with the bias added, into the conv's output; a fused
   node's epilogue is generated into it (:func:`fused_source`), so it costs no extra pass.

Multiply-adds per output drop from 9*C to 36/16*C = 2.25*C; the transforms cost O(C + M) per
tile. The input goes through a zero-bordered copy (borders written once, at compile time), so no
tap needs a bounds check. F(4x4, 3x3)'s error grows with the transform constants (up to 8 in
``A``); in float32 it measured ~1e-5 relative to the largest output on random data and the zoo
models, well within the rtol 1e-3 / atol 1e-4 the targets are held to. Planes of ``V`` and ``M``
are laid out with a stride of an odd number of cache lines: with a power-of-two-ish stride the
36 streams written at once map to a few cache sets and ran 1.5-2x slower.

With several threads, the chunks of tile rows of an image (each through all three stages) are
the chunks of eqsat's pool (:mod:`eqsat.lowering.cpu_threads`), each thread with its own V, M
and transform scratch; the padded input is filled once per image, before them. A plane too small
for two chunks of tile rows (20x20 and below: 25 tiles) is split by filters instead: the calling
thread transforms the input once, then each thread takes a span of filters through its GEMMs and
output transform (YOLOv8's 64- and 128-channel 20x20 convs ran on one thread at 2 threads).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from eqsat.lowering import cpu_microkernel
from eqsat.lowering.cpu_threads import chunks, even_spans
from numba import njit

JIT = {"cache": True, "error_model": "numpy", "fastmath": {"contract"}, "nogil": True}
F2 = np.float32(2.0)
F4 = np.float32(4.0)
F5 = np.float32(5.0)
F8 = np.float32(8.0)
# Bytes of a chunk's transformed input and GEMM output together: about half of L2.
CHUNK_BYTES = 256 << 10
MIN_CHUNK_TILES = 64
MIN_TILES = 16
# Fewest filters a thread takes where a plane is split by filters.
MIN_SPAN_FILTERS = 16
# Part of generated modules' source, so that they are regenerated when the kernels they call change.
_VERSION = "winograd 2"

# F(4x4, 3x3) of Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016).
_G = np.array(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ]
)


# Fewest input channels (and output channels) of a Winograd conv. The transforms cost O(C + M) per
# tile and save O(C * M) of the GEMM, whose depth is C: SqueezeNet's 16 -> 64 conv on 55x55 ran
# 1.5 ms through Winograd, 1.2 through im2col + GEMM (even at 24 input channels; 32: 1.7 against
# 2.0). Few output channels with many input channels still gain (64 -> 16: 1.1 against 1.6 ms).
# With AVX-512 tiles im2col + GEMM is the faster at 24 channels too (80x80: 0.38 ms against
# 0.44; 32 channels even, 64 on 40x40 Winograd 0.46 against 0.59).
# With the patches read in place (cpu_microkernel.taps_gemm) and Winograd's products on the
# AVX-512 tiles (cpu_microkernel.WINOGRAD_MIN_TILES), chains of six 3x3 convs on a Zen 5 core,
# ms Winograd against taps: 32 channels on 40x40 0.93/0.80, on 80x80 3.41/3.02; 48 on 52x52
# 3.11/3.06, on 80x80 5.9/6.8; 64 on 20x20 0.66/0.78, on 40x40 2.21/3.02; 96 on 13x13 0.80/0.87.
# From 64 rather than 48 the zoo's models ran 1-4% faster (YOLOv8n, PP-OCR's detector, the
# CDLA layout model).
MIN_CHANNELS = 64 if cpu_microkernel.WIDE_TILES else 24
MIN_FILTERS = 8


# With several threads, a plane of fewer tiles than this, too small for two chunks of tile rows,
# splits by filters after one thread's input transform; below SMALL_PLANE_CHANNELS channels the
# GEMM path then splits better. Chains of six 3x3 convs on 2 threads (Zen 5), ms Winograd
# against taps: 64 channels on 20x20 (25 tiles) 0.64/0.49; 96 on 26x26 (49) 1.83/2.05, 128 on
# 20x20 1.31/1.69, 192 on 13x13 1.72/2.02, 64 on 40x40 (100) 1.59/1.74.
SMALL_PLANE_TILES = 49
SMALL_PLANE_CHANNELS = 96


def applies(kernel: tuple[int, ...], strides: tuple[int, ...], dilations: tuple[int, ...],
            group: int, channels: int, filters: int,
            out: tuple[int, ...] | None = None, threads: int = 1) -> bool:  # fmt: skip
    """Whether a conv takes the Winograd path: 3x3, stride 1, undilated, ungrouped.

    With few channels the transforms (O(C + M) per tile) cost more than the GEMM they save
    (O(C * M)): see :data:`MIN_CHANNELS`. With few tiles (``out``, the output's
    height and width, under :data:`MIN_TILES` tiles) the transformed filters, 4x the weights,
    cost more to bring in from memory than the multiply-adds they save: in a network, where
    each layer's weights arrive cold, a 128-channel 10x10 conv (9 tiles) ran ~20% slower through
    Winograd than through im2col + GEMM, a 20x20 one (25 tiles) ~40% faster. On several
    ``threads`` (AVX-512 tiles), small planes of few channels split better on the GEMM path
    (:data:`SMALL_PLANE_TILES`).
    """
    tiles = MIN_TILES if out is None else -(-out[0] // 4) * -(-out[1] // 4)
    threaded_small_plane = (
        cpu_microkernel.WIDE_TILES
        and threads > 1
        and out is not None
        and tiles < SMALL_PLANE_TILES
        and channels < SMALL_PLANE_CHANNELS
    )
    return (
        kernel == (3, 3)
        and strides == (1, 1)
        and dilations == (1, 1)
        and group == 1
        and channels >= MIN_CHANNELS
        and filters >= MIN_FILTERS
        and tiles >= MIN_TILES
        and not threaded_small_plane
    )


def filter_transform(w: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """(M, C, 3, 3) weights -> U (36, M, C), computed in float64 then rounded once."""
    u = np.einsum("ai,mcij,bj->abmc", _G, w.astype(np.float64), _G)
    return np.ascontiguousarray(u.reshape(36, w.shape[0], w.shape[1]), dtype)


def planes(count: int, rows: int, cols: int, flat: np.ndarray) -> np.ndarray:
    """A (count, rows, cols) view of ``flat`` whose planes are an odd number of lines apart."""
    return (
        flat[: count * plane_stride(rows, cols)]
        .reshape(count, -1)[:, : rows * cols]
        .reshape(count, rows, cols)
    )


def plane_stride(rows: int, cols: int) -> int:
    stride = -(-rows * cols // 16) * 16
    return stride + 16 if (stride // 16) % 2 == 0 else stride


@njit(**JIT)
def input_transform(xp, v, th0, th1, tw_, tq):  # type: ignore[no-untyped-def]
    """xp (C, 4*TH+2, 4*TW+4) zero-padded input -> v (36, C, (th1-th0)*TW), the tiles of tile
    rows th0 <= th < th1; tq: (6, 4*TW+4) scratch.

    First ``B^T d`` down every column of the six input rows at once (contiguous, vectorized),
    then the row half ``(B^T d) B`` per tile, reading those rows at stride 4 (LLVM loads them
    as interleaved groups) and writing each of the 36 planes contiguously. Storing the first
    half split by column mod 4 instead, one column at a time, ran ~20% slower.
    """
    n = 4 * tw_ + 4
    for c in range(xp.shape[0]):
        for th in range(th0, th1):
            r0 = xp[c, 4 * th]
            r1 = xp[c, 4 * th + 1]
            r2 = xp[c, 4 * th + 2]
            r3 = xp[c, 4 * th + 3]
            r4 = xp[c, 4 * th + 4]
            r5 = xp[c, 4 * th + 5]
            q0, q1, q2, q3, q4, q5 = tq[0], tq[1], tq[2], tq[3], tq[4], tq[5]
            for w in range(n):
                a0, a1, a2, a3, a4, a5 = r0[w], r1[w], r2[w], r3[w], r4[w], r5[w]
                q0[w] = F4 * a0 - F5 * a2 + a4
                q1[w] = a3 + a4 - F4 * (a1 + a2)
                q2[w] = a4 - a3 + F4 * (a1 - a2)
                q3[w] = a4 - a2 + F2 * (a3 - a1)
                q4[w] = a4 - a2 + F2 * (a1 - a3)
                q5[w] = F4 * a1 - F5 * a3 + a5
            base = (th - th0) * tw_
            for k in range(6):
                q = tq[k]
                v0 = v[6 * k, c, base : base + tw_]
                v1 = v[6 * k + 1, c, base : base + tw_]
                v2 = v[6 * k + 2, c, base : base + tw_]
                v3 = v[6 * k + 3, c, base : base + tw_]
                v4 = v[6 * k + 4, c, base : base + tw_]
                v5 = v[6 * k + 5, c, base : base + tw_]
                for t in range(tw_):
                    a0, a1, a2 = q[4 * t], q[4 * t + 1], q[4 * t + 2]
                    a3, a4, a5 = q[4 * t + 3], q[4 * t + 4], q[4 * t + 5]
                    v0[t] = F4 * a0 - F5 * a2 + a4
                    v1[t] = a3 + a4 - F4 * (a1 + a2)
                    v2[t] = a4 - a3 + F4 * (a1 - a2)
                    v3[t] = a4 - a2 + F2 * (a3 - a1)
                    v4[t] = a4 - a2 + F2 * (a1 - a3)
                    v5[t] = F4 * a1 - F5 * a3 + a5


@njit(**JIT)
def columns(m, co, base, tw_, s):  # type: ignore[no-untyped-def]
    """s[k, j, t] = (m A)[k, j] of tile base+t of output channel co: the row half of A^T m A."""
    for k in range(6):
        m0 = m[6 * k, co]
        m1 = m[6 * k + 1, co]
        m2 = m[6 * k + 2, co]
        m3 = m[6 * k + 3, co]
        m4 = m[6 * k + 4, co]
        m5 = m[6 * k + 5, co]
        for t in range(tw_):
            p = base + t
            a0, a1, a2, a3, a4, a5 = m0[p], m1[p], m2[p], m3[p], m4[p], m5[p]
            s[k, 0, t] = a0 + a1 + a2 + a3 + a4
            s[k, 1, t] = a1 - a2 + F2 * (a3 - a4)
            s[k, 2, t] = a1 + a2 + F4 * (a3 + a4)
            s[k, 3, t] = a1 - a2 + F8 * (a3 - a4) + a5


@njit(**JIT)
def out_value(s, i, j, t):  # type: ignore[no-untyped-def]
    """Output (i, j) of tile t from :func:`columns`' s: row i of A^T s."""
    if i == 0:
        return s[0, j, t] + s[1, j, t] + s[2, j, t] + s[3, j, t] + s[4, j, t]
    if i == 1:
        return s[1, j, t] - s[2, j, t] + F2 * (s[3, j, t] - s[4, j, t])
    if i == 2:
        return s[1, j, t] + s[2, j, t] + F4 * (s[3, j, t] + s[4, j, t])
    return s[1, j, t] - s[2, j, t] + F8 * (s[3, j, t] - s[4, j, t]) + s[5, j, t]


@njit(**JIT)
def output_transform(m, bias, out, th0, th1, tw_, s):  # type: ignore[no-untyped-def]
    """m (36, M, (th1-th0)*TW) -> tile rows th0 <= th < th1 of out (M, OH, OW) = A^T m A + bias;
    s: (6, 4, TW) scratch."""
    m_, oh_, ow_ = out.shape
    full = min(tw_, ow_ // 4)
    for co in range(m_):
        b = bias[co]
        for th in range(th0, th1):
            columns(m, co, (th - th0) * tw_, tw_, s)
            for i in range(min(4, oh_ - 4 * th)):
                row = out[co, 4 * th + i]
                # i is fixed in each loop, so the branch in out_value is hoisted out of it.
                for t in range(full):
                    for j in range(4):
                        row[4 * t + j] = out_value(s, i, j, t) + b
                for w in range(4 * full, ow_):
                    row[w] = out_value(s, i, w % 4, w // 4) + b


def fused_source(dtype: np.dtype, epilogue: str, kinds: list[str]) -> str:
    """A module whose ``output_transform(m, bias, out, th0, th1, tw_, s, t1, t2, ...)`` is
    :func:`output_transform` with ``epilogue`` applied to each output as it is stored.

    ``{0}`` is the conv's output (bias included); operand ``{i}`` (i >= 1) is ``t<i>``, an
    array of the output's (M, OH, OW) shape where ``kinds[i-1]`` is "full", one value per output
    channel (M,) where it is "channel". Scalar constants must already be inlined.
    """
    from eqsat.lowering import codegen

    code, constants = codegen.translate(epilogue, dtype)
    ctype = f"np.{dtype}"
    args = "".join(f", t{i + 1}" for i in range(len(kinds)))
    loads = [f"x{i + 1} = r{i + 1}[w]" for i, k in enumerate(kinds) if k == "full"]
    per_channel = [f"x{i + 1} = t{i + 1}[co]" for i, k in enumerate(kinds) if k == "channel"]
    rows = [f"r{i + 1} = t{i + 1}[co, oh]" for i, k in enumerate(kinds) if k == "full"]
    lines = [
        f"# eqsat winograd output transform; codegen {codegen.CODEGEN_VERSION}; {_VERSION}",
        f"# epilogue: {epilogue}; operands {kinds}",
        "import math",
        "import numpy as np",
        "from numba import njit",
        "from eqsat.lowering.cpu_math import exp_f32, tanh_f32, erf_f32, fmax, fmin, fsign",
        "from eqsat.lowering.cpu_winograd import columns, out_value",
        "",
        f"ONE = {ctype}(1.0)",
        f"ZERO = {ctype}(0.0)",
        *(f"{name} = {ctype}({codegen.float_literal(v)})" for name, v in constants.items()),
        "",
        "",
        "@njit(cache=True, error_model='numpy', fastmath={'contract'}, nogil=True)",
        f"def output_transform(m, bias, out, th0, th1, tw_, s{args}):",
        "    m_, oh_, ow_ = out.shape",
        "    full = min(tw_, ow_ // 4)",
        "    for co in range(m_):",
        "        b = bias[co]",
        *(f"        {line}" for line in per_channel),
        "        for th in range(th0, th1):",
        "            columns(m, co, (th - th0) * tw_, tw_, s)",
        "            for i in range(min(4, oh_ - 4 * th)):",
        "                oh = 4 * th + i",
        "                row = out[co, oh]",
        *(f"                {line}" for line in rows),
    ]
    # The epilogue is a loop of its own over the row (still in L1): inside the transform's loop
    # it did not vectorize. Same process, 128x28x28: ReLU and a residual cost the same either
    # way, HardSwish 4.2 -> 2.9 ms, HardSigmoid 4.6 -> 3.6 ms, and exp in a SiLU cost more than
    # the whole transform.
    lines += [
        "                for t in range(full):",
        "                    for j in range(4):",
        "                        row[4 * t + j] = out_value(s, i, j, t) + b",
        "                for w in range(4 * full, ow_):",
        "                    row[w] = out_value(s, i, w % 4, w // 4) + b",
        "                for w in range(ow_):",
        "                    x0 = row[w]",
        *(f"                    {line}" for line in loads),
        f"                    row[w] = {code}",
    ]
    return "\n".join(lines) + "\n"


def load_fused(dtype: np.dtype, epilogue: str, kinds: list[str]) -> Any:
    """The compiled fused output transform of :func:`fused_source` (cached on disk)."""
    from eqsat.lowering import kernel_cache

    return kernel_cache.load(fused_source(dtype, epilogue, kinds)).output_transform


class Winograd:
    """A conv's Winograd geometry, transformed filters and padded input buffer.

    Tiles go through the three stages by chunks of whole tile rows, so that the chunk's ``V``
    and ``M`` stay in L2 between the transform that writes them and the GEMM that reads them
    (through L3 the input transform ran 2-3x slower); chunks keep at least
    :data:`MIN_CHUNK_TILES` tiles, below which the GEMMs lose efficiency.
    """

    def __init__(
        self,
        weights: np.ndarray,
        bias: np.ndarray,
        in_hw: tuple[int, int],
        out_hw: tuple[int, int],
        pads: tuple[int, int],
        dtype: np.dtype,
        chunk_bytes: int | None = None,
        output: Any = None,
        parts: int = 1,
        threads: int = 1,
    ):
        self.filters, self.channels = weights.shape[:2]
        self.u = filter_transform(weights, dtype)
        self.bias = bias
        self.output = output_transform if output is None else output
        self.in_hw, self.out_hw, self.pads = in_hw, out_hw, pads
        oh, ow = out_hw
        self.th, self.tw = -(-oh // 4), -(-ow // 4)
        budget = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
        per_tile = 36 * (self.channels + self.filters) * np.dtype(dtype).itemsize
        tiles = max(MIN_CHUNK_TILES, budget // per_tile)
        self.chunk_rows = max(1, min(self.th, tiles // self.tw))
        if parts > 1:  # at least ``parts`` chunks for the pool, of half the minimum at least
            least = -(-MIN_CHUNK_TILES // (2 * self.tw))
            self.chunk_rows = min(self.chunk_rows, max(least, -(-self.th // parts)))
        self.row_spans = [
            (th0, min(self.th, th0 + self.chunk_rows)) for th0 in range(0, self.th, self.chunk_rows)
        ]
        if parts > 1 and threads > 1 and len(self.row_spans) > 1:
            self.row_spans = even_spans(self.th, len(self.row_spans), threads, tiles // self.tw)
            self.chunk_rows = max(b - a for a, b in self.row_spans)
        # One chunk of tile rows: the pool takes spans of filters instead, all tiles at once, one
        # span per thread (each span's GEMMs are as many BLAS calls; more, thinner ones ran slower).
        self.filter_spans: list[tuple[int, int]] = []
        if parts > 1 and self.th <= self.chunk_rows:
            count = min(parts, threads, self.filters // MIN_SPAN_FILTERS)
            if count > 1:
                self.filter_spans = chunks(self.filters, count, 8)
        # Borders stay zero: runs only write the interior.
        self.padded = np.zeros((self.channels, 4 * self.th + 2, 4 * self.tw + 4), dtype)
        (ph, pw), (h, w) = pads, in_hw
        self.interior = self.padded[:, ph : ph + h, pw : pw + w]
        self.tq = np.empty((6, 4 * self.tw + 4), dtype)
        self.s = np.empty((6, 4, self.tw), dtype)

    @property
    def chunk_tiles(self) -> int:
        return self.chunk_rows * self.tw

    @property
    def parallel(self) -> bool:
        """Whether the conv has chunks (of tile rows, or spans of filters) for a pool."""
        return self.th > self.chunk_rows or len(self.filter_spans) > 1

    def scratch_size(self, threads: int = 1) -> int:
        """Elements of the V and M planes that ``threads`` threads use together: per thread,
        one chunk's, or where the pool takes spans of filters, one set for the whole plane."""
        t = self.chunk_tiles
        if threads > 1 and self.filter_spans:
            return 36 * (plane_stride(self.channels, t) + plane_stride(self.filters, t))
        return threads * 36 * (plane_stride(self.channels, t) + plane_stride(self.filters, t))

    def bind(self, scratch: np.ndarray, pool: Any = None) -> Any:
        """``conv(x, out, *operands)`` for one image (C, H, W) -> (M, OH, OW), using ``scratch``
        (:meth:`scratch_size` elements for the pool's threads); ``operands`` are the fused
        output transform's ``t1, t2, ...``. With ``pool`` (a
        :class:`~eqsat.lowering.cpu_threads.Pool`) the chunks run on the pool."""
        if pool is not None and self.filter_spans:
            return self._bind_filters(scratch, pool)
        if pool is not None and self.th > self.chunk_rows:
            return self._bind_parallel(scratch, pool)
        t = self.chunk_tiles
        v = planes(36, self.channels, t, scratch)
        m = planes(36, self.filters, t, scratch[36 * plane_stride(self.channels, t) :])
        u, bias, padded, interior = self.u, self.bias, self.padded, self.interior
        tw, tq, s = self.tw, self.tq, self.s
        chunks = []
        for th0, th1 in self.row_spans:
            n = (th1 - th0) * tw
            chunks.append((th0, th1, v[:, :, :n], m[:, :, :n]))
        copyto, output = np.copyto, self.output
        matmul = cpu_microkernel.winograd_matmul(self.u.dtype, self.filters, self.channels)

        def conv(x: np.ndarray, out: np.ndarray, *operands: np.ndarray) -> None:
            copyto(interior, x)
            for th0, th1, vc, mc in chunks:
                input_transform(padded, vc, th0, th1, tw, tq)
                matmul(u, vc, mc)
                output(mc, bias, out, th0, th1, tw, s, *operands)

        return conv

    def _bind_parallel(self, scratch: np.ndarray, pool: Any) -> Any:
        t, size = self.chunk_tiles, self.scratch_size()
        u, bias, padded, interior = self.u, self.bias, self.padded, self.interior
        tw, copyto, output = self.tw, np.copyto, self.output
        matmul = cpu_microkernel.winograd_matmul(self.u.dtype, self.filters, self.channels)
        mine = []  # per thread: V and M planes, transform scratch
        for k in range(pool.threads):
            flat = scratch[k * size : (k + 1) * size]
            v = planes(36, self.channels, t, flat)
            m = planes(36, self.filters, t, flat[36 * plane_stride(self.channels, t) :])
            mine.append((v, m, np.empty_like(self.tq), np.empty_like(self.s)))
        rows = self.row_spans
        pool_map = pool.map

        def conv(x: np.ndarray, out: np.ndarray, *operands: np.ndarray) -> None:
            copyto(interior, x)

            def chunk(span: tuple[int, int], worker: int) -> None:
                th0, th1 = span
                v, m, tq, s = mine[worker]
                n = (th1 - th0) * tw
                vc, mc = v[:, :, :n], m[:, :, :n]
                input_transform(padded, vc, th0, th1, tw, tq)
                matmul(u, vc, mc)
                output(mc, bias, out, th0, th1, tw, s, *operands)

            pool_map(chunk, rows)

        return conv

    def _bind_filters(self, scratch: np.ndarray, pool: Any) -> Any:
        t = self.chunk_tiles
        v = planes(36, self.channels, t, scratch)
        m = planes(36, self.filters, t, scratch[36 * plane_stride(self.channels, t) :])
        u, bias, padded, interior = self.u, self.bias, self.padded, self.interior
        th, tw, tq = self.th, self.tw, self.tq
        copyto, output = np.copyto, self.output
        matmul = cpu_microkernel.winograd_matmul(self.u.dtype, self.filters, self.channels)
        spans = [(m0, m1, u[:, m0:m1], m[:, m0:m1], bias[m0:m1]) for m0, m1 in self.filter_spans]
        transform_scratch = [np.empty_like(self.s) for _ in range(pool.threads)]
        pool_map = pool.map

        def conv(x: np.ndarray, out: np.ndarray, *operands: np.ndarray) -> None:
            copyto(interior, x)
            input_transform(padded, v, 0, th, tw, tq)

            def span(part: tuple[Any, ...], worker: int) -> None:
                m0, m1, us, ms, bs = part
                matmul(us, v, ms)
                output(ms, bs, out[m0:m1], 0, th, tw, transform_scratch[worker],
                       *[o[m0:m1] for o in operands])  # fmt: skip

            pool_map(span, spans)

        return conv


__all__ = [
    "Winograd", "applies", "filter_transform", "fused_source", "input_transform", "load_fused",
    "output_transform",
]  # fmt: skip
