"""Token-sparse MLA decoding for Hopper (sm_90a) over V3.2 FP8 records at few heads (``h_q <= 16``): keys on
``wgmma``'s 64-row side, the heads on N, so no product is padded to 64 rows.

Why a kernel of its own: the warp-specialized kernel (:mod:`.decode_sparse_sm90`) puts the heads on the 64-row side,
so at 16 heads three quarters of its products are padding, and its pace at h_q 16 to 64 is the same. Here, as in the
dense small-head kernel (:mod:`.decode_dense_sm90_small_heads`), ``Sᵀ = K Qᵀ`` [64 keys, 16] and ``Oᵀ += Vᵀ Pᵀ``
[512, 16]; each query token is a request whose block-table row is its list of cache slots.

One warpgroup, in lockstep, with the three jobs of a tile overlapped through the tensor cores' asynchrony:

* the records of tile ``k + 2`` are gathered by ``cp.async`` (codes into a byte ring of unswizzled 64x64 blocks, the
  four fp32 scales beside them, the bf16 RoPE dims into a 16-bit ring the score products read as they land) while
  the score products of tile ``k`` run, their list entries loaded a step earlier (else the issue waits for them);
* ``P V`` of tile ``k`` is issued as eight products, one a 64-dim block of the output, and tile ``k + 1``'s codes are
  decoded into the 16-bit tile a block at a time, each block once its product has read it
  (``bf16(fp32(e4m3) * scale)``, the V3.2 rule);
* the softmax of tile ``k`` is what runs alone.

Measured before this form, the lockstep small-head kernel with the decode and the copies' issue on the chain
(``docs/perf-notes.md``, sparse section): 7220 cycles a tile at h_q=16, slower than the warp-specialized kernel.

Entries outside the cache or past the list's length are not read (codes and scales zero) and masked in the softmax,
so NaN in unused cache rows never reaches the output. Split partials are merged by the combine kernel, which also
applies an attention sink to them; rows written straight to ``out`` get the sink here.
"""

from __future__ import annotations

import torch

from ..._runtime import gluon_available

#: Query rows a program takes: the N of every product (heads past ``h_q`` masked).
R = 16
#: Keys a tile: the 64-row side of ``wgmma``.
BLOCK_N = 64
#: Stages of the record ring: each tile is gathered two tiles ahead of its decode.
STAGES = 3
TRACE_BUF = None  # diagnostic only

