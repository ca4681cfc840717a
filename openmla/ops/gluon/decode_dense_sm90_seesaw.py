"""Dense MLA decoding for Hopper (sm_90a), two warpgroups in a "seesaw": each computes the scores of every other
KV tile and keeps one half of the output.

Why a fourth Hopper kernel: in :mod:`.decode_dense_sm90_ws` one softmax warpgroup computes every score tile
(64x64, K=576: 36 N=64 products) while two output warpgroups only multiply ``P V``; with two K stages each
stage is held from its copy until both output halves have used it, and the trace build measured the period
of a tile at about half of that hold (H200, h_q=128: 3418 cycles, ~64 % of the tensor pipe). Here the work is
split the other way, as FlashMLA's Hopper kernel does (its "seesaw", ``flashmla-spec.md`` §5), in our own form:

* KV tiles go in pairs: tile ``2j`` into stage 0, owned by warpgroup 0, tile ``2j+1`` into stage 1, owned by
  warpgroup 1. Each warpgroup computes its own tile's scores, so the two score products of a pair run at once.
* Warpgroup 0 keeps ``O[:, :256]``, warpgroup 1 ``O[:, 256:]``. The pair shares one running max: warpgroup 0
  publishes ``m_a = max(m, rowmax S_a)``, warpgroup 1 ``m_new = max(m_a, rowmax S_b)``. Each multiplies its own
  tile's ``P`` from registers by its half of V at once, and the other tile's ``P`` from shared memory (stored
  into the stage's RoPE box, dead after the scores), rescaled to ``m_new`` (warpgroup 0 rescales its ``P_a``
  by ``exp2(m_a - m_new)`` before publishing it).
* No loader partition: each warpgroup issues the TMA boxes of the next pair that only it still reads, the
  moment it is done with them (warpgroup 0: stage 0's left half after its own ``P V``, stage 1's left half and
  RoPE box after its second ``P V``; warpgroup 1 the rest), so a stage's halves are refilled separately.
* Each warpgroup keeps its own partial ``l`` (scaled to the pair's max); the two are summed at the end.

A request's last, partial tile (and the second tile of a pair past the end) is brought whole by TMA from a
page the request owns (or page 0 of the cache when it has none); its rows past the end are zeroed in shared
memory by the tile's owner before any ``P V`` (a cache may hold NaN past a sequence's end) and masked in the
scores. Serves 16-bit caches with (576, 512) dims whose pages hold whole 64-key tiles (:func:`.decode_dense_sm90_ws.tma_view`),
any row count (64-row tiles), causal or not; split partials are merged by the combine kernel.

Shared memory (bf16): Q 72 KB, two K stages 144 KB, maxima and partial sums 1 KB: 217 KB of the 227 KB.
Registers: 256 threads, so each warpgroup may hold 255 (a 64x256 fp32 accumulator is 128 of them).
"""

from __future__ import annotations

import torch

from ..._runtime import gluon_available
from ..combine import combine_splits
from ..decode_dense import split_workspace, splitkv_args
from ..launch import launch
from ..schedule import SCHED_BLOCK

BLOCK_M = 64
BLOCK_N = 64
WG_WARPS = 4  # each of the two partitions is one warpgroup
WG1_REGS = 256  # the second warpgroup's registers (setmaxnreg): 8 warps of 256 use the whole register file
NAMED_BARS = True  # the pair's hand-overs on hardware barriers (:func:`_pair_bar`)


