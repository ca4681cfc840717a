"""Public functions with FlashMLA's names and conventions: validate, pick a backend, run.

Code written against ``flash_mla`` works unchanged with ``import openmla as flash_mla``. Exact
semantics of every op live in :mod:`openmla.reference`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

import torch

from . import reference
from ._runtime import InvalidArgumentError, aligned16, getenv
from .dispatch import Choice, choose_dense_decode, choose_sparse_decode
from .metadata import UNBOUNDED_OLD_FORM, FlashMLASchedMeta, plan_dense
from .ops.combine import fuse_combine
from .ops.launch import recording, scratch
from .replay import (
    MAX_REPLAYS,
    OLD_FORM_REPLAYS,
    NotReplayable,
    Replay,
    dense_signature,
    keep_old_form,
    old_form_signature,
    replay_enabled,
    sparse_signature,
)

__all__ = ["flash_mla_with_kvcache", "explain"]

_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _fail(arg: str, got: str, expected: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{arg}: got {got}; expected {expected}.")


def _check_tensor(name: str, t, dim: int, dtypes: tuple, device: torch.device | None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise _fail(name, type(t).__name__, f"a torch.Tensor of {dim} dims")
    if t.dim() != dim:
        raise _fail(name, f"shape {tuple(t.shape)} ({t.dim()} dims)", f"{dim} dims")
    if t.dtype not in dtypes:
        raise _fail(name, f"dtype {t.dtype}", " or ".join(str(d) for d in dtypes))
    if device is not None and t.device != device:
        raise _fail(name, f"a tensor on {t.device}", f"a tensor on q's device {device}")
    if t.numel() > 0 and t.stride(-1) != 1:
        raise _fail(name, f"strides {t.stride()}", "a contiguous last dimension (stride(-1) == 1)")
    return t


def _value_checks_enabled(planning: bool, device: torch.device) -> bool:
    mode = (getenv("OPENMLA_CHECK_VALUES") or "auto").strip().lower()
    if mode not in ("auto", "always", "never"):
        raise InvalidArgumentError(f"OPENMLA_CHECK_VALUES={mode!r}; expected 'auto', 'always' or 'never'.")
    if mode == "never" or not (planning or mode == "always"):
        return False
    # reading values back would break a CUDA-graph capture
    return not (device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def _check_values(block_table: torch.Tensor, cache_seqlens: torch.Tensor, page_block_size: int, num_blocks: int):
    """Typed errors for lengths the block table cannot hold and pages outside the cache (one device sync)."""
    covered = block_table.shape[1] * page_block_size
    bad_len = (cache_seqlens < 0) | (cache_seqlens > covered)
    pages_used = (cache_seqlens.clamp(min=0) + page_block_size - 1) // page_block_size
    cols = torch.arange(block_table.shape[1], device=block_table.device)
    used = cols[None, :] < pages_used[:, None]
    bad_page = used & ((block_table < 0) | (block_table >= num_blocks))
    flags = torch.stack([bad_len.any(), bad_page.any()]).tolist()
    if flags[0]:
        i = int(bad_len.nonzero()[0, 0])
        raise InvalidArgumentError(
            f"cache_seqlens[{i}] = {int(cache_seqlens[i])}, but block_table has {block_table.shape[1]} pages of "
            f"{page_block_size} tokens per sequence (covers {covered} tokens); lengths must be in [0, {covered}]."
        )
    if flags[1]:
        i, j = (int(x) for x in bad_page.nonzero()[0])
        raise InvalidArgumentError(
            f"block_table[{i}, {j}] = {int(block_table[i, j])} is a page sequence {i} uses, but k_cache has "
            f"{num_blocks} pages; entries within each sequence's length must be in [0, {num_blocks})."
        )


def _check_descale(name: str, descale, device: torch.device) -> None:
    expected = "a float32 [1] tensor on q's device (the per-tensor scale: the FP8 tensor holds x / descale)"
    if not isinstance(descale, torch.Tensor):
        raise _fail(name, "None" if descale is None else type(descale).__name__, expected)
    if descale.dtype != torch.float32 or descale.numel() != 1 or descale.dim() > 1:
        raise _fail(name, f"dtype {descale.dtype}, shape {tuple(descale.shape)}", expected)
    if descale.device != device:
        raise _fail(name, f"a tensor on {descale.device}", f"a tensor on q's device {device}")


def _dense_fp8(k_cache, is_fp8_kvcache) -> bool:
    """Whether a dense call reads a per-tensor FP8 cache: ``is_fp8_kvcache``, or (None) the cache's dtype."""
    byte_cache = isinstance(k_cache, torch.Tensor) and k_cache.dtype in _BYTE_DTYPES
    if is_fp8_kvcache is None:
        return byte_cache
    if not is_fp8_kvcache and byte_cache:
        raise _fail("is_fp8_kvcache", f"False with a {k_cache.dtype} k_cache", "True for a per-tensor FP8 cache "
                    "(float8_e4m3fn, or its bytes as uint8/int8), or None to infer it from the cache's dtype")
    return bool(is_fp8_kvcache)


