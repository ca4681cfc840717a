"""Dense MLA decoding for Hopper (sm_90a): two warpgroups take turns at softmax ("seesaw").

:mod:`.decode_dense_sm90_ws` leaves every tile's softmax between that tile's scores and its products:
while one warpgroup turns S into P, the tensor cores have only half a tile's ``P V`` queued. Here the
two consumer warpgroups own alternate KV tiles of a request (warpgroup 0 the even ones, 1 the odd ones):

* the owner of tile ``t`` computes its scores ``S = Q Kᵀ`` [64, 64], waits for tile ``t-1``'s row max
  from the other warpgroup, turns S into P with the running max, hands P (shared memory) and the tile's
  statistics (row max, rescale factor, row sum) over on an mbarrier, and multiplies P (from registers) by
  its own half of V;
* the other warpgroup rescales its half of the output by the tile's factor and multiplies the handed-over
  P by its half of V.

Each warpgroup owns a 64x256 fp32 half of the output and applies every tile, in order, so both keep the
same running max and row sum and each stores its half at the end. A tile's softmax runs while the tensor
cores work on the other warpgroup's score and ``P V`` products. The chain of row maxima is serial (tile
``t`` needs ``t-1``'s) but short next to a tile's products. A 4-warp loader partition gathers Q and K
tiles through the block table by ``cp.async`` into a two-stage ring (that of :mod:`.decode_dense_sm90_ws`).

One P buffer serves both directions: the warpgroup that publishes tile ``t+1`` is the one that read tile
``t``'s P, and it publishes only after its product with it finished. Because tiles ``t`` and ``t+2`` share a
K stage and an owner, the owner finishes its own ``P V`` of tile ``t`` before it asks for tile ``t+2``.

A request with no key runs one fully masked tile. Split-KV plan, causal rule, masking and outputs are
those of :mod:`openmla.ops.decode_dense`; partials are merged by the combine kernel.
Shared memory (bf16, d=576): Q 72 KB, two K stages 144 KB, P 8 KB, statistics 768 B.
"""

from __future__ import annotations

import torch

from ..._runtime import gluon_available
from ..combine import combine_splits
from ..decode_dense import split_workspace, splitkv_args
from ..schedule import SCHED_BLOCK

BLOCK_M = 64
BLOCK_N = 64
NUM_WARPS = 4  # consumer warpgroup 0; consumer warpgroup 1 and the loader add 4 warps each
WORKER_WARPS = (4, 4)
MAXNREG = 168  # 384 threads share 64K registers
WORKER_REGS = (232, 56)  # consumer 1, loader; consumer 0 gets what is left

P_FROM_SMEM = True  # the owner's own P V reads P from shared memory (fewer live registers)

