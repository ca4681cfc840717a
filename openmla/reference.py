"""The specification in code: fp32 PyTorch twins of the public ops, with FlashMLA's semantics.

Every public op in :mod:`openmla.api` has a function here with the same signature. They are slow,
simple and exact (fp32 arithmetic on upcast inputs) and run on any device, CPU included. The GPU
kernels are tested against them; ``OPENMLA_BACKEND=reference`` serves calls from them.

Conventions shared by all ops:

* ``lse`` is the natural-log log-sum-exp of the scaled scores, fp32.
* A query row with nothing to attend (``cache_seqlens == 0``, or every key causally masked) gives
  ``out = 0`` and ``lse = +inf``.
* Cache slots past ``cache_seqlens`` are never read: NaN there never reaches the output, and
  block-table entries past a sequence's last page may hold garbage.
* Sparse decoding reads only the slots its valid indices name; an invalid index (``-1``, or any value
  outside the cache) is masked, never dereferenced.
* Per-tensor FP8 inputs (dense decoding: an e4m3 cache, and optionally an e4m3 q) are read as
  ``x.float() * descale``; the output is bf16 when q is e4m3.
"""

from __future__ import annotations

import math

import torch

__all__ = ["dense_decode", "sparse_decode", "flash_mla_with_kvcache"]


def _gather_paged(k_cache: torch.Tensor, block_row: torch.Tensor, s_k: int) -> torch.Tensor:
    """The first ``s_k`` tokens of one sequence, [s_k, h_kv, d], read only through valid pages."""
    page_block_size = k_cache.shape[1]
    num_pages = (s_k + page_block_size - 1) // page_block_size
    pages = block_row[:num_pages].long()
    return k_cache[pages].reshape(num_pages * page_block_size, *k_cache.shape[2:])[:s_k]


def _descaled(x: torch.Tensor, descale, name: str) -> torch.Tensor:
    """An e4m3 tensor (float8_e4m3fn, or its bytes as uint8/int8) read back: ``x.float() * descale``, fp32."""
    from ._runtime import InvalidArgumentError

    if descale is None:
        raise InvalidArgumentError(f"{name}: got None; expected the per-tensor fp32 scale of the FP8 tensor it reads.")
    d = torch.as_tensor(descale, dtype=torch.float32, device=x.device)
    if d.numel() != 1:
        raise InvalidArgumentError(f"{name}: got shape {tuple(d.shape)}; expected one value (per-tensor).")
    return x.view(torch.float8_e4m3fn).float() * d.reshape(())