def _validate_dense(q, k_cache, block_table, cache_seqlens, head_dim_v, kv_fp8=False, descale_q=None, descale_k=None):
    if kv_fp8:
        # per-tensor FP8 (vLLM's and SGLang's ``fp8`` cache dtype): e4m3 codes, one scale for the whole cache
        _check_tensor("q", q, 4, _DTYPES + (torch.float8_e4m3fn,), None)
        device = q.device
        _check_tensor("k_cache", k_cache, 4, _BYTE_DTYPES, device)
        if q.dtype == torch.float8_e4m3fn:
            _check_descale("descale_q", descale_q, device)
        elif descale_q is not None:
            raise _fail("descale_q", f"a tensor with a {q.dtype} q", "None: descale_q scales an e4m3 q")
        _check_descale("descale_k", descale_k, device)
    else:
        _check_tensor("q", q, 4, _DTYPES, None)
        device = q.device
        _check_tensor("k_cache", k_cache, 4, (q.dtype,), device)
        for name, descale in (("descale_q", descale_q), ("descale_k", descale_k)):
            if descale is not None:
                raise _fail(name, f"a tensor with a {k_cache.dtype} k_cache", "None: the descales serve "
                            "per-tensor FP8 caches (is_fp8_kvcache=True)")
    b, s_q, h_q, d = q.shape
    num_blocks, page_block_size, h_kv, d_k = k_cache.shape
    if d_k != d:
        raise _fail("k_cache", f"head dim {d_k} (shape {tuple(k_cache.shape)})", f"q's head dim {d}")
    if block_table is None or cache_seqlens is None:
        raise InvalidArgumentError("dense decoding needs block_table and cache_seqlens; got None.")
    _check_tensor("block_table", block_table, 2, (torch.int32,), device)
    _check_tensor("cache_seqlens", cache_seqlens, 1, (torch.int32,), device)
    if not cache_seqlens.is_contiguous():
        raise _fail("cache_seqlens", f"strides {cache_seqlens.stride()}", "a contiguous tensor")
    if block_table.shape[0] != b:
        raise _fail("block_table", f"shape {tuple(block_table.shape)}", f"[b={b}, max_blocks]")
    if cache_seqlens.shape[0] != b:
        raise _fail("cache_seqlens", f"shape {tuple(cache_seqlens.shape)}", f"[b={b}]")
    if b == 0 or s_q == 0 or h_q == 0:
        raise _fail("q", f"shape {tuple(q.shape)}", "b, s_q and h_q of at least 1")
    if h_kv == 0 or h_q % h_kv != 0:
        raise _fail("k_cache", f"h_kv={h_kv} (q has h_q={h_q})", "a number of KV heads that divides h_q")
    if page_block_size < 1 or num_blocks < 1:
        raise _fail("k_cache", f"shape {tuple(k_cache.shape)}", "at least one page of at least one token")
    if not isinstance(head_dim_v, int) or not 0 < head_dim_v <= d:
        raise _fail("head_dim_v", repr(head_dim_v), f"an int in [1, d={d}]")
    return b, s_q, h_q, d, page_block_size, h_kv, num_blocks


_BYTE_DTYPES = (torch.uint8, torch.int8, torch.float8_e4m3fn)
_SPARSE_ONLY = ("attn_sink", "extra_k_cache", "extra_indices_in_kvcache", "topk_length", "extra_topk_length")


@dataclasses.dataclass(frozen=True)
class _SparseShape:
    """What a validated sparse call is: sizes, and the cache layout (``fmt`` None for a bf16/fp16 cache)."""

    b: int
    s_q: int
    h_q: int
    d_qk: int
    topk: int
    page_block_size: int
    extra_topk: int | None
    extra_page_block_size: int | None
    fmt: str | None


def _check_sparse_cache(name: str, cache, q: torch.Tensor, fp8: bool, kv_format):
    """Validate one sparse cache ([num_blocks, page_block_size, 1, last]); return its FP8 layout or None."""
    from .kvcache import bytes_per_token_of, detect_format

    d_qk = q.shape[-1]
    fmt = None
    if fp8:
        _check_tensor(name, cache, 4, _BYTE_DTYPES, q.device)
        fmt = reference.sparse_fp8_format(cache, d_qk, kv_format)  # typed errors for layouts it does not read
        if fmt.name == "V32_FP8" and cache.shape[1] > 1 and cache.stride(1) != cache.shape[-1]:
            raise _fail(name, f"strides {cache.stride()}", f"stride(1) == {cache.shape[-1]} (one page is one run of "
                        "656-byte token records; pad between pages with stride(0) instead)")
    else:
        _check_tensor(name, cache, 4, (q.dtype,), q.device)
        if cache.shape[-1] != d_qk:
            raise _fail(name, f"head dim {cache.shape[-1]} (shape {tuple(cache.shape)})", f"q's head dim {d_qk}")
        if kv_format is not None:
            detect_format(d_qk, bytes_per_token_of(cache), kv_format)  # the name must agree with the cache
    num_blocks, page_block_size, h_kv = cache.shape[:3]
    if h_kv != 1:
        raise _fail(name, f"h_kv={h_kv} (shape {tuple(cache.shape)})", "h_kv == 1: sparse decoding is MQA over one "
                    "latent KV head")
    if page_block_size < 1 or num_blocks < 1:
        raise _fail(name, f"shape {tuple(cache.shape)}", "at least one page of at least one token")
    return fmt


