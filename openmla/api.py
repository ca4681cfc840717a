"""Public functions with FlashMLA's names and conventions: validate, pick a backend, run.

Code written against ``flash_mla`` works unchanged with ``import openmla as flash_mla``. Exact
semantics of every op live in :mod:`openmla.reference`.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import torch

from . import reference
from ._runtime import InvalidArgumentError, UnsupportedError, gpu_description
from .dispatch import Choice, choose_dense_decode
from .metadata import FlashMLASchedMeta, plan_dense

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
    mode = os.environ.get("OPENMLA_CHECK_VALUES", "auto").strip().lower()
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


def _validate_dense(q, k_cache, block_table, cache_seqlens, head_dim_v):
    _check_tensor("q", q, 4, _DTYPES, None)
    device = q.device
    b, s_q, h_q, d = q.shape
    _check_tensor("k_cache", k_cache, 4, (q.dtype,), device)
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """MLA decoding over a paged KV cache (FlashMLA's ``flash_mla_with_kvcache``).

    Args:
        q (torch.Tensor):
            [b, s_q, h_q, d] bf16 or fp16 (fp32 on the reference backend), last dim contiguous.
            ``d`` is 576 (512 latent + 64 RoPE) or 512 for DeepSeek models.
        k_cache (torch.Tensor):
            [num_blocks, page_block_size, h_kv, d], q's dtype, last dim contiguous. V is the first
            ``head_dim_v`` dims of K. Any page size; any ``h_kv`` dividing ``h_q``.
        block_table (torch.Tensor):
            [b, max_blocks] int32, physical page of each logical page. Entries past a sequence's
            last page are never read (may hold garbage).
        cache_seqlens (torch.Tensor):
            [b] int32 contiguous, tokens per sequence; 0 allowed (gives out 0, lse +inf).
        head_dim_v (int):
            dims of V, 512 for DeepSeek.
        tile_scheduler_metadata:
            a ``FlashMLASchedMeta`` from ``get_mla_metadata()`` (planned by the first call that gets
            it, reused by later calls with the same configuration), or the ``int32 [num_sm_parts, 8]``
            tensor of the old ``get_mla_metadata(cache_seqlens, ...)`` together with ``num_splits``,
            or ``None`` (plan inside this call).
        num_splits (torch.Tensor):
            [b + 1] int32 from the old-form ``get_mla_metadata``; must be None with a FlashMLASchedMeta.
        softmax_scale (float):
            defaults to ``d ** -0.5`` (DeepSeek models pass their own).
        causal (bool):
            for ``s_q > 1``, query token ``i`` sees keys ``j <= s_k - s_q + i``; ignored when s_q == 1.
        is_fp8_kvcache, indices, attn_sink, extra_k_cache, extra_indices_in_kvcache, topk_length,
        extra_topk_length: FP8 caches and sparse decoding; not implemented in this version
            (raise :class:`UnsupportedError` when given).
        backend (str):
            OpenMLA extension, keyword only: ``"auto"`` (default: Gluon on Hopper, Triton on other
            GPUs, the reference on CPU tensors), ``"gluon"``, ``"triton"`` or ``"reference"``;
            overrides ``OPENMLA_BACKEND``.

    Returns:
        out: [b, s_q, h_q, head_dim_v] in q's dtype. lse: [b, h_q, s_q] fp32, natural log; +inf for
        rows that attend to nothing.
    """
    sparse_args = {
        "indices": indices, "attn_sink": attn_sink, "extra_k_cache": extra_k_cache,
        "extra_indices_in_kvcache": extra_indices_in_kvcache, "topk_length": topk_length,
        "extra_topk_length": extra_topk_length,
    }
    given = [k for k, v in sparse_args.items() if v is not None]
    if given:
        raise UnsupportedError(
            f"sparse MLA decoding ({', '.join(given)}) is not implemented in this version of openmla "
            f"(GPU: {gpu_description(getattr(q, 'device', None))}). Dense decoding is served: pass indices=None."
        )
    if is_fp8_kvcache:
        raise UnsupportedError(
            "FP8 KV caches (is_fp8_kvcache=True) are not implemented in this version of openmla; "
            "use a bf16 or fp16 cache."
        )
    b, s_q, h_q, d, page_block_size, h_kv, num_blocks = _validate_dense(q, k_cache, block_table, cache_seqlens, head_dim_v)
    scale = d**-0.5 if softmax_scale is None else float(softmax_scale)
    choice = choose_dense_decode(q.device, q.dtype, (d, head_dim_v), backend)
    rows = s_q * (h_q // h_kv)

    planning = False
    if isinstance(tile_scheduler_metadata, FlashMLASchedMeta):
        if num_splits is not None:
            raise InvalidArgumentError(
                "num_splits must be None when tile_scheduler_metadata is a FlashMLASchedMeta (new API); "
                "pass the tensor pair from get_mla_metadata(cache_seqlens, ...) for the old API."
            )
        meta = tile_scheduler_metadata
        meta.check_or_set_config(
            FlashMLASchedMeta.Config(b=b, s_q=s_q, h_q=h_q, page_block_size=page_block_size, h_k=h_kv,
                                     causal=bool(causal), is_fp8_kvcache=False)
        )
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
        return reference.dense_decode(q, k_cache, block_table, cache_seqlens, head_dim_v, scale, causal)

    if _value_checks_enabled(planning, q.device):
        _check_values(block_table, cache_seqlens, page_block_size, num_blocks)
    if isinstance(tile_scheduler_metadata, torch.Tensor):
        sched, splits = tile_scheduler_metadata, num_splits
    elif meta is not None and meta.have_initialized:
        sched, splits = meta.tile_scheduler_metadata, meta.num_splits
    else:
        sched, splits = plan_dense(cache_seqlens, rows, h_kv, choice.backend)
        if meta is not None:
            meta.tile_scheduler_metadata, meta.num_splits, meta.have_initialized = sched, splits, True

    from .ops.decode_dense import split_workspace

    if choice.backend == "gluon":
        from .ops.gluon.decode_dense_sm90 import dense_decode_sm90_fwd as fwd
    else:
        from .ops.decode_dense import dense_decode_fwd as fwd
    workspace = None
    if meta is not None:
        # the layers of one step share the schedule, so they can share the split buffers too
        if meta.workspace is None or meta.workspace[0].shape[0] != b + sched.shape[0]:
            meta.workspace = split_workspace(q, head_dim_v, sched.shape[0])
        workspace = meta.workspace
    return fwd(q, k_cache, block_table, cache_seqlens, head_dim_v, sched, splits, scale, causal, workspace=workspace)


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
    if kwargs.get("indices") is not None:
        return Choice("sparse_decode", "none", "sparse decoding is not implemented in this version of openmla")
    return choose_dense_decode(q.device, q.dtype, (q.shape[-1], head_dim_v), backend)
