"""Dense MLA decoding over a per-tensor FP8 cache with an e4m3 q, for Hopper (sm_90a): e4m3 score products.

Why a kernel of its own: the warp-specialized kernel (:mod:`.decode_dense_sm90_ws`) serves per-tensor FP8
caches by decoding each K tile to 16 bits in its loader, in place in a 72 KB stage (no room for more beside a
16-bit Q and two stages), so one tile is in flight and the loader's decode is on every tile's path. When q is
e4m3 as well, the score products need no decode at all: ``S = Q Kᵀ`` runs on the e4m3 tensor cores straight
from the codes (both operands K-major, as wgmma's 8-bit form needs). Only ``P V`` needs 16-bit values (``P`` in
fp16: rounding it to e4m3, as FlashMLA's FP8 kernel does, would cost three mantissa bits), and each output
warpgroup decodes the 256 value columns it multiplies by into a buffer of its own while the softmax warpgroup
computes the tile's scores.

Precision: the e4m3 tensor cores sum products with fewer bits than fp32 and truncate (DeepSeek-V3's report says
about 14), so the scores, and with them the LSE, carry an error an fp32 sum does not: on FlashMLA's dense-decode
inputs up to 6.8e-5 in the LSE against its tolerance of 1e-6, the same as FlashMLA's FP8 kernel on the same
inputs; the output stays within FlashMLA's tolerance (FlashMLA's does not). Adding every 32 dims in fp32 cut the
LSE's error to 3.2e-6 at 1.3-2.4x the time, so the products chain. ``OPENMLA_FP8_SCORES=exact`` sends e4m3 calls
to the warp-specialized kernel instead (1.17-1.45x the time on an H200 and an H100). Measured against that
kernel and FlashMLA's FP8 kernel in ``docs/perf-notes.md``.

Roles (``gl.warp_specialize``, four warpgroups, 512 threads):

* **softmax warpgroup** (default partition): waits for a tile's codes, issues its e4m3 score products, hands
  the stage back, online softmax, ``P`` (fp16) and the rescale factor to shared memory, and per request the
  LSE and ``1/l`` (times ``descale_k``, for ``V = descale_k * codes``).
* **two output warpgroups**: each decodes its half of the tile's value codes (columns ``COL0 .. COL0+255``)
  exactly to fp16 in its own [64, 256] buffer, hands the stage back, then ``O[:, COL0 ..] += P V`` as two
  N=128 products, rescaled by the published factor; the last round stores the half. With at most 32 query rows a
  KV head (:data:`TRANSPOSED_MAX_ROWS`) the product is transposed, ``Oᵀ += Vᵀ Pᵀ`` with the rows on wgmma's N side
  (16 or 32: no products for the tile's padded rows) and two P buffers (:data:`TRANSPOSED_P_BUFS`).
* **loader**: each request's Q codes, then its K tiles' codes (64 keys x 576 bytes) by ``cp.async`` into a
  ring of :data:`STAGES` stages, each arriving on its stage's barrier from the copy engine, so the loader
  never waits for a copy: with 36 KB stages, two tiles are in flight while a third is consumed. Keys past a
  request's length are not read (zero-filled; NaN may lie there).

Shared memory: Q codes 36 KB, three code stages 108 KB, two fp16 value halves 64 KB, ``P`` 8 KB (16 KB with two
buffers): 216.3 (224.3) KB of the 227 KB. Scores scale ``descale_q * descale_k * softmax_scale`` (read on the
device, so CUDA graphs replay new descales). Split-KV plan, causal rule, masking and outputs are those of :mod:`openmla.ops.decode_dense`;
split partials are merged by the combine kernel.
"""

from __future__ import annotations

import torch

from ..._runtime import InvalidArgumentError, gluon_available
from ..combine import combine_splits
from ..decode_dense import GLUON_RUNTIME_INTS, split_workspace, splitkv_args
from ..launch import launch
from ..schedule import SCHED_BLOCK
from .decode_dense_sm90_ws import check_trace

