"""Dense MLA decoding in portable Triton for few query rows per KV head (``s_q * h_q / h_kv <= 32``).

The split-KV kernel of :mod:`openmla.ops.decode_dense` puts the query rows on the M side of its
matrix products. With 16 rows (h_q = 16, what tensor parallelism leaves per GPU) its tiles are small
and Hopper's ``wgmma``, which multiplies 64 rows at a time, is out of reach. This kernel swaps the
roles: the KV tokens of a tile take the M side and the query rows the N side,

* ``Sᵀ = K Qᵀ`` [BLOCK_N tokens, R],
* softmax down each column (one column per query row),
* ``Oᵀ += Vᵀ Pᵀ`` [D_V, R], V being the first ``D_V`` dims of the K tile already loaded,

so a 64-token tile feeds ``wgmma`` with no padded rows, and the whole 512-dim output of a program is
a ``D_V x R`` accumulator (64 fp32 registers a thread for R = 16 on 4 warps). Same split-KV plan,
arguments (:func:`openmla.ops.decode_dense.splitkv_args`), masking, per-tensor FP8 handling and
outputs as the row-major kernel; it is that kernel's twin for small ``R``.
"""

from __future__ import annotations

from .._runtime import triton_available
from .decode_dense import SPLITKV_RUNTIME_INTS

