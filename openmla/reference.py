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
"""

from __future__ import annotations

import math

import torch

__all__ = ["dense_decode", "flash_mla_with_kvcache"]


def _gather_paged(k_cache: torch.Tensor, block_row: torch.Tensor, s_k: int) -> torch.Tensor:
    """The first ``s_k`` tokens of one sequence, [s_k, h_kv, d], read only through valid pages."""
    page_block_size = k_cache.shape[1]
    num_pages = (s_k + page_block_size - 1) // page_block_size
    pages = block_row[:num_pages].long()
    return k_cache[pages].reshape(num_pages * page_block_size, *k_cache.shape[2:])[:s_k]


def dense_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int,
    softmax_scale: float | None = None,
    causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense MLA decoding over a paged KV cache, in fp32.

    Args:
        q: [b, s_q, h_q, d] query (bf16, fp16 or fp32).
        k_cache: [num_blocks, page_block_size, h_kv, d]; V is the first ``head_dim_v`` dims of K.
        block_table: [b, max_blocks] int32, physical page of each logical page of a sequence.
        cache_seqlens: [b] int32, tokens in each sequence (may be 0).
        head_dim_v: dims of V (512 for DeepSeek).
        softmax_scale: defaults to ``d ** -0.5``.
        causal: for ``s_q > 1``, query token ``i`` sees keys ``j <= s_k - s_q + i`` (bottom-right
            aligned); ignored when ``s_q == 1``.

    Returns:
        out: [b, s_q, h_q, head_dim_v] in q's dtype; lse: [b, h_q, s_q] fp32 natural log.
    """
    b, s_q, h_q, d = q.shape
    h_kv = k_cache.shape[2]
    group = h_q // h_kv
    scale = d**-0.5 if softmax_scale is None else float(softmax_scale)
    out = torch.zeros(b, s_q, h_q, head_dim_v, dtype=torch.float32, device=q.device)
    lse = torch.full((b, h_q, s_q), math.inf, dtype=torch.float32, device=q.device)
    seqlens = cache_seqlens.tolist()
    for i in range(b):
        s_k = int(seqlens[i])
        if s_k == 0:
            continue
        k = _gather_paged(k_cache, block_table[i], s_k).float()  # [s_k, h_kv, d]
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference twin of :func:`openmla.flash_mla_with_kvcache` (scheduler arguments are ignored)."""
    from ._runtime import UnsupportedError

    if indices is not None or attn_sink is not None or extra_k_cache is not None or topk_length is not None:
        raise UnsupportedError(
            "the reference serves dense decoding only in this version; sparse decoding "
            "(indices=, attn_sink=, extra_k_cache=, topk_length=) is not implemented yet."
        )
    if is_fp8_kvcache:
        raise UnsupportedError("the reference does not serve FP8 KV caches in this version.")
    return dense_decode(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal)