def _check_index_list(name: str, indices, b: int, s_q: int, device) -> int:
    """Validate int32 [b, s_q, topk] indices; return topk."""
    _check_tensor(name, indices, 3, (torch.int32,), device)
    if tuple(indices.shape[:2]) != (b, s_q) or indices.shape[2] < 1:
        raise _fail(name, f"shape {tuple(indices.shape)}", f"[b={b}, s_q={s_q}, topk] with topk >= 1")
    return indices.shape[2]


def _check_lengths(name: str, lengths, b: int, device) -> None:
    _check_tensor(name, lengths, 1, (torch.int32,), device)
    if lengths.shape[0] != b or not lengths.is_contiguous():
        raise _fail(name, f"shape {tuple(lengths.shape)}, strides {lengths.stride()}", f"a contiguous [b={b}] tensor")


def _validate_sparse(q, k_cache, head_dim_v, causal, is_fp8_kvcache, indices, attn_sink, topk_length,
                     extra_k_cache, extra_indices_in_kvcache, extra_topk_length, kv_format) -> _SparseShape:
    _check_tensor("q", q, 4, _DTYPES, None)
    b, s_q, h_q, d_qk = q.shape
    if b == 0 or s_q == 0 or h_q == 0:
        raise _fail("q", f"shape {tuple(q.shape)}", "b, s_q and h_q of at least 1")
    if causal:
        raise _fail("causal", "True with indices", "False: sparse decoding attends to the listed tokens, with no "
                    "causal mask (FlashMLA requires causal=False)")
    if not isinstance(k_cache, torch.Tensor):
        raise _fail("k_cache", type(k_cache).__name__, "a torch.Tensor")
    byte_cache = k_cache.dtype in _BYTE_DTYPES
    if is_fp8_kvcache is not None and bool(is_fp8_kvcache) != byte_cache:
        raise _fail("is_fp8_kvcache", f"{is_fp8_kvcache} with a {k_cache.dtype} k_cache",
                    "True for FP8 layouts held as uint8/int8/float8_e4m3fn bytes, False for bf16/fp16 caches "
                    "(or None to infer it from the cache's dtype)")
    fmt = _check_sparse_cache("k_cache", k_cache, q, byte_cache, kv_format)
    if fmt is not None:
        if head_dim_v != fmt.d_v:
            raise _fail("head_dim_v", repr(head_dim_v), f"{fmt.d_v}, the value dims of the {fmt.name} layout")
    elif not isinstance(head_dim_v, int) or not 0 < head_dim_v <= d_qk:
        raise _fail("head_dim_v", repr(head_dim_v), f"an int in [1, d_qk={d_qk}]")
    topk = _check_index_list("indices", indices, b, s_q, q.device)
    if topk_length is not None:
        _check_lengths("topk_length", topk_length, b, q.device)
    if attn_sink is not None:
        _check_tensor("attn_sink", attn_sink, 1, (torch.float32,), q.device)
        if attn_sink.shape[0] != h_q or not attn_sink.is_contiguous():
            raise _fail("attn_sink", f"shape {tuple(attn_sink.shape)}, strides {attn_sink.stride()}",
                        f"a contiguous [h_q={h_q}] tensor")
    if (extra_k_cache is None) != (extra_indices_in_kvcache is None):
        given, missing = (("extra_k_cache", "extra_indices_in_kvcache") if extra_indices_in_kvcache is None
                          else ("extra_indices_in_kvcache", "extra_k_cache"))
        raise _fail(missing, f"None while {given} is given", "both or neither of extra_k_cache and "
                    "extra_indices_in_kvcache (the extra list indexes the extra cache)")
    if extra_topk_length is not None and extra_k_cache is None:
        raise _fail("extra_topk_length", "a tensor without extra_k_cache", "None when there is no extra cache")
    extra_topk = extra_page_block_size = None
    if extra_k_cache is not None:
        extra_fmt = _check_sparse_cache("extra_k_cache", extra_k_cache, q, byte_cache, kv_format)
        if extra_fmt != fmt or extra_k_cache.dtype != k_cache.dtype:
            def describe(f, cache):
                return f"{cache.dtype} ({f.name if f is not None else 'keys as they are'})"

            raise _fail("extra_k_cache", describe(extra_fmt, extra_k_cache),
                        f"k_cache's format, {describe(fmt, k_cache)}")
        extra_topk = _check_index_list("extra_indices_in_kvcache", extra_indices_in_kvcache, b, s_q, q.device)
        extra_page_block_size = extra_k_cache.shape[1]
        if extra_topk_length is not None:
            _check_lengths("extra_topk_length", extra_topk_length, b, q.device)
    return _SparseShape(b, s_q, h_q, d_qk, topk, k_cache.shape[1], extra_topk, extra_page_block_size,
                        None if fmt is None else fmt.name)