if gluon_available():
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        async_copy,
        fence_async_shared,
        warpgroup_mma,
        warpgroup_mma_wait,
    )

    from .decode_dense_sm90 import _piece_bounds, _request_span
    from .decode_dense_sm90_ws import _dequant, _slot_records, _stamp

    # a global a kernel reads must be a constexpr
    _STAGES = gl.constexpr(STAGES)
    _R = gl.constexpr(R)
    _BLOCK_N = gl.constexpr(BLOCK_N)
    # copy layouts: a warp's copy instruction reads whole records' bytes (the codes: one 512-byte record a warp;
    # the RoPE dims: four 128-byte ones), not 64-byte pieces of eight (2428 cycles a tile to issue that way)
    _CODES_COPY = gl.constexpr(gl.BlockedLayout([1, 16], [1, 32], [4, 1], [1, 0]))  # [64, 512] bytes
    _ROPE_COPY = gl.constexpr(gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0]))  # [64, 64] bf16
    _SC_COPY = gl.constexpr(gl.BlockedLayout([1, 2], [16, 2], [4, 1], [1, 0]))  # [64, 4] fp32 scales, 8 B a thread

    @gluon.jit
    def _entries_in(bt_row, start, tok_hi, LAYOUT: gl.constexpr):
        """List entries ``start .. start + 64`` (-1 past ``tok_hi``) in ``LAYOUT``'s row slice."""
        offs_j = start + gl.arange(0, 64, layout=gl.SliceLayout(1, LAYOUT))
        return gl.load(bt_row + offs_j, mask=offs_j < tok_hi, other=-1)

    @gluon.jit
    def _entries(bt_row, start, tok_hi):
        """A tile's list entries in the row slices of the three copy layouts of :func:`_issue_records` (loaded a
        step before the copies are issued, so the issue does not wait for them)."""
        return (_entries_in(bt_row, start, tok_hi, _CODES_COPY), _entries_in(bt_row, start, tok_hi, _ROPE_COPY),
                _entries_in(bt_row, start, tok_hi, _SC_COPY))

    @gluon.jit
    def _copy_rows(k_ptr, ent, dst, start, tok_hi, page_block_size, num_blocks, stride_kb, stride_kp,
                   OFFSET: gl.constexpr, WIDTH: gl.constexpr, dtype: gl.constexpr, LAYOUT: gl.constexpr):
        """``cp.async`` ``WIDTH`` elements of ``dtype`` at byte ``OFFSET`` of each record of entries ``ent`` (in
        ``LAYOUT``'s row slice) into ``dst`` [64, WIDTH]; entries past ``tok_hi`` or outside the cache zero-filled."""
        offs_j = start + gl.arange(0, 64, layout=gl.SliceLayout(1, LAYOUT))
        rec, mask_j = _slot_records(k_ptr, ent, offs_j, tok_hi, page_block_size, num_blocks, stride_kb, stride_kp)
        offs_e = gl.arange(0, WIDTH, layout=gl.SliceLayout(0, LAYOUT))
        src = (rec + OFFSET).to(gl.pointer_type(dtype))
        async_copy.async_copy_global_to_shared(dst, src[:, None] + offs_e[None, :], mask=mask_j[:, None])

    @gluon.jit
    def _issue_records(k_ptr, ent_c, ent_r, ent_s, codes, rope, scales, stage, start, tok_hi, page_block_size,
                       num_blocks, stride_kb, stride_kp):
        """Issue and commit as one group the ``cp.async`` copies of the V3.2 records of list entries ``start ..
        start + 64`` (``ent_*``: from :func:`_entries`): the codes into ``codes.index(stage)`` [64, 512] bytes, the
        RoPE dims into ``rope.index(stage)`` [64, 64] bf16, the four scales into ``scales.index(stage)`` [64, 4]
        fp32."""
        _copy_rows(k_ptr, ent_c, codes.index(stage), start, tok_hi, page_block_size, num_blocks, stride_kb,
                   stride_kp, 0, 512, gl.uint8, _CODES_COPY)
        _copy_rows(k_ptr, ent_r, rope.index(stage), start, tok_hi, page_block_size, num_blocks, stride_kb,
                   stride_kp, 528, 64, gl.bfloat16, _ROPE_COPY)
        _copy_rows(k_ptr, ent_s, scales.index(stage), start, tok_hi, page_block_size, num_blocks, stride_kb,
                   stride_kp, 512, 4, gl.float32, _SC_COPY)
        async_copy.commit_group()

    @gluon.jit
    def _decode_scale_block(codes, scales, k16, stage, t: gl.constexpr):
        """Decode dims ``128t ..`` (one scale's block) of the tile in ring stage ``stage`` into the 16-bit tile
        ``k16`` [64, 512]: ``bf16(fp32(e4m3) * scale_t)``."""
        DEC: gl.constexpr = gl.BlockedLayout([1, 16], [4, 8], [4, 1], [1, 0])  # eight threads a 128-byte row
        # scale t as a [64, 1] column in DEC itself (its columns replicated), summed to DEC's row slice
        sc = gl.sum(scales.index(stage).slice(t, 1, dim=1).load(DEC), axis=1)
        block = codes.index(stage).slice(t * 128, 128, dim=1).load(DEC)
        k16.slice(t * 128, 128, dim=1).store(_dequant(block, sc, gl.bfloat16))

    @gluon.jit
    def _store_block(acc, inv_l, c: gl.constexpr, offs_n, out_ptr, o_acc_ptr, req64, head_s, mask_r, stride_ob,
                     stride_oh, h_q, n_split, split_lo, split_idx):
        """Output dims ``64c ..`` of the request's rows (``acc`` [64 dims, R] fp32 unnormalized): to ``out`` in
        bf16, or, for a split request, to its slot of the fp32 partials (``o_accum`` [slots, 1, h_q, 512])."""
        o = acc * inv_l[None, :]
        dims = c * 64 + offs_n
        if n_split <= 1:
            ptrs = out_ptr + req64 * stride_ob + head_s * stride_oh
            gl.store(ptrs[None, :] + dims[:, None], o.to(out_ptr.dtype.element_ty), mask=mask_r[None, :])
        else:
            slot = (split_lo + split_idx).to(gl.int64)
            rows = slot * h_q + head_s
            gl.store(o_acc_ptr + rows[None, :] * 512 + dims[:, None], o, mask=mask_r[None, :])

    @gluon.jit
    def _sparse_decode_sm90_small_heads_kernel(
        q_ptr, k_ptr, block_table_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
        out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, counters_ptr,
        stride_qb, stride_qs, stride_qh,
        stride_kb, stride_kp, stride_kh,
        stride_bt,
        stride_ob, stride_os, stride_oh,
        stride_lb, stride_lh,
        s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks, num_blocks, scale_log2,
        sink_ptr, trace_ptr,
        P_SMEM: gl.constexpr, HAS_SINK: gl.constexpr, TRACE: gl.constexpr,
    ):
        """One program a piece of the split-KV plan over query tokens (``s_q`` = 1, ``group`` = ``h_q`` heads of
        one KV head); arguments as :func:`openmla.ops.decode_dense.splitkv_args` gives them, with the token lists
        as the block table, ``k_ptr`` the cache's bytes, ``sink_ptr`` fp32 [h_q] with ``HAS_SINK``."""
        S_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, _R, 16])
        LOAD: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
        LOAD8: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [4, 1], [1, 0])
        SMEM: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        PLAIN: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0])
        COL_S: gl.constexpr = gl.SliceLayout(0, S_LAYOUT)

        # Q and the 16-bit tile as one-element arrays indexed in the loop by a zero the compiler cannot see: a
        # loop-invariant operand has all its products' shared-memory descriptors hoisted out of the loop, and spilled
        q_one = gl.allocate_shared_memory(gl.bfloat16, [1, _R, 512], SMEM)
        qpe_one = gl.allocate_shared_memory(gl.bfloat16, [1, _R, 64], SMEM)
        k16_one = gl.allocate_shared_memory(gl.bfloat16, [1, _BLOCK_N, 512], SMEM)
        # the NVMMA layout keeps each 64-dim block of the tile in 8 KB of its own: the decode writes it block by block
        k16_blocks = k16_one._reinterpret(gl.bfloat16, [8, _BLOCK_N, 64], SMEM)
        # 128-byte swizzled blocks of 128 codes (one scale's): a warp's copy of one record writes four whole bank
        # rows, its decode loads read one 128-byte row a transaction
        codes = gl.allocate_shared_memory(gl.uint8, [_STAGES, _BLOCK_N, 512],
                                          gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=8, rank=2))
        rope = gl.allocate_shared_memory(gl.bfloat16, [_STAGES, _BLOCK_N, 64], SMEM)
        scales = gl.allocate_shared_memory(gl.float32, [_STAGES, _BLOCK_N, 4], PLAIN)
        p_smem = gl.allocate_shared_memory(gl.bfloat16, [_BLOCK_N, _R], P_SMEM)  # Pᵀ: [keys, rows]

        part = gl.program_id(1)
        begin_req, begin_tok, end_req, end_tok, begin_split = _piece_bounds(sched_ptr, part)
        offs_r_ld = gl.arange(0, _R, layout=gl.SliceLayout(1, LOAD))
        offs_c_ld = gl.arange(0, 64, layout=gl.SliceLayout(0, LOAD))
        offs_r_s = gl.arange(0, _R, layout=COL_S)  # query rows (heads) along N
        offs_n = gl.arange(0, _BLOCK_N, layout=gl.SliceLayout(1, S_LAYOUT))  # keys (or output dims) along M
        mask_r = offs_r_s < rows
        head_s = offs_r_s

        for req in range(begin_req, end_req + 1):
            req64 = req.to(gl.int64)
            s_k, tok_lo, tok_hi, split_lo, n_split, split_idx = _request_span(
                req, begin_req, begin_tok, end_req, end_tok, begin_split, seqlens_ptr, num_splits_ptr, max_blocks,
                page_block_size)
            bt_row = block_table_ptr + req64 * stride_bt

            # Q [R, 576] -> shared memory, rows past h_q zero
            mask_r_ld = offs_r_ld < rows
            q_row = q_ptr + req64 * stride_qb + offs_r_ld * stride_qh
            for c in gl.static_range(8):
                q_chunk = gl.load(q_row[:, None] + c * 64 + offs_c_ld[None, :], mask=mask_r_ld[:, None], other=0)
                q_one.index(0).slice(c * 64, 64, dim=1).store(q_chunk)
            q_chunk = gl.load(q_row[:, None] + 512 + offs_c_ld[None, :], mask=mask_r_ld[:, None], other=0)
            qpe_one.index(0).store(q_chunk)

            m_i = gl.full([_R], float("-inf"), gl.float32, layout=COL_S)
            l_i = gl.zeros([_R], gl.float32, layout=COL_S)
            acc0 = gl.zeros([_BLOCK_N, _R], gl.float32, layout=S_LAYOUT)  # Oᵀ dims 0..63, and so on
            acc1 = gl.zeros([_BLOCK_N, _R], gl.float32, layout=S_LAYOUT)
            acc2 = gl.zeros([_BLOCK_N, _R], gl.float32, layout=S_LAYOUT)
            acc3 = gl.zeros([_BLOCK_N, _R], gl.float32, layout=S_LAYOUT)
            acc4 = gl.zeros([_BLOCK_N, _R], gl.float32, layout=S_LAYOUT)
            acc5 = gl.zeros([_BLOCK_N, _R], gl.float32, layout=S_LAYOUT)
            acc6 = gl.zeros([_BLOCK_N, _R], gl.float32, layout=S_LAYOUT)
            acc7 = gl.zeros([_BLOCK_N, _R], gl.float32, layout=S_LAYOUT)
            n_tiles = gl.cdiv(tok_hi - tok_lo, _BLOCK_N)

            # the request's first two tiles in flight, then tile 0 decoded
            ent_c, ent_r, ent_s = _entries(bt_row, tok_lo, tok_hi)
            _issue_records(k_ptr, ent_c, ent_r, ent_s, codes, rope, scales, 0, tok_lo, tok_hi, page_block_size,
                           num_blocks, stride_kb, stride_kp)
            ent_c, ent_r, ent_s = _entries(bt_row, tok_lo + _BLOCK_N, tok_hi)
            _issue_records(k_ptr, ent_c, ent_r, ent_s, codes, rope, scales, 1, tok_lo + _BLOCK_N, tok_hi,
                           page_block_size, num_blocks, stride_kb, stride_kp)
            ent_c, ent_r, ent_s = _entries(bt_row, tok_lo + 2 * _BLOCK_N, tok_hi)  # for the loop's first issue
            # tile 0's entries in the scores' layout, for its mask (each step loads the next tile's)
            slot_s = gl.load(bt_row + tok_lo + offs_n, mask=tok_lo + offs_n < tok_hi, other=-1)
            async_copy.wait_group(1)
            gl.thread_barrier()  # every thread's copies of tile 0 landed
            opaque0 = n_tiles >> 30
            for t in gl.static_range(4):
                _decode_scale_block(codes, scales, k16_one.index(opaque0), 0, t)
            fence_async_shared()
            gl.thread_barrier()

            for it in range(0, n_tiles):
                start = tok_lo + it * _BLOCK_N
                stage = it % _STAGES
                opaque0 = it >> 30
                k_tile = k16_one.index(opaque0)
                _stamp(trace_ptr, it, 0, TRACE, 4)
                # scores of tile it (its keys decoded, its RoPE dims as they landed)
                s = gl.zeros([_BLOCK_N, _R], gl.float32, layout=S_LAYOUT)
                s = warpgroup_mma(k_tile, q_one.index(opaque0).permute((1, 0)), s, use_acc=False, is_async=True)
                s = warpgroup_mma(rope.index(stage), qpe_one.index(opaque0).permute((1, 0)), s, is_async=True)
                # under them: tile it + 2's copies (into the stage tile it - 1 has left) and the next step's entries
                _issue_records(k_ptr, ent_c, ent_r, ent_s, codes, rope, scales, (it + 2) % _STAGES,
                               start + 2 * _BLOCK_N, tok_hi, page_block_size, num_blocks, stride_kb, stride_kp)
                ent_c, ent_r, ent_s = _entries(bt_row, start + 3 * _BLOCK_N, tok_hi)
                # the next tile's mask entries now: loaded just before the softmax, their latency was on it
                nxt_j = start + _BLOCK_N + offs_n
                slot_n = gl.load(bt_row + nxt_j, mask=nxt_j < tok_hi, other=-1)
                _stamp(trace_ptr, it, 1, TRACE, 4)
                s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
                _stamp(trace_ptr, it, 2, TRACE, 4)

                # online softmax down the columns; keys past the list or outside the cache masked
                s = s * scale_log2
                offs_j = start + offs_n
                visible = (offs_j < tok_hi) & (slot_s >= 0) & (slot_s // page_block_size < num_blocks)
                s = gl.where(visible[:, None], s, float("-inf"))
                m_new = gl.maximum(m_i, gl.max(s, axis=0))
                # a row that has seen no key yet keeps m = -inf; shift by 0 so exp2 gives 0, not NaN
                m_shift = gl.where(m_new == float("-inf"), 0.0, m_new)
                p = gl.exp2(s - m_shift[None, :])
                alpha = gl.exp2(m_i - m_shift)
                l_i = l_i * alpha + gl.sum(p, axis=0)
                m_i = m_new
                p_smem.store(p.to(gl.bfloat16))
                fence_async_shared()
                gl.thread_barrier()
                _stamp(trace_ptr, it, 3, TRACE, 4)

                # P V as eight products, one a 64-dim block of the output
                acc0 = warpgroup_mma(k16_blocks.index(opaque0 + 0).permute((1, 0)), p_smem, acc0 * alpha[None, :],
                                     is_async=True)
                acc1 = warpgroup_mma(k16_blocks.index(opaque0 + 1).permute((1, 0)), p_smem, acc1 * alpha[None, :],
                                     is_async=True)
                acc2 = warpgroup_mma(k16_blocks.index(opaque0 + 2).permute((1, 0)), p_smem, acc2 * alpha[None, :],
                                     is_async=True)
                acc3 = warpgroup_mma(k16_blocks.index(opaque0 + 3).permute((1, 0)), p_smem, acc3 * alpha[None, :],
                                     is_async=True)
                acc4 = warpgroup_mma(k16_blocks.index(opaque0 + 4).permute((1, 0)), p_smem, acc4 * alpha[None, :],
                                     is_async=True)
                acc5 = warpgroup_mma(k16_blocks.index(opaque0 + 5).permute((1, 0)), p_smem, acc5 * alpha[None, :],
                                     is_async=True)
                acc6 = warpgroup_mma(k16_blocks.index(opaque0 + 6).permute((1, 0)), p_smem, acc6 * alpha[None, :],
                                     is_async=True)
                acc7 = warpgroup_mma(k16_blocks.index(opaque0 + 7).permute((1, 0)), p_smem, acc7 * alpha[None, :],
                                     is_async=True)
                # under them: tile it + 1 decoded into the 16-bit tile, each block once its product is done
                _stamp(trace_ptr, it, 4, TRACE, 4)
                async_copy.wait_group(1)  # tile it + 1's copies landed (it + 2's may not have)
                gl.thread_barrier()
                _stamp(trace_ptr, it, 5, TRACE, 4)
                nxt = (it + 1) % _STAGES
                k16 = k16_one.index(opaque0)
                acc0, acc1 = warpgroup_mma_wait(num_outstanding=6, deps=(acc0, acc1))
                _decode_scale_block(codes, scales, k16, nxt, 0)
                acc2, acc3 = warpgroup_mma_wait(num_outstanding=4, deps=(acc2, acc3))
                _decode_scale_block(codes, scales, k16, nxt, 1)
                acc4, acc5 = warpgroup_mma_wait(num_outstanding=2, deps=(acc4, acc5))
                _decode_scale_block(codes, scales, k16, nxt, 2)
                acc6, acc7 = warpgroup_mma_wait(num_outstanding=0, deps=(acc6, acc7))
                _decode_scale_block(codes, scales, k16, nxt, 3)
                fence_async_shared()  # the next step's products read the decoded tile and Pᵀ is rewritten
                gl.thread_barrier()
                slot_s = slot_n
                _stamp(trace_ptr, it, 6, TRACE, 4)
            async_copy.wait_group(0)  # the copies past the request's end, before the next request's
            gl.thread_barrier()

            empty = l_i == 0.0
            inv_l = gl.where(empty, 0.0, 1.0 / l_i)
            lse2 = gl.where(empty, float("-inf"), m_i + gl.log2(l_i))
            if HAS_SINK:
                if n_split <= 1:  # split rows get the sink in the combine kernel, from the merged LSE
                    # out *= 1 / (1 + exp(sink - lse)), base 2: a +inf sink gives 0, -inf leaves out as it is
                    sink2 = gl.load(sink_ptr + head_s, mask=mask_r, other=0.0) * 1.4426950408889634
                    inv_l = gl.where(empty, 0.0, inv_l / (1.0 + gl.exp2(sink2 - lse2)))
            _store_block(acc0, inv_l, 0, offs_n, out_ptr, o_acc_ptr, req64, head_s, mask_r, stride_ob, stride_oh,
                         h_q, n_split, split_lo, split_idx)
            _store_block(acc1, inv_l, 1, offs_n, out_ptr, o_acc_ptr, req64, head_s, mask_r, stride_ob, stride_oh,
                         h_q, n_split, split_lo, split_idx)
            _store_block(acc2, inv_l, 2, offs_n, out_ptr, o_acc_ptr, req64, head_s, mask_r, stride_ob, stride_oh,
                         h_q, n_split, split_lo, split_idx)
            _store_block(acc3, inv_l, 3, offs_n, out_ptr, o_acc_ptr, req64, head_s, mask_r, stride_ob, stride_oh,
                         h_q, n_split, split_lo, split_idx)
            _store_block(acc4, inv_l, 4, offs_n, out_ptr, o_acc_ptr, req64, head_s, mask_r, stride_ob, stride_oh,
                         h_q, n_split, split_lo, split_idx)
            _store_block(acc5, inv_l, 5, offs_n, out_ptr, o_acc_ptr, req64, head_s, mask_r, stride_ob, stride_oh,
                         h_q, n_split, split_lo, split_idx)
            _store_block(acc6, inv_l, 6, offs_n, out_ptr, o_acc_ptr, req64, head_s, mask_r, stride_ob, stride_oh,
                         h_q, n_split, split_lo, split_idx)
            _store_block(acc7, inv_l, 7, offs_n, out_ptr, o_acc_ptr, req64, head_s, mask_r, stride_ob, stride_oh,
                         h_q, n_split, split_lo, split_idx)
            if n_split <= 1:
                lse = gl.where(empty, float("inf"), lse2 * 0.6931471805599453)
                gl.store(lse_ptr + req64 * stride_lb + head_s * stride_lh, lse, mask=mask_r)
            else:
                slot = (split_lo + split_idx).to(gl.int64)
                gl.store(lse_acc_ptr + slot * h_q + head_s, lse2, mask=mask_r)

    def p_smem_layout():
        """Shared layout of ``Pᵀ`` [64, 16] bf16: swizzle as wide as one of its rows (32 bytes)."""
        return gl.NVMMASharedLayout(swizzle_byte_width=32, element_bitwidth=16, rank=2)


def sparse_decode_sm90_small_heads_fwd(q, k_cache, lists, lens, sched, splits, out_tok, lse_tok, workspace,
                                       softmax_scale: float, attn_sink: torch.Tensor | None) -> None:
    """Launch the kernel over ``b * s_q`` query tokens as requests (:func:`.decode_sparse_sm90.sparse_decode_sm90_fwd`
    plans them): ``q`` [tokens, 1, h_q, 576] bf16 (``h_q`` <= 16), ``k_cache`` the V3.2 records' bytes, ``lists``
    int32 [tokens, topk], ``lens`` int32 [tokens], ``sched``/``splits`` the split-KV plan over one program a piece,
    ``out_tok`` [tokens, 1, h_q, 512] bf16, ``lse_tok`` fp32 [tokens, h_q, 1], ``workspace`` the split partials.
    The caller merges split rows with the combine kernel."""
    from ..decode_dense import splitkv_args
    from ..launch import launch

    parts = sched.shape[0]
    launch(_sparse_decode_sm90_small_heads_kernel, (1, parts),
        *splitkv_args(q, k_cache, lists, lens, sched, splits, out_tok, lse_tok, workspace, 1, softmax_scale),
        attn_sink if attn_sink is not None else lse_tok, TRACE_BUF if TRACE_BUF is not None else lse_tok,
        P_SMEM=p_smem_layout(), HAS_SINK=attn_sink is not None, TRACE=TRACE_BUF is not None,
        num_warps=4,
    )