if gluon_available():
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        async_copy,
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )

    from .decode_dense_sm90 import _piece_bounds, _request_span
    from .decode_dense_sm90_ws import _store_columns, _tiles_of

    @gluon.jit
    def _issue_boxes(k_desc, bt_row, start, page_block_size, max_blocks, num_blocks, k_lo, k_hi, k_pe, k_ready,
                     stage, FIRST: gl.constexpr, LAST: gl.constexpr, D_V: gl.constexpr):
        """TMA boxes ``FIRST .. LAST-1`` (64 columns each: value dims, then the RoPE box) of the tile of keys
        ``start ..`` into ``stage``, box ``c`` on ready barrier ``stage * BOXES + c``. The tile's page comes from
        the block-table row ``bt_row``, clamped to the table and the cache: a tile past the request's end brings
        a page that exists, and its rows are zeroed before any product reads them as values."""
        HALF: gl.constexpr = D_V // 2
        BOXES: gl.constexpr = D_V // 64 + 1
        blk = gl.minimum(start // page_block_size, max_blocks - 1)
        page = gl.minimum(gl.maximum(gl.load(bt_row + blk), 0), num_blocks - 1)
        row = page * page_block_size + start % page_block_size
        for c in gl.static_range(FIRST, LAST):
            bar = k_ready.index(stage * BOXES + c)
            mbarrier.expect(bar, 64 * 64 * 2)  # 16-bit keys
            if c < HALF // 64:
                tma.async_copy_global_to_shared(k_desc, [row, c * 64], bar, k_lo.index(stage).slice(c * 64, 64, dim=1))
            elif c < D_V // 64:
                tma.async_copy_global_to_shared(k_desc, [row, c * 64], bar,
                                                k_hi.index(stage).slice((c - HALF // 64) * 64, 64, dim=1))
            else:
                tma.async_copy_global_to_shared(k_desc, [row, D_V], bar, k_pe.index(stage))

    @gluon.jit
    def _zero_rows_past(k_lo_s, k_hi_s, n_valid, D_V: gl.constexpr, PARTITION_WARPS: gl.constexpr):
        """Zero the value rows ``n_valid ..`` of one K stage (both halves), fenced for the tensor cores: a tile
        that runs past the request's end was brought whole, with whatever the page holds there."""
        HALF: gl.constexpr = D_V // 2
        Z: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [PARTITION_WARPS, 1], [1, 0])
        keep = (gl.arange(0, 64, layout=gl.SliceLayout(1, Z)) < n_valid)[:, None]
        for c in gl.static_range(HALF // 64):
            lo = k_lo_s.slice(c * 64, 64, dim=1)
            lo.store(gl.where(keep, lo.load(Z), 0.0))
            hi = k_hi_s.slice(c * 64, 64, dim=1)
            hi.store(gl.where(keep, hi.load(Z), 0.0))
        fence_async_shared()
        gl.thread_barrier()

    @gluon.jit
    def _scores_grouped(q_lo, q_hi, q_pe, k_lo, k_hi, k_pe, k_ready, stage, phase, S_LAYOUT: gl.constexpr,
                        BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D_V: gl.constexpr):
        """Issue ``S = Q Kᵀ`` of K ``stage`` as three products (left value half, right half, RoPE), each once its
        boxes have landed. Three products rather than one per box: one per box holds a pair of shared-memory
        descriptors per box in registers, which this kernel's accumulator leaves no room for."""
        BOXES: gl.constexpr = D_V // 64 + 1
        LEFT: gl.constexpr = D_V // 128
        for c in gl.static_range(LEFT):
            mbarrier.wait(k_ready.index(stage * BOXES + c), phase)
        s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=S_LAYOUT)
        s = warpgroup_mma(q_lo, k_lo.index(stage).permute((1, 0)), s, use_acc=False, is_async=True)
        for c in gl.static_range(LEFT, 2 * LEFT):
            mbarrier.wait(k_ready.index(stage * BOXES + c), phase)
        s = warpgroup_mma(q_hi, k_hi.index(stage).permute((1, 0)), s, is_async=True)
        mbarrier.wait(k_ready.index(stage * BOXES + BOXES - 1), phase)
        return warpgroup_mma(q_pe, k_pe.index(stage).permute((1, 0)), s, is_async=True)

    @gluon.jit
    def _score_boxes(s, q_lo, q_hi, q_pe, k_lo_s, k_hi_s, k_pe_s, k_ready, stage, phase, FIRST: gl.constexpr,
                     LAST: gl.constexpr, D_V: gl.constexpr):
        """Issue the score products of boxes ``FIRST .. LAST-1`` of K ``stage`` into ``s`` (async, one commit
        group a box), each once its box has landed; box 0 starts the sum."""
        LEFT: gl.constexpr = D_V // 128
        BOXES: gl.constexpr = D_V // 64 + 1
        for c in gl.static_range(FIRST, LAST):
            mbarrier.wait(k_ready.index(stage * BOXES + c), phase)
            if c < LEFT:
                s = warpgroup_mma(q_lo.slice(c * 64, 64, dim=1), k_lo_s.slice(c * 64, 64, dim=1).permute((1, 0)), s,
                                  use_acc=c > 0, is_async=True)
            elif c < 2 * LEFT:
                s = warpgroup_mma(q_hi.slice((c - LEFT) * 64, 64, dim=1),
                                  k_hi_s.slice((c - LEFT) * 64, 64, dim=1).permute((1, 0)), s, is_async=True)
            else:
                s = warpgroup_mma(q_pe, k_pe_s.permute((1, 0)), s, is_async=True)
        return s

    @gluon.jit
    def _tile_softmax(s, m_run, start, tok_hi, limit, scale_log2, CAUSAL: gl.constexpr, S_LAYOUT: gl.constexpr,
                      BLOCK_N: gl.constexpr):
        """One tile's scores ``s`` (fp32, unscaled) to ``(p, m, m_shift, l)``: ``p = exp2(s*scale - m_shift)`` with
        ``m = max(m_run, rowmax)`` (``m_shift`` 0 where ``m`` is -inf) and ``l`` its row sums; keys at or past
        ``tok_hi`` (and, causal, past each row's ``limit``) get weight 0."""
        s = s * scale_log2
        offs_j = start + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, S_LAYOUT))
        if CAUSAL:
            visible = (offs_j[None, :] < tok_hi) & (offs_j[None, :] <= limit[:, None])
        else:
            visible = (offs_j < tok_hi)[None, :]
        s = gl.where(visible, s, float("-inf"))
        m = gl.maximum(m_run, gl.max(s, axis=1))
        m_shift = gl.where(m == float("-inf"), 0.0, m)
        p = gl.exp2(s - m_shift[:, None])
        return p, m, m_shift, gl.sum(p, axis=1)

    @gluon.jit
    def _pair_bar(WHICH: gl.constexpr, SYNC: gl.constexpr):
        """``NAMED_BARS``: warpgroup ``WHICH``'s hand-over of a tile's ``P`` and max to the other, on the CTA's
        hardware barrier ``8 + WHICH`` (256 threads: both warpgroups; Triton's partitions use barriers 0-2). The
        publisher arrives (``bar.arrive``: every thread, no wait; its stores and their async-proxy fence come
        first), the other warpgroup syncs (``bar.sync``). Each barrier is used once a pair by each side, and a
        publisher only arrives again after the other side's next hand-over, so its generations never mix."""
        x = gl.full([1], 0, gl.int32, layout=gl.BlockedLayout([1], [32], [4], [0]))
        if WHICH == 0:
            if SYNC:
                gl.inline_asm_elementwise("bar.sync 8, 256;\n\tmov.b32 $0, $1;", "=r,r", [x], dtype=gl.int32,
                                          is_pure=False, pack=1)
            else:
                gl.inline_asm_elementwise("bar.arrive 8, 256;\n\tmov.b32 $0, $1;", "=r,r", [x], dtype=gl.int32,
                                          is_pure=False, pack=1)
        else:
            if SYNC:
                gl.inline_asm_elementwise("bar.sync 9, 256;\n\tmov.b32 $0, $1;", "=r,r", [x], dtype=gl.int32,
                                          is_pure=False, pack=1)
            else:
                gl.inline_asm_elementwise("bar.arrive 9, 256;\n\tmov.b32 $0, $1;", "=r,r", [x], dtype=gl.int32,
                                          is_pure=False, pack=1)

    @gluon.jit
    def _publish_tile(p16, m, p_smem, m_smem, bar, WHICH: gl.constexpr, NAMED_BARS: gl.constexpr):
        """Hand a tile's ``P`` (16-bit, into its stage's RoPE box) and row max to the other warpgroup, on
        ``bar`` or (``NAMED_BARS``) hardware barrier ``8 + WHICH`` (:func:`_pair_bar`)."""
        p_smem.store(p16)
        m_smem.store(m)
        fence_async_shared()  # P is read next by the tensor cores
        if NAMED_BARS:
            _pair_bar(WHICH, False)
        else:
            gl.thread_barrier()
            mbarrier.arrive(bar, count=1)

    @gluon.jit
    def _await_tile(bar, phase, WHICH: gl.constexpr, NAMED_BARS: gl.constexpr):
        """Wait for warpgroup ``WHICH``'s hand-over (:func:`_publish_tile`)."""
        if NAMED_BARS:
            _pair_bar(WHICH, True)
        else:
            mbarrier.wait(bar, phase)

    @gluon.jit
    def _seesaw_warpgroup(q_ptr, block_table_ptr, seqlens_ptr, sched_ptr, num_splits_ptr, out_ptr, lse_ptr,
                          o_acc_ptr, lse_acc_ptr, stride_qb, stride_qs, stride_qh, stride_bt, stride_ob, stride_os,
                          stride_oh, stride_lb, stride_lh, s_q, h_q, group, rows, row_tiles, page_block_size,
                          max_blocks, num_blocks, scale_log2, k_desc, q_lo, q_hi, q_pe, k_lo, k_hi, k_pe, m_smem,
                          l_smem, bars, WG: gl.constexpr, CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr,
                          BLOCK_N: gl.constexpr, D_V: gl.constexpr, D_PE: gl.constexpr,
                          PARTITION_WARPS: gl.constexpr, NAMED_BARS: gl.constexpr):
        """Warpgroup ``WG`` (0 or 1) of the seesaw (module docstring): the scores of tiles ``2j + WG`` (stage
        ``WG``), output columns ``WG * D_V/2 ..``; warpgroup 0 also writes the LSE. ``NAMED_BARS``: the pair's
        hand-overs on hardware barriers (:func:`_pair_bar`)."""
        k_ready, q_ready, q_free, ready, l_ready = bars
        HALF: gl.constexpr = D_V // 2
        LEFT: gl.constexpr = HALF // 64  # boxes of the left value half
        BOXES: gl.constexpr = D_V // 64 + 1
        dtype: gl.constexpr = k_lo.dtype
        S_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[PARTITION_WARPS, 1],
                                                           instr_shape=[16, BLOCK_N, 16])
        O_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[PARTITION_WARPS, 1],
                                                           instr_shape=[16, HALF, 16])
        P_OPERAND: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=O_LAYOUT, k_width=2)
        ROW_S: gl.constexpr = gl.SliceLayout(1, S_LAYOUT)
        ROW_O: gl.constexpr = gl.SliceLayout(1, O_LAYOUT)
        ROWS_1D: gl.constexpr = gl.BlockedLayout([1], [32], [PARTITION_WARPS], [0])
        LOAD: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [PARTITION_WARPS, 1], [1, 0])
        pid_m = gl.program_id(0)
        kv_head = pid_m // row_tiles
        tile = pid_m % row_tiles
        begin_req, begin_tok, end_req, end_tok, begin_split = _piece_bounds(sched_ptr, gl.program_id(1))
        # index vectors are built where they are used: made here, once, they stay live across the KV loop
        if WG == 0:
            v_own = k_lo  # this warpgroup's value half, in both stages
        else:
            v_own = k_hi
        jp = 0  # pairs walked in this piece: the phase of every per-pair barrier
        for req in range(begin_req, end_req + 1):
            req64 = req.to(gl.int64)
            rq = req - begin_req
            s_k, tok_lo, tok_hi, split_lo, n_split, split_idx = _request_span(
                req, begin_req, begin_tok, end_req, end_tok, begin_split, seqlens_ptr, num_splits_ptr, max_blocks,
                page_block_size)
            n_tiles = _tiles_of(tok_lo, tok_hi, BLOCK_N)
            n_pairs = (n_tiles + 1) // 2
            bt_row = block_table_ptr + req64 * stride_bt

            offs_q = tile * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, LOAD))
            offs_c = gl.arange(0, 64, layout=gl.SliceLayout(0, LOAD))
            # this request's Q, half by each warpgroup (cp.async: its rows are (token, head) pairs), once both
            # are done with the last request's scores
            if rq > 0:
                mbarrier.wait(q_free, (rq - 1) & 1)
            q_row = (q_ptr + req64 * stride_qb + (offs_q // group) * stride_qs
                     + (kv_head * group + offs_q % group) * stride_qh)
            q_mask = (offs_q < rows)[:, None]
            for c in gl.static_range(LEFT):
                if WG == 0:
                    async_copy.async_copy_global_to_shared(q_lo.index(0).slice(c * 64, 64, dim=1),
                                                           q_row[:, None] + c * 64 + offs_c[None, :], mask=q_mask)
                else:
                    async_copy.async_copy_global_to_shared(q_hi.index(0).slice(c * 64, 64, dim=1),
                                                           q_row[:, None] + HALF + c * 64 + offs_c[None, :],
                                                           mask=q_mask)
            if WG == 1:
                async_copy.async_copy_global_to_shared(q_pe.index(0), q_row[:, None] + D_V + offs_c[None, :], mask=q_mask)
            async_copy.mbarrier_arrive(q_ready, increment_count=False)

            # this warpgroup's boxes of the first pair
            if WG == 0:
                _issue_boxes(k_desc, bt_row, tok_lo, page_block_size, max_blocks, num_blocks, k_lo, k_hi, k_pe,
                             k_ready, 0, 0, LEFT, D_V)
                _issue_boxes(k_desc, bt_row, tok_lo + BLOCK_N, page_block_size, max_blocks, num_blocks, k_lo, k_hi,
                             k_pe, k_ready, 1, 0, LEFT, D_V)
                _issue_boxes(k_desc, bt_row, tok_lo + BLOCK_N, page_block_size, max_blocks, num_blocks, k_lo, k_hi,
                             k_pe, k_ready, 1, BOXES - 1, BOXES, D_V)
            else:
                _issue_boxes(k_desc, bt_row, tok_lo, page_block_size, max_blocks, num_blocks, k_lo, k_hi, k_pe,
                             k_ready, 0, LEFT, BOXES, D_V)
                _issue_boxes(k_desc, bt_row, tok_lo + BLOCK_N, page_block_size, max_blocks, num_blocks, k_lo, k_hi,
                             k_pe, k_ready, 1, LEFT, BOXES - 1, D_V)
            mbarrier.wait(q_ready, rq & 1)
            fence_async_shared()  # Q came by cp.async; the tensor cores read it next

            t_s = (tile * BLOCK_M + gl.arange(0, BLOCK_M, layout=ROW_S)) // group
            limit = s_k - s_q + t_s  # [BLOCK_M] last key each row may see (causal)
            m_run = gl.full([BLOCK_M], float("-inf"), gl.float32, layout=ROW_S)
            l_run = gl.zeros([BLOCK_M], gl.float32, layout=ROW_S)
            acc = gl.zeros([BLOCK_M, HALF], gl.float32, layout=O_LAYOUT)
            if WG == 0:
                # rotated by one tile: an iteration takes warpgroup 1's P of pair ``pair``, then issues the scores
                # of its own tile of the next pair while that product runs (so the tensor cores have them queued
                # behind it), and goes through that tile's softmax and its own product. The first tile comes first.
                zero = (tok_lo > tok_hi + BLOCK_N * n_tiles).to(gl.int32)  # 0, opaque (see the loop below)
                s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=S_LAYOUT)
                s = _score_boxes(s, q_lo.index(zero), q_hi.index(zero), q_pe.index(zero), k_lo.index(zero),
                                 k_hi.index(zero), k_pe.index(zero), k_ready, zero, jp & 1, 0, BOXES, D_V)
                s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
                p, m_a, a_shift, l_a = _tile_softmax(s, m_run, tok_lo, tok_hi, limit, scale_log2, CAUSAL, S_LAYOUT,
                                                     BLOCK_N)
                p16 = p.to(dtype)
                if tok_lo + BLOCK_N > tok_hi:  # rows past the end: zero their values
                    _zero_rows_past(k_lo.index(zero), k_hi.index(zero), tok_hi - tok_lo, D_V, PARTITION_WARPS)
                _publish_tile(p16, m_a, k_pe.index(zero), m_smem[0], ready.index(0), 0, NAMED_BARS)
                acc = warpgroup_mma(gl.convert_layout(p16, P_OPERAND), v_own.index(zero), acc, is_async=True)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                if n_pairs > 1:  # done with stage 0's left half
                    _issue_boxes(k_desc, bt_row, tok_lo + 2 * BLOCK_N, page_block_size, max_blocks, num_blocks, k_lo,
                                 k_hi, k_pe, k_ready, zero, 0, LEFT, D_V)
                for pair in range(0, n_pairs):
                    phase = jp & 1
                    nxt = tok_lo + (2 * pair + 2) * BLOCK_N  # the next pair's first tile (this warpgroup's)
                    zero = (nxt > tok_hi + BLOCK_N * (n_tiles + 2)).to(gl.int32)  # 0, varying for the compiler
                    _await_tile(ready.index(1), phase, 1, NAMED_BARS)
                    m_new = m_smem[1].load(ROW_S)
                    c_a = gl.exp2(m_a - gl.where(m_new == float("-inf"), 0.0, m_new))
                    acc = acc * gl.convert_layout(c_a, ROW_O)[:, None]
                    l_run = (l_run * gl.exp2(m_run - a_shift) + l_a) * c_a
                    m_run = m_new
                    # (the product of warpgroup 1's P is issued in each branch: an accumulator in flight cannot
                    # enter a branch that waits for it)
                    if pair + 1 < n_pairs:
                        acc = warpgroup_mma(k_pe.index(1 + zero), v_own.index(1 + zero), acc, is_async=True)
                        nphase = (jp + 1) & 1
                        s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=S_LAYOUT)
                        s = _score_boxes(s, q_lo.index(zero), q_hi.index(zero), q_pe.index(zero), k_lo.index(zero),
                                         k_hi.index(zero), k_pe.index(zero), k_ready, zero, nphase, 0, LEFT, D_V)
                        acc = warpgroup_mma_wait(num_outstanding=LEFT, deps=(acc,))
                        # done with stage 1's left half and its RoPE box (P_b)
                        _issue_boxes(k_desc, bt_row, nxt + BLOCK_N, page_block_size, max_blocks, num_blocks, k_lo,
                                     k_hi, k_pe, k_ready, 1 + zero, 0, LEFT, D_V)
                        _issue_boxes(k_desc, bt_row, nxt + BLOCK_N, page_block_size, max_blocks, num_blocks, k_lo,
                                     k_hi, k_pe, k_ready, 1 + zero, BOXES - 1, BOXES, D_V)
                        s = _score_boxes(s, q_lo.index(zero), q_hi.index(zero), q_pe.index(zero), k_lo.index(zero),
                                         k_hi.index(zero), k_pe.index(zero), k_ready, zero, nphase, LEFT, BOXES, D_V)
                        s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
                        p, m_a, a_shift, l_a = _tile_softmax(s, m_run, nxt, tok_hi, limit, scale_log2, CAUSAL,
                                                             S_LAYOUT, BLOCK_N)
                        p16 = p.to(dtype)
                        if nxt + BLOCK_N > tok_hi:  # rows past the end: zero their values
                            _zero_rows_past(k_lo.index(zero), k_hi.index(zero), tok_hi - nxt, D_V, PARTITION_WARPS)
                        _publish_tile(p16, m_a, k_pe.index(zero), m_smem[0], ready.index(0), 0, NAMED_BARS)
                        acc = acc * gl.convert_layout(gl.exp2(m_run - a_shift), ROW_O)[:, None]
                        acc = warpgroup_mma(gl.convert_layout(p16, P_OPERAND), v_own.index(zero), acc, is_async=True)
                        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                        if pair + 2 < n_pairs:  # done with stage 0's left half
                            _issue_boxes(k_desc, bt_row, nxt + 2 * BLOCK_N, page_block_size, max_blocks, num_blocks,
                                         k_lo, k_hi, k_pe, k_ready, zero, 0, LEFT, D_V)
                    else:
                        acc = warpgroup_mma(k_pe.index(1 + zero), v_own.index(1 + zero), acc, is_async=True)
                        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                    jp += 1
            else:
                # warpgroup 1, pair by pair: the pair's max needs warpgroup 0's, which it publishes with its P
                for pair in range(0, n_pairs):
                    phase = jp & 1
                    start = tok_lo + (2 * pair + 1) * BLOCK_N  # this warpgroup's tile
                    nxt = tok_lo + (2 * pair + 2) * BLOCK_N  # the next pair's first tile
                    more = pair + 1 < n_pairs
                    # 0, as a value that varies in the loop for the compiler (``start`` never reaches past the
                    # request's last tile plus one): with constant stage indices it hoists every box's shared-memory
                    # descriptors out of the loop and spills them
                    zero = (start > tok_hi + BLOCK_N * n_tiles).to(gl.int32)
                    s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=S_LAYOUT)
                    s = _score_boxes(s, q_lo.index(zero), q_hi.index(zero), q_pe.index(zero), k_lo.index(1 + zero),
                                     k_hi.index(1 + zero), k_pe.index(1 + zero), k_ready, 1 + zero, phase, 0, BOXES,
                                     D_V)
                    s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
                    _await_tile(ready.index(0), phase, 0, NAMED_BARS)
                    m_a = m_smem[0].load(ROW_S)
                    p, m_pair, m_shift, l_own = _tile_softmax(s, gl.maximum(m_run, m_a), start, tok_hi, limit,
                                                              scale_log2, CAUSAL, S_LAYOUT, BLOCK_N)
                    p16 = p.to(dtype)
                    if start + BLOCK_N > tok_hi:  # rows past the end (or a tile wholly past it): zero their values
                        _zero_rows_past(k_lo.index(1 + zero), k_hi.index(1 + zero), tok_hi - start, D_V,
                                        PARTITION_WARPS)
                    _publish_tile(p16, m_pair, k_pe.index(1 + zero), m_smem[1], ready.index(1), 1, NAMED_BARS)
                    # O_R at m_a plus P_a V_a (P_a from shared memory), then at the pair's max plus P_b V_b
                    a_shift = gl.where(m_a == float("-inf"), 0.0, m_a)
                    acc = acc * gl.convert_layout(gl.exp2(m_run - a_shift), ROW_O)[:, None]
                    acc = warpgroup_mma(k_pe.index(zero), v_own.index(zero), acc, is_async=True)
                    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                    if more:  # done with stage 0's right half and its RoPE box (P_a)
                        _issue_boxes(k_desc, bt_row, nxt, page_block_size, max_blocks, num_blocks, k_lo, k_hi, k_pe,
                                     k_ready, zero, LEFT, BOXES, D_V)
                    acc = acc * gl.convert_layout(gl.exp2(m_a - m_shift), ROW_O)[:, None]
                    acc = warpgroup_mma(gl.convert_layout(p16, P_OPERAND), v_own.index(1 + zero), acc, is_async=True)
                    l_run = l_run * gl.exp2(m_run - m_shift) + l_own
                    m_run = m_pair
                    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                    if more:  # done with stage 1's right half
                        _issue_boxes(k_desc, bt_row, nxt + BLOCK_N, page_block_size, max_blocks, num_blocks, k_lo,
                                     k_hi, k_pe, k_ready, 1 + zero, LEFT, BOXES - 1, D_V)
                    jp += 1
            # both score products of every pair are done: Q may be replaced
            gl.thread_barrier()
            mbarrier.arrive(q_free, count=1)

            # the row sums: each warpgroup holds its tiles' share, both at the same max
            l_smem[WG].store(l_run)
            gl.thread_barrier()
            mbarrier.arrive(l_ready, count=1)
            mbarrier.wait(l_ready, rq & 1)
            l_i = l_run + l_smem[1 - WG].load(ROW_S)
            empty = l_i == 0.0
            inv_l = gl.where(empty, 0.0, 1.0 / l_i)
            offs_r_o = tile * BLOCK_M + gl.arange(0, BLOCK_M, layout=ROW_O)
            offs_v = WG * HALF + gl.arange(0, HALF, layout=gl.SliceLayout(0, O_LAYOUT))
            _store_columns(acc * gl.convert_layout(inv_l, ROW_O)[:, None], offs_r_o, offs_v, out_ptr, o_acc_ptr,
                           req64, kv_head, group, rows, s_q, h_q, n_split, split_lo, split_idx, stride_ob, stride_os,
                           stride_oh, D_V)
            if WG == 0:
                l_r = gl.convert_layout(l_i, ROWS_1D)
                m_r = gl.convert_layout(m_run, ROWS_1D)
                empty_r = l_r == 0.0
                lse2 = gl.where(empty_r, float("-inf"), m_r + gl.log2(l_r))
                offs_r = tile * BLOCK_M + gl.arange(0, BLOCK_M, layout=ROWS_1D)
                mask_r = offs_r < rows
                t_o = offs_r // group
                head_o = kv_head * group + offs_r % group
                if n_split <= 1:
                    lse = gl.where(empty_r, float("inf"), lse2 * 0.6931471805599453)
                    gl.store(lse_ptr + req64 * stride_lb + head_o * stride_lh + t_o, lse, mask=mask_r)
                else:
                    slot = (split_lo + split_idx).to(gl.int64)
                    gl.store(lse_acc_ptr + (slot * s_q + t_o) * h_q + head_o, lse2, mask=mask_r)

    @gluon.jit
    def _dense_decode_sm90_seesaw_kernel(
        q_ptr, k_ptr, block_table_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
        out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, counters_ptr,
        stride_qb, stride_qs, stride_qh,
        stride_kb, stride_kp, stride_kh,
        stride_bt,
        stride_ob, stride_os, stride_oh,
        stride_lb, stride_lh,
        s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks, num_blocks, scale_log2, k_desc,
        CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D_V: gl.constexpr, D_PE: gl.constexpr,
        WG_WARPS: gl.constexpr, WG1_REGS: gl.constexpr, NAMED_BARS: gl.constexpr,
    ):
        dtype: gl.constexpr = q_ptr.dtype.element_ty
        HALF: gl.constexpr = D_V // 2
        BOXES: gl.constexpr = D_V // 64 + 1
        gl.static_assert(D_PE == 64, "the RoPE box holds the other warpgroup's P: 64 dims")
        gl.static_assert(HALF % 64 == 0, "the value dims must split in two multiples of 64")
        gl.static_assert(BLOCK_N == 64, "P lives in a 64x64 RoPE box")
        SMEM: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        ROWS_SMEM: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[0])
        # Q with a unit leading dimension: the loop indexes it with a value the compiler cannot fold (the
        # warpgroup's loop) so that it does not hoist the descriptors of every box's product
        q_lo = gl.allocate_shared_memory(dtype, [1, BLOCK_M, HALF], SMEM)
        q_hi = gl.allocate_shared_memory(dtype, [1, BLOCK_M, HALF], SMEM)
        q_pe = gl.allocate_shared_memory(dtype, [1, BLOCK_M, D_PE], SMEM)
        k_lo = gl.allocate_shared_memory(dtype, [2, BLOCK_N, HALF], SMEM)
        k_hi = gl.allocate_shared_memory(dtype, [2, BLOCK_N, HALF], SMEM)
        k_pe = gl.allocate_shared_memory(dtype, [2, BLOCK_N, D_PE], SMEM)
        # the row maxima a pair publishes (m_a, then the pair's), and each warpgroup's row sums at the end
        m_smem = (gl.allocate_shared_memory(gl.float32, [BLOCK_M], ROWS_SMEM),
                  gl.allocate_shared_memory(gl.float32, [BLOCK_M], ROWS_SMEM))
        l_smem = (gl.allocate_shared_memory(gl.float32, [BLOCK_M], ROWS_SMEM),
                  gl.allocate_shared_memory(gl.float32, [BLOCK_M], ROWS_SMEM))

        k_ready = gl.allocate_shared_memory(gl.int64, [2 * BOXES, 1], mbarrier.MBarrierLayout())
        q_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        q_free = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())  # a tile's P and max
        l_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        for i in gl.static_range(2 * BOXES):
            mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(q_ready, count=2 * WG_WARPS * 32)  # every thread's cp.async arrival
        mbarrier.init(q_free, count=2)
        for i in gl.static_range(2):
            mbarrier.init(ready.index(i), count=1)
        mbarrier.init(l_ready, count=2)
        bars = (k_ready, q_ready, q_free, ready, l_ready)
        gl.warp_specialize([
            (_seesaw_warpgroup, (q_ptr, block_table_ptr, seqlens_ptr, sched_ptr, num_splits_ptr, out_ptr, lse_ptr,
                                 o_acc_ptr, lse_acc_ptr, stride_qb, stride_qs, stride_qh, stride_bt, stride_ob,
                                 stride_os, stride_oh, stride_lb, stride_lh, s_q, h_q, group, rows, row_tiles,
                                 page_block_size, max_blocks, num_blocks, scale_log2, k_desc, q_lo, q_hi, q_pe,
                                 k_lo, k_hi, k_pe, m_smem, l_smem, bars, 0, CAUSAL, BLOCK_M, BLOCK_N, D_V, D_PE,
                                 WG_WARPS, NAMED_BARS)),
            (_seesaw_warpgroup, (q_ptr, block_table_ptr, seqlens_ptr, sched_ptr, num_splits_ptr, out_ptr, lse_ptr,
                                 o_acc_ptr, lse_acc_ptr, stride_qb, stride_qs, stride_qh, stride_bt, stride_ob,
                                 stride_os, stride_oh, stride_lb, stride_lh, s_q, h_q, group, rows, row_tiles,
                                 page_block_size, max_blocks, num_blocks, scale_log2, k_desc, q_lo, q_hi, q_pe,
                                 k_lo, k_hi, k_pe, m_smem, l_smem, bars, 1, CAUSAL, BLOCK_M, BLOCK_N, D_V, D_PE,
                                 WG_WARPS, NAMED_BARS)),
        ], [WG_WARPS], [WG1_REGS])