def _check_sparse_values(topk_length, extra_topk_length, topk: int, extra_topk: int | None) -> None:
    """Typed errors for list lengths outside [0, topk] (one device sync)."""
    for name, lengths, top in (("topk_length", topk_length, topk),
                               ("extra_topk_length", extra_topk_length, extra_topk)):
        if lengths is None:
            continue
        bad = (lengths < 0) | (lengths > top)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise InvalidArgumentError(
                f"{name}[{i}]: got {int(lengths[i])}; expected a length in [0, {top}] (the index list holds {top} "
                "entries per query token)."
            )


def _sparse_decode_call(q, k_cache, head_dim_v, tile_scheduler_metadata, num_splits, softmax_scale, causal,
                        is_fp8_kvcache, indices, attn_sink, extra_k_cache, extra_indices_in_kvcache, topk_length,
                        extra_topk_length, backend, kv_format, known=None):
    """The sparse branch of :func:`flash_mla_with_kvcache`: validate, pick a backend, run. ``known``: the call's
    :func:`sparse_signature` where the caller already computed it."""
    shape = _validate_sparse(q, k_cache, head_dim_v, causal, is_fp8_kvcache, indices, attn_sink, topk_length,
                             extra_k_cache, extra_indices_in_kvcache, extra_topk_length, kv_format)
    scale = shape.d_qk**-0.5 if softmax_scale is None else float(softmax_scale)
    meta, planning = None, True
    if isinstance(tile_scheduler_metadata, FlashMLASchedMeta):
        if num_splits is not None:
            raise InvalidArgumentError(
                "num_splits must be None when tile_scheduler_metadata is a FlashMLASchedMeta (new API)."
            )
        meta = tile_scheduler_metadata
        meta.check_or_set_config(FlashMLASchedMeta.Config(
            b=shape.b, s_q=shape.s_q, h_q=shape.h_q, page_block_size=shape.page_block_size, h_k=1, causal=False,
            is_fp8_kvcache=shape.fmt is not None, topk=shape.topk, extra_page_block_size=shape.extra_page_block_size,
            extra_topk=shape.extra_topk,
        ))
        planning = not meta.have_initialized
    elif isinstance(tile_scheduler_metadata, torch.Tensor):
        planning = False  # old-API tensors: the sparse kernel splits by topk itself and does not read them
    elif tile_scheduler_metadata is not None:
        raise _fail("tile_scheduler_metadata", type(tile_scheduler_metadata).__name__,
                    "a FlashMLASchedMeta, the int32 tensor from get_mla_metadata(cache_seqlens, ...), or None")
    if _value_checks_enabled(planning, q.device):
        _check_sparse_values(topk_length, extra_topk_length, shape.topk, shape.extra_topk)
    choice = choose_sparse_decode(q.device, q.dtype, (shape.d_qk, head_dim_v), shape.fmt, backend,
                                  extras=extra_k_cache is not None,
                                  aligned16=aligned16(q, k_cache), h_q=q.shape[2])
    if meta is not None:
        meta.have_initialized = True  # nothing to plan: the split count follows from the shapes
    if choice.backend == "reference":
        return reference.sparse_decode(q, k_cache, indices, head_dim_v, scale, attn_sink, topk_length, extra_k_cache,
                                       extra_indices_in_kvcache, extra_topk_length, kv_format)
    if shape.fmt is not None:
        for name, cache in (("k_cache", k_cache), ("extra_k_cache", extra_k_cache)):
            if cache is not None and (cache.data_ptr() % 4 or (cache.shape[0] > 1 and cache.stride(0) % 4)):
                raise _fail(name, f"strides {cache.stride()} at address {cache.data_ptr():#x}",
                            "stride(0) and base address multiples of 4 bytes (the kernels read the fp32 scales of "
                            "each token record with aligned loads)")
    if choice.backend == "gluon":
        from .ops.gluon.decode_sparse_sm90 import sparse_decode_sm90_fwd

        def run():
            return sparse_decode_sm90_fwd(q, k_cache, indices, head_dim_v, scale, topk_length,
                                          is_fp8=shape.fmt is not None, attn_sink=attn_sink)
    else:
        from .ops.decode_sparse import sparse_decode_fwd

        def run():
            return sparse_decode_fwd(q, k_cache, indices, head_dim_v, scale, attn_sink, topk_length, extra_k_cache,
                                     extra_indices_in_kvcache, extra_topk_length, is_fp8=shape.fmt is not None)
    signature = None  # set where this call's launches may be recorded for the step's later calls
    if meta is not None and (meta.replays is None or len(meta.replays) < MAX_REPLAYS):
        signature = known or sparse_signature(q, k_cache, indices, attn_sink, head_dim_v, softmax_scale, causal,
                                              is_fp8_kvcache, backend, kv_format, topk_length, extra_k_cache,
                                              extra_indices_in_kvcache, extra_topk_length)
        if signature is not None and (not replay_enabled(signature[-2]) or signature in (meta.replays or {})):
            signature = None
    if signature is None:
        return run()
    with recording() as rec:
        out, lse = run()
    _keep_replay(meta, signature, rec, (q, k_cache, indices, attn_sink, topk_length, extra_k_cache,
                                        extra_indices_in_kvcache, extra_topk_length), (out, lse), ())
    return out, lse


