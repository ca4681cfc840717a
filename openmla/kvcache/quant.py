"""Byte-exact quantizers and dequantizers for the FP8 KV cache formats, in plain PyTorch.

Everything here runs on CPU and CUDA tensors alike (no Python loops over elements). Byte layouts
are those of :mod:`openmla.kvcache.formats`; all multi-byte fields are little-endian.

Scale rule of the per-tile formats (V3.2: tile 128 over dims 0..511; MODEL1: tile 64 over the 448
NoPE dims), for the values ``x`` of one tile of one token::

    s = 2 ** ceil(log2(max(amax(|x|) / 448, 1e-4)))      # amax / 448 computed in fp32
    code = float8_e4m3fn(x / s)                           # round to nearest even
    x' = bf16(fp32(code) * s)                             # dequantized value

``ceil(log2(.))`` is evaluated exactly (from the fp32 exponent), so ``s`` is the smallest power of two
``>= max(amax / 448, 1e-4)`` and ``|x / s| <= 448``. A tile whose values are all 0 gets
``s = 2^-13`` (the ``1e-4`` floor rounded up). A tile holding inf or NaN gets a non-finite scale
(V3.2 stores it as fp32 inf/NaN, MODEL1 as the e8m0 NaN byte 0xFF) and reads back as NaN.
"""

from __future__ import annotations

import sys

import torch

from .._runtime import InvalidArgumentError, UnsupportedError
from .formats import MODEL1_FP8, V32_FP8, KVFormat, bytes_per_token_of, detect_format

__all__ = [
    "quantize_v32",
    "dequantize_v32",
    "quantize_model1",
    "dequantize_model1",
    "model1_nominal_view",
    "model1_block_bytes",
    "quantize_fp8_per_tensor",
    "dequantize_fp8_per_tensor",
    "dequantize_kvcache",
    "abs_indices_to_cache_indices",
    "pow2_scale",
    "e8m0_to_float",
]

FP8_MAX = 448.0
"""Largest finite ``float8_e4m3fn`` value."""
SCALE_FLOOR = 1e-4
"""Lower clamp of ``amax / 448`` before rounding the scale up to a power of two."""

_FLOAT_INPUTS = (torch.bfloat16, torch.float16, torch.float32)
_BYTE_DTYPES = (torch.uint8, torch.int8, torch.float8_e4m3fn)

_V32_NOPE = 512
_V32_TILE = 128
_V32_ROPE = 64
_M1_NOPE = 448
_M1_ROPE = 64
_M1_TILE = 64
_M1_TILES = _M1_NOPE // _M1_TILE  # 7
_M1_DATA = _M1_NOPE + 2 * _M1_ROPE  # 576 bytes per token in the data region
_M1_SCALE = 8  # bytes per token in the scale region (7 e8m0 + 1 pad)


def _require_little_endian() -> None:
    if sys.byteorder != "little":  # pragma: no cover - every supported host is little-endian
        raise UnsupportedError("the FP8 KV cache layouts store little-endian fields; this host is big-endian.")


def _check_float_input(kv: torch.Tensor, name: str, last: int) -> None:
    if not isinstance(kv, torch.Tensor):
        raise InvalidArgumentError(f"{name} must be a torch.Tensor, got {type(kv).__name__}.")
    if kv.dtype not in _FLOAT_INPUTS:
        raise InvalidArgumentError(f"{name} must be bfloat16, float16 or float32, got {kv.dtype}.")
    if kv.dim() < 1 or kv.shape[-1] != last:
        raise InvalidArgumentError(f"{name} must have last dim {last}, got shape {tuple(kv.shape)}.")


