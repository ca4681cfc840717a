"""Writing new tokens into a paged KV cache: quantize (where the format needs it) and scatter to their slots.

:func:`write_kv` is the cache manager's write step of a decode or prefill step: ``kv [n, d_qk]`` (the
new tokens' latent + RoPE keys) goes to slots ``slot_mapping [n]`` (``page * page_block_size +
offset``, vLLM's convention) of ``k_cache [num_blocks, page_block_size, 1, bytes]``.

* V3.2 FP8 (656 bytes a token): one Triton program per token computes the four power-of-two tile
  scales, the e4m3 codes, and the bf16 RoPE bytes, and writes the record in place: for finite keys,
  byte for byte what :func:`openmla.kvcache.quantize_v32` produces (tests compare every byte).
* bf16/fp16 caches (a cast) and the per-tensor FP8 cache (``scale``: the cache stores the e4m3 codes
  of ``clamp(kv / scale, -448, 448)``, as :func:`openmla.kvcache.quantize_fp8_per_tensor`): one Triton
  program per token as well.

On a GPU (and under ``TRITON_INTERPRET=1``) nothing syncs with the host, so the write can sit in a
CUDA graph; plain CPU tensors take a PyTorch path with the same result. A slot outside the cache
(``-1``, vLLM's padding marker, or any out-of-range value) is skipped, never written.

* MODEL1/V4 FP8 (pages given as their ``[num_blocks, B, 1, 584]`` view, :func:`model1_nominal_view`):
  one program per token writes its 448 e4m3 codes and 64 bf16 RoPE dims at ``576 * i`` of its page
  and its seven e8m0 tile scales (and the pad byte) at ``576 * B + 8 * i``: for finite keys, what
  :func:`openmla.kvcache.quantize_model1` produces, byte for byte.
"""

from __future__ import annotations

import torch

from .._runtime import InvalidArgumentError, UnsupportedError, interpret_mode, triton_available
from .formats import FP8_PER_TENSOR, MODEL1_FP8, V32_FP8, bytes_per_token_of, detect_format
from .quant import _model1_pages, quantize_fp8_per_tensor