BLOCK_M = 64
BLOCK_N = 64
STAGES = 3  # 36 KB code stages: 3 fit beside Q codes, the two value halves and P
NUM_WARPS = 4  # the softmax warpgroup; two output warpgroups and the loader add 4 warps each
WORKER_WARPS = (4, 4)
# 512 threads share 64K registers (launch cap 128): each output warpgroup keeps 168 (two 64x128 fp32
# accumulators and its decode), the loader (address math and copies only) 56, the softmax warpgroup 120
MAXNREG = 128
WORKER_REGS = (168, 56)
D_QK = 576
D_V = 512
# P (and its rescale factor) buffers. Two let the softmax warpgroup publish tile j+1's while the output warpgroups
# multiply by tile j's (8 KB more shared memory), and measured 3-5 % slower at h_q=128 s_k >= 8k, 2-5 % faster at
# h_q=16 (H200; H100 0.94-1.02x; three rounds in one process, docs/perf-notes.md): one
P_BUFS = 1
#: Calls of at most this many query rows a KV head (``s_q * h_q / h_kv``) take the transposed output products
#: (:func:`_fp8_output_t`: ``Oᵀ = Vᵀ Pᵀ`` with the rows on wgmma's N side, N = 16 or 32), where the padded form
#: multiplies all 64 rows of the tile; 0 turns it off. Read at each call.
TRANSPOSED_MAX_ROWS = 32
#: P buffers of the transposed form. Two: the softmax warpgroup publishes tile j+1's P while the output warpgroups
#: multiply by tile j's. Measured on an H200 beside one (b=128 s_k=8k, served calls alternated twice in one process,
#: docs/perf-notes.md): h_q=16 228.4-230.4 against 242.1-242.6 us, h_q=32 250.3-250.6 against 258.0-277.7.
TRANSPOSED_P_BUFS = 2