def _as_bytes(cache: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(cache, torch.Tensor):
        raise InvalidArgumentError(f"{name} must be a torch.Tensor, got {type(cache).__name__}.")
    if cache.dtype not in _BYTE_DTYPES:
        raise InvalidArgumentError(f"{name} must be uint8, int8 or float8_e4m3fn (raw bytes), got {cache.dtype}.")
    if cache.dim() >= 1 and cache.shape[-1] > 1 and cache.stride(-1) != 1:
        raise InvalidArgumentError(f"{name} must have stride(-1) == 1, got strides {tuple(cache.stride())}.")
    return cache if cache.dtype == torch.uint8 else cache.view(torch.uint8)


def _e4m3_bytes_to_float(codes: torch.Tensor) -> torch.Tensor:
    """uint8 e4m3 codes (any strides) -> fp32 values."""
    return codes.view(torch.float8_e4m3fn).float()


def _pow2_ceil_exponent(y: torch.Tensor) -> torch.Tensor:
    """int32 ``e`` with ``2^e`` the smallest power of two ``>= y`` (``y`` fp32, finite, > 0)."""
    mantissa, exponent = torch.frexp(y)  # y = mantissa * 2^exponent, mantissa in [0.5, 1)
    return exponent.to(torch.int32) - (mantissa == 0.5).to(torch.int32)


def _exp2_int(e: torch.Tensor) -> torch.Tensor:
    """fp32 ``2^e`` for int32 ``e`` in [-126, 127], built from the bits (exact on every device)."""
    return ((e + 127) << 23).to(torch.int32).view(torch.float32)


def _scale_exponent(amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(exponent int32, finite mask, y = max(amax/448, 1e-4) fp32) of the pow2 scale rule."""
    y = torch.clamp_min(amax.float() / FP8_MAX, SCALE_FLOOR)
    finite = torch.isfinite(y)
    safe = torch.where(finite, y, torch.ones_like(y))
    return _pow2_ceil_exponent(safe), finite, y


def pow2_scale(amax: torch.Tensor) -> torch.Tensor:
    """The reference scale ``2^ceil(log2(max(amax / 448, 1e-4)))`` as fp32, elementwise.

    ``amax`` is the per-tile max of ``|x|`` (any float dtype, any shape). Exact: the result is the
    smallest power of two ``>= max(fp32(amax) / 448, 1e-4)``. Non-finite ``amax`` gives inf/NaN.
    """
    e, finite, y = _scale_exponent(amax)
    return torch.where(finite, _exp2_int(e), y)


def e8m0_to_float(scale_bytes: torch.Tensor) -> torch.Tensor:
    """``float8_e8m0fnu`` bytes (uint8) -> fp32 ``2^(byte - 127)``; byte 255 is NaN, byte 0 is 2^-127."""
    e = scale_bytes.to(torch.int32)
    bits = torch.where(e == 0, torch.full_like(e, 0x00400000), e << 23)  # 2^-127 is an fp32 subnormal
    bits = torch.where(e == 255, torch.full_like(e, 0x7FC00000), bits)
    return bits.view(torch.float32)


# --------------------------------------------------------------------------------------------------
# V3.2: 656 bytes per token
# --------------------------------------------------------------------------------------------------


def quantize_v32(kv: torch.Tensor) -> torch.Tensor:
    """Pack keys into the V3.2 FP8 cache layout, byte-exact with the reference rule.

    Args:
        kv: ``[num_blocks, B, 1, 576]`` (any leading dims work) bfloat16, float16 or float32; dims
            0..511 are the latent part, 512..575 the RoPE part.

    Returns:
        uint8 ``[..., 656]``, contiguous. Per token: bytes ``[0, 512)`` e4m3 codes of dims 0..511
        (``code = e4m3(x / s_t)``), ``[512, 528)`` four little-endian fp32 scales ``s_t`` (tile ``t`` =
        dims ``128t..128t+127``, power of two, see module doc), ``[528, 656)`` dims 512..575 as
        little-endian bf16 (a bf16 input's bits unchanged; other dtypes rounded to nearest even).
    """
    _require_little_endian()
    _check_float_input(kv, "kv", V32_FP8.d_qk)
    lead = kv.shape[:-1]
    nope = kv[..., :_V32_NOPE].float().reshape(*lead, _V32_NOPE // _V32_TILE, _V32_TILE)
    scale = pow2_scale(nope.abs().amax(dim=-1))  # fp32 [..., 4]
    codes = (nope / scale.unsqueeze(-1)).to(torch.float8_e4m3fn).view(torch.uint8).reshape(*lead, _V32_NOPE)
    scale_bytes = scale.contiguous().view(torch.uint8)  # [..., 16]
    rope_bytes = kv[..., _V32_NOPE:].to(torch.bfloat16).contiguous().view(torch.uint8)  # [..., 128]
    return torch.cat([codes, scale_bytes, rope_bytes], dim=-1)


def dequantize_v32(packed: torch.Tensor) -> torch.Tensor:
    """Read a V3.2 FP8 cache back to bf16 keys.

    Args:
        packed: ``[num_blocks, B, 1, 656]`` (any leading dims) uint8, int8 or float8_e4m3fn with
            ``stride(-1) == 1``; other strides are free (e.g. blocks padded: ``stride(0) > B * 656``).

    Returns:
        bfloat16 ``[..., 576]``: dims ``128t + i`` = ``bf16(fp32(e4m3 byte) * fp32 scale t)``, dims
        512..575 = the stored bf16 RoPE values.
    """
    _require_little_endian()
    raw = _as_bytes(packed, "packed")
    if raw.dim() < 1 or raw.shape[-1] != V32_FP8.bytes_per_token:
        raise InvalidArgumentError(
            f"a V3.2 FP8 cache has {V32_FP8.bytes_per_token} bytes per token; got shape {tuple(packed.shape)} "
            f"of {packed.dtype}."
        )
    lead = raw.shape[:-1]
    codes = _e4m3_bytes_to_float(raw[..., :_V32_NOPE]).reshape(*lead, _V32_NOPE // _V32_TILE, _V32_TILE)
    scale = raw[..., _V32_NOPE : _V32_NOPE + 16].contiguous().view(torch.float32)  # [..., 4]
    rope = raw[..., _V32_NOPE + 16 :].contiguous().view(torch.bfloat16)  # [..., 64]
    nope = (codes * scale.unsqueeze(-1)).reshape(*lead, _V32_NOPE).to(torch.bfloat16)
    return torch.cat([nope, rope], dim=-1)


# --------------------------------------------------------------------------------------------------
# MODEL1 (V4): block-split, 584 nominal bytes per token
# --------------------------------------------------------------------------------------------------


def model1_block_bytes(page_block_size: int) -> int:
    """Padded bytes of one MODEL1 page: ``ceil(B * 584 / 576) * 576``."""
    return MODEL1_FP8.block_bytes(page_block_size)


def quantize_model1(kv: torch.Tensor) -> torch.Tensor:
    """Pack keys into MODEL1 (V4) FP8 pages, byte-exact with the reference rule.

    Args:
        kv: ``[num_blocks, B, 1, 512]`` bfloat16, float16 or float32 (dims 0..447 NoPE, 448..511 RoPE).

    Returns:
        uint8 ``[num_blocks, model1_block_bytes(B)]``, contiguous; page ``p`` is row ``p``:

        * ``[i*576, i*576 + 448)``: e4m3 codes of token ``i``'s NoPE dims (``e4m3(x / s_j)``),
        * ``[i*576 + 448, i*576 + 576)``: token ``i``'s 64 RoPE dims as little-endian bf16,
        * ``[B*576 + 8i, B*576 + 8i + 7)``: ``float8_e8m0fnu`` scale bytes ``127 + log2(s_j)`` of token
          ``i``, tile ``j`` = NoPE dims ``64j..64j+63`` (0xFF = NaN for a non-finite tile),
        * ``B*576 + 8i + 7``: pad byte 0; ``[B*584, model1_block_bytes(B))``: padding, 0.

        :func:`model1_nominal_view` gives the ``[num_blocks, B, 1, 584]`` view the kernels take.
    """
    _require_little_endian()
    _check_float_input(kv, "kv", MODEL1_FP8.d_qk)
    if kv.dim() != 4 or kv.shape[2] != 1:
        raise InvalidArgumentError(f"kv must be [num_blocks, B, 1, 512] (h_kv == 1), got shape {tuple(kv.shape)}.")
    nb, bsz = kv.shape[0], kv.shape[1]
    if bsz == 0:
        raise InvalidArgumentError("kv must have page_block_size (dim 1) > 0.")
    block = model1_block_bytes(bsz)
    x = kv.reshape(nb, bsz, MODEL1_FP8.d_qk)
    nope = x[..., :_M1_NOPE].float().reshape(nb, bsz, _M1_TILES, _M1_TILE)
    e, finite, y = _scale_exponent(nope.abs().amax(dim=-1))  # [nb, B, 7]
    scale = torch.where(finite, _exp2_int(e), y)
    codes = (nope / scale.unsqueeze(-1)).to(torch.float8_e4m3fn).view(torch.uint8).reshape(nb, bsz, _M1_NOPE)
    rope = x[..., _M1_NOPE:].to(torch.bfloat16).contiguous().view(torch.uint8)  # [nb, B, 128]
    scale_bytes = torch.where(finite, e + 127, torch.full_like(e, 255)).to(torch.uint8)  # [nb, B, 7]

    out = torch.zeros(nb, block, dtype=torch.uint8, device=kv.device)
    out[:, : bsz * _M1_DATA] = torch.cat([codes, rope], dim=-1).reshape(nb, bsz * _M1_DATA)
    scale_region = out[:, bsz * _M1_DATA : bsz * (_M1_DATA + _M1_SCALE)].view(nb, bsz, _M1_SCALE)
    scale_region[..., :_M1_TILES] = scale_bytes
    return out


def model1_nominal_view(blocks: torch.Tensor, page_block_size: int) -> torch.Tensor:
    """The ``[num_blocks, B, 1, 584]`` view of MODEL1 pages that FlashMLA's API takes.

    Args:
        blocks: ``[num_blocks, >= B*584]`` uint8/int8/float8_e4m3fn pages (as from :func:`quantize_model1`),
            ``stride(1) == 1``; ``stride(0)`` is kept (the padded block size).
        page_block_size: ``B``, tokens per page.

    Returns:
        ``blocks.as_strided((num_blocks, B, 1, 584), (blocks.stride(0), 584, 584, 1))`` over the same
        storage and dtype: nominal rows of 584 bytes that cover each page's ``B*584`` used bytes.
    """
    _as_bytes(blocks, "blocks")
    if blocks.dim() != 2:
        raise InvalidArgumentError(f"blocks must be [num_blocks, block_bytes], got shape {tuple(blocks.shape)}.")
    bpt = MODEL1_FP8.bytes_per_token
    model1_block_bytes(page_block_size)  # validates page_block_size
    used = page_block_size * bpt
    if blocks.shape[1] < used:
        raise InvalidArgumentError(
            f"MODEL1 pages of {page_block_size} tokens need at least {used} bytes per block "
            f"(padded: {model1_block_bytes(page_block_size)}), got blocks of shape {tuple(blocks.shape)}."
        )
    return blocks.as_strided(
        (blocks.shape[0], page_block_size, 1, bpt), (blocks.stride(0), bpt, bpt, 1), blocks.storage_offset()
    )


def _model1_pages(cache: torch.Tensor, page_block_size: int | None) -> tuple[torch.Tensor, int]:
    """uint8 ``[num_blocks, B*584]`` (the used bytes of each page, strides kept) and ``B``."""
    raw = _as_bytes(cache, "k_cache")
    bpt = MODEL1_FP8.bytes_per_token
    if raw.dim() == 4:
        nb, bsz, h_kv, last = raw.shape
        if h_kv != 1 or last != bpt:
            raise InvalidArgumentError(
                f"a MODEL1 cache view is [num_blocks, B, 1, {bpt}]; got shape {tuple(cache.shape)} of {cache.dtype}."
            )
        if page_block_size is not None and page_block_size != bsz:
            raise InvalidArgumentError(f"page_block_size={page_block_size} disagrees with k_cache.shape[1] = {bsz}.")
        if bsz > 1 and raw.stride(1) != bpt:
            raise InvalidArgumentError(
                f"a MODEL1 cache view must have stride(1) == {bpt} (one page is one run of bytes); got strides "
                f"{tuple(raw.stride())}. Build it with model1_nominal_view()."
            )
        if nb > 1 and raw.stride(0) < bsz * bpt:
            raise InvalidArgumentError(
                f"MODEL1 pages of {bsz} tokens span {bsz * bpt} bytes, so stride(0) must be >= that "
                f"(padded: {model1_block_bytes(bsz)}); got strides {tuple(raw.stride())}."
            )
        if bsz == 0:
            raise InvalidArgumentError("k_cache must have page_block_size (dim 1) > 0.")
        pages = raw.as_strided((nb, bsz * bpt), (raw.stride(0), 1), raw.storage_offset())
        return pages, bsz
    if raw.dim() == 2:
        if page_block_size is None:
            raise InvalidArgumentError("page_block_size is required when k_cache is [num_blocks, block_bytes].")
        model1_block_bytes(page_block_size)  # validates it
        if raw.shape[1] < page_block_size * bpt:
            raise InvalidArgumentError(
                f"MODEL1 pages of {page_block_size} tokens need at least {page_block_size * bpt} bytes per block, "
                f"got shape {tuple(cache.shape)}."
            )
        return raw[:, : page_block_size * bpt], page_block_size
    raise InvalidArgumentError(
        f"k_cache must be MODEL1 pages [num_blocks, block_bytes] or their view [num_blocks, B, 1, {bpt}]; "
        f"got shape {tuple(cache.shape)}."
    )


def dequantize_model1(cache: torch.Tensor, page_block_size: int | None = None) -> torch.Tensor:
    """Read MODEL1 (V4) FP8 pages back to bf16 keys.

    Args:
        cache: either the nominal view ``[num_blocks, B, 1, 584]`` (``stride(1) == 584``, any
            ``stride(0) >= B*584``), or the pages ``[num_blocks, >= B*584]``; uint8, int8 or
            float8_e4m3fn.
        page_block_size: ``B``; required for the 2-D form, checked against ``shape[1]`` for the view.

    Returns:
        bfloat16 ``[num_blocks, B, 1, 512]``: NoPE dim ``64j + k`` of token ``i`` is
        ``bf16(e4m3 at byte i*576 + 64j + k) * bf16(2^(e - 127))`` with ``e`` the byte at ``B*576 + 8i + j``,
        dims 448..511 the bf16 RoPE values at ``i*576 + 448``. Padding and pad bytes are ignored.
    """
    _require_little_endian()
    pages, bsz = _model1_pages(cache, page_block_size)
    nb = pages.shape[0]
    data = pages[:, : bsz * _M1_DATA].reshape(nb, bsz, _M1_DATA)
    scales = e8m0_to_float(pages[:, bsz * _M1_DATA :].reshape(nb, bsz, _M1_SCALE)[..., :_M1_TILES])
    codes = _e4m3_bytes_to_float(data[..., :_M1_NOPE]).reshape(nb, bsz, _M1_TILES, _M1_TILE)
    nope = (codes * scales.unsqueeze(-1)).reshape(nb, bsz, _M1_NOPE).to(torch.bfloat16)
    rope = data[..., _M1_NOPE:].contiguous().view(torch.bfloat16)
    return torch.cat([nope, rope], dim=-1).unsqueeze(2)


# --------------------------------------------------------------------------------------------------
# Per-tensor FP8 (vLLM / SGLang "fp8" cache dtype)
# --------------------------------------------------------------------------------------------------


def _scalar_scale(scale, like: torch.Tensor, name: str):
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise InvalidArgumentError(f"{name} must hold one value (per-tensor), got shape {tuple(scale.shape)}.")
        if not scale.is_floating_point():
            raise InvalidArgumentError(f"{name} must be a floating tensor, got {scale.dtype}.")
        return scale.to(device=like.device, dtype=torch.float32).reshape(())
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise InvalidArgumentError(f"{name} must be a float or a one-element tensor, got {type(scale).__name__}.")
    scale = float(scale)
    if not (scale > 0.0 and scale < float("inf")):
        raise InvalidArgumentError(f"{name} must be a finite positive number, got {scale}.")
    return scale


def quantize_fp8_per_tensor(x: torch.Tensor, scale, saturate: bool = True) -> torch.Tensor:
    """``float8_e4m3fn(x / scale)``: the plain per-tensor FP8 cache (576 bytes per token for MLA).

    Args:
        x: any shape, bfloat16/float16/float32 (e.g. ``[num_blocks, B, h_kv, 576]``).
        scale: the per-tensor scale (float or one-element tensor); the cache stores ``x / scale``.
        saturate: clamp ``x / scale`` to ``[-448, 448]`` before the cast (as vLLM's cache writers do),
            so out-of-range values and infinities become +-448; NaN stays NaN (code 0x7F/0xFF).

    Returns:
        float8_e4m3fn tensor of ``x``'s shape (``.view(torch.uint8)`` gives the bytes).
    """
    if not isinstance(x, torch.Tensor) or x.dtype not in _FLOAT_INPUTS:
        raise InvalidArgumentError(f"x must be a bfloat16, float16 or float32 tensor, got {getattr(x, 'dtype', x)}.")
    # one fp32 working copy, scaled and clamped in place (caches run to many GB)
    y = x.to(torch.float32, copy=True).div_(_scalar_scale(scale, x, "scale"))
    if saturate:
        y.clamp_(-FP8_MAX, FP8_MAX)
    return y.to(torch.float8_e4m3fn)


def dequantize_fp8_per_tensor(cache_fp8: torch.Tensor, descale, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``fp32(cache_fp8) * descale`` for a per-tensor FP8 cache (FlashMLA's ``descale_k``).

    Args:
        cache_fp8: float8_e4m3fn, or uint8/int8 holding e4m3 bytes, any shape and strides.
        descale: the per-tensor scale (float or one-element tensor), the same number as ``scale`` in
            :func:`quantize_fp8_per_tensor`.
        out_dtype: dtype of the result (the product is computed in fp32).

    Returns:
        ``out_dtype`` tensor of ``cache_fp8``'s shape.
    """
    if not isinstance(cache_fp8, torch.Tensor) or cache_fp8.dtype not in _BYTE_DTYPES:
        raise InvalidArgumentError(
            f"cache_fp8 must be float8_e4m3fn (or uint8/int8 bytes), got {getattr(cache_fp8, 'dtype', cache_fp8)}."
        )
    values = cache_fp8.view(torch.float8_e4m3fn).float()
    return (values * _scalar_scale(descale, cache_fp8, "descale")).to(out_dtype)


# --------------------------------------------------------------------------------------------------
# Dispatch and index helpers
# --------------------------------------------------------------------------------------------------


def dequantize_kvcache(
    k_cache: torch.Tensor, d_qk: int, kv_format: str | KVFormat | None = None, descale=None
) -> torch.Tensor:
    """Any supported cache -> plain keys ``[num_blocks, B, h_kv, d_qk]``, for references and tests.

    The format comes from :func:`~openmla.kvcache.formats.detect_format` (``kv_format`` may name it, or be
    a :class:`KVFormat`). V3.2 and MODEL1 give bfloat16 (their dequantized values are exact in bf16);
    BF16 caches are returned as they are; the per-tensor FP8 cache needs ``descale`` and gives fp32.
    """
    fmt = kv_format if isinstance(kv_format, KVFormat) else detect_format(d_qk, bytes_per_token_of(k_cache), kv_format)
    if fmt.name == "V32_FP8":
        return dequantize_v32(k_cache)
    if fmt.name == "MODEL1_FP8":
        return dequantize_model1(k_cache)
    if fmt.name == "FP8":
        if descale is None:
            raise InvalidArgumentError("a per-tensor FP8 cache needs descale= (FlashMLA's descale_k).")
        return dequantize_fp8_per_tensor(k_cache, descale)
    return k_cache


def abs_indices_to_cache_indices(
    abs_indices: torch.Tensor, block_table: torch.Tensor, page_block_size: int
) -> torch.Tensor:
    """Token positions within each sequence -> slot indices into the paged cache (sparse decode's ``indices``).

    Args:
        abs_indices: int32/int64 ``[b, s_q, topk]`` (any dims after the batch dim): position of a token in
            sequence ``b``, or -1 for "no token".
        block_table: int32/int64 ``[b, max_blocks]``: physical page of each logical page of a sequence.
        page_block_size: ``B``, tokens per page.

    Returns:
        int32 of ``abs_indices``' shape: ``block_table[b][a // B] * B + a % B`` for each entry ``a >= 0``,
        ``-1`` where ``a == -1``.

    Raises:
        InvalidArgumentError: an entry is ``< -1`` or past the block table (``a // B >= max_blocks``), or a
            slot does not fit int32. Checking reads the values (a device sync on CUDA).
    """
    for name, t in (("abs_indices", abs_indices), ("block_table", block_table)):
        if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int32, torch.int64):
            raise InvalidArgumentError(f"{name} must be an int32 or int64 tensor, got {getattr(t, 'dtype', t)}.")
    if isinstance(page_block_size, bool) or not isinstance(page_block_size, int) or page_block_size <= 0:
        raise InvalidArgumentError(f"page_block_size must be a positive int, got {page_block_size!r}.")
    if abs_indices.dim() < 1 or block_table.dim() != 2 or block_table.shape[0] != abs_indices.shape[0]:
        raise InvalidArgumentError(
            f"abs_indices must be [b, ...] and block_table [b, max_blocks] with the same b; got shapes "
            f"{tuple(abs_indices.shape)} and {tuple(block_table.shape)}."
        )
    if block_table.device != abs_indices.device:
        raise InvalidArgumentError(
            f"abs_indices and block_table must be on one device, got {abs_indices.device} and {block_table.device}."
        )
    a = abs_indices.long()
    valid = a != -1
    pos = torch.where(valid, a, torch.zeros_like(a))
    page = pos // page_block_size
    max_blocks = block_table.shape[1]
    bad = (a < -1) | (page >= max_blocks)
    if bool(bad.any()):
        first = a[bad][0].item()
        raise InvalidArgumentError(
            f"abs_indices holds {first}, which is neither -1 nor a position inside the block table "
            f"(0 <= a < max_blocks * page_block_size = {max_blocks * page_block_size})."
        )
    batch = torch.arange(a.shape[0], device=a.device).view(-1, *([1] * (a.dim() - 1)))
    slot = block_table.long()[batch, page] * page_block_size + pos % page_block_size
    slot = torch.where(valid, slot, torch.full_like(slot, -1))
    if slot.numel() and int(slot.max().item()) > 2**31 - 1:
        raise InvalidArgumentError("a cache slot index exceeds int32 (num_blocks * page_block_size > 2^31 - 1).")
    return slot.to(torch.int32)