if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _e4m3_codes(y):
        """``float8_e4m3fn`` bytes of fp32 ``y`` (|y| <= 448 or NaN), rounded to nearest even with integer
        and exact fp32 steps: the same bytes on a GPU and in the interpreter (whose fp8 cast rounds
        differently), and the same as PyTorch's cast."""
        bits = y.to(tl.uint32, bitcast=True)
        sign = (bits >> 24) & 0x80
        a = tl.abs(y)
        # normals (a >= 2^-6): round the 23-bit mantissa to 3 bits (ties to even), rebias 127 -> 7
        abits = a.to(tl.uint32, bitcast=True)
        rounded = (abits + 0x7FFFF + ((abits >> 20) & 1)) >> 20
        normal = rounded.to(tl.int32) - ((127 - 7) << 3)
        # subnormals: a multiple of 2^-9, rounded to nearest even by an fp32 add at integer granularity
        sub = ((a * 512.0 + 8388608.0) - 8388608.0).to(tl.int32)
        code = tl.where(a < 0.015625, sub, normal)
        code = tl.where(a != a, 0x7F, code)  # NaN
        return (code.to(tl.uint32) | sign).to(tl.uint8)

    @triton.jit
    def _bf16_rne(x):
        """fp32 ``x`` -> bf16, rounded to nearest even by integer steps (NaN stays NaN)."""
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(x != x, 0x7FC0, rounded)
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)

    @triton.jit
    def _write_v32_kernel(
        kv_ptr, slot_ptr, cache_ptr, stride_kv, stride_cb, stride_cp, num_slots, page_block_size,
        NOPE: tl.constexpr, TILE: tl.constexpr, ROPE: tl.constexpr,
    ):
        """One token: V3.2 record (512 e4m3 codes, 4 fp32 scales, 64 bf16 RoPE dims) into its slot."""
        tok = tl.program_id(0)
        slot = tl.load(slot_ptr + tok).to(tl.int64)
        if (slot >= 0) & (slot < num_slots):
            base = cache_ptr + (slot // page_block_size) * stride_cb + (slot % page_block_size) * stride_cp
            row = kv_ptr + tok.to(tl.int64) * stride_kv
            offs = tl.arange(0, NOPE)
            x = tl.load(row + offs).to(tl.float32)
            tiles = tl.reshape(x, [NOPE // TILE, TILE])
            amax = tl.max(tl.abs(tiles), axis=1)  # [4]
            # s = 2^ceil(log2(max(amax / 448, 1e-4))), exactly: from the fp32 bits of y (IEEE division)
            y = tl.maximum(tl.math.div_rn(amax, 448.0), 1e-4)
            bits = y.to(tl.int32, bitcast=True)
            e = ((bits >> 23) & 0xFF) - 127 + ((bits & 0x7FFFFF) != 0).to(tl.int32)
            finite = (bits & 0x7F800000) != 0x7F800000
            scale = tl.where(finite, ((e + 127) << 23).to(tl.float32, bitcast=True), y)
            inv = tl.where(finite, ((127 - e) << 23).to(tl.float32, bitcast=True), 1.0 / y)  # exact 2^-e
            codes = _e4m3_codes(tiles * inv[:, None])
            tl.store(base + offs, tl.reshape(codes, [NOPE]))
            scale_ptr = (base + NOPE).to(tl.pointer_type(tl.float32))
            tl.store(scale_ptr + tl.arange(0, NOPE // TILE), scale)
            offs_r = tl.arange(0, ROPE)
            rope = tl.load(row + NOPE + offs_r)
            if rope.dtype != tl.bfloat16:
                rope = _bf16_rne(rope.to(tl.float32))
            rope_ptr = (base + NOPE + 4 * (NOPE // TILE)).to(tl.pointer_type(tl.bfloat16))
            tl.store(rope_ptr + offs_r, rope)

    @triton.jit
    def _write_model1_kernel(
        kv_ptr, slot_ptr, page_ptr, stride_kv, stride_page, num_slots, page_block_size,
        NOPE: tl.constexpr, TILE: tl.constexpr, ROPE: tl.constexpr,
    ):
        """One token into its MODEL1 page: ``NOPE`` e4m3 codes and ``ROPE`` bf16 dims at ``(NOPE + 2 ROPE) * i``
        of the page, then ``NOPE / TILE`` e8m0 tile scales and a zero pad byte at ``(NOPE + 2 ROPE) * B + 8 i``
        (``i`` the token's offset in its page of ``B``)."""
        DATA: tl.constexpr = NOPE + 2 * ROPE
        TILES: tl.constexpr = NOPE // TILE
        tok = tl.program_id(0)
        slot = tl.load(slot_ptr + tok).to(tl.int64)
        if (slot >= 0) & (slot < num_slots):
            i = slot % page_block_size
            page = page_ptr + (slot // page_block_size) * stride_page
            row = kv_ptr + tok.to(tl.int64) * stride_kv
            # the NoPE dims padded to a power of two with zero tiles (their scales are not stored)
            offs = tl.arange(0, (TILES + 1) * TILE)
            x = tl.load(row + offs, mask=offs < NOPE, other=0.0).to(tl.float32)
            tiles = tl.reshape(x, [TILES + 1, TILE])
            amax = tl.max(tl.abs(tiles), axis=1)
            # s = 2^e, e = ceil(log2(max(amax / 448, 1e-4))), exactly (as in the V3.2 kernel)
            y = tl.maximum(tl.math.div_rn(amax, 448.0), 1e-4)
            bits = y.to(tl.int32, bitcast=True)
            e = ((bits >> 23) & 0xFF) - 127 + ((bits & 0x7FFFFF) != 0).to(tl.int32)
            finite = (bits & 0x7F800000) != 0x7F800000
            inv = tl.where(finite, ((127 - e) << 23).to(tl.float32, bitcast=True), 1.0 / y)  # exact 2^-e
            codes = _e4m3_codes(tiles * inv[:, None])
            data = page + i * DATA
            tl.store(data + offs, tl.reshape(codes, [(TILES + 1) * TILE]), mask=offs < NOPE)
            offs_r = tl.arange(0, ROPE)
            rope = tl.load(row + NOPE + offs_r)
            if rope.dtype != tl.bfloat16:
                rope = _bf16_rne(rope.to(tl.float32))
            tl.store((data + NOPE).to(tl.pointer_type(tl.bfloat16)) + offs_r, rope)
            # e8m0 scale bytes 127 + e (0xFF: a tile with inf or NaN reads back as NaN), then the pad byte 0
            offs_s = tl.arange(0, TILES + 1)
            scale_bytes = tl.where(finite, e + 127, 255)
            scale_bytes = tl.where(offs_s < TILES, scale_bytes, 0).to(tl.uint8)
            tl.store(page + page_block_size * DATA + i * (TILES + 1) + offs_s, scale_bytes)

    @triton.jit
    def _write_rows_kernel(
        kv_ptr, slot_ptr, cache_ptr, scale_ptr, stride_kv, stride_cb, stride_cp, num_slots, page_block_size,
        D: tl.constexpr, BLOCK_D: tl.constexpr, QUANT: tl.constexpr,
    ):
        """One token: ``D`` values into its slot, cast to the cache's dtype, or (``QUANT``) as the e4m3
        codes of ``clamp(x / scale, -448, 448)`` (IEEE division, round to nearest even)."""
        tok = tl.program_id(0)
        slot = tl.load(slot_ptr + tok).to(tl.int64)
        if (slot >= 0) & (slot < num_slots):
            dst = cache_ptr + (slot // page_block_size) * stride_cb + (slot % page_block_size) * stride_cp
            offs = tl.arange(0, BLOCK_D)
            mask = offs < D
            x = tl.load(kv_ptr + tok.to(tl.int64) * stride_kv + offs, mask=mask, other=0.0)
            if QUANT:
                y = tl.math.div_rn(x.to(tl.float32), tl.load(scale_ptr))
                y = tl.where(y != y, y, tl.minimum(tl.maximum(y, -448.0), 448.0))  # clamp, NaN kept
                tl.store(dst + offs, _e4m3_codes(y), mask=mask)
            elif cache_ptr.dtype.element_ty == tl.bfloat16 and x.dtype != tl.bfloat16:
                tl.store(dst + offs, _bf16_rne(x.to(tl.float32)), mask=mask)
            else:
                tl.store(dst + offs, x.to(cache_ptr.dtype.element_ty), mask=mask)


def _check_slots(slot_mapping: torch.Tensor, n: int, device: torch.device) -> None:
    if not isinstance(slot_mapping, torch.Tensor) or slot_mapping.dtype not in (torch.int32, torch.int64):
        raise InvalidArgumentError(
            f"slot_mapping must be an int32 or int64 tensor [n], got {getattr(slot_mapping, 'dtype', type(slot_mapping))}."
        )
    if slot_mapping.shape != (n,):
        raise InvalidArgumentError(f"slot_mapping must have shape [{n}] (one slot per token), got {tuple(slot_mapping.shape)}.")
    if slot_mapping.device != device:
        raise InvalidArgumentError(f"slot_mapping is on {slot_mapping.device}, the cache on {device}: put them together.")


def _flat_kv(kv: torch.Tensor, d_qk: int) -> torch.Tensor:
    if not isinstance(kv, torch.Tensor) or kv.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise InvalidArgumentError(f"kv must be a bf16, fp16 or fp32 tensor, got {getattr(kv, 'dtype', type(kv))}.")
    if kv.dim() == 3 and kv.shape[1] == 1:
        kv = kv[:, 0]
    if kv.dim() != 2 or kv.shape[1] != d_qk:
        raise InvalidArgumentError(
            f"kv must be [n, {d_qk}] (or [n, 1, {d_qk}]) for this cache format, got {tuple(kv.shape)}."
        )
    return kv if kv.stride(-1) == 1 else kv.contiguous()


def write_kv(
    k_cache: torch.Tensor,
    kv: torch.Tensor,
    slot_mapping: torch.Tensor,
    kv_format: str | None = None,
    scale: torch.Tensor | float | None = None,
) -> None:
    """Quantize ``kv`` as ``k_cache``'s format wants and write it to ``slot_mapping``'s slots, in place.

    Args:
        k_cache: ``[num_blocks, page_block_size, 1, bytes]``: V3.2 FP8 as uint8/int8/float8_e4m3fn bytes
            (656 a token), MODEL1 FP8 pages as their nominal view (584 a token, ``stride(1) == 584``), a
            bf16/fp16 cache (``d_qk`` elements a token), or a per-tensor FP8 cache (float8_e4m3fn, 576 a
            token, with ``scale``). Last dim contiguous.
        kv: ``[n, d_qk]`` (or ``[n, 1, d_qk]``) bf16/fp16/fp32, the new tokens' keys (latent, then RoPE).
        slot_mapping: int32/int64 ``[n]`` on the cache's device: ``page * page_block_size + offset``;
            values outside ``[0, num_blocks * page_block_size)`` (e.g. -1 for padding) are skipped. Slots
            must be distinct: two tokens naming one slot race, as in any scatter.
        kv_format: the layout's name when its byte size is ambiguous (see :func:`detect_format`).
        scale: per-tensor FP8 only: the cache stores ``kv / scale`` (a float, or an fp32 one-element tensor on
            the cache's device: pass the tensor when capturing a CUDA graph, a float is copied to the GPU).

    Raises:
        InvalidArgumentError: mismatched shapes, dtypes or devices, or ``scale`` given for (or missing
        from) the wrong format. UnsupportedError: a layout this function does not write (16-bit records
        given as bytes).
    """
    if not isinstance(k_cache, torch.Tensor) or k_cache.dim() != 4 or k_cache.shape[2] != 1:
        raise InvalidArgumentError(
            f"k_cache must be [num_blocks, page_block_size, 1, bytes] (one KV head, MLA), got "
            f"{tuple(getattr(k_cache, 'shape', ()))}."
        )
    if k_cache.stride(-1) != 1:
        raise InvalidArgumentError("k_cache's last dim must be contiguous.")
    byte_cache = k_cache.dtype in (torch.uint8, torch.int8, torch.float8_e4m3fn)
    d_qk = kv.shape[-1] if isinstance(kv, torch.Tensor) else -1
    fmt = detect_format(d_qk, bytes_per_token_of(k_cache), kv_format) if byte_cache else None
    if fmt is not None and fmt.name not in (V32_FP8.name, FP8_PER_TENSOR.name, MODEL1_FP8.name):
        raise UnsupportedError(f"write_kv does not write {fmt.describe()} caches as bytes; it writes V3.2 FP8, "
                               "MODEL1 FP8 and per-tensor FP8 byte caches, and bf16/fp16 caches given in their own "
                               "dtype (view this one as bf16/fp16).")
    flat = _flat_kv(kv, fmt.d_qk if fmt is not None else k_cache.shape[-1])
    n = flat.shape[0]
    _check_slots(slot_mapping, n, k_cache.device)
    if flat.device != k_cache.device:
        raise InvalidArgumentError(f"kv is on {flat.device}, the cache on {k_cache.device}: put them together.")
    num_blocks, page_block_size = k_cache.shape[0], k_cache.shape[1]
    num_slots = num_blocks * page_block_size
    if n == 0:
        return
    if fmt is not None and fmt.name in (V32_FP8.name, MODEL1_FP8.name) and scale is not None:
        raise InvalidArgumentError(f"scale applies to a per-tensor FP8 cache only; {fmt.describe()} records carry "
                                   "their own scales.")
    if fmt is None and scale is not None:
        raise InvalidArgumentError(f"scale applies to a per-tensor FP8 cache only; this cache is {k_cache.dtype}.")
    per_tensor = fmt is not None and fmt.name == FP8_PER_TENSOR.name
    if per_tensor and scale is None:
        raise InvalidArgumentError("a per-tensor FP8 cache needs scale= (the cache stores kv / scale).")
    if per_tensor:
        scale_t = torch.as_tensor(scale, dtype=torch.float32, device=k_cache.device).reshape(1)
    on_triton = triton_available() and (k_cache.device.type == "cuda" or interpret_mode())
    if not on_triton:
        _write_torch(k_cache, flat, slot_mapping, fmt, scale_t if per_tensor else None)
        return
    if fmt is None:
        cache = k_cache
        _write_rows_kernel[(n,)](
            flat, slot_mapping, cache, cache, flat.stride(0), cache.stride(0), cache.stride(1), num_slots,
            page_block_size, D=flat.shape[1], BLOCK_D=triton.next_power_of_2(flat.shape[1]), QUANT=False,
            num_warps=4,
        )
        return
    cache = k_cache.view(torch.uint8)
    if fmt.name == MODEL1_FP8.name:
        pages, _ = _model1_pages(k_cache, page_block_size)
        _write_model1_kernel[(n,)](
            flat, slot_mapping, pages, flat.stride(0), pages.stride(0), num_slots, page_block_size,
            NOPE=448, TILE=64, ROPE=64, num_warps=4,
        )
        return
    if per_tensor:
        _write_rows_kernel[(n,)](
            flat, slot_mapping, cache, scale_t, flat.stride(0), cache.stride(0), cache.stride(1), num_slots,
            page_block_size, D=flat.shape[1], BLOCK_D=triton.next_power_of_2(flat.shape[1]), QUANT=True,
            num_warps=4,
        )
        return
    if cache.stride(0) % 4 or cache.stride(1) % 4:
        raise InvalidArgumentError("the V3.2 cache's block and token strides must be multiples of 4 bytes "
                                   "(its fp32 scales are written in place).")
    _write_v32_kernel[(n,)](
        flat, slot_mapping, cache, flat.stride(0), cache.stride(0), cache.stride(1), num_slots, page_block_size,
        NOPE=512, TILE=128, ROPE=64, num_warps=4,
    )


def _write_torch(k_cache, flat, slot_mapping, fmt, scale) -> None:
    """The same writes in PyTorch, for CPU tensors where Triton does not run (selects the slots on the host)."""
    from .quant import quantize_v32

    num_slots = k_cache.shape[0] * k_cache.shape[1]
    keep = (slot_mapping >= 0) & (slot_mapping < num_slots)
    slots = slot_mapping[keep].long()
    rows = flat[keep]
    cache = k_cache.view(torch.uint8) if fmt is not None else k_cache
    if fmt is not None and fmt.name == MODEL1_FP8.name:
        _write_model1_torch(k_cache, rows, slots)
        return
    if fmt is None:
        values = rows.to(k_cache.dtype)
    elif fmt.name == FP8_PER_TENSOR.name:
        values = quantize_fp8_per_tensor(rows, scale).view(torch.uint8)
    else:
        values = quantize_v32(rows)
    blocks, offsets = slots // k_cache.shape[1], slots % k_cache.shape[1]
    cache[blocks, offsets, 0] = values


def _write_model1_torch(k_cache, rows, slots) -> None:
    """MODEL1 writes in PyTorch: each token quantized as a page of one (:func:`quantize_model1`), its data and
    scale bytes copied to where its page keeps them."""
    from .quant import quantize_model1

    bsz = k_cache.shape[1]
    pages, _ = _model1_pages(k_cache, bsz)
    one = quantize_model1(rows.reshape(-1, 1, 1, MODEL1_FP8.d_qk))  # [n, block bytes of a 1-token page]
    data, meta = MODEL1_FP8.bytes_per_token - 8, 8
    page, i = slots // bsz, slots % bsz
    cols = torch.arange(data, device=slots.device)
    pages[page[:, None], (i * data)[:, None] + cols] = one[:, :data]
    cols = torch.arange(meta, device=slots.device)
    pages[page[:, None], (bsz * data + i * meta)[:, None] + cols] = one[:, data : data + meta]


__all__ = ["write_kv"]