def dense_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int,
    softmax_scale: float | None = None,
    causal: bool = False,
    descale_q: torch.Tensor | float | None = None,
    descale_k: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense MLA decoding over a paged KV cache, in fp32.

    Args:
        q: [b, s_q, h_q, d] query (bf16, fp16 or fp32), or float8_e4m3fn with ``descale_q``.
        k_cache: [num_blocks, page_block_size, h_kv, d]; V is the first ``head_dim_v`` dims of K. bf16,
            fp16 or fp32, or a per-tensor FP8 cache (float8_e4m3fn, or its bytes as uint8/int8) with
            ``descale_k``.
        block_table: [b, max_blocks] int32, physical page of each logical page of a sequence.
        cache_seqlens: [b] int32, tokens in each sequence (may be 0).
        head_dim_v: dims of V (512 for DeepSeek).
        softmax_scale: defaults to ``d ** -0.5``.
        causal: for ``s_q > 1``, query token ``i`` sees keys ``j <= s_k - s_q + i`` (bottom-right
            aligned); ignored when ``s_q == 1``.
        descale_q, descale_k: per-tensor scales (fp32 one-element tensors, or floats) of an e4m3 q and an
            FP8 cache: values are read as ``x.float() * descale`` (only the cache slots used are read).

    Returns:
        out: [b, s_q, h_q, head_dim_v] in q's dtype (bf16 when q is e4m3); lse: [b, h_q, s_q] fp32
        natural log.
    """
    b, s_q, h_q, d = q.shape
    h_kv = k_cache.shape[2]
    group = h_q // h_kv
    scale = d**-0.5 if softmax_scale is None else float(softmax_scale)
    out_dtype = q.dtype
    if q.dtype == torch.float8_e4m3fn:
        q, out_dtype = _descaled(q, descale_q, "descale_q"), torch.bfloat16
    kv_fp8 = is_byte_cache(k_cache)
    out = torch.zeros(b, s_q, h_q, head_dim_v, dtype=torch.float32, device=q.device)
    lse = torch.full((b, h_q, s_q), math.inf, dtype=torch.float32, device=q.device)
    seqlens = cache_seqlens.tolist()
    for i in range(b):
        s_k = int(seqlens[i])
        if s_k == 0:
            continue
        k = _gather_paged(k_cache, block_table[i], s_k)  # [s_k, h_kv, d]
        k = _descaled(k, descale_k, "descale_k") if kv_fp8 else k.float()
        # query head h uses KV head h // group: group the heads instead of copying K per head
        qi = q[i].float().view(s_q, h_kv, group, d)
        scores = torch.einsum("qcgd,kcd->cgqk", qi, k).reshape(h_q, s_q, s_k) * scale  # [h_q, s_q, s_k]
        if causal and s_q > 1:
            rows = torch.arange(s_q, device=q.device)[:, None]
            cols = torch.arange(s_k, device=q.device)[None, :]
            scores = scores.masked_fill(cols > rows + (s_k - s_q), -math.inf)
        row_lse = torch.logsumexp(scores, dim=-1)  # [h_q, s_q]
        empty = torch.isneginf(row_lse)
        probs = torch.exp(scores - row_lse[..., None].masked_fill(empty[..., None], 0.0))
        probs = probs.masked_fill(empty[..., None], 0.0)
        out[i] = torch.einsum("cgqk,kcd->qcgd", probs.view(h_kv, group, s_q, s_k), k[..., :head_dim_v]).reshape(
            s_q, h_q, head_dim_v
        )
        lse[i] = row_lse.masked_fill(empty, math.inf)
    return out.to(out_dtype), lse


_BYTE_DTYPES = (torch.uint8, torch.int8, torch.float8_e4m3fn)


def is_byte_cache(k_cache: torch.Tensor) -> bool:
    """True for caches held as raw bytes (uint8, int8, float8_e4m3fn): the FP8 layouts."""
    return k_cache.dtype in _BYTE_DTYPES


def sparse_fp8_format(k_cache: torch.Tensor, d_qk: int, kv_format: str | None = None):
    """The :class:`~openmla.kvcache.KVFormat` of an FP8 cache held as bytes, among those sparse decoding reads.

    Raises :class:`~openmla.InvalidArgumentError` for a byte size no layout has (or a 16-bit layout held
    as bytes) and :class:`~openmla.UnsupportedError` for layouts not served (per-tensor FP8, V4.1).
    """
    from ._runtime import InvalidArgumentError, UnsupportedError
    from .kvcache import bytes_per_token_of, detect_format

    fmt = detect_format(d_qk, bytes_per_token_of(k_cache), kv_format)
    if fmt.name == "FP8":
        raise UnsupportedError(
            f"a per-tensor FP8 cache ({fmt.describe()}) needs a descale factor and serves dense decoding only; "
            "sparse decoding takes the V3.2 (656 B/token) or MODEL1 (584 B/token) FP8 layouts, or a bf16/fp16 cache."
        )
    if not fmt.quantized:
        raise InvalidArgumentError(
            f"k_cache: got a {k_cache.dtype} tensor of {fmt.bytes_per_token} bytes per token, the {fmt.name} layout; "
            f"expected a {fmt.name.lower()}/fp16 tensor for that layout, or bytes of an FP8 layout."
        )
    return fmt


def _gather_keys(k_cache: torch.Tensor, slots: torch.Tensor, d_qk: int, kv_format: str | None) -> torch.Tensor:
    """Keys of cache slots ``slots`` (int64 [n], all valid) as fp32 [n, d_qk]; only those slots are read.

    16-bit and fp32 caches are read as they are; FP8 caches are dequantized (V3.2: the gathered 656-byte
    records only; MODEL1: whole pages, its records are not per token).
    """
    page_block_size = k_cache.shape[1]
    pages, offsets = slots // page_block_size, slots % page_block_size
    if not is_byte_cache(k_cache):
        return k_cache[pages, offsets, 0].float()
    from .kvcache import dequantize_model1, dequantize_v32

    fmt = sparse_fp8_format(k_cache, d_qk, kv_format)
    if fmt.name == "V32_FP8":
        return dequantize_v32(k_cache[pages, offsets, 0]).float()
    return dequantize_model1(k_cache)[pages, offsets, 0].float()


def _scope_keys(
    k_cache: torch.Tensor, indices: torch.Tensor, length: int | None, d_qk: int, kv_format: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One scope (main or extra) of one request: keys fp32 [s_q, topk, d_qk] and validity bool [s_q, topk].

    A position is valid when it is before ``length`` (``None``: all positions) and its index names a slot
    of the cache, ``0 <= idx < num_blocks * page_block_size``. Invalid positions get all-zero keys, so
    NaN in slots they might name never reaches the output; valid slots are used as they are.
    """
    idx = indices.long()  # [s_q, topk]
    num_slots = k_cache.shape[0] * k_cache.shape[1]
    valid = (idx >= 0) & (idx < num_slots)
    if length is not None:
        valid &= torch.arange(idx.shape[-1], device=idx.device)[None, :] < length
    keys = torch.zeros(*idx.shape, d_qk, dtype=torch.float32, device=idx.device)
    if bool(valid.any()):
        keys[valid] = _gather_keys(k_cache, idx[valid], d_qk, kv_format)
    return keys, valid