if gluon_available():
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        warpgroup_mma,
        warpgroup_mma_wait,
    )

    from .decode_dense_sm90 import _piece_bounds, _request_span
    from .decode_dense_sm90_ws import _acquire, _loader, _online_softmax, _scores, _tiles_of

    @gluon.jit
    def _finish_own(acc, k_free, stage):
        """Wait for this warpgroup's ``P V`` of its own tile and hand the tile's K stage back: the stage is
        this warpgroup's next tile's (tiles t and t+2 share it), so nothing else can be issued first."""
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        gl.thread_barrier()  # one thread arrives for the warpgroup
        mbarrier.arrive(k_free.index(stage), count=1)
        return acc

    @gluon.jit
    def _own_product(p, acc, v, p_smem, k_free, stage, p_done, P_OP: gl.constexpr, dtype: gl.constexpr,
                     P_FROM_SMEM: gl.constexpr):
        """``acc += P V`` for this warpgroup's own tile, P from the shared buffer it was just published in
        (``P_FROM_SMEM``: fewer live registers) or from registers; then the K stage goes back."""
        if P_FROM_SMEM:
            acc = warpgroup_mma(p_smem, v, acc, is_async=True)
        else:
            acc = warpgroup_mma(gl.convert_layout(p.to(dtype), P_OP), v, acc, is_async=True)
        acc = _finish_own(acc, k_free, stage)
        if P_FROM_SMEM:
            mbarrier.arrive(p_done, count=1)
        return acc

    @gluon.jit
    def _apply_handed(acc, l_o, m_o, v_half, stage, p_smem, stats, handed, k_free, g,
                      ROW_O: gl.constexpr, QK_PENDING: gl.constexpr, ASYNC_ARRIVE: gl.constexpr):
        """The other warpgroup's tile ``g``: wait for its P and statistics, rescale this half, issue its
        ``P V`` (async). ``QK_PENDING``: this warpgroup's score products are in flight behind its last
        ``P V``, which must be done before the rescale. Returns ``(acc, l_o, m_o)``."""
        _acquire(handed, g & 1, ASYNC_ARRIVE)
        alpha = stats[1].load(ROW_O)
        rowsum = stats[2].load(ROW_O)
        m_o = stats[0].load(ROW_O)
        acc = warpgroup_mma_wait(num_outstanding=QK_PENDING, deps=(acc,))
        acc = acc * alpha[:, None]
        l_o = l_o * alpha + rowsum
        acc = warpgroup_mma(p_smem, v_half.index(stage), acc, is_async=True)
        return acc, l_o, m_o

    @gluon.jit
    def _publish_tile(p, m_new, alpha, rowsum, p_smem, stats, handed, p_done, g, dtype: gl.constexpr,
                      P_FROM_SMEM: gl.constexpr):
        """Hand tile ``g``'s P and statistics to the other warpgroup. With ``P_FROM_SMEM`` the owner of tile
        ``g - 1`` multiplies its P from the same buffer: wait until that product is done."""
        if P_FROM_SMEM:
            mbarrier.wait(p_done, (g - 1) & 1)
        p_smem.store(p.to(dtype))
        stats[0].store(m_new)
        stats[1].store(alpha)
        stats[2].store(rowsum)
        fence_async_shared()  # P is read next by the other warpgroup's tensor-core products
        gl.thread_barrier()
        mbarrier.arrive(handed, count=1)

    @gluon.jit
    def _seesaw_consumer(out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
                         stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
                         s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks, scale_log2,
                         q_lo, q_hi, q_pe, k_lo, k_hi, k_pe, p_smem, stats, bars,
                         W: gl.constexpr, CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                         D_V: gl.constexpr, D_PE: gl.constexpr, PARTITION_WARPS: gl.constexpr,
                         ASYNC_ARRIVE: gl.constexpr, P_FROM_SMEM: gl.constexpr):
        """Consumer warpgroup ``W`` (0: even tiles and output columns [0, D_V/2); 1: odd tiles, the rest)."""
        q_ready, q_free, k_ready, k_free, handed, taken, p_done = bars
        HALF: gl.constexpr = D_V // 2
        dtype: gl.constexpr = out_ptr.dtype.element_ty
        S_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[PARTITION_WARPS, 1],
                                                           instr_shape=[16, BLOCK_N, 16])
        O_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[PARTITION_WARPS, 1],
                                                           instr_shape=[16, HALF, 16])
        P_OP: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=O_LAYOUT, k_width=2)
        ROW_S: gl.constexpr = gl.SliceLayout(1, S_LAYOUT)
        ROW_O: gl.constexpr = gl.SliceLayout(1, O_LAYOUT)
        QK_GROUPS: gl.constexpr = 3 if D_PE > 0 else 2
        if W == 0:
            v_half = k_lo
        else:
            v_half = k_hi
        pid_m = gl.program_id(0)
        kv_head = pid_m // row_tiles
        tile = pid_m % row_tiles
        begin_req, begin_tok, end_req, end_tok, begin_split = _piece_bounds(sched_ptr, gl.program_id(1))
        offs_r_s = tile * BLOCK_M + gl.arange(0, BLOCK_M, layout=ROW_S)
        offs_r_o = tile * BLOCK_M + gl.arange(0, BLOCK_M, layout=ROW_O)
        offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, S_LAYOUT))
        t_s = offs_r_s // group
        kb = 0  # the CTA's tiles before this request (the loader's ring position)
        for req in range(begin_req, end_req + 1):
            req64 = req.to(gl.int64)
            rq = req - begin_req
            s_k, tok_lo, tok_hi, split_lo, n_split, split_idx = _request_span(
                req, begin_req, begin_tok, end_req, end_tok, begin_split, seqlens_ptr, num_splits_ptr, max_blocks,
                page_block_size)
            limit = s_k - s_q + t_s  # [BLOCK_M] last key each row may see (causal)
            n = _tiles_of(tok_lo, tok_hi, BLOCK_N)
            acc = gl.zeros([BLOCK_M, HALF], gl.float32, layout=O_LAYOUT)
            l_o = gl.zeros([BLOCK_M], gl.float32, layout=ROW_O)
            m_o = gl.full([BLOCK_M], float("-inf"), gl.float32, layout=ROW_O)
            _acquire(q_ready, rq & 1, ASYNC_ARRIVE)
            if W == 0:  # tile 0 has no tile before it
                # the last request's last P may still be read by the other warpgroup: wait until it was taken
                mbarrier.wait(taken, (rq & 1) ^ 1)
                stage = kb % 2
                _acquire(k_ready.index(stage), (kb // 2) & 1, ASYNC_ARRIVE)
                s = _scores(q_lo, q_hi, q_pe, k_lo.index(stage), k_hi.index(stage), k_pe.index(stage), S_LAYOUT,
                            BLOCK_M, BLOCK_N, D_PE)
                s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
                m_none = gl.full([BLOCK_M], float("-inf"), gl.float32, layout=ROW_S)
                p, alpha, m_new, rowsum = _online_softmax(s, m_none, gl.zeros([BLOCK_M], gl.float32, layout=ROW_S),
                                                          scale_log2, tok_lo, tok_hi, limit, offs_n, CAUSAL)
                _publish_tile(p, m_new, alpha, rowsum, p_smem, stats, handed, p_done, kb, dtype, P_FROM_SMEM)
                l_o = gl.convert_layout(rowsum, ROW_O)
                m_o = gl.convert_layout(m_new, ROW_O)
                acc = _own_product(p, acc, v_half.index(stage), p_smem, k_free, stage, p_done, P_OP, dtype,
                                   P_FROM_SMEM)
                first = 2
            else:
                first = 1
            for i in range(0, (n - first + 1) // 2):
                t = first + 2 * i
                g = kb + t
                stage = g % 2
                _acquire(k_ready.index(stage), (g // 2) & 1, ASYNC_ARRIVE)
                s = _scores(q_lo, q_hi, q_pe, k_lo.index(stage), k_hi.index(stage), k_pe.index(stage), S_LAYOUT,
                            BLOCK_M, BLOCK_N, D_PE)
                # the other warpgroup's tile g - 1, while the scores run
                acc, l_o, m_o = _apply_handed(acc, l_o, m_o, v_half, 1 - stage, p_smem, stats, handed, k_free, g - 1,
                                              ROW_O, QK_GROUPS, ASYNC_ARRIVE)
                m_prev = stats[0].load(ROW_S)
                s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))
                p, alpha, m_new, rowsum = _online_softmax(s, m_prev, gl.zeros([BLOCK_M], gl.float32, layout=ROW_S),
                                                          scale_log2, tok_lo + t * BLOCK_N, tok_hi, limit, offs_n,
                                                          CAUSAL)
                # tile g - 1's product is done: its P buffer and statistics are free, its stage ours no more
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                gl.thread_barrier()
                mbarrier.arrive(k_free.index(1 - stage), count=1)
                _publish_tile(p, m_new, alpha, rowsum, p_smem, stats, handed, p_done, g, dtype, P_FROM_SMEM)
                alpha_o = gl.convert_layout(alpha, ROW_O)
                acc = acc * alpha_o[:, None]
                l_o = l_o * alpha_o + gl.convert_layout(rowsum, ROW_O)
                m_o = gl.convert_layout(m_new, ROW_O)
                acc = _own_product(p, acc, v_half.index(stage), p_smem, k_free, stage, p_done, P_OP, dtype,
                                   P_FROM_SMEM)
            # every score product of this request is done: the loader may bring the next Q
            gl.thread_barrier()
            mbarrier.arrive(q_free, count=1)
            # the other warpgroup's last tile, if the request ends on one
            if (n - 1) % 2 != W:
                g = kb + n - 1
                acc, l_o, m_o = _apply_handed(acc, l_o, m_o, v_half, g % 2, p_smem, stats, handed, k_free, g, ROW_O, 0,
                                              ASYNC_ARRIVE)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                gl.thread_barrier()
                mbarrier.arrive(k_free.index(g % 2), count=1)
                mbarrier.arrive(taken, count=1)  # once per request: P and statistics may be overwritten
            kb += n

            empty = l_o == 0.0
            o = acc * gl.where(empty, 0.0, 1.0 / l_o)[:, None]
            # made here, not before the loops: 64 registers a thread if kept alive through them
            offs_v = W * HALF + gl.arange(0, HALF, layout=gl.SliceLayout(0, O_LAYOUT))
            mask_r = offs_r_o < rows
            t_o = offs_r_o // group
            head_o = kv_head * group + offs_r_o % group
            if n_split <= 1:
                o_ptrs = out_ptr + req64 * stride_ob + t_o * stride_os + head_o * stride_oh
                gl.store(o_ptrs[:, None] + offs_v[None, :], o.to(dtype), mask=mask_r[:, None])
                if W == 0:
                    lse = gl.where(empty, float("inf"), (m_o + gl.log2(l_o)) * 0.6931471805599453)
                    gl.store(lse_ptr + req64 * stride_lb + head_o * stride_lh + t_o, lse, mask=mask_r)
            else:
                slot = (split_lo + split_idx).to(gl.int64)
                acc_row = (slot * s_q + t_o) * h_q + head_o  # o_accum is [slots, s_q, h_q, D_V]
                gl.store(o_acc_ptr + acc_row[:, None] * D_V + offs_v[None, :], o, mask=mask_r[:, None])
                if W == 0:
                    gl.store(lse_acc_ptr + acc_row, gl.where(empty, float("-inf"), m_o + gl.log2(l_o)), mask=mask_r)

    @gluon.jit
    def _seesaw_consumer_1(out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
                           stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
                           s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks, scale_log2,
                           q_lo, q_hi, q_pe, k_lo, k_hi, k_pe, p_smem, stats, bars,
                           CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                           D_V: gl.constexpr, D_PE: gl.constexpr, PARTITION_WARPS: gl.constexpr,
                           ASYNC_ARRIVE: gl.constexpr, P_FROM_SMEM: gl.constexpr):
        """Worker entry for consumer warpgroup 1 (a partition function of its own)."""
        _seesaw_consumer(out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
                         stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
                         s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks, scale_log2,
                         q_lo, q_hi, q_pe, k_lo, k_hi, k_pe, p_smem, stats, bars,
                         1, CAUSAL, BLOCK_M, BLOCK_N, D_V, D_PE, PARTITION_WARPS, ASYNC_ARRIVE, P_FROM_SMEM)

    @gluon.jit
    def _dense_decode_sm90_seesaw_kernel(
        q_ptr, k_ptr, block_table_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
        out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, counters_ptr,
        stride_qb, stride_qs, stride_qh,
        stride_kb, stride_kp, stride_kh,
        stride_bt,
        stride_ob, stride_os, stride_oh,
        stride_lb, stride_lh,
        s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks, num_blocks, scale_log2,
        CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
        D_V: gl.constexpr, D_PE: gl.constexpr,
        CONSUMER_WARPS: gl.constexpr, LOADER_WARPS: gl.constexpr, CONSUMER_REGS: gl.constexpr,
        LOADER_REGS: gl.constexpr, ASYNC_ARRIVE: gl.constexpr, P_FROM_SMEM: gl.constexpr,
    ):
        dtype: gl.constexpr = q_ptr.dtype.element_ty
        HALF: gl.constexpr = D_V // 2
        gl.static_assert(D_PE == 0 or D_PE == 64, "the RoPE part must be 0 or 64 dims")
        gl.static_assert(HALF % 64 == 0, "the value dims must split in two multiples of 64")
        SMEM: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        ROWS_SMEM: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[0])
        q_lo = gl.allocate_shared_memory(dtype, [BLOCK_M, HALF], SMEM)
        q_hi = gl.allocate_shared_memory(dtype, [BLOCK_M, HALF], SMEM)
        k_lo = gl.allocate_shared_memory(dtype, [2, BLOCK_N, HALF], SMEM)
        k_hi = gl.allocate_shared_memory(dtype, [2, BLOCK_N, HALF], SMEM)
        if D_PE > 0:
            q_pe = gl.allocate_shared_memory(dtype, [BLOCK_M, D_PE], SMEM)
            k_pe = gl.allocate_shared_memory(dtype, [2, BLOCK_N, D_PE], SMEM)
        else:  # never read: the RoPE products and copies are compiled out
            q_pe = q_lo
            k_pe = k_lo
        p_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, BLOCK_N], SMEM)
        # a tile's row max, rescale factor and row sum
        stats = (gl.allocate_shared_memory(gl.float32, [BLOCK_M], ROWS_SMEM),
                 gl.allocate_shared_memory(gl.float32, [BLOCK_M], ROWS_SMEM),
                 gl.allocate_shared_memory(gl.float32, [BLOCK_M], ROWS_SMEM))

        q_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        q_free = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        k_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        k_free = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        handed = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        taken = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        mbarrier.init(taken, count=1)
        p_done = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        mbarrier.init(p_done, count=1)
        LOADED: gl.constexpr = LOADER_WARPS * 32 if ASYNC_ARRIVE else 1
        mbarrier.init(q_ready, count=LOADED)
        mbarrier.init(q_free, count=2)  # both warpgroups read Q
        mbarrier.init(handed, count=1)
        for i in gl.static_range(2):
            mbarrier.init(k_ready.index(i), count=LOADED)
            mbarrier.init(k_free.index(i), count=2)  # both warpgroups read V
        # the loader's barrier tuple has the WS kernel's shape; its P slots are unused here
        loader_bars = (q_ready, q_free, k_ready, k_free, handed, handed)
        bars = (q_ready, q_free, k_ready, k_free, handed, taken, p_done)
        gl.warp_specialize([
            (_seesaw_consumer, (out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
                                stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
                                s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks, scale_log2,
                                q_lo, q_hi, q_pe, k_lo, k_hi, k_pe, p_smem, stats, bars,
                                0, CAUSAL, BLOCK_M, BLOCK_N, D_V, D_PE, CONSUMER_WARPS, ASYNC_ARRIVE,
                                P_FROM_SMEM)),
            (_seesaw_consumer_1, (out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
                                  stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
                                  s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks, scale_log2,
                                  q_lo, q_hi, q_pe, k_lo, k_hi, k_pe, p_smem, stats, bars,
                                  CAUSAL, BLOCK_M, BLOCK_N, D_V, D_PE, CONSUMER_WARPS, ASYNC_ARRIVE,
                                  P_FROM_SMEM)),
            (_loader, (q_ptr, k_ptr, block_table_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
                       stride_qb, stride_qs, stride_qh, stride_kb, stride_kp, stride_kh, stride_bt,
                       group, rows, row_tiles, page_block_size, max_blocks, num_blocks,
                       q_lo, q_hi, q_pe, k_lo, k_hi, k_pe, p_smem, stats, loader_bars,
                       BLOCK_M, BLOCK_N, D_V, D_PE, LOADER_WARPS, ASYNC_ARRIVE)),
        ], [CONSUMER_WARPS, LOADER_WARPS], [CONSUMER_REGS, LOADER_REGS])


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
    async_arrive: bool = True,
    p_from_smem: bool = P_FROM_SMEM,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`openmla.ops.decode_dense.dense_decode_fwd`, on Hopper, 16-bit caches.

    q: [b, s_q, h_q, d] bf16/fp16; k_cache: [num_blocks, page_block_size, h_kv, d] same dtype, d 576 or
    512; returns ``out`` [b, s_q, h_q, head_dim_v] in q's dtype and ``lse`` [b, h_q, s_q] fp32. Split
    partials are merged by the combine kernel. ``async_arrive``: how the loader signals a landed tile
    (:mod:`.decode_dense_sm90_ws`).
    """
    b, s_q, h_q, d = q.shape
    h_kv = k_cache.shape[2]
    rows = s_q * (h_q // h_kv)
    row_tiles = -(-rows // BLOCK_M)
    num_parts = tile_scheduler_metadata.shape[0]
    if SCHED_BLOCK % BLOCK_N:
        raise ValueError("the scheduler's unit must be a multiple of the sm_90 kernel's KV tile")
    out = torch.empty(b, s_q, h_q, head_dim_v, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, h_q, s_q, dtype=torch.float32, device=q.device)
    if workspace is None:
        workspace = split_workspace(q, head_dim_v, num_parts)
    _dense_decode_sm90_seesaw_kernel[(row_tiles * h_kv, num_parts)](
        *splitkv_args(q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits,
                      out, lse, workspace, row_tiles, softmax_scale),
        CAUSAL=bool(causal and s_q > 1), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, D_V=head_dim_v, D_PE=d - head_dim_v,
        CONSUMER_WARPS=WORKER_WARPS[0], LOADER_WARPS=WORKER_WARPS[1], CONSUMER_REGS=WORKER_REGS[0],
        LOADER_REGS=WORKER_REGS[1], ASYNC_ARRIVE=bool(async_arrive), P_FROM_SMEM=bool(p_from_smem),
        num_warps=NUM_WARPS, maxnreg=MAXNREG,
    )
    combine_splits(out, lse, workspace[0], workspace[1], num_splits)
    return out, lse
