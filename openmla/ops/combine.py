"""Split-KV combine: merge the partial outputs of requests cut across several pieces.

Partials are normalised outputs ``o_s`` with their base-2 log-sum-exp ``lse2_s`` (``-inf`` for a
split in which a row saw no key). The merge is ``lse2 = log2 Σ 2^lse2_s``, ``out = Σ 2^(lse2_s -
lse2) o_s``; the natural-log ``lse`` is ``lse2 · ln 2``; a row with no key in any split gets
``out = 0`` and ``lse = +inf``. Requests with a single split were written by the split kernel and are
skipped here.

With an attention sink (sparse decoding), the merged output of head ``h`` is scaled by
``1 / (1 + exp(sink[h] - lse))`` here, where it is final (``+inf`` gives 0, ``-inf`` leaves it); ``lse``
is not changed.
"""

from __future__ import annotations

import torch

from .._runtime import triton_available

if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _decode_combine_kernel(
        out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, num_splits_ptr, sink_ptr,
        stride_ob, stride_os, stride_oh,
        stride_lb, stride_lh,
        s_q, h_q,
        BLOCK_R: tl.constexpr, D_V: tl.constexpr, HAS_SINK: tl.constexpr,
    ):
        req = tl.program_id(0)
        split_lo = tl.load(num_splits_ptr + req)
        n_split = tl.load(num_splits_ptr + req + 1) - split_lo
        if n_split > 1:
            offs_r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)  # row = t * h_q + head
            mask_r = offs_r < s_q * h_q
            offs_v = tl.arange(0, D_V)
            rows_per_slot = s_q * h_q
            m = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
            for s in range(0, n_split):
                slot = (split_lo + s).to(tl.int64)
                m = tl.maximum(m, tl.load(lse_acc_ptr + slot * rows_per_slot + offs_r, mask=mask_r, other=float("-inf")))
            m_shift = tl.where(m == float("-inf"), 0.0, m)
            total = tl.zeros([BLOCK_R], dtype=tl.float32)
            acc = tl.zeros([BLOCK_R, D_V], dtype=tl.float32)
            for s in range(0, n_split):
                slot = (split_lo + s).to(tl.int64)
                lse2 = tl.load(lse_acc_ptr + slot * rows_per_slot + offs_r, mask=mask_r, other=float("-inf"))
                w = tl.math.exp2(lse2 - m_shift)
                o = tl.load(o_acc_ptr + (slot * rows_per_slot + offs_r)[:, None] * D_V + offs_v[None, :],
                            mask=mask_r[:, None], other=0.0)
                total += w
                acc += w[:, None] * o
            empty = total == 0.0
            o = acc * tl.where(empty, 0.0, 1.0 / total)[:, None]
            lse2 = m_shift + tl.math.log2(total)
            lse = tl.where(empty, float("inf"), lse2 * 0.6931471805599453)
            t_idx = offs_r // h_q
            head = offs_r % h_q
            if HAS_SINK:
                # base 2: 1 / (1 + 2^(sink·log2e - lse2)); empty rows stay 0 whatever the sink
                sink2 = tl.load(sink_ptr + head, mask=mask_r, other=0.0) * 1.4426950408889634
                o = o * tl.where(empty, 0.0, 1.0 / (1.0 + tl.math.exp2(sink2 - lse2)))[:, None]
            o_ptrs = out_ptr + tl.cast(req, tl.int64) * stride_ob + t_idx * stride_os + head * stride_oh
            tl.store(o_ptrs[:, None] + offs_v[None, :], o.to(out_ptr.dtype.element_ty), mask=mask_r[:, None])
            tl.store(lse_ptr + tl.cast(req, tl.int64) * stride_lb + head * stride_lh + t_idx, lse, mask=mask_r)


def combine_splits(
    out: torch.Tensor,
    lse: torch.Tensor,
    o_accum: torch.Tensor,
    lse_accum: torch.Tensor,
    num_splits: torch.Tensor,
    attn_sink: torch.Tensor | None = None,
) -> None:
    """Merge split partials into ``out`` [b, s_q, h_q, d_v] and ``lse`` [b, h_q, s_q] in place.

    Args:
        o_accum: [slots, s_q, h_q, d_v] fp32 normalised partial outputs.
        lse_accum: [slots, s_q, h_q] fp32 base-2 LSE of each partial.
        num_splits: [b + 1] int32 cumulative splits per request (slot of split ``k`` of request
            ``i`` is ``num_splits[i] + k``).
        attn_sink: fp32 [h_q] contiguous, or None (dense decoding): scales each merged output by
            ``1 / (1 + exp(sink - lse))``.
    """
    b, s_q, h_q, d_v = out.shape
    block_r = 8 if d_v >= 256 else 16
    grid = (b, triton.cdiv(s_q * h_q, block_r))
    _decode_combine_kernel[grid](
        out, lse, o_accum, lse_accum, num_splits,
        attn_sink if attn_sink is not None else lse_accum,  # not read without a sink
        out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1),
        s_q, h_q,
        BLOCK_R=block_r, D_V=d_v, HAS_SINK=attn_sink is not None, num_warps=4,
    )
