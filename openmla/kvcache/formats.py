"""KV cache formats of DeepSeek MLA, described to the byte, and their detection.

A paged KV cache is a tensor ``k_cache`` of shape ``[num_blocks, page_block_size, h_kv, last]``
(``h_kv == 1`` for every quantized format). FlashMLA tells the formats apart by the query's head
dim ``d_qk`` and the *bytes per token*, ``k_cache.shape[-1] * k_cache.element_size()``:

======================  =====  =====  ===========  ============================================
constant                d_qk   d_v    B/token      layout
======================  =====  =====  ===========  ============================================
:data:`V32_FP8`          576    512    656          per token: 512 e4m3, 4 x fp32 scales, 64 bf16
:data:`MODEL1_FP8`       512    512    584 nominal  per block: B x 576 data, B x 8 scales, padding
:data:`BF16`             576    512    1152         per token: 576 x bf16 (fp16 shares it)
:data:`BF16_D512`        512    512    1024         per token: 512 x bf16 (fp16 shares it)
:data:`FP8_PER_TENSOR`   576    512    576          per token: 576 x e4m3, one scale per tensor
======================  =====  =====  ===========  ============================================

All multi-byte fields are little-endian. Token ``i`` of page ``p`` holds the key of the
``p * page_block_size + i``-th slot of the cache; the first ``d_v`` dims of the key are also the value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .._runtime import InvalidArgumentError, UnsupportedError

__all__ = [
    "KVFormat",
    "V32_FP8",
    "MODEL1_FP8",
    "BF16",
    "BF16_D512",
    "FP8_PER_TENSOR",
    "KNOWN_FORMATS",
    "detect_format",
    "bytes_per_token_of",
]


@dataclass(frozen=True)
class KVFormat:
    """One KV cache layout.

    Attributes:
        name: canonical name (``"V32"``-style names are accepted by :func:`detect_format`'s
            ``kv_format=`` through ``aliases``).
        d_qk: head dim of queries and keys (576 = 512 latent + 64 RoPE, or 512).
        d_v: head dim of values; V is the first ``d_v`` dims of the dequantized key.
        bytes_per_token: *nominal* bytes per token, i.e. ``k_cache.shape[-1] * element_size`` of the
            cache tensor callers pass; ``k_cache.stride(1)`` (in elements) equals ``shape[-1]``.
        element_bytes: element size of the cache tensor (2 for bf16/fp16 caches, 1 for byte caches).
        token_stride_bytes: physical distance in bytes between the data of consecutive tokens of a
            block. It equals ``bytes_per_token`` except for block-split layouts (MODEL1: 576).
        block_split: True when a block is not an array of per-token records (data region, then a
            scale region), so the nominal ``[.., B, 1, bytes_per_token]`` view is a view of bytes only.
        block_align: a block's byte size is rounded up to a multiple of this (1: no padding).
        quantized: True when the cache holds fp8 codes that need scales to read.
        scale_tile: dims covered by one scale (``None`` for unquantized or per-tensor caches).
        nominal_layout: the shape/strides callers see.
        physical_layout: where each byte really is.
        aliases: upper-case names accepted by ``kv_format=``.
    """

    name: str
    d_qk: int
    d_v: int
    bytes_per_token: int
    element_bytes: int
    token_stride_bytes: int
    block_split: bool
    block_align: int
    quantized: bool
    scale_tile: int | None
    nominal_layout: str
    physical_layout: str
    aliases: tuple[str, ...] = ()

    @property
    def last_dim(self) -> int:
        """``k_cache.shape[-1]`` of a cache of this format (elements, not bytes)."""
        return self.bytes_per_token // self.element_bytes

    def block_bytes(self, page_block_size: int) -> int:
        """Minimum bytes one page of ``page_block_size`` tokens occupies (the smallest valid stride(0)).

        ``page_block_size * bytes_per_token`` rounded up to a multiple of ``block_align``; for MODEL1
        that is ``ceil(B * 584 / 576) * 576``.
        """
        if isinstance(page_block_size, bool) or not isinstance(page_block_size, int) or page_block_size <= 0:
            raise InvalidArgumentError(f"page_block_size must be a positive int, got {page_block_size!r}.")
        raw = page_block_size * self.bytes_per_token
        return -(-raw // self.block_align) * self.block_align

    def describe(self) -> str:
        """One line: ``NAME (d_qk=.., d_v=.., N B/token)``."""
        return f"{self.name} (d_qk={self.d_qk}, d_v={self.d_v}, {self.bytes_per_token} B/token)"


V32_FP8 = KVFormat(
    name="V32_FP8",
    d_qk=576,
    d_v=512,
    bytes_per_token=656,
    element_bytes=1,
    token_stride_bytes=656,
    block_split=False,
    block_align=1,
    quantized=True,
    scale_tile=128,
    nominal_layout="[num_blocks, B, 1, 656] uint8/int8/float8_e4m3fn, stride(1) == 656, stride(-1) == 1; "
    "stride(0) >= B * 656 (may include padding).",
    physical_layout="per token, 656 contiguous bytes: [0, 512) float8_e4m3fn codes of dims 0..511; "
    "[512, 528) four little-endian fp32 scales, scale t covers dims 128t..128t+127; "
    "[528, 656) 64 little-endian bf16 RoPE dims 512..575 (not quantized). "
    "Dequant: x[128t + i] = bf16(fp32(e4m3[128t + i]) * scale[t]).",
    aliases=("V32", "V32_FP8", "V3.2", "V32FP8", "DSV32"),
)
"""DeepSeek-V3.2 FP8 sparse cache, 656 bytes per token (d_qk 576, d_v 512).

