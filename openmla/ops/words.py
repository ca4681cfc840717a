"""Tiles held in registers as int32 words, for kernels that keep the next tile's loads in flight.

A loaded uint8 or 16-bit tensor that stays live across a loop iteration costs a register per
element after Triton lowers it (the values are carried one by one); the same bytes loaded as int32
words cost one register per four codes or two 16-bit values. These helpers turn such words back into
values in dimension order (little-endian: the value at the lower address is in the lower bits).
"""

from __future__ import annotations

from .._runtime import triton_available

if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def unpack_halves(words, src_dtype: tl.constexpr, dtype: tl.constexpr):
        """[N, W] int32 words of two ``src_dtype`` (a 16-bit float type) each -> [N, 2 W] ``dtype``."""
        N: tl.constexpr = words.shape[0]
        W: tl.constexpr = words.shape[1]
        lo = (words & 0xFFFF).to(tl.uint16).to(src_dtype, bitcast=True)
        hi = ((words >> 16) & 0xFFFF).to(tl.uint16).to(src_dtype, bitcast=True)
        return tl.reshape(tl.join(lo, hi), (N, 2 * W)).to(dtype)

    @triton.jit
    def byte_of(words, SHIFT: tl.constexpr):
        """Bits ``SHIFT .. SHIFT + 7`` of each int32 word, as uint8."""
        return ((words >> SHIFT) & 0xFF).to(tl.uint8)

    @triton.jit
    def interleave_quarters(b0, b1, b2, b3):
        """Four [N, W] tensors holding bytes 0..3 of [N, W] words -> [N, 4 W], element ``4 j + m`` from
        ``b<m>[:, j]``."""
        N: tl.constexpr = b0.shape[0]
        W: tl.constexpr = b0.shape[1]
        # join(join(b0, b2), join(b1, b3))[n, j, i, k] is byte 2 i + k of word j: position 4 j + 2 i + k
        return tl.reshape(tl.join(tl.join(b0, b2), tl.join(b1, b3)), (N, 4 * W))