if triton_available():
    import triton
    import triton.language as tl

    from .combine import arrive_split, merge_arrived
    from .decode_dense import _fp8_scales, _load_operand, _piece_bounds, _request_span

    @triton.jit(do_not_specialize=list(SPLITKV_RUNTIME_INTS))
    def _dense_decode_tokens_kernel(
        q_ptr, k_ptr, block_table_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
        out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, counters_ptr,
        stride_qb, stride_qs, stride_qh,
        stride_kb, stride_kp, stride_kh,
        stride_bt,
        stride_ob, stride_os, stride_oh,
        stride_lb, stride_lh,
        s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks, num_blocks, scale_log2,
        descale_q_ptr, descale_k_ptr,
        CAUSAL: tl.constexpr, FUSED_COMBINE: tl.constexpr,
        R: tl.constexpr, BLOCK_N: tl.constexpr,
        D_V: tl.constexpr, D_PE: tl.constexpr,
        Q_FP8: tl.constexpr, KV_FP8: tl.constexpr, FP8_NATIVE: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        part = tl.program_id(1)
        kv_head = pid_m // row_tiles
        tile = pid_m % row_tiles

        offs_r = tile * R + tl.arange(0, R)  # [R] query row = t * group + g
        mask_r = offs_r < rows
        t_idx = offs_r // group
        head = kv_head * group + offs_r % group
        offs_v = tl.arange(0, D_V)
        offs_n = tl.arange(0, BLOCK_N)

        begin_req, begin_tok, end_req, end_tok, begin_split = _piece_bounds(sched_ptr, part)

        # per-tensor FP8 as in the row-major kernel: codes decoded exactly to 16 bits, descales in fp32
        if Q_FP8:
            dtype: tl.constexpr = tl.float16
        else:
            dtype: tl.constexpr = q_ptr.dtype.element_ty
        score_scale, descale_k = _fp8_scales(scale_log2, descale_q_ptr, descale_k_ptr, Q_FP8, KV_FP8, FP8_NATIVE)

        for req in range(begin_req, end_req + 1):
            req64 = tl.cast(req, tl.int64)
            s_k, tok_lo, tok_hi, split_lo, n_split, split_idx = _request_span(
                req, begin_req, begin_tok, end_req, end_tok, begin_split, seqlens_ptr, num_splits_ptr, max_blocks,
                page_block_size)

            q_row = q_ptr + req64 * stride_qb + t_idx * stride_qs + head * stride_qh  # [R]
            q_v = _load_operand(q_row[:, None] + offs_v[None, :], mask_r[:, None], dtype, Q_FP8, FP8_NATIVE)
            if D_PE > 0:
                offs_pe = tl.arange(0, D_PE)
                q_pe = _load_operand(q_row[:, None] + D_V + offs_pe[None, :], mask_r[:, None], dtype, Q_FP8,
                                     FP8_NATIVE)
            if CAUSAL:
                limit = s_k - s_q + t_idx  # [R] last key each query row may see

            m_i = tl.full([R], float("-inf"), dtype=tl.float32)
            l_i = tl.zeros([R], dtype=tl.float32)
            acc = tl.zeros([D_V, R], dtype=tl.float32)  # Oᵀ
            bt_row = block_table_ptr + req64 * stride_bt
            for start in range(tok_lo, tok_hi, BLOCK_N):
                offs_j = start + offs_n  # [BLOCK_N]
                mask_j = offs_j < tok_hi
                page = tl.load(bt_row + offs_j // page_block_size, mask=mask_j, other=0)
                page = tl.minimum(tl.maximum(page, 0), num_blocks - 1)  # a caller's bad page must not fault
                k_row = page.to(tl.int64) * stride_kb + (offs_j % page_block_size) * stride_kp + kv_head * stride_kh
                k_ptrs = k_ptr + k_row[:, None]
                k_v = _load_operand(k_ptrs + offs_v[None, :], mask_j[:, None], dtype, KV_FP8, FP8_NATIVE)
                s = tl.dot(k_v, tl.trans(q_v))  # Sᵀ [BLOCK_N, R]
                if D_PE > 0:
                    k_pe = _load_operand(k_ptrs + D_V + offs_pe[None, :], mask_j[:, None], dtype, KV_FP8,
                                         FP8_NATIVE)
                    s = tl.dot(k_pe, tl.trans(q_pe), s)
                s = s * score_scale
                if CAUSAL:
                    visible = mask_j[:, None] & (offs_j[:, None] <= limit[None, :])
                else:
                    visible = mask_j[:, None]
                s = tl.where(visible, s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, axis=0))
                # a row that has seen no key yet keeps m = -inf; shift by 0 so exp2 gives 0, not NaN
                m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
                p = tl.math.exp2(s - m_shift[None, :])
                alpha = tl.math.exp2(m_i - m_shift)
                l_i = l_i * alpha + tl.sum(p, axis=0)
                acc = acc * alpha[None, :]
                acc = tl.dot(tl.trans(k_v), p.to(k_v.dtype), acc)  # Oᵀ += Vᵀ Pᵀ
                m_i = m_new

            empty = l_i == 0.0
            inv_l = tl.where(empty, 0.0, 1.0 / l_i)
            if KV_FP8:
                inv_l = inv_l * descale_k  # V = descale_k * k_codes
            o = acc * inv_l[None, :]  # [D_V, R]
            lse2 = tl.where(empty, float("-inf"), m_i + tl.math.log2(l_i))
            if n_split <= 1:
                o_ptrs = out_ptr + req64 * stride_ob + t_idx * stride_os + head * stride_oh  # [R]
                tl.store(o_ptrs[None, :] + offs_v[:, None], o.to(out_ptr.dtype.element_ty), mask=mask_r[None, :])
                lse = tl.where(empty, float("inf"), lse2 * 0.6931471805599453)
                tl.store(lse_ptr + req64 * stride_lb + head * stride_lh + t_idx, lse, mask=mask_r)
            else:
                slot = (split_lo + split_idx).to(tl.int64)
                acc_row = (slot * s_q + t_idx) * h_q + head  # o_accum is [slots, s_q, h_q, D_V]
                tl.store(o_acc_ptr + acc_row[None, :] * D_V + offs_v[:, None], o, mask=mask_r[None, :])
                tl.store(lse_acc_ptr + acc_row, lse2, mask=mask_r)
                if FUSED_COMBINE:  # one counter per request and row tile
                    arrive_split(counters_ptr + req64 * tl.num_programs(0) + pid_m)
        if FUSED_COMBINE:
            merge_arrived(begin_req, end_req, num_splits_ptr, counters_ptr + pid_m, tl.num_programs(0), 1, out_ptr,
                          lse_ptr, o_acc_ptr, lse_acc_ptr, tile * R, rows, group, kv_head, s_q, h_q, stride_ob,
                          stride_os, stride_oh, stride_lb, stride_lh, R, D_V)