Per token (byte offsets within the token's 656-byte record):

* ``[0, 512)``: ``float8_e4m3fn`` codes of latent dims 0..511.
* ``[512, 528)``: 4 little-endian fp32 scales; scale ``t`` (bytes ``512 + 4t .. 515 + 4t``) covers dims
  ``128t .. 128t + 127``. The reference quantizer writes powers of two.
* ``[528, 656)``: 64 little-endian bf16 RoPE dims 512..575, stored as is.
"""

MODEL1_FP8 = KVFormat(
    name="MODEL1_FP8",
    d_qk=512,
    d_v=512,
    bytes_per_token=584,
    element_bytes=1,
    token_stride_bytes=576,
    block_split=True,
    block_align=576,
    quantized=True,
    scale_tile=64,
    nominal_layout="[num_blocks, B, 1, 584] uint8/int8/float8_e4m3fn view with stride(1) == 584 and "
    "stride(0) == padded block bytes (a multiple of 576, >= ceil(B * 584 / 576) * 576); the nominal "
    "per-token 584-byte rows do NOT hold one token each.",
    physical_layout="per block of B tokens: data region [0, B*576): token i at i*576 holds [0, 448) "
    "float8_e4m3fn NoPE dims 0..447 and [448, 576) 64 little-endian bf16 RoPE dims 448..511; scale region "
    "[B*576, B*584): token i at B*576 + 8i holds 7 float8_e8m0fnu scales (scale j covers NoPE dims "
    "64j..64j+63, value 2^(byte-127)) and 1 pad byte; then zero padding up to the block size.",
    aliases=("MODEL1", "MODEL1_FP8", "V4", "V4_FP8", "DSV4"),
)
"""DeepSeek-V4 ("MODEL1") FP8 sparse cache, 584 nominal bytes per token (d_qk = d_v = 512).

Block-split: a page of ``B`` tokens is one run of bytes (offsets within the page):

* data region ``[0, B*576)``: token ``i`` at ``i*576``: ``[0, 448)`` e4m3 codes of NoPE dims 0..447,
  ``[448, 576)`` 64 little-endian bf16 RoPE dims 448..511 (not quantized);
* scale region ``[B*576, B*584)``: token ``i`` at ``B*576 + 8i``: 7 ``float8_e8m0fnu`` scales (scale
  ``j`` covers NoPE dims ``64j..64j+63``, value ``2^(byte - 127)``, byte 255 = NaN) and 1 pad byte;
* padding ``[B*584, ceil(B*584/576)*576)``.

Callers hold it as ``[num_blocks, B, 1, 584]`` with ``stride(1) == 584`` and ``stride(0)`` the padded
block size; that view covers exactly the ``B*584`` used bytes of each page, not per-token records.
"""

BF16 = KVFormat(
    name="BF16",
    d_qk=576,
    d_v=512,
    bytes_per_token=1152,
    element_bytes=2,
    token_stride_bytes=1152,
    block_split=False,
    block_align=1,
    quantized=False,
    scale_tile=None,
    nominal_layout="[num_blocks, B, h_kv, 576] bfloat16 (or float16), stride(-1) == 1.",
    physical_layout="per token and kv head: 576 bf16 values, dims 0..511 latent (also V), 512..575 RoPE.",
    aliases=("BF16", "FP16", "BFLOAT16", "FLOAT16"),
)
"""Plain 16-bit cache, ``d_qk = 576``: 2 bytes per dim, ``bytes_per_token = 1152`` per kv head."""

BF16_D512 = dataclasses.replace(
    BF16,
    d_qk=512,
    bytes_per_token=1024,
    token_stride_bytes=1024,
    nominal_layout="[num_blocks, B, h_kv, 512] bfloat16 (or float16), stride(-1) == 1.",
    physical_layout="per token and kv head: 512 bf16 values (V4: 448 NoPE + 64 RoPE; all of them are V).",
)
"""Plain 16-bit cache, ``d_qk = 512`` (V4 without quantization): ``bytes_per_token = 1024``."""

FP8_PER_TENSOR = KVFormat(
    name="FP8",
    d_qk=576,
    d_v=512,
    bytes_per_token=576,
    element_bytes=1,
    token_stride_bytes=576,
    block_split=False,
    block_align=1,
    quantized=True,
    scale_tile=None,
    nominal_layout="[num_blocks, B, h_kv, 576] float8_e4m3fn (vLLM stores it as uint8), stride(-1) == 1.",
    physical_layout="per token and kv head: 576 float8_e4m3fn codes; one fp32 scale for the whole tensor "
    "passed separately (descale_k): x = fp32(e4m3) * scale.",
    aliases=("FP8", "FP8_E4M3", "FP8_PER_TENSOR", "DENSE_FP8"),
)
"""Plain per-tensor-scaled e4m3 cache (vLLM/SGLang ``fp8`` cache dtype), 576 bytes per token."""

KNOWN_FORMATS: tuple[KVFormat, ...] = (V32_FP8, MODEL1_FP8, BF16, BF16_D512, FP8_PER_TENSOR)
"""Every format :func:`detect_format` returns."""

# Layouts FlashMLA defines that this package does not serve: (d_qk, bytes/token) -> description.
_UNSUPPORTED_BY_BYTES: dict[tuple[int, int], str] = {
    (512, 528): "V4.1 FP8 (512 e4m3 + 16 ue8m0 per token) or V3.2-no-RoPE (512 e4m3 + 4 fp32 per token)",
    (512, 288): "V4.1 FP4 (256 B e2m1 + 32 e4m3 scales per token; FlashMLA takes it as extra_k_cache only)",
}
_UNSUPPORTED_BY_NAME: dict[str, str] = {
    "V32_NO_ROPE": "V3.2-no-RoPE (528 B/token)",
    "V41": "V4.1 FP8 (528 B/token)",
    "V41_FP8": "V4.1 FP8 (528 B/token)",
    "V4.1": "V4.1 FP8 (528 B/token)",
    "V41_FP4": "V4.1 FP4 (288 B/token)",
}


def _known_list() -> str:
    return "; ".join(f.describe() for f in KNOWN_FORMATS)


def bytes_per_token_of(k_cache) -> int:
    """Nominal bytes per token of a cache tensor: ``k_cache.shape[-1] * k_cache.element_size()``."""
    if not hasattr(k_cache, "shape") or k_cache.dim() == 0:
        raise InvalidArgumentError("k_cache must be a tensor with at least one dim.")
    return int(k_cache.shape[-1]) * int(k_cache.element_size())


def _check_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{name} must be an int, got {type(value).__name__} {value!r}.")
    return value


def detect_format(d_qk: int, bytes_per_token: int, kv_format: str | None = None) -> KVFormat:
    """The :class:`KVFormat` of a cache, from the query head dim and the cache's bytes per token.

    Args:
        d_qk: ``q.shape[-1]`` (576 or 512).
        bytes_per_token: ``k_cache.shape[-1] * k_cache.element_size()`` (see :func:`bytes_per_token_of`).
        kv_format: optional name forcing the format, case-insensitive: ``"V32"`` (``"V32_FP8"``),
            ``"MODEL1"`` / ``"V4"`` (``"MODEL1_FP8"``), ``"BF16"`` (picks the 576 or 512 variant by
            ``d_qk``), ``"FP8"`` (per-tensor e4m3). It must agree with ``d_qk`` and ``bytes_per_token``.

    Raises:
        InvalidArgumentError: no known layout has this ``(d_qk, bytes_per_token)``, the name is unknown,
            or the named format disagrees with the sizes.
        UnsupportedError: the pair (or name) is a FlashMLA layout this package does not serve
            (V4.1 FP8/FP4, V3.2-no-RoPE).
    """
    d_qk = _check_int("d_qk", d_qk)
    bytes_per_token = _check_int("bytes_per_token", bytes_per_token)
    if kv_format is not None:
        if not isinstance(kv_format, str):
            raise InvalidArgumentError(f"kv_format must be a str or None, got {type(kv_format).__name__}.")
        key = kv_format.strip().upper().replace("-", "_")
        if key in _UNSUPPORTED_BY_NAME:
            raise UnsupportedError(
                f"kv_format={kv_format!r} names {_UNSUPPORTED_BY_NAME[key]}, which OpenMLA does not serve yet; "
                f"supported formats: {_known_list()}."
            )
        candidates = [f for f in KNOWN_FORMATS if key in f.aliases]
        if not candidates:
            names = sorted({a for f in KNOWN_FORMATS for a in f.aliases[:2]})
            raise InvalidArgumentError(
                f"kv_format={kv_format!r} is not a KV cache format; expected one of {', '.join(names)} "
                f"(case-insensitive; 'V4' is an alias of 'MODEL1'), or None to detect it from "
                f"(d_qk, bytes_per_token)."
            )
        for fmt in candidates:
            if fmt.d_qk == d_qk and fmt.bytes_per_token == bytes_per_token:
                return fmt
        expected = " or ".join(f"(d_qk={f.d_qk}, {f.bytes_per_token} B/token)" for f in candidates)
        raise InvalidArgumentError(
            f"kv_format={kv_format!r} needs {expected}, but got d_qk={d_qk} and bytes_per_token={bytes_per_token} "
            f"(k_cache.shape[-1] * element_size)."
        )
    for fmt in KNOWN_FORMATS:
        if fmt.d_qk == d_qk and fmt.bytes_per_token == bytes_per_token:
            return fmt
    if (d_qk, bytes_per_token) in _UNSUPPORTED_BY_BYTES:
        raise UnsupportedError(
            f"(d_qk={d_qk}, bytes_per_token={bytes_per_token}) is "
            f"{_UNSUPPORTED_BY_BYTES[(d_qk, bytes_per_token)]}, which OpenMLA does not serve yet; "
            f"supported formats: {_known_list()}."
        )
    raise InvalidArgumentError(
        f"no known KV cache layout has (d_qk={d_qk}, bytes_per_token={bytes_per_token}); bytes_per_token is "
        f"k_cache.shape[-1] * k_cache.element_size(). Known layouts: {_known_list()}. "
        f"Check q.shape[-1] and the cache's last dim and dtype (a MODEL1 cache is viewed as [.., B, 1, 584] "
        f"bytes, a V3.2 cache as [.., B, 1, 656] bytes)."
    )