if gluon_available():
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        async_copy,
        fence_async_shared,
        mbarrier,
        warpgroup_mma,
        warpgroup_mma_wait,
    )

    from .decode_dense_sm90 import _piece_bounds, _request_span
    from .decode_dense_sm90_ws import (
        _acquire,
        _e4m3_scales,
        _final_factor,
        _hand_factor,
        _last_round_rows,
        _online_softmax,
        _output_rows,
        _publish,
        _pv_quarters,
        _softmax_request,
        _softmax_rows,
        _stamp,
        _store_columns,
        _store_lse,
        _store_quarters,
        _tiles_of,
    )

    @gluon.jit
    def _copy_code_rows(src_row, dst_lo, dst_pe, mask, D_V: gl.constexpr, D_PE: gl.constexpr, LOAD: gl.constexpr):
        """``cp.async`` rows of e4m3 codes (``src_row``: [64] pointers in ``LOAD``'s row slice) into ``dst_lo``
        (dims ``0 .. D_V``, 64-byte chunks) and ``dst_pe`` (the RoPE dims); masked rows are zero-filled, not
        read."""
        offs_c = gl.arange(0, 64, layout=gl.SliceLayout(0, LOAD))
        for c in gl.static_range(D_V // 64):
            async_copy.async_copy_global_to_shared(dst_lo.slice(c * 64, 64, dim=1),
                                                   src_row[:, None] + c * 64 + offs_c[None, :], mask=mask[:, None])
        async_copy.async_copy_global_to_shared(dst_pe, src_row[:, None] + D_V + offs_c[None, :], mask=mask[:, None])

    @gluon.jit
    def _fp8_loader(q_ptr, k_ptr, block_table_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
                    stride_qb, stride_qs, stride_qh, stride_kb, stride_kp, stride_kh, stride_bt,
                    group, rows, row_tiles, page_block_size, max_blocks, num_blocks,
                    q_lo, q_pe, k_lo, k_pe, bars,
                    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D_V: gl.constexpr, D_PE: gl.constexpr,
                    STAGES: gl.constexpr, PARTITION_WARPS: gl.constexpr, trace_ptr, TRACE: gl.constexpr):
        """Loader partition: each request's Q codes once the softmax warpgroup is done with the last request's,
        then its K tiles' codes into the ring, each stage once the three consumers have handed it back. Every
        thread arrives on the stage's ready barrier when its own copies land (``cp.async.mbarrier.arrive``), so
        the loader goes straight on to the next stage."""
        q_ready, q_free, k_ready, k_free, p_ready, p_free = bars
        LOAD: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [PARTITION_WARPS, 1], [1, 0])  # 16 B a thread
        ROW: gl.constexpr = gl.SliceLayout(1, LOAD)
        pid_m = gl.program_id(0)
        kv_head = pid_m // row_tiles
        tile = pid_m % row_tiles
        begin_req, begin_tok, end_req, end_tok, begin_split = _piece_bounds(sched_ptr, gl.program_id(1))
        offs_r = tile * BLOCK_M + gl.arange(0, BLOCK_M, layout=ROW)
        offs_t = gl.arange(0, BLOCK_N, layout=ROW)
        kb = 0
        for req in range(begin_req, end_req + 1):
            req64 = req.to(gl.int64)
            rq = req - begin_req
            s_k, tok_lo, tok_hi, split_lo, n_split, split_idx = _request_span(
                req, begin_req, begin_tok, end_req, end_tok, begin_split, seqlens_ptr, num_splits_ptr, max_blocks,
                page_block_size)
            mbarrier.wait(q_free, (rq & 1) ^ 1)
            q_row = (q_ptr + req64 * stride_qb + (offs_r // group) * stride_qs
                     + (kv_head * group + offs_r % group) * stride_qh)
            _copy_code_rows(q_row, q_lo, q_pe, offs_r < rows, D_V, D_PE, LOAD)
            _publish(q_ready, True)
            bt_row = block_table_ptr + req64 * stride_bt
            for it in range(0, _tiles_of(tok_lo, tok_hi, BLOCK_N)):
                stage = kb % STAGES
                offs_j = tok_lo + it * BLOCK_N + offs_t
                mask_j = offs_j < tok_hi
                page = gl.load(bt_row + offs_j // page_block_size, mask=mask_j, other=0)
                page = gl.minimum(gl.maximum(page, 0), num_blocks - 1)  # garbage past the length is never used
                k_row = k_ptr + (page.to(gl.int64) * stride_kb + (offs_j % page_block_size) * stride_kp
                                 + kv_head * stride_kh)
                mbarrier.wait(k_free.index(stage), ((kb // STAGES) & 1) ^ 1)
                _stamp(trace_ptr, kb, 0, TRACE, PARTITION_WARPS)
                _copy_code_rows(k_row, k_lo.index(stage), k_pe.index(stage), mask_j, D_V, D_PE, LOAD)
                _publish(k_ready.index(stage), True)
                _stamp(trace_ptr, kb, 1, TRACE, PARTITION_WARPS)
                kb += 1

    @gluon.jit
    def _fp8_softmax(lse_ptr, lse_acc_ptr, seqlens_ptr, sched_ptr, num_splits_ptr, stride_lb, stride_lh,
                     s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks, scale_log2,
                     q_lo, q_pe, k_lo, k_pe, p_smem, a_smem, bars, descale_k_ptr, descale_q_ptr,
                     CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                     PARTITION_WARPS: gl.constexpr, P_BUFS: gl.constexpr, trace_ptr, TRACE: gl.constexpr):
        """Default partition: per tile the e4m3 score products, the stage handed back once they retire, online
        softmax, ``P`` and the rescale factor to both output warpgroups; per request ``1/l`` (times
        ``descale_k``) to them and the LSE (natural log; ``+inf`` for a row that saw no key, as FlashMLA)."""
        q_ready, q_free, k_ready, k_free, p_ready, p_free = bars
        S_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[PARTITION_WARPS, 1],
                                                           instr_shape=[16, BLOCK_N, 32])
        ROWS_1D: gl.constexpr = gl.BlockedLayout([1], [32], [PARTITION_WARPS], [0])
        kv_head, begin_req, begin_tok, end_req, end_tok, begin_split, offs_r, offs_n, t_s = _softmax_rows(
            sched_ptr, row_tiles, group, BLOCK_M, BLOCK_N, S_LAYOUT, ROWS_1D)
        scale_log2, v_scale = _e4m3_scales(scale_log2, descale_k_ptr, descale_q_ptr, True, True)
        kb = 0
        pr = 0
        for req in range(begin_req, end_req + 1):
            req64 = req.to(gl.int64)
            tok_lo, tok_hi, split_lo, n_split, split_idx, limit, m_i, l_i = _softmax_request(
                req, begin_req, begin_tok, end_req, end_tok, begin_split, seqlens_ptr, num_splits_ptr, max_blocks,
                page_block_size, s_q, t_s, q_ready, BLOCK_M, S_LAYOUT, True)
            for it in range(0, _tiles_of(tok_lo, tok_hi, BLOCK_N)):
                stage = kb % STAGES
                _acquire(k_ready.index(stage), (kb // STAGES) & 1, True)  # cp.async data, read by the tensor cores
                # one chain of e4m3 products in the tensor cores' accumulator (precision: module docstring)
                s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=S_LAYOUT)
                s = warpgroup_mma(q_lo, k_lo.index(stage).permute((1, 0)), s, use_acc=False, is_async=True)
                s = warpgroup_mma(q_pe, k_pe.index(stage).permute((1, 0)), s, is_async=True)
                _stamp(trace_ptr, kb, 2, TRACE, PARTITION_WARPS)
                s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
                _stamp(trace_ptr, kb, 3, TRACE, PARTITION_WARPS)
                gl.thread_barrier()  # every warp's products have retired: the codes are read
                mbarrier.arrive(k_free.index(stage), count=1)
                p, alpha, m_i, l_i = _online_softmax(s, m_i, l_i, scale_log2, tok_lo + it * BLOCK_N, tok_hi, limit,
                                                     offs_n, CAUSAL)
                pb = pr % P_BUFS
                # both output warpgroups are done with the P this buffer held last
                mbarrier.wait(p_free.index(pb), ((pr // P_BUFS) & 1) ^ 1)
                p_smem.index(pb).store(p.to(gl.float16))
                a_smem.index(pb).store(alpha)  # from the softmax's row layout (a row's holders write one value)
                fence_async_shared()  # P is read next by the tensor cores
                gl.thread_barrier()
                mbarrier.arrive(p_ready.index(pb), count=1)
                _stamp(trace_ptr, kb, 4, TRACE, PARTITION_WARPS)
                pr += 1
                kb += 1
            # every score product of this request is done: the loader may bring the next Q
            gl.thread_barrier()
            mbarrier.arrive(q_free, count=1)

            # last round: 1/l to the output warpgroups (0 for a row that saw no key), and the LSE
            empty, lse2, mask_r, t_o, head_o, inv_l = _last_round_rows(l_i, m_i, v_scale, offs_r, rows, group,
                                                                      kv_head, ROWS_1D)
            pb = pr % P_BUFS
            _hand_factor(inv_l, a_smem.index(pb), p_free.index(pb), p_ready.index(pb), ((pr // P_BUFS) & 1) ^ 1)
            pr += 1
            _store_lse(lse_ptr, lse_acc_ptr, lse2, empty, mask_r, t_o, head_o, req64, n_split, split_lo, split_idx,
                       s_q, h_q, stride_lb, stride_lh)

    @gluon.jit
    def _decode_values(codes_s, v_half, COL0: gl.constexpr, WIDTH: gl.constexpr, PARTITION_WARPS: gl.constexpr):
        """Decode value columns ``COL0 .. COL0+WIDTH`` of a code stage ([64, D_V] e4m3) exactly to fp16 into
        ``v_half`` ([64, WIDTH]), 32 keys x 64 columns at a time (16 codes a thread: registers stay free for
        the accumulators). The caller fences and barriers before the tensor cores read ``v_half``.

        Measured and not kept (H200, ``docs/perf-notes.md``): half or all of the codes decoded by integer moves
        instead of conversion instructions (0-8 % and 2-15 % slower): the conversion pipe does not set its pace."""
        CVT: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [PARTITION_WARPS, 1], [1, 0])  # 16 B a thread
        for c in gl.static_range(WIDTH // 64):
            for r in gl.static_range(2):
                codes = codes_s.slice(r * 32, 32, dim=0).slice(COL0 + c * 64, 64, dim=1).load(CVT)
                v_half.slice(r * 32, 32, dim=0).slice(c * 64, 64, dim=1).store(codes.to(gl.float16))

    @gluon.jit
    def _decode_tile(k_lo, v_half, k_ready, k_free, kb, COL0: gl.constexpr, OFF: gl.constexpr, WIDTH: gl.constexpr,
                     STAGES: gl.constexpr, PARTITION_WARPS: gl.constexpr):
        """Decode columns ``OFF .. OFF+WIDTH`` of this warpgroup's value half (cache columns ``COL0+OFF ..``) of the
        ``kb``-th tile once its codes have landed, fence for the tensor cores and hand the stage back.

        Measured and not kept (H200, ``docs/perf-notes.md``): decoding the next tile's left quarter while this
        tile's right-quarter product runs (within the rounds' spread, 1-6 % slower at s_k >= 8k)."""
        stage = kb % STAGES
        mbarrier.wait(k_ready.index(stage), (kb // STAGES) & 1)  # cp.async data, read by ld.shared
        _decode_values(k_lo.index(stage), v_half.slice(OFF, WIDTH, dim=1), COL0 + OFF, WIDTH, PARTITION_WARPS)
        fence_async_shared()  # v_half is read next by the tensor cores
        gl.thread_barrier()  # every thread's decode is done: the codes are read
        mbarrier.arrive(k_free.index(stage), count=1)

    @gluon.jit
    def _fp8_output(out_ptr, o_acc_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
                    stride_ob, stride_os, stride_oh,
                    s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks,
                    k_lo, v_half, p_smem, a_smem, bars,
                    COL0: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D_V: gl.constexpr,
                    STAGES: gl.constexpr, PARTITION_WARPS: gl.constexpr, P_BUFS: gl.constexpr, ROWS_N: gl.constexpr,
                    trace_ptr, TRACE: gl.constexpr):
        """Output partition: the transposed products for at most ``ROWS_N`` rows (:func:`_fp8_output_t`), the
        padded 64-row ones otherwise (:func:`_fp8_output_padded`)."""
        if ROWS_N > 0:
            _fp8_output_t(out_ptr, o_acc_ptr, seqlens_ptr, sched_ptr, num_splits_ptr, stride_ob, stride_os, stride_oh,
                          s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks, k_lo, v_half, p_smem, a_smem,
                          bars, COL0, BLOCK_M, BLOCK_N, D_V, STAGES, PARTITION_WARPS, P_BUFS, ROWS_N, trace_ptr,
                          TRACE)
        else:
            _fp8_output_padded(out_ptr, o_acc_ptr, seqlens_ptr, sched_ptr, num_splits_ptr, stride_ob, stride_os,
                               stride_oh, s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks, k_lo, v_half,
                               p_smem, a_smem, bars, COL0, BLOCK_M, BLOCK_N, D_V, STAGES, PARTITION_WARPS, P_BUFS,
                               trace_ptr, TRACE)

    @gluon.jit
    def _fp8_output_padded(out_ptr, o_acc_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
                           stride_ob, stride_os, stride_oh,
                           s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks,
                           k_lo, v_half, p_smem, a_smem, bars,
                           COL0: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D_V: gl.constexpr,
                           STAGES: gl.constexpr, PARTITION_WARPS: gl.constexpr, P_BUFS: gl.constexpr, trace_ptr,
                           TRACE: gl.constexpr):
        """Output partition over the 64-row tile: per tile, decode this half's value codes into ``v_half`` (while
        the softmax warpgroup computes the tile's scores), hand the stage back, then ``O[:, COL0 ..] += P V`` as two N=128
        products (the launch cap of 128 registers a thread fits no N=256 product), rescaled by the published
        factor; the last round's factor is ``1/l`` and this half is stored."""
        q_ready, q_free, k_ready, k_free, p_ready, p_free = bars
        HALF: gl.constexpr = D_V // 2
        QUARTER: gl.constexpr = D_V // 4
        O_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[PARTITION_WARPS, 1],
                                                           instr_shape=[16, QUARTER, 16])
        ROW_O: gl.constexpr = gl.SliceLayout(1, O_LAYOUT)
        kv_head, begin_req, begin_tok, end_req, end_tok, begin_split, offs_r, offs_v = _output_rows(
            sched_ptr, row_tiles, COL0, QUARTER, BLOCK_M, O_LAYOUT)
        kb = 0
        pr = 0
        for req in range(begin_req, end_req + 1):
            req64 = req.to(gl.int64)
            s_k, tok_lo, tok_hi, split_lo, n_split, split_idx = _request_span(
                req, begin_req, begin_tok, end_req, end_tok, begin_split, seqlens_ptr, num_splits_ptr, max_blocks,
                page_block_size)
            acc_a = gl.zeros([BLOCK_M, QUARTER], gl.float32, layout=O_LAYOUT)
            acc_b = gl.zeros([BLOCK_M, QUARTER], gl.float32, layout=O_LAYOUT)
            for it in range(0, _tiles_of(tok_lo, tok_hi, BLOCK_N)):
                _decode_tile(k_lo, v_half, k_ready, k_free, kb, COL0, 0, HALF, STAGES, PARTITION_WARPS)
                _stamp(trace_ptr, kb, 7, TRACE, PARTITION_WARPS)
                pb = pr % P_BUFS
                _acquire(p_ready.index(pb), (pr // P_BUFS) & 1, False)
                _stamp(trace_ptr, kb, 5, TRACE, PARTITION_WARPS)
                acc_a, acc_b = _pv_quarters(p_smem.index(pb), v_half, a_smem.index(pb).load(ROW_O), acc_a, acc_b,
                                            QUARTER)
                acc_a, acc_b = warpgroup_mma_wait(num_outstanding=0, deps=(acc_a, acc_b))
                gl.thread_barrier()  # every warp is done with P (and v_half, rewritten next tile)
                mbarrier.arrive(p_free.index(pb), count=1)
                _stamp(trace_ptr, kb, 6, TRACE, PARTITION_WARPS)
                kb += 1
                pr += 1
            # the last round: each row's 1/l, read by every thread before the buffer is handed back
            pb = pr % P_BUFS
            inv_l = _final_factor(p_ready.index(pb), p_free.index(pb), a_smem.index(pb), (pr // P_BUFS) & 1, ROW_O)
            pr += 1
            _store_quarters(acc_a, acc_b, inv_l, offs_r, out_ptr, o_acc_ptr, req64, kv_head, group, rows, s_q, h_q,
                            n_split, split_lo, split_idx, stride_ob, stride_os, stride_oh, COL0, D_V)

    @gluon.jit
    def _fp8_output_t(out_ptr, o_acc_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
                      stride_ob, stride_os, stride_oh,
                      s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks,
                      k_lo, v_half, p_smem, a_smem, bars,
                      COL0: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D_V: gl.constexpr,
                      STAGES: gl.constexpr, PARTITION_WARPS: gl.constexpr, P_BUFS: gl.constexpr,
                      ROWS_N: gl.constexpr, trace_ptr, TRACE: gl.constexpr):
        """Output partition for at most ``ROWS_N`` (16 or 32) query rows: :func:`_fp8_output`'s work, with the
        product transposed, ``Oᵀ[COL0 .., rows] += Vᵀ Pᵀ``. ``Vᵀ`` is the decoded half read column-major by the
        tensor cores (wgmma reads a 16-bit A operand either way), ``Pᵀ`` the first ``ROWS_N`` rows of the
        published P (K-major as it lies), and the accumulator holds only the rows that exist: N = ``ROWS_N``
        instead of the tile's 64, a quarter or half of the padded form's tensor work and 32 or 64 registers a
        thread for the half instead of 128. The softmax warpgroup and the loader are unchanged."""
        q_ready, q_free, k_ready, k_free, p_ready, p_free = bars
        HALF: gl.constexpr = D_V // 2
        OT_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[PARTITION_WARPS, 1],
                                                            instr_shape=[16, ROWS_N, 16])
        ROW_T: gl.constexpr = gl.SliceLayout(0, OT_LAYOUT)  # the query rows, along N
        kv_head = gl.program_id(0) // row_tiles  # one row tile: rows <= ROWS_N
        begin_req, begin_tok, end_req, end_tok, begin_split = _piece_bounds(sched_ptr, gl.program_id(1))
        kb = 0
        pr = 0
        for req in range(begin_req, end_req + 1):
            req64 = req.to(gl.int64)
            s_k, tok_lo, tok_hi, split_lo, n_split, split_idx = _request_span(
                req, begin_req, begin_tok, end_req, end_tok, begin_split, seqlens_ptr, num_splits_ptr, max_blocks,
                page_block_size)
            acc = gl.zeros([HALF, ROWS_N], gl.float32, layout=OT_LAYOUT)
            for it in range(0, _tiles_of(tok_lo, tok_hi, BLOCK_N)):
                _decode_tile(k_lo, v_half, k_ready, k_free, kb, COL0, 0, HALF, STAGES, PARTITION_WARPS)
                _stamp(trace_ptr, kb, 7, TRACE, PARTITION_WARPS)
                pb = pr % P_BUFS
                _acquire(p_ready.index(pb), (pr // P_BUFS) & 1, False)
                _stamp(trace_ptr, kb, 5, TRACE, PARTITION_WARPS)
                alpha = a_smem.index(pb).slice(0, ROWS_N).load(ROW_T)
                acc = acc * alpha[None, :]
                p_t = p_smem.index(pb).slice(0, ROWS_N, dim=0).permute((1, 0))  # [keys, rows]
                acc = warpgroup_mma(v_half.permute((1, 0)), p_t, acc, is_async=True)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                gl.thread_barrier()  # every warp is done with P (and v_half, rewritten next tile)
                mbarrier.arrive(p_free.index(pb), count=1)
                _stamp(trace_ptr, kb, 6, TRACE, PARTITION_WARPS)
                kb += 1
                pr += 1
            # the last round: each row's 1/l, read by every thread before the buffer is handed back
            pb = pr % P_BUFS
            inv_l = _final_factor(p_ready.index(pb), p_free.index(pb), a_smem.index(pb).slice(0, ROWS_N),
                                  (pr // P_BUFS) & 1, ROW_T)
            pr += 1
            # stored through the padded form's store: the transpose relabels registers, it moves nothing
            o = gl.permute(acc * inv_l[None, :], (1, 0))
            _store_columns(o, gl.arange(0, ROWS_N, layout=gl.SliceLayout(1, o.type.layout)),
                           COL0 + gl.arange(0, HALF, layout=gl.SliceLayout(0, o.type.layout)), out_ptr, o_acc_ptr,
                           req64, kv_head, group, rows, s_q, h_q, n_split, split_lo, split_idx, stride_ob, stride_os,
                           stride_oh, D_V)

    @gluon.jit(do_not_specialize=list(GLUON_RUNTIME_INTS))  # one build a form whatever the cache size
    def _dense_decode_fp8_sm90_kernel(
        q_ptr, k_ptr, block_table_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
        out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, counters_ptr,
        stride_qb, stride_qs, stride_qh,
        stride_kb, stride_kp, stride_kh,
        stride_bt,
        stride_ob, stride_os, stride_oh,
        stride_lb, stride_lh,
        s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks, num_blocks, scale_log2,
        descale_k_ptr, descale_q_ptr, trace_ptr,
        CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D_V: gl.constexpr, D_PE: gl.constexpr,
        STAGES: gl.constexpr, SOFTMAX_WARPS: gl.constexpr, OUTPUT_WARPS: gl.constexpr, LOADER_WARPS: gl.constexpr,
        OUTPUT_REGS: gl.constexpr, LOADER_REGS: gl.constexpr, P_BUFS: gl.constexpr, TRACE: gl.constexpr,
        ROWS_N: gl.constexpr = 0,
    ):
        gl.static_assert(D_V == 512 and D_PE == 64, "the e4m3-product kernel reads (576, 512) dims")
        HALF: gl.constexpr = D_V // 2
        CODES: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=64, element_bitwidth=8, rank=2)
        VALUES: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        ROWS_SMEM: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[0])  # rank 1: indexed by buffer
        q_lo = gl.allocate_shared_memory(gl.float8e4nv, [BLOCK_M, D_V], CODES)
        q_pe = gl.allocate_shared_memory(gl.float8e4nv, [BLOCK_M, D_PE], CODES)
        k_lo = gl.allocate_shared_memory(gl.float8e4nv, [STAGES, BLOCK_N, D_V], CODES)
        k_pe = gl.allocate_shared_memory(gl.float8e4nv, [STAGES, BLOCK_N, D_PE], CODES)
        v_lo = gl.allocate_shared_memory(gl.float16, [BLOCK_N, HALF], VALUES)
        v_hi = gl.allocate_shared_memory(gl.float16, [BLOCK_N, HALF], VALUES)
        p_smem = gl.allocate_shared_memory(gl.float16, [P_BUFS, BLOCK_M, BLOCK_N], VALUES)
        a_smem = gl.allocate_shared_memory(gl.float32, [P_BUFS, BLOCK_M], ROWS_SMEM)

        BAR: gl.constexpr = mbarrier.MBarrierLayout()
        q_ready = gl.allocate_shared_memory(gl.int64, [1], BAR)
        q_free = gl.allocate_shared_memory(gl.int64, [1], BAR)
        k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], BAR)
        k_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], BAR)
        p_ready = gl.allocate_shared_memory(gl.int64, [P_BUFS, 1], BAR)
        p_free = gl.allocate_shared_memory(gl.int64, [P_BUFS, 1], BAR)
        mbarrier.init(q_ready, count=LOADER_WARPS * 32)  # every loader thread arrives from its copies
        mbarrier.init(q_free, count=1)
        for i in gl.static_range(P_BUFS):
            mbarrier.init(p_ready.index(i), count=1)
            mbarrier.init(p_free.index(i), count=2)  # both output warpgroups read P
        for i in gl.static_range(STAGES):
            mbarrier.init(k_ready.index(i), count=LOADER_WARPS * 32)
            mbarrier.init(k_free.index(i), count=3)  # the score products and both decodes read a stage
        bars = (q_ready, q_free, k_ready, k_free, p_ready, p_free)

        gl.warp_specialize([
            (_fp8_softmax, (lse_ptr, lse_acc_ptr, seqlens_ptr, sched_ptr, num_splits_ptr, stride_lb, stride_lh,
                            s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks, scale_log2,
                            q_lo, q_pe, k_lo, k_pe, p_smem, a_smem, bars, descale_k_ptr, descale_q_ptr,
                            CAUSAL, BLOCK_M, BLOCK_N, STAGES, SOFTMAX_WARPS, P_BUFS, trace_ptr, TRACE)),
            (_fp8_output, (out_ptr, o_acc_ptr, seqlens_ptr, sched_ptr, num_splits_ptr, stride_ob, stride_os, stride_oh,
                           s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks,
                           k_lo, v_lo, p_smem, a_smem, bars, 0, BLOCK_M, BLOCK_N, D_V, STAGES, OUTPUT_WARPS, P_BUFS,
                           ROWS_N, trace_ptr, TRACE)),
            (_fp8_output, (out_ptr, o_acc_ptr, seqlens_ptr, sched_ptr, num_splits_ptr, stride_ob, stride_os, stride_oh,
                           s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks,
                           k_lo, v_hi, p_smem, a_smem, bars, HALF, BLOCK_M, BLOCK_N, D_V, STAGES, OUTPUT_WARPS,
                           P_BUFS, ROWS_N, trace_ptr, False)),
            (_fp8_loader, (q_ptr, k_ptr, block_table_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
                           stride_qb, stride_qs, stride_qh, stride_kb, stride_kp, stride_kh, stride_bt,
                           group, rows, row_tiles, page_block_size, max_blocks, num_blocks,
                           q_lo, q_pe, k_lo, k_pe, bars, BLOCK_M, BLOCK_N, D_V, D_PE, STAGES, LOADER_WARPS, trace_ptr,
                           TRACE)),
        ], [OUTPUT_WARPS, OUTPUT_WARPS, LOADER_WARPS], [OUTPUT_REGS, OUTPUT_REGS, LOADER_REGS])


def transposed_rows(rows: int, max_rows: int) -> int:
    """N of the transposed output products for ``rows`` query rows a KV head (16 or 32, the fewest that hold
    them), or 0 for the padded 64-row form: more rows than ``max_rows`` (at most 32) or than 32."""
    if rows > min(max_rows, 32):
        return 0
    return 16 if rows <= 16 else 32


def serves(q: torch.Tensor, k_cache: torch.Tensor, head_dim_v: int, descale_q, descale_k) -> bool:
    """Whether this kernel takes the call: q and cache both e4m3 (per-tensor descales given), (576, 512) dims."""
    return (descale_q is not None and descale_k is not None and q.dtype == torch.float8_e4m3fn
            and k_cache.dtype in (torch.float8_e4m3fn, torch.uint8) and q.shape[-1] == D_QK and head_dim_v == D_V)


def dense_decode_fp8_sm90_fwd(
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
    descale_q: torch.Tensor | None = None,
    descale_k: torch.Tensor | None = None,
    p_bufs: int | None = None,
    trace: torch.Tensor | None = None,
    transposed_max_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`openmla.ops.decode_dense.dense_decode_fwd` for an e4m3 q over a per-tensor FP8
    cache, on Hopper.

    q: [b, s_q, h_q, 576] float8_e4m3fn (``q / descale_q``); k_cache: [num_blocks, page_block_size, h_kv, 576]
    float8_e4m3fn (or its uint8 view; ``k / descale_k``), any page size; descale_q, descale_k: fp32 [1] on q's
    device. Returns ``out`` [b, s_q, h_q, 512] bf16 and ``lse`` [b, h_q, s_q] fp32 (``+inf`` for a row that saw
    no key). Split partials are merged by the combine kernel (a second launch). ``p_bufs``: P buffers
    (``None``: :data:`TRANSPOSED_P_BUFS` with the transposed products, :data:`P_BUFS` without, read at each
    call); ``transposed_max_rows``: the most rows a KV head that take the transposed output products (``None``:
    :data:`TRANSPOSED_MAX_ROWS`, read at each call; 0: never); ``trace``: the trace build, a diagnostic (the
    warp-specialized kernel's buffer, :func:`~openmla.ops.gluon.decode_dense_sm90_ws.trace_buffer`; events in
    ``benchmarks/trace_ws.py``).
    """
    if not serves(q, k_cache, head_dim_v, descale_q, descale_k):
        raise InvalidArgumentError(
            f"the e4m3-product kernel takes an e4m3 q and cache with descale_q and descale_k, d={D_QK}, "
            f"head_dim_v={D_V}; got q {q.dtype} {tuple(q.shape)}, cache {k_cache.dtype}, head_dim_v={head_dim_v}, "
            f"descale_q {'given' if descale_q is not None else 'None'}, descale_k "
            f"{'given' if descale_k is not None else 'None'}; other FP8 calls go to the warp-specialized kernel")
    check_trace(trace, q.device)
    b, s_q, h_q, d = q.shape
    h_kv = k_cache.shape[2]
    rows = s_q * (h_q // h_kv)
    row_tiles = -(-rows // BLOCK_M)
    num_parts = tile_scheduler_metadata.shape[0]
    rows_n = transposed_rows(rows, TRANSPOSED_MAX_ROWS if transposed_max_rows is None else transposed_max_rows)
    if SCHED_BLOCK % BLOCK_N:
        raise ValueError("the scheduler's unit must be a multiple of the kernel's KV tile")
    lse = torch.empty(b, h_q, s_q, dtype=torch.float32, device=q.device)
    if workspace is None:
        workspace = split_workspace(q, head_dim_v, num_parts)
    out = torch.empty(b, s_q, h_q, head_dim_v, dtype=torch.bfloat16, device=q.device)
    k_cache = k_cache.view(torch.float8_e4m3fn)
    p_bufs = (TRANSPOSED_P_BUFS if rows_n else P_BUFS) if p_bufs is None else int(p_bufs)
    launch(_dense_decode_fp8_sm90_kernel, (row_tiles * h_kv, num_parts),
        *splitkv_args(q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits,
                      out, lse, workspace, row_tiles, softmax_scale), descale_k, descale_q, trace,
        CAUSAL=bool(causal and s_q > 1), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, D_V=D_V, D_PE=D_QK - D_V, STAGES=STAGES,
        SOFTMAX_WARPS=NUM_WARPS, OUTPUT_WARPS=WORKER_WARPS[0], LOADER_WARPS=WORKER_WARPS[1],
        OUTPUT_REGS=WORKER_REGS[0], LOADER_REGS=WORKER_REGS[1], P_BUFS=p_bufs, TRACE=trace is not None,
        ROWS_N=rows_n,
        num_warps=NUM_WARPS, maxnreg=MAXNREG,
    )
    combine_splits(out, lse, workspace[0], workspace[1], num_splits)
    return out, lse
