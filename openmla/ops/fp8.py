"""e4m3 decoding shared by the Triton kernels that read FP8 bytes (sparse V3.2 caches, dense per-tensor caches).

Two ways to turn ``float8_e4m3fn`` codes into numbers in a kernel:

* fp8 conversion instructions, on sm_89 and newer (and in the CPU interpreter);
* integer bit moves (:func:`_e4m3_over_256`), on sm_80/86, where Triton has no fp8 conversion. They
  give the value divided by 256, exactly; the caller multiplies the 256 back (:func:`e4m3_unit`), usually
  folded into a scale it applies anyway.

Every e4m3 value is exact in fp16, bf16 and fp32, so decoding never rounds.
"""

from __future__ import annotations

from .._runtime import triton_available

if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _e4m3_over_256(codes):
        """``float8_e4m3fn`` bytes -> fp32 value / 256, exactly, without fp8 instructions (sm_80/86).

        Moving the code's sign to bit 15 and its 7 exponent+mantissa bits to bits 7..13 gives the fp16
        with the same bits under fp16's exponent bias (15 instead of 7): the value / 2^8, subnormals
        included. Only NaN (``x1111111``) differs: e4m3fn has no infinities, so it is patched back.
        """
        c = codes.to(tl.uint16)
        half = ((c & 0x80) << 8) | ((c & 0x7F) << 7)
        vals = half.to(tl.float16, bitcast=True).to(tl.float32)
        return tl.where((c & 0x7F) == 0x7F, float("nan"), vals)

    @triton.jit
    def e4m3_to(codes, dtype: tl.constexpr, FP8_NATIVE: tl.constexpr):
        """``float8_e4m3fn`` bytes (uint8) -> ``dtype``: the value itself with ``FP8_NATIVE``, else the
        value / 256 (bit moves, any arch). Exact either way: multiply by :func:`e4m3_unit` to undo."""
        if FP8_NATIVE:
            return codes.to(tl.float8e4nv, bitcast=True).to(dtype)
        else:
            return _e4m3_over_256(codes).to(dtype)

    @triton.jit
    def e4m3_unit(FP8_NATIVE: tl.constexpr):
        """What :func:`e4m3_to` values must be multiplied by: 1 with fp8 instructions, 256 with bit moves."""
        if FP8_NATIVE:
            return 1.0
        else:
            return 256.0