def dense_decode_sm90_seesaw_fwd(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int,
    tile_scheduler_metadata: torch.Tensor,
    num_splits: torch.Tensor,
    softmax_scale: float,
    causal: bool,
    workspace: tuple[torch.Tensor, ...] | None = None,
    wg1_regs: int = WG1_REGS,
    named_bars: bool = NAMED_BARS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`openmla.ops.decode_dense.dense_decode_fwd`, on Hopper, for 16-bit caches with
    (576, 512) dims that :func:`.decode_dense_sm90_ws.tma_view` can describe (one KV head, pages of whole
    64-key tiles).

    q: [b, s_q, h_q, 576] bf16/fp16; k_cache: [num_blocks, page_block_size, 1, 576] same dtype; returns ``out``
    [b, s_q, h_q, 512] in q's dtype and ``lse`` [b, h_q, s_q] fp32. Split partials are merged by the combine
    kernel (a second launch). ``wg1_regs``: the second warpgroup's registers (a tuning knob), ``named_bars``: the
    pair's hand-overs on hardware barriers instead of mbarriers.
    """
    from .decode_dense_sm90_ws import tma_view

    b, s_q, h_q, d = q.shape
    h_kv = k_cache.shape[2]
    if (d, head_dim_v) != (576, 512):
        raise ValueError(f"the seesaw kernel reads (d, head_dim_v) = (576, 512), got {(d, head_dim_v)}")
    k_desc = tma_view(k_cache)
    if k_desc is None:
        raise ValueError("the seesaw kernel brings K tiles by TMA: one KV head, pages of whole 64-key tiles, "
                         f"16-byte aligned rows; got a cache of shape {tuple(k_cache.shape)}, strides "
                         f"{k_cache.stride()}")
    if SCHED_BLOCK % BLOCK_N:
        raise ValueError("the scheduler's unit must be a multiple of the sm_90 kernel's KV tile")
    rows = s_q * (h_q // h_kv)
    row_tiles = -(-rows // BLOCK_M)
    num_parts = tile_scheduler_metadata.shape[0]
    lse = torch.empty(b, h_q, s_q, dtype=torch.float32, device=q.device)
    if workspace is None:
        workspace = split_workspace(q, head_dim_v, num_parts)
    out = torch.empty(b, s_q, h_q, head_dim_v, dtype=q.dtype, device=q.device)
    launch(_dense_decode_sm90_seesaw_kernel, (row_tiles * h_kv, num_parts),
        *splitkv_args(q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits,
                      out, lse, workspace, row_tiles, softmax_scale), k_desc,
        CAUSAL=bool(causal and s_q > 1), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, D_V=head_dim_v, D_PE=d - head_dim_v,
        WG_WARPS=WG_WARPS, WG1_REGS=int(wg1_regs), NAMED_BARS=bool(named_bars), num_warps=WG_WARPS,
    )
    combine_splits(out, lse, workspace[0], workspace[1], num_splits)
    return out, lse