def _keep_replay(meta: FlashMLASchedMeta, signature: tuple, rec, inputs: tuple, outputs: tuple, owned: tuple) -> None:
    """File a recorded call's replay under its signature in the schedule (False: this signature cannot be
    replayed, and runs the whole path every time)."""
    try:
        replay = Replay(rec, inputs, outputs, owned)
    except NotReplayable:
        replay = False
    if meta.current_replays() is None:
        meta.replays, meta.replay_basis = {}, (meta.tile_scheduler_metadata, meta.num_splits, meta.workspace)
    meta.replays[signature] = replay


def flash_mla_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: Optional[torch.Tensor],
    cache_seqlens: Optional[torch.Tensor],
    head_dim_v: int,
    tile_scheduler_metadata: Union[FlashMLASchedMeta, torch.Tensor, None] = None,
    num_splits: Optional[torch.Tensor] = None,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    is_fp8_kvcache: Optional[bool] = None,
    indices: Optional[torch.Tensor] = None,
    attn_sink: Optional[torch.Tensor] = None,
    extra_k_cache: Optional[torch.Tensor] = None,
    extra_indices_in_kvcache: Optional[torch.Tensor] = None,
    topk_length: Optional[torch.Tensor] = None,
    extra_topk_length: Optional[torch.Tensor] = None,
    *,
    backend: Optional[str] = None,
    kv_format: Optional[str] = None,
    descale_q: Optional[torch.Tensor] = None,
    descale_k: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MLA decoding over a paged KV cache (FlashMLA's ``flash_mla_with_kvcache``), dense or token-sparse.

    Dense (``indices=None``): each query attends to its sequence's first ``cache_seqlens`` tokens.
    Sparse (``indices`` given, DeepSeek Sparse Attention): each query token attends to its own list of
    cache slots; ``block_table`` and ``cache_seqlens`` are not used (may be None).

    Dense over a per-tensor FP8 cache (``is_fp8_kvcache=True``, vLLM's and SGLang's ``fp8`` cache dtype,
    served like the SGLang fork's legacy dense FP8 kernel): ``k_cache`` holds e4m3 codes of ``x /
    descale_k``; q is bf16/fp16, or e4m3 with ``descale_q``; the output is bf16 for an e4m3 q.

    Args:
        q (torch.Tensor):
            [b, s_q, h_q, d] bf16 or fp16 (fp32 on the reference backend), last dim contiguous; or
            float8_e4m3fn over a per-tensor FP8 cache (with ``descale_q``).
            ``d`` is 576 (512 latent + 64 RoPE) or 512 for DeepSeek models.
        k_cache (torch.Tensor):
            [num_blocks, page_block_size, h_kv, d], q's dtype, last dim contiguous. V is the first
            ``head_dim_v`` dims of K. Any page size; any ``h_kv`` dividing ``h_q``. With
            ``is_fp8_kvcache``: the same shape in float8_e4m3fn (or its bytes as uint8/int8).
        block_table (torch.Tensor):
            [b, max_blocks] int32, physical page of each logical page. Entries past a sequence's
            last page are never read (may hold garbage).
        cache_seqlens (torch.Tensor):
            [b] int32 contiguous, tokens per sequence; 0 allowed (gives out 0, lse +inf).
        head_dim_v (int):
            dims of V, 512 for DeepSeek.
        tile_scheduler_metadata:
            a ``FlashMLASchedMeta`` from ``get_mla_metadata()`` (planned by the first call that gets
            it, reused by later calls with the same configuration, one at a time on one stream: the
            split buffers and counters it holds are shared), or the ``int32 [num_sm_parts, 8]``
            tensor of the old ``get_mla_metadata(cache_seqlens, ...)`` together with ``num_splits``,
            or ``None`` (plan inside this call). A call with a ``FlashMLASchedMeta`` (dense, or sparse
            without an extra cache) whose signature (shapes, strides, dtypes, devices,
            16-byte alignment, options) an earlier call with it had replays that call's launches with
            the new tensors (:mod:`openmla.replay`); assigning new schedule tensors onto it drops them.
            Dense old-form calls replay too, keyed module-wide with the two tensors' shapes.
        num_splits (torch.Tensor):
            [b + 1] int32 from the old-form ``get_mla_metadata``; must be None with a FlashMLASchedMeta.
        softmax_scale (float):
            defaults to ``d ** -0.5`` (DeepSeek models pass their own).
        causal (bool):
            for ``s_q > 1``, query token ``i`` sees keys ``j <= s_k - s_q + i``; ignored when s_q == 1.
        is_fp8_kvcache (bool):
            True for an FP8 cache (bytes), False for a bf16/fp16 one; None (default) infers it from
            ``k_cache``'s dtype (uint8/int8/float8_e4m3fn = FP8). Dense decoding reads a per-tensor
            FP8 cache (needs ``descale_k``); sparse decoding the V3.2 layout (scales in the cache).
        indices (torch.Tensor):
            [b, s_q, topk] int32, last dim contiguous: the cache slots (``page * page_block_size +
            offset``) each query token attends to. ``-1``, and as an OpenMLA extension any value outside
            ``[0, num_blocks * page_block_size)``, is masked and never read. With indices, ``k_cache`` is
            [num_blocks, page_block_size, 1, last]: bf16/fp16 of q's dtype (``last = d``; OpenMLA
            extension), or FP8 bytes in the V3.2 layout (656 B/token, d 576; also MODEL1, 584 B/token,
            d 512, on the reference backend), any page size, any ``h_q``, any ``topk``; ``causal`` must
            be False.
        attn_sink (torch.Tensor):
            [h_q] fp32 contiguous, sparse only: out of head ``h`` is scaled by ``1 / (1 + exp(sink[h] -
            lse))`` (lse unchanged); ``+inf`` gives 0, ``-inf`` no effect.
        extra_k_cache, extra_indices_in_kvcache (torch.Tensor):
            sparse only, both or neither: a second cache (same format, own page size) and its slots
            [b, s_q, extra_topk] int32, attended after the main list.
        topk_length, extra_topk_length (torch.Tensor):
            [b] int32 contiguous, sparse only: request ``i`` uses the first ``topk_length[i]`` entries of
            its lists (values in [0, topk], checked when the call plans, see ``OPENMLA_CHECK_VALUES``).
        backend (str):
            OpenMLA extension, keyword only: ``"auto"`` (default: Gluon on Hopper, Triton on other
            GPUs, the reference on CPU tensors), ``"gluon"``, ``"triton"`` or ``"reference"``;
            overrides ``OPENMLA_BACKEND``. Sparse decoding: ``"gluon"`` on Hopper (automatic there: bf16/fp16
            caches and the V3.2 FP8 layout, no extra cache), ``"triton"`` bf16/fp16 q over a cache of q's dtype
            or the V3.2 FP8 layout, ``"reference"`` everything. Dense decoding over a per-tensor FP8 cache: on
            Hopper ``"gluon"`` (automatic there: (576, 512) dims the warp-specialized or e4m3-product kernel at
            every head count; other dims the small-head kernel up to 32 query rows per KV head, the Triton
            kernel above), ``"triton"`` (automatic on other GPUs) or ``"reference"``.
        kv_format (str):
            keyword only (the SGLang fork's name): the FP8 layout's name when its byte size is ambiguous,
            see :func:`openmla.kvcache.detect_format`.
        descale_q, descale_k (torch.Tensor):
            keyword only (the SGLang fork's names), dense decoding over a per-tensor FP8 cache: float32
            [1] on q's device, read by the kernel (no host sync). The cache holds e4m3 codes of ``k /
            descale_k`` (required); an e4m3 q holds ``q / descale_q`` (required with it, None otherwise).

    Returns:
        out: [b, s_q, h_q, head_dim_v] in q's dtype (bf16 for an e4m3 q). lse: [b, h_q, s_q] fp32,
        natural log; +inf for rows that attend to nothing.
    """
    signature = None  # computed here where a replay may serve the call, and reused below where none does
    if (num_splits is None and tile_scheduler_metadata.__class__ is FlashMLASchedMeta
            and tile_scheduler_metadata.current_replays()):
        # a call whose signature an earlier call of this step recorded: skip to its launches
        if indices is attn_sink is topk_length is extra_k_cache is extra_indices_in_kvcache is extra_topk_length \
                is None:
            signature = dense_signature(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal,
                                        is_fp8_kvcache, backend, descale_q, descale_k)
            replay = tile_scheduler_metadata.replays.get(signature)
            if replay:
                return replay(q, k_cache, block_table, cache_seqlens, descale_q, descale_k)
        elif indices is not None and descale_q is descale_k is None:
            signature = sparse_signature(q, k_cache, indices, attn_sink, head_dim_v, softmax_scale, causal,
                                         is_fp8_kvcache, backend, kv_format, topk_length, extra_k_cache,
                                         extra_indices_in_kvcache, extra_topk_length)
            replay = tile_scheduler_metadata.replays.get(signature)
            if replay:
                return replay(q, k_cache, indices, attn_sink, topk_length, extra_k_cache, extra_indices_in_kvcache,
                              extra_topk_length)
    elif (tile_scheduler_metadata.__class__ is torch.Tensor and num_splits is not None and OLD_FORM_REPLAYS
          and indices is attn_sink is extra_k_cache is topk_length is extra_topk_length is None):
        # an old-form dense call (the schedule as tensors, as SGLang calls) whose signature was recorded
        signature = old_form_signature(dense_signature(
            q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal, is_fp8_kvcache, backend,
            descale_q, descale_k), tile_scheduler_metadata, num_splits)
        replay = OLD_FORM_REPLAYS.get(signature)
        if replay:
            return replay(q, k_cache, block_table, cache_seqlens, descale_q, descale_k, tile_scheduler_metadata,
                          num_splits)
    known = signature  # the whole path runs: this signature (if any) has no replay yet, or cannot have one
    if indices is not None:
        for name, descale in (("descale_q", descale_q), ("descale_k", descale_k)):
            if descale is not None:
                raise _fail(name, "a tensor with indices", "None: the descales serve dense decoding over a "
                            "per-tensor FP8 cache (the sparse FP8 layouts carry their own scales)")
        return _sparse_decode_call(q, k_cache, head_dim_v, tile_scheduler_metadata, num_splits, softmax_scale, causal,
                                   is_fp8_kvcache, indices, attn_sink, extra_k_cache, extra_indices_in_kvcache,
                                   topk_length, extra_topk_length, backend, kv_format, known)
    sparse_args = dict(zip(_SPARSE_ONLY, (attn_sink, extra_k_cache, extra_indices_in_kvcache, topk_length,
                                          extra_topk_length)))
    given = [k for k, v in sparse_args.items() if v is not None]
    if given:
        raise _fail(given[0], "a tensor with indices=None", "None: it serves sparse decoding only (pass indices, or "
                    f"drop {', '.join(given)} for dense decoding)")
    kv_fp8 = _dense_fp8(k_cache, is_fp8_kvcache)
    b, s_q, h_q, d, page_block_size, h_kv, num_blocks = _validate_dense(
        q, k_cache, block_table, cache_seqlens, head_dim_v, kv_fp8, descale_q, descale_k)
    scale = d**-0.5 if softmax_scale is None else float(softmax_scale)
    choice = choose_dense_decode(q.device, q.dtype, (d, head_dim_v), backend, kv_fp8=kv_fp8,
                                 aligned16=aligned16(q, k_cache))
    rows = s_q * (h_q // h_kv)

    planning = False
    if isinstance(tile_scheduler_metadata, FlashMLASchedMeta):
        if num_splits is not None:
            raise InvalidArgumentError(
                "num_splits must be None when tile_scheduler_metadata is a FlashMLASchedMeta (new API); "
                "pass the tensor pair from get_mla_metadata(cache_seqlens, ...) for the old API."
            )
        meta = tile_scheduler_metadata
        key = (b, s_q, h_q, page_block_size, h_kv, bool(causal), kv_fp8)
        if meta.dense_key != key or meta.config is None:
            meta.check_or_set_config(
                FlashMLASchedMeta.Config(b=b, s_q=s_q, h_q=h_q, page_block_size=page_block_size, h_k=h_kv,
                                         causal=bool(causal), is_fp8_kvcache=kv_fp8)
            )
            meta.dense_key = key
        planning = not meta.have_initialized
    elif tile_scheduler_metadata is None:
        meta, planning = None, True
    elif isinstance(tile_scheduler_metadata, torch.Tensor):
        _check_tensor("tile_scheduler_metadata", tile_scheduler_metadata, 2, (torch.int32,), q.device)
        if tile_scheduler_metadata.shape[1] != 8 or tile_scheduler_metadata.shape[0] < 1:
            raise _fail("tile_scheduler_metadata", f"shape {tuple(tile_scheduler_metadata.shape)}", "[num_sm_parts, 8]")
        if num_splits is None:
            raise InvalidArgumentError(
                "tile_scheduler_metadata is a tensor (old API) but num_splits is None; pass both values returned "
                "by get_mla_metadata(cache_seqlens, num_q_tokens_per_head_k, num_heads_k)."
            )
        _check_tensor("num_splits", num_splits, 1, (torch.int32,), q.device)
        if num_splits.shape[0] < b + 1:
            raise _fail("num_splits", f"shape {tuple(num_splits.shape)}", f"[b + 1 = {b + 1}] (or longer)")
        meta = None
    else:
        raise _fail("tile_scheduler_metadata", type(tile_scheduler_metadata).__name__,
                    "a FlashMLASchedMeta, the int32 tensor from get_mla_metadata(cache_seqlens, ...), or None")

    if choice.backend == "reference":
        return reference.dense_decode(q, k_cache, block_table, cache_seqlens, head_dim_v, scale, causal, descale_q,
                                      descale_k)

    if _value_checks_enabled(planning, q.device):
        _check_values(block_table, cache_seqlens, page_block_size, num_blocks)
    signature = None  # set where this call's launches may be recorded for the step's later calls
    if meta is not None and (meta.replays is None or len(meta.replays) < MAX_REPLAYS):
        signature = known or dense_signature(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale,
                                             causal, is_fp8_kvcache, backend, descale_q, descale_k)
        if signature is not None and (not replay_enabled(signature[-2]) or signature in (meta.replays or {})):
            signature = None
    elif isinstance(tile_scheduler_metadata, torch.Tensor):  # the old form
        signature = known or old_form_signature(dense_signature(
            q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal, is_fp8_kvcache, backend,
            descale_q, descale_k), tile_scheduler_metadata, num_splits)
        if signature is not None and (not replay_enabled(signature[1][-2]) or signature in OLD_FORM_REPLAYS):
            signature = None
    # one launch for small eager batches, unless later calls replay this one (a second launch then costs them
    # microseconds, and the combine kernel is faster on the GPU); else the parallel combine kernel
    fused = fuse_combine(q.device, b, replayed=signature is not None)
    if isinstance(tile_scheduler_metadata, torch.Tensor):
        sched, splits = tile_scheduler_metadata, num_splits
    elif meta is not None and meta.have_initialized:
        sched, splits = meta.tile_scheduler_metadata, meta.num_splits
    else:
        sched, splits = plan_dense(cache_seqlens, rows, h_kv, choice.backend, bounded=fused)
        if meta is not None:
            meta.tile_scheduler_metadata, meta.num_splits, meta.have_initialized = sched, splits, True
    if fused and splits in UNBOUNDED_OLD_FORM:  # an old-form plan made for calls that replay: too many partials
        fused = False

    fwd = _dense_launcher(choice.backend)
    workspace = None
    if meta is not None:
        # the layers of one step share the schedule, so they can share the split buffers too
        if meta.workspace is None or meta.workspace[0].shape[0] != b + sched.shape[0]:
            from .ops.decode_dense import split_workspace

            meta.workspace = split_workspace(q, head_dim_v, sched.shape[0])
        workspace = meta.workspace
    fp8_args = dict(descale_q=descale_q, descale_k=descale_k) if kv_fp8 else {}
    if signature is None:
        return fwd(q, k_cache, block_table, cache_seqlens, head_dim_v, sched, splits, scale, causal,
                   workspace=workspace, fused_combine=fused, **fp8_args)
    inputs = (q, k_cache, block_table, cache_seqlens, descale_q, descale_k)
    with recording() as rec:
        if meta is None:  # old form: the split partials are this call's, written before the combine reads them
            from .ops.decode_dense import split_workspace

            workspace = split_workspace(q, head_dim_v, sched.shape[0], fused_merge=False)
            scratch(*workspace)
        out, lse = fwd(q, k_cache, block_table, cache_seqlens, head_dim_v, sched, splits, scale, causal,
                       workspace=workspace, fused_combine=fused, **fp8_args)
    if meta is None:
        try:
            keep_old_form(signature, Replay(rec, inputs + (sched, splits), (out, lse), ()))
        except NotReplayable:
            keep_old_form(signature, False)
    else:
        _keep_replay(meta, signature, rec, inputs, (out, lse), (sched, splits) + tuple(workspace))
    return out, lse


_LAUNCHERS: dict = {}


def _dense_launcher(backend: str):
    """The dense-decode launcher of a kernel backend, imported once (a function-level import on every decode
    call costs microseconds of host time)."""
    fwd = _LAUNCHERS.get(backend)
    if fwd is None:
        if backend == "gluon":
            from .ops.gluon.decode_dense_sm90 import dense_decode_sm90_fwd as fwd
        else:
            from .ops.decode_dense import dense_decode_fwd as fwd
        _LAUNCHERS[backend] = fwd
    return fwd


def explain(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    *args,
    head_dim_v: int = 512,
    backend: Optional[str] = None,
    **kwargs,
) -> Choice:
    """Which backend would serve ``flash_mla_with_kvcache(q, k_cache, ...)`` here, and why (nothing runs).

    Takes the decode call's arguments (extra ones are ignored). Returns a :class:`Choice` with
    ``op``, ``backend`` and ``reason``; raises like the call would if a forced backend cannot serve.
    """
    if len(args) >= 3 and isinstance(args[2], int):
        head_dim_v = args[2]
    # positions after k_cache: ..., softmax_scale (5), causal (6), is_fp8_kvcache (7), indices (8)
    indices = kwargs.get("indices", args[8] if len(args) > 8 else None)
    is_fp8_kvcache = kwargs.get("is_fp8_kvcache", args[7] if len(args) > 7 else None)
    if indices is not None:
        fmt = None
        if k_cache.dtype in _BYTE_DTYPES:
            from .kvcache import bytes_per_token_of, detect_format

            fmt = detect_format(q.shape[-1], bytes_per_token_of(k_cache), kwargs.get("kv_format")).name
        extras = kwargs.get("extra_k_cache") is not None
        return choose_sparse_decode(q.device, q.dtype, (q.shape[-1], head_dim_v), fmt, backend, extras=extras,
                                    aligned16=aligned16(q, k_cache), h_q=q.shape[2])
    kv_fp8 = _dense_fp8(k_cache, is_fp8_kvcache)
    return choose_dense_decode(q.device, q.dtype, (q.shape[-1], head_dim_v), backend, kv_fp8=kv_fp8,
                               aligned16=aligned16(q, k_cache))