def sparse_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    indices: torch.Tensor,
    head_dim_v: int,
    softmax_scale: float | None = None,
    attn_sink: torch.Tensor | None = None,
    topk_length: torch.Tensor | None = None,
    extra_k_cache: torch.Tensor | None = None,
    extra_indices_in_kvcache: torch.Tensor | None = None,
    extra_topk_length: torch.Tensor | None = None,
    kv_format: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-sparse MLA decoding (DeepSeek Sparse Attention), in fp32, with FlashMLA's semantics.

    Each query token attends to its own list of cache slots instead of a prefix of its sequence.

    Args:
        q: [b, s_q, h_q, d_qk] bf16, fp16 or fp32.
        k_cache: [num_blocks, page_block_size, h_kv=1, last]: bf16/fp16/fp32 keys (``last == d_qk``), or an
            FP8 layout as bytes (uint8/int8/float8_e4m3fn): V3.2 (656 B/token, ``d_qk`` 576) or MODEL1
            (584 B/token nominal, ``d_qk`` 512), told apart by :func:`openmla.kvcache.detect_format`.
            V is the first ``head_dim_v`` dims of the (dequantized) key.
        indices: int32 [b, s_q, topk]; entry ``page * page_block_size + offset`` names a cache slot (the
            block table is folded in). Invalid entries are masked and never read: ``-1`` (FlashMLA's
            marker) and, as an OpenMLA extension, any value outside ``[0, num_blocks * page_block_size)``.
        head_dim_v: dims of V (512 for DeepSeek).
        softmax_scale: defaults to ``d_qk ** -0.5``.
        attn_sink: fp32 [h_q] or None: the output of head ``h`` is scaled by ``1 / (1 + exp(sink[h] - lse))``
            (lse unchanged); ``+inf`` gives out 0, ``-inf`` has no effect.
        topk_length: int32 [b] or None: only ``indices[i, :, :topk_length[i]]`` are used.
        extra_k_cache, extra_indices_in_kvcache, extra_topk_length: a second scope with its own cache
            (same format family, own page size), indices [b, s_q, extra_topk] and lengths [b]; its keys
            are appended after the main list (duplicates are not merged).
        kv_format: optional name of the FP8 layout (see :func:`openmla.kvcache.detect_format`).

    Returns:
        out: [b, s_q, h_q, head_dim_v] in q's dtype (bf16 in FlashMLA's FP8 path, which takes bf16 q);
        lse: [b, h_q, s_q] fp32, natural log of ``sum exp(q·k · scale)`` over valid keys. A row with
        no valid key gets ``out = 0`` and ``lse = +inf``.
    """
    b, s_q, h_q, d_qk = q.shape
    scale = d_qk**-0.5 if softmax_scale is None else float(softmax_scale)
    out = torch.zeros(b, s_q, h_q, head_dim_v, dtype=torch.float32, device=q.device)
    lse = torch.full((b, h_q, s_q), math.inf, dtype=torch.float32, device=q.device)
    lengths = None if topk_length is None else topk_length.tolist()
    extra_lengths = None if extra_topk_length is None else extra_topk_length.tolist()
    sink = None if attn_sink is None else attn_sink.float().to(q.device)
    for i in range(b):
        keys, valid = _scope_keys(k_cache, indices[i], None if lengths is None else lengths[i], d_qk, kv_format)
        if extra_k_cache is not None:
            extra_len = None if extra_lengths is None else extra_lengths[i]
            x_keys, x_valid = _scope_keys(extra_k_cache, extra_indices_in_kvcache[i], extra_len, d_qk, kv_format)
            keys, valid = torch.cat([keys, x_keys], dim=1), torch.cat([valid, x_valid], dim=1)
        scores = torch.einsum("thd,tnd->thn", q[i].float(), keys) * scale  # [s_q, h_q, n]
        scores = scores.masked_fill(~valid[:, None, :], -math.inf)
        row_lse = torch.logsumexp(scores, dim=-1)  # [s_q, h_q]
        empty = torch.isneginf(row_lse)
        probs = torch.exp(scores - row_lse.masked_fill(empty, 0.0)[..., None]).masked_fill(empty[..., None], 0.0)
        o = torch.einsum("thn,tnd->thd", probs, keys[..., :head_dim_v])
        if sink is not None:
            # 1 / (1 + exp(sink - lse)) = sigmoid(lse - sink): 0 for sink = +inf, 1 for sink = -inf
            factor = torch.sigmoid(row_lse - sink[None, :]).masked_fill(empty, 0.0)
            o = o * factor[..., None]
        out[i] = o
        lse[i] = row_lse.masked_fill(empty, math.inf).transpose(0, 1)
    return out.to(q.dtype), lse


def flash_mla_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor | None,
    cache_seqlens: torch.Tensor | None,
    head_dim_v: int,
    tile_scheduler_metadata=None,
    num_splits=None,
    softmax_scale: float | None = None,
    causal: bool = False,
    is_fp8_kvcache: bool | None = None,
    indices: torch.Tensor | None = None,
    attn_sink: torch.Tensor | None = None,
    extra_k_cache: torch.Tensor | None = None,
    extra_indices_in_kvcache: torch.Tensor | None = None,
    topk_length: torch.Tensor | None = None,
    extra_topk_length: torch.Tensor | None = None,
    kv_format: str | None = None,
    descale_q: torch.Tensor | None = None,
    descale_k: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference twin of :func:`openmla.flash_mla_with_kvcache` (scheduler arguments are ignored).

    ``indices`` given: :func:`sparse_decode` (``block_table``/``cache_seqlens`` unused, ``causal`` must be
    False); otherwise :func:`dense_decode` over a bf16/fp16/fp32 cache, or a per-tensor FP8 one
    (``is_fp8_kvcache``, or a byte cache) with ``descale_k`` (and ``descale_q`` for an e4m3 q).
    """
    from ._runtime import InvalidArgumentError

    if indices is not None:
        if descale_q is not None or descale_k is not None:
            raise InvalidArgumentError("descale_q, descale_k: given with indices; they serve dense decoding over a "
                                       "per-tensor FP8 cache only.")
        if causal:
            raise InvalidArgumentError(
                "causal: got True; expected False with indices (sparse decoding has no causal mask)."
            )
        return sparse_decode(q, k_cache, indices, head_dim_v, softmax_scale, attn_sink, topk_length, extra_k_cache,
                             extra_indices_in_kvcache, extra_topk_length, kv_format)
    sparse_only = (("attn_sink", attn_sink), ("extra_k_cache", extra_k_cache),
                   ("extra_indices_in_kvcache", extra_indices_in_kvcache), ("topk_length", topk_length),
                   ("extra_topk_length", extra_topk_length))
    given = [name for name, v in sparse_only if v is not None]
    if given:
        raise InvalidArgumentError(f"{', '.join(given)}: given without indices; these serve sparse decoding only.")
    if bool(is_fp8_kvcache) != is_byte_cache(k_cache) and is_fp8_kvcache is not None:
        raise InvalidArgumentError(f"is_fp8_kvcache: got {is_fp8_kvcache} with a {k_cache.dtype} k_cache.")
    return dense_decode(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal, descale_q,
                        descale_k)
