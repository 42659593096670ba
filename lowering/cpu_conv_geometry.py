"""A conv's geometry for :mod:`eqsat.lowering.cpu_conv`: its shapes as 2-D, which scheme computes
it (the planes' width, a direct kernel, patches that tile the input, few positions), its blocks
of output rows, the spans the pool takes, and the sizes of its buffers; with the thresholds that
choose among them, each with the measurement behind it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from eqsat.lowering import cpu_microkernel
from eqsat.lowering.cpu_conv_kernels import fill_phases, phase_split
from eqsat.lowering.cpu_threads import chunks, even_spans

# Bytes of one block's column buffer, written by im2col and read (packed) by the GEMM. Blocks
# that fit L2 (160 KiB) cut small convs into more, narrower GEMMs: with 640 KiB openWakeWord's
# embedding, magika and MobileNetV2's block ran 1-4% faster (interleaved A/B, each run after an
# onnxruntime run).
BLOCK_BYTES = 640 << 10
# Below this many output columns per block a GEMM loses efficiency; blocks keep at least these.
MIN_BLOCK_COLUMNS = 256
# 1x1 convs: blocks of about this many bytes of output (and at least MIN_POINTWISE_COLUMNS
# columns), each GEMM followed by its epilogue. Against blocks of 256 KiB, sized for L2, 4 MiB
# ran MobileNetV2's block 1-4% faster and MobileNetV3 the same (interleaved A/B); most single
# images are then one GEMM. With several threads the blocks are still cut per thread.
OUTPUT_BLOCK_BYTES = 4096 << 10
MIN_POINTWISE_COLUMNS = 512
# Convs with at most this many output positions (per image) skip BLAS: :func:`~eqsat.lowering.cpu_conv_kernels.small_conv`
# (openWakeWord's 96-channel 1x3 convs on 10x2 to 14x4 outputs: 1.3-1.8x faster than the GEMM).
SMALL_POSITIONS = 64
# ... and at most this many weights (M x C*KH*KW): with more, BLAS's GEMM is the faster one (ResNet's
# 512-channel 3x3 conv on 7x7: 5.2 ms blocked dot products, 4.4 im2col + GEMM; even at 256
# channels, 1.26 ms both ways; 128 channels on 8x8: 0.39 ms against 0.47).
SMALL_WEIGHTS = 1 << 19
MAX_SPLIT_STRIDE = 4
# Convs whose positions make a single block split their output channels over the pool instead,
# in spans of at least this many (multiples of 8): MobileNet's 1x1 convs on 14x14 and 7x7 made
# one block each and ran on one thread with two (orientation_mnv3: 6.0 ms on one thread, 6.4 on
# two; onnxruntime 4.6 and 2.5).
MIN_CHANNEL_SPAN = 16
# Outputs at most this wide compute on the padded width whatever the extra columns: copying
# rows of a few values one by one costs more (openWakeWord's 1x3 conv on 12x4 outputs: the
# row copies took 2.5x the GEMM). With AVX-512 tiles (the taps reading the planes in place) any
# output width does (a Zen 5 core, one thread, ms row copies against planes' width: 64 channels
# on 14x14, 5x5: 0.48 / 0.20; 64 on 20x20, 7x7: 1.56 / 0.80; 16 on 30x30, 11x11: 1.18 / 0.29;
# 2 images of 96 channels on 224x7, 1x7 to 32: 5.0 / 1.18).
NARROW = 16
WIDE_ANY_WIDTH = cpu_microkernel.WIDE_TILES
# The wide layout's extra GEMM work, per output row and column buffer row: M/G times the extra
# columns (WP - OW). Above this it costs more than copying patch rows one by one saves (ResNet's
# 512-channel 3x3 conv on 7x7 outputs computed 9 columns for 7: 5.2 ms, 4.4 without). With
# AVX-512 tiles the extra columns are cheaper than the row copies at any width (a Zen 5 core,
# 3x3 convs: 256 channels on 10x10 0.89 -> 0.61 ms, 512 on 7x7 1.83 -> 1.34, 256 -> 512 with
# stride 2 on 10x10 0.48 -> 0.30; 128 channels on 10x10 and 20x20 even).
WIDE_EXTRA_COLUMNS = 1 << 40 if cpu_microkernel.WIDE_TILES else 300
# Convs with at most this many output channels per group (and more than one tap) skip im2col:
# :func:`~eqsat.lowering.cpu_conv_kernels.direct_conv`. The GEMM is then too thin to pay for writing C*KH*KW values per output
# (basic-pitch's 8-channel 3x39 conv: 51 GFLOP/s direct, 24 through im2col; with 32 channels
# im2col + GEMM won, 42 to 33).
DIRECT_CHANNELS = 8
# ... and outputs at least this wide: the direct kernel's passes over a row's columns pay a
# fixed cost each (with rows of 32 it ran 5x slower than im2col + GEMM).
DIRECT_WIDTH = 48
# Columns of one direct chunk: about this many bytes of output, which stays in L1 while every
# tap accumulates into it.
DIRECT_BLOCK_BYTES = 32 << 10


class Geometry:
    """A conv's shapes as 2-D (a 1-D conv has H = KH = 1), its blocks and buffers' sizes."""

    def __init__(self, x_shape: tuple[int, ...], w_shape: tuple[int, ...], window: Any,
                 group: int, itemsize: int, parts: int = 1, threads: int = 1):  # fmt: skip
        lift = len(x_shape) == 3
        pad = (lambda t, v: (v, *t)) if lift else (lambda t, v: tuple(t))
        self.n, self.c = x_shape[:2]
        self.h, self.w = pad(x_shape[2:], 1)
        self.m = w_shape[0]
        self.kh, self.kw = pad(window.kernel, 1)
        self.sh, self.sw = pad(window.strides, 1)
        self.dh, self.dw = pad(window.dilations, 1)
        self.ph, self.pw = pad(window.begin, 0)
        self.oh, self.ow = pad(window.out, 1)
        self.group = group
        self.k = (self.c // group) * self.kh * self.kw  # GEMM depth per group
        self.p = self.oh * self.ow
        self.pointwise = (self.kh, self.kw, self.sh, self.sw, self.ph, self.pw) == (
            1, 1, 1, 1, 0, 0,
        ) and (self.oh, self.ow) == (self.h, self.w)  # fmt: skip
        self.wq = -(-self.w // self.sw)
        self.small = self.p <= SMALL_POSITIONS and group == 1 and self.m * self.k <= SMALL_WEIGHTS
        # Patches on the phase planes' width WQ (see :func:`~eqsat.lowering.cpu_conv_kernels.im2col_wide`) when the extra
        # columns cost little: each tap's patch row is then one copy (with outputs 10 wide,
        # copying rows of 10 took as long as the GEMM; stride 2 needed a split and short rows).
        self.wp = max(
            -(-(self.w + self.pw) // self.sw), self.ow + (self.kw - 1) * self.dw // self.sw
        )
        self.rp = (
            max(-(-(self.h + self.ph) // self.sh), self.oh + (self.kh - 1) * self.dh // self.sh) + 1
        )
        self.direct = (
            max(self.sh, self.sw) <= MAX_SPLIT_STRIDE
            and self.kh * self.kw > 1
            and not self.small
            and self.m // group <= DIRECT_CHANNELS
            and self.ow >= DIRECT_WIDTH
        )
        # Patches that tile the input (kernel = stride, no padding: ViT and Swin patch
        # embeddings, ConvNeXt's stem) read each input value once: a gather copies them where a
        # phase split, then its copy into the column buffer, passed over them twice (a 4x4
        # patch embedding, 64 channels on 224x224: 1.18 ms, 1.01 gathered).
        self.patches = (
            (self.kh, self.kw) == (self.sh, self.sw)
            and self.sh * self.sw > 1
            and (self.ph, self.pw, self.dh, self.dw) == (0, 0, 1, 1)
        )
        self.wide = (
            not self.patches
            and max(self.sh, self.sw) <= MAX_SPLIT_STRIDE
            and self.kh * self.kw > 1
            and not self.small
            and not self.direct
            and (
                WIDE_ANY_WIDTH
                or self.wp * 4 <= self.ow * 5
                or (self.ow <= NARROW and self.wp <= self.ow + 2)
            )
            and self.m * (self.wp - self.ow) <= WIDE_EXTRA_COLUMNS * group
        )
        # Strides above MAX_SPLIT_STRIDE gather directly: few outputs read little of each row
        # (Silero's STFT conv has stride 128).
        # With one column of taps (KW = 1) each input element is read once: no split either.
        self.split = (
            1 < self.sw <= MAX_SPLIT_STRIDE
            and self.kw > 1
            and not (self.wide or self.direct or self.patches)
        )
        # ``parts`` > 1: the pool takes the blocks, so there should be at least that many (still
        # no narrower than the GEMM's minimum width).
        if self.pointwise:  # no column buffer: blocks keep the GEMM's output in cache
            per_row = max(1, self.m * self.ow * itemsize)
            least = -(-MIN_POINTWISE_COLUMNS // self.ow)
            rows = max(OUTPUT_BLOCK_BYTES // per_row, least)
        else:
            width = self.wp if self.wide else self.ow
            per_row = max(1, self.c * self.kh * self.kw * width * itemsize)
            least = -(-MIN_BLOCK_COLUMNS // self.ow)
            rows = max(BLOCK_BYTES // per_row, least)
        if parts > 1:
            rows = min(rows, max(least, -(-self.oh // parts)))
        rows = max(1, min(self.oh, rows))
        # Even blocks: a short last block would make a slow small GEMM; on the pool, as many
        # per thread (up to twice the rows the budget asks for, where that makes fewer).
        count = -(-self.oh // rows)
        if parts > 1 and threads > 1 and count > 1:
            self.blocks = even_spans(self.oh, count, threads, 2 * rows)
            rows = max(b - a for a, b in self.blocks)
        else:
            rows = -(-self.oh // count)
            self.blocks = [(r, min(self.oh, r + rows)) for r in range(0, self.oh, rows)]
        self.rows = rows
        # Direct convs: spans of output columns (any, not whole rows: 1-D convs have one).
        span = max(MIN_BLOCK_COLUMNS, DIRECT_BLOCK_BYTES // (self.m * itemsize))
        if parts > 1:
            span = min(span, max(MIN_BLOCK_COLUMNS, -(-self.p // parts)))
        count = -(-self.p // span)
        span = -(-self.p // count)
        self.spans = [(q, min(self.p, q + span)) for q in range(0, self.p, span)]
        # One block of positions: the output channels are what the pool can share, one span per
        # thread (each span's GEMM packs all of the patches again: 256x256x196 cut in 2 took
        # 1.09x as long on one thread, in 8 1.35x; the im2col, if any, is done once before).
        self.channel_spans: list[tuple[int, int]] = []
        if parts > 1 and group == 1 and not self.direct and (self.small or len(self.blocks) == 1):
            count = min(parts, threads, self.m // MIN_CHANNEL_SPAN)
            if count > 1:
                self.channel_spans = chunks(self.m, count, 8)
        # ... and for grouped convs on the planes' width, spans of whole groups (each group's
        # patches and product are its own: nothing is gathered twice).
        self.group_spans: list[tuple[int, int]] = []
        if parts > 1 and group > 1 and self.wide and len(self.blocks) == 1:
            count = min(parts, threads, group)
            if count > 1:
                self.group_spans = chunks(group, count)

    def filters_by_taps(self, filters: np.ndarray) -> np.ndarray:
        """Group 0's filters (M, K) of ``filters`` (G, M/G, K), K in the order of
        :func:`~eqsat.lowering.cpu_conv_kernels.small_patches`' patches: (kh, kw, c)."""
        by_taps = filters[0].reshape(self.m, self.c, self.kh * self.kw).transpose(0, 2, 1)
        return np.ascontiguousarray(by_taps).reshape(self.m, self.k)

    def patches_in_place(self, dtype: np.dtype) -> list[bool]:
        """Per block of a :attr:`wide` conv: whether its product reads the patches in place
        from the phase planes (:func:`~eqsat.lowering.cpu_microkernel.taps_gemm`, at
        :meth:`tap_offsets`, the filters by :meth:`filters_by_taps`) rather than from
        im2col_wide's copies: a single group, where the tiles take the product."""
        return [
            self.group == 1 and cpu_microkernel.taps_suit(dtype, self.k, (r1 - r0) * self.wp)
            for r0, r1 in self.blocks
        ]

    def tap_offsets(self) -> np.ndarray:
        """Where each tap (kh, kw) of a :attr:`wide` conv reads its patch row, in elements of
        one channel's phase planes (C, SH*SW*RP*WP) flattened, from the block's first row:
        phase ((kh*dh) % SH, (kw*dw) % SW), (kh*dh) // SH rows and (kw*dw) // SW columns in
        (as :func:`~eqsat.lowering.cpu_conv_kernels.im2col_wide` copies them)."""
        offsets = [
            (
                ((kh * self.dh) % self.sh * self.sw + (kw * self.dw) % self.sw) * self.rp
                + (kh * self.dh) // self.sh
            ) * self.wp + (kw * self.dw) // self.sw
            for kh in range(self.kh)
            for kw in range(self.kw)
        ]  # fmt: skip
        return np.array(offsets, np.int64)

    def params(self) -> tuple[int, ...]:
        return (self.ow, self.kh, self.kw, self.sh, self.sw, self.dh, self.dw, self.ph, self.pw,
                self.w)  # fmt: skip

    def cols_size(self) -> int:
        if self.direct:
            return 0
        if self.small:  # the patches (P, K) and the input transposed (H, W, C)
            return self.p * self.k + self.c * self.h * self.w
        width = self.wp if self.wide else self.ow
        return 0 if self.pointwise else self.c * self.kh * self.kw * self.rows * width

    def wide_size(self) -> int:
        """Elements of the GEMM's output block on the padded width (:attr:`wide` only)."""
        return self.m * self.rows * self.wp if self.wide else 0

    def split_size(self) -> int:
        return self.c * self.h * self.sw * self.wq if self.split and not self.small else 0

    def source_reader(self, split: np.ndarray) -> Any:
        """``source(x)``: one image x (C, H*W) as :func:`~eqsat.lowering.cpu_conv_kernels.im2col_block` reads it, phase split
        into ``split`` (:meth:`split_size` elements) where :attr:`split`, else viewed as
        (C, H, 1, W)."""
        shape = (self.c, self.h, self.w)
        if not self.split:
            return lambda x: x.reshape(self.c, self.h, 1, self.w)
        xs = split[: self.split_size()].reshape(self.c, self.h, self.sw, self.wq)

        def source(x: np.ndarray) -> np.ndarray:
            phase_split(x.reshape(shape), xs)
            return xs

        return source

    def input_rows(self, r0: int, r1: int) -> tuple[int, int]:
        """The input rows (h0, h1) the taps of output rows r0 <= oh < r1 read (before clipping
        to the input): what a block of a :attr:`wide` conv fills into the phase planes
        (:func:`~eqsat.lowering.cpu_conv_kernels.fill_phase_rows`) before its product."""
        first = r0 * self.sh - self.ph
        return first, (r1 - 1) * self.sh + (self.kh - 1) * self.dh - self.ph + 1

    def phase_planes(self, dtype: np.dtype) -> tuple[np.ndarray, Any]:
        """The zero-bordered phase planes of a :attr:`wide` conv and ``fill(x)``, which copies
        one image x (C, H*W) into their interior (the borders stay zero)."""
        phases = np.zeros((self.c, self.sh, self.sw, self.rp, self.wp), dtype)
        interior = phases[:, 0, 0, self.ph : self.ph + self.h, self.pw : self.pw + self.w]
        shape = (self.c, self.h, self.w)
        if (self.sh, self.sw) == (1, 1):
            return phases, lambda x: np.copyto(interior, x.reshape(shape))
        return phases, lambda x: fill_phases(x.reshape(shape), phases, self.ph, self.pw)


__all__ = ["Geometry"]
