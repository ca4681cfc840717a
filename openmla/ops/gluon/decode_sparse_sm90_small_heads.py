"""Token-sparse MLA decoding over V3.2 FP8 records for Hopper (sm_90a) in Gluon at up to 32 heads: two programs an SM.

Why a kernel of its own: the warp-specialized sparse kernel (:mod:`.decode_sparse_sm90`) pads 16 heads to its 64-row
tile and runs one program an SM, so at h_q=16 it takes as long as at 64. A first small-head form (keys on the 64-row
side, one warpgroup in lockstep, a three-stage ring of records beside the 16-bit tile, one program an SM) was correct
and no faster (``docs/perf-notes.md``, sparse section): one warpgroup ran the copies' issue, the decode, the products
and the softmax one after the other, ~7200 cycles a tile, with the SM's other resources idle for most of it. Here a
program needs ~102 KB of shared memory, so two run on each SM and one's chain runs while the other's waits:

* ``Sᵀ = K Qᵀ`` [64 keys, 16]: A = the decoded 16-bit tile (K-major) and the tile's RoPE dims as they landed, B =
  ``Qᵀ`` (Q in shared memory, permuted); ``Oᵀ += Vᵀ Pᵀ`` [512, 16]: A = the tile's first 512 dims permuted, B = ``Pᵀ``.
* one 16-bit tile, no ring for codes: a tile's 512 e4m3 codes a key land by ``cp.async`` in the upper half of the
  16-bit tile (it is free once the last tile's ``P V`` is done) and are decoded in place, in an order that writes no
  byte before every warp has read it (:func:`_decode_in_place`); the RoPE dims (bf16, as stored) and the four fp32
  scales a key go to two-stage rings of their own, issued a tile ahead (under the scores and the ``P V`` before).
* the list entries of the next tile are loaded a tile before their copies are issued, and a tile's entries for its
  mask before its decode, so no issue waits for a load.

Two builds (:data:`ROW_TILES`): 16 rows as above, and 32 rows (17-32 heads), where Q and Pᵀ double, so to keep two
programs an SM (110 KB, 255 registers) the RoPE dims and scales keep one stage, issued with the next tile's codes
after ``P V``, and Pᵀ lies over the RoPE tile's upper half once the scores have read it (:func:`pe_stages`,
:func:`p_over_pe`).

Each query token is a request of ``h_q`` rows (rows past ``h_q`` masked); the split-KV plan balances the lists over
:data:`PROGRAMS_PER_SM` programs an SM (one where two would cut pieces under :data:`MIN_PIECE_TILES` tiles:
:func:`pieces_for`); split partials are merged by the combine kernel (which applies an attention sink to them; rows
written straight to ``out`` get it here).

Measured (NVIDIA H200, ``docs/perf-notes.md``, sparse section): b=64, s_q=2, topk=2048 at h_q=16, 113.2 µs of GPU
time a call (its plan without per-list overhead) against FlashMLA's 113.6 on q padded to 64 heads and the
warp-specialized kernel's 129.7 (with the dense kernels' plan; 125.5 for this kernel with that plan); 1.31x the same
kernel at one program an SM; a steady-state tile takes a program 10,470 cycles (decode 3,197 of them). The 32-row
build at h_q=32: 226.6-231.2 µs against the warp-specialized kernel's 250.5-253.2 where pieces walk 31 tiles ((b, s_q)
= (128, 2), (64, 4), (256, 1)), 131.8-132.1 against 124.1-124.6 at b=64, s_q=2 (16 tiles, each list split and merged),
so the launcher sends it long pieces only (``ROWS32_MIN_PIECE_TILES`` of :mod:`.decode_sparse_sm90`). Its trace
build (``trace=``, events :data:`TRACE_EVENTS`) is read by ``benchmarks/trace_ws.py``.
"""

from __future__ import annotations

import torch

from ..._runtime import gluon_available
from ..decode_dense import GLUON_RUNTIME_INTS

#: KV tokens per tile: the 64-row side of ``wgmma``.
BLOCK_N = 64
#: Query rows a program (the ``N`` of its products): the builds, smallest first; at most the last many heads are
#: served here, each call by the smallest build that holds its heads (:func:`rows_for`).
ROW_TILES = (16, 32)
#: Programs the split-KV plan counts on each SM (the shared memory, ~102 KB a program at 16 rows and 110 KB at 32,
#: and the registers, 168 and 255 a thread, allow two: ``tests/test_aot.py`` checks both builds).
PROGRAMS_PER_SM = 2
#: Fewest tiles a piece should walk with two programs an SM: where pieces would be shorter and one program an SM
#: gives longer ones, the plan counts one (H200, h_q=16, 16 lists of 2048: pieces of 3 tiles over 2 x 132 took 29.9
#: µs a call where the warp-specialized kernel's pieces of 4 over 132 took 24.0; at 4 tiles a piece, 32 lists, 39.4
#: against 39.8).
MIN_PIECE_TILES = 4
#: The trace build's events of a tile (``trace=`` of the launcher; ``benchmarks/trace_ws.py``, configs
#: ``*_small_heads``): 0 the step begins, 1 its codes, RoPE dims and scales have landed, 2 decoded, 3 scores done,
#: 4 P published, 5 ``P V`` done, 6 the next tile's codes issued.
TRACE_EVENTS = ("step", "landed", "decoded", "scores", "P", "PV", "issued")

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
    from .decode_dense_sm90_ws import _copy_v32_rope, _dequant, _slot_records, _stamp

    @gluon.jit
    def _entries(bt_row, start, tok_hi, COPY: gl.constexpr, SC_COPY: gl.constexpr):
        """List entries ``start .. start + 64`` of a request's list (-1 at or past ``tok_hi``) in the row slices of
        the code copies' layout and the scale copies' (int32 [64] each)."""
        offs_j = start + gl.arange(0, 64, layout=gl.SliceLayout(1, COPY))
        slot = gl.load(bt_row + offs_j, mask=offs_j < tok_hi, other=-1)
        offs_sc = start + gl.arange(0, 64, layout=gl.SliceLayout(1, SC_COPY))
        slot_sc = gl.load(bt_row + offs_sc, mask=offs_sc < tok_hi, other=-1)
        return slot, slot_sc

    @gluon.jit
    def _issue_codes(k_ptr, slot, start, tok_hi, page_block_size, num_blocks, stride_kb, stride_kp, tile_bytes,
                     COPY: gl.constexpr, D_V: gl.constexpr):
        """``cp.async`` the 512 e4m3 codes of each of a tile's 64 records into the upper half of the 16-bit tile
        (``tile_bytes``: the tile as uint8 [16, 64, 64]; dims ``64c ..`` into block ``8 + c``; records outside the
        cache or at or past ``tok_hi`` zero-filled) and commit."""
        offs_j = start + gl.arange(0, 64, layout=gl.SliceLayout(1, COPY))
        rec, mask_j = _slot_records(k_ptr, slot, offs_j, tok_hi, page_block_size, num_blocks, stride_kb, stride_kp)
        offs_c = gl.arange(0, 64, layout=gl.SliceLayout(0, COPY))
        for c in gl.static_range(D_V // 64):  # 64 dims a copy: a whole record's addresses would take 512 registers
            async_copy.async_copy_global_to_shared(tile_bytes.index(8 + c), rec[:, None] + c * 64 + offs_c[None, :],
                                                   mask=mask_j[:, None])
        async_copy.commit_group()

    @gluon.jit
    def _issue_rope_scales(k_ptr, slot, slot_sc, start, tok_hi, page_block_size, num_blocks, stride_kb, stride_kp,
                           pe_s, sc_s, COPY: gl.constexpr, SC_COPY: gl.constexpr, D_V: gl.constexpr):
        """``cp.async`` the 64 bf16 RoPE dims of a tile's records into ``pe_s`` [64, 64] and their four fp32 scales
        into ``sc_s`` [64, 4] (entries ``slot`` and ``slot_sc`` in the two copy layouts), and commit."""
        offs_j = start + gl.arange(0, 64, layout=gl.SliceLayout(1, COPY))
        rec, mask_j = _slot_records(k_ptr, slot, offs_j, tok_hi, page_block_size, num_blocks, stride_kb, stride_kp)
        _copy_v32_rope(rec, mask_j, pe_s, D_V, 4)
        offs_sc = start + gl.arange(0, 64, layout=gl.SliceLayout(1, SC_COPY))
        rec_sc, mask_sc = _slot_records(k_ptr, slot_sc, offs_sc, tok_hi, page_block_size, num_blocks, stride_kb,
                                        stride_kp)
        sc_ptr = (rec_sc + D_V).to(gl.pointer_type(gl.float32))  # four fp32 scales after the codes
        offs_t = gl.arange(0, 4, layout=gl.SliceLayout(0, SC_COPY))
        async_copy.async_copy_global_to_shared(sc_s, sc_ptr[:, None] + offs_t[None, :], mask=mask_sc[:, None])
        async_copy.commit_group()

    @gluon.jit
    def _decode_in_place(tile_bytes, k16_blocks, sc_s, opaque0, LOAD8: gl.constexpr, dtype: gl.constexpr):
        """Decode the tile's codes (blocks 8-15 of ``tile_bytes``, the 16-bit tile as uint8 [16, 64, 64]: its upper
        32 KB) into the tile itself (``k16_blocks``: [8, 64, 64] of ``dtype``, 8 KB a block): dims ``128t ..`` times each key's scale
        ``t`` (``sc_s`` [64, 4] fp32), rounded to ``dtype``. Block ``c`` is written over bytes ``8K c .. 8K (c + 1)``:
        blocks 0-3 over nothing yet unread, block 4 over code blocks 0-1, 5 over 2-3, 6 over 4-5, 7 over 6-7, so a
        barrier before blocks 4 and 6, and one inside block 7 between its read and its write, keep every write after
        every warp's read of those bytes. ``opaque0`` is a zero the compiler cannot see (constant block indices
        would have the blocks' addresses hoisted out of the loop, and spilled)."""
        for c in gl.static_range(8):
            if c == 4 or c == 6:
                gl.thread_barrier()
            # scale c // 2 as a [64, 1] column in LOAD8 itself (its columns replicated), summed to LOAD8's row slice
            sc = gl.sum(sc_s.slice(c // 2, 1, dim=1).load(LOAD8), axis=1)
            x = tile_bytes.index(opaque0 + 8 + c).load(LOAD8)
            if c == 7:
                gl.thread_barrier()
            k16_blocks.index(opaque0 + c).store(_dequant(x, sc, dtype))

    # one build for every s_q, and one whatever the cache's size and the block table's width (GLUON_RUNTIME_INTS)
    @gluon.jit(do_not_specialize=[*GLUON_RUNTIME_INTS, "lse_s_q"])
    def _sparse_v32_small_heads_kernel(
        q_ptr, k_ptr, block_table_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
        out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, counters_ptr,
        stride_qb, stride_qs, stride_qh,
        stride_kb, stride_kp, stride_kh,
        stride_bt,
        stride_ob, stride_os, stride_oh,
        stride_lb, stride_lh,
        s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks, num_blocks, scale_log2,
        sink_ptr, trace_ptr, lse_s_q,
        R: gl.constexpr, BLOCK_N: gl.constexpr, D_V: gl.constexpr, D_PE: gl.constexpr,
        P_SMEM: gl.constexpr, HAS_SINK: gl.constexpr, TRACE: gl.constexpr, PE_STAGES: gl.constexpr = 2,
        P_OVER_PE: gl.constexpr = False,
    ):
        # the arguments are the split-KV kernels' (``splitkv_args``: each request one query token of ``h_q`` rows,
        # its block-table row its list of cache slots, its length the list's); ``k_ptr``: the records' bytes;
        # ``lse_s_q``: the call's s_q, ``lse_ptr`` its [b, h_q, s_q] lse (request t's at [t // s_q, :, t % s_q]).
        # ``TRACE``: the trace build, stamping the SM's cycle counter at :data:`TRACE_EVENTS` of each tile
        # (``_stamp`` of the warp-specialized kernel, into ``trace_ptr``)
        dtype: gl.constexpr = q_ptr.dtype.element_ty
        gl.static_assert(D_V == 512 and D_PE == 64, "V3.2 records: (576, 512) dims")
        gl.static_assert(BLOCK_N == 64, "a tile is wgmma's 64-row side")
        # keys (and output dims) on the M side, query rows on N
        S_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, R, 16])
        LOAD: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
        LOAD8: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [4, 1], [1, 0])  # the codes: 16 B a thread
        SC_COPY: gl.constexpr = gl.BlockedLayout([1, 2], [16, 2], [4, 1], [1, 0])  # [64, 4] fp32 scales, 8 B a thread
        # the output through shared memory: output dims fastest, so each row's 512 dims are written contiguously
        STORE: gl.constexpr = gl.BlockedLayout([4, 1], [32, 1], [1, 4], [0, 1])
        SMEM: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        PLAIN: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0])
        COL_S: gl.constexpr = gl.SliceLayout(0, S_LAYOUT)
        COL_ST: gl.constexpr = gl.SliceLayout(0, STORE)

        # Q and the 16-bit tile are indexed in the loop by a zero the compiler cannot see: loop-invariant tiles
        # have their products' shared-memory descriptors hoisted out of the loop, and spilled
        q_one = gl.allocate_shared_memory(dtype, [1, R, D_V], SMEM)
        qpe_one = gl.allocate_shared_memory(dtype, [1, R, D_PE], SMEM)
        k16_one = gl.allocate_shared_memory(dtype, [1, BLOCK_N, D_V], SMEM)  # 64 KB: the decoded keys
        # the 64-dim blocks of the NVMMA tile lie 8 KB apart, so it is also [8, 64, 64]; as bytes [16, 64, 64], its
        # blocks 8-15 (the upper 32 KB) take the codes (unswizzled: the 16-byte pieces of a warp's rows fall on
        # distinct banks)
        k16_blocks = k16_one._reinterpret(dtype, [D_V // 64, BLOCK_N, 64], SMEM)
        bytes_view = k16_one._reinterpret(gl.uint8, [2 * (D_V // 64), BLOCK_N, 64], PLAIN)
        # after a request's last tile the tile holds the output [D_V, R] fp32 on its way to the store layout
        O_STAGES: gl.constexpr = (BLOCK_N * D_V * 2) // (D_V * R * 4)
        o_stage = k16_one._reinterpret(gl.float32, [O_STAGES, D_V, R],
                                       gl.SwizzledSharedLayout(1, 1, 1, order=[0, 1]))
        pe_ring = gl.allocate_shared_memory(dtype, [PE_STAGES, BLOCK_N, D_PE], SMEM)
        sc_ring = gl.allocate_shared_memory(gl.float32, [PE_STAGES, BLOCK_N, 4], PLAIN)
        if P_OVER_PE:
            # Pᵀ over the RoPE tile, dead once the scores are done: over its upper half. At its start, Pᵀ's shared
            # descriptors share their address with the RoPE tile's, and ptxas (Triton 3.6) then computed the later
            # k-steps' descriptors of Pᵀ from a uniform register never written (wrong outputs and faults on an
            # H200); ``tests/test_aot.py`` checks every build's SASS for such reads
            gl.static_assert(PE_STAGES == 1 and 2 * R <= D_PE, "Pᵀ over the upper half of one RoPE tile")
            p_smem = pe_ring._reinterpret(dtype, [2, BLOCK_N, R], P_SMEM).index(1)
        else:
            p_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, R], P_SMEM)  # Pᵀ: [keys, rows]

        part = gl.program_id(1)
        begin_req, begin_tok, end_req, end_tok, begin_split = _piece_bounds(sched_ptr, part)

        offs_r_ld = gl.arange(0, R, layout=gl.SliceLayout(1, LOAD))
        offs_c_ld = gl.arange(0, 64, layout=gl.SliceLayout(0, LOAD))
        offs_r_s = gl.arange(0, R, layout=COL_S)  # query rows along N
        offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, S_LAYOUT))  # keys along M
        offs_r_st = gl.arange(0, R, layout=COL_ST)
        offs_v_st = gl.arange(0, D_V, layout=gl.SliceLayout(1, STORE))
        mask_r_ld = offs_r_ld < rows
        mask_r = offs_r_s < rows
        mask_st = offs_r_st < rows
        kb = 0  # tiles this program has walked (the trace's tile index)

        for req in range(begin_req, end_req + 1):
            req64 = req.to(gl.int64)
            s_k, tok_lo, tok_hi, split_lo, n_split, split_idx = _request_span(
                req, begin_req, begin_tok, end_req, end_tok, begin_split, seqlens_ptr, num_splits_ptr, max_blocks,
                page_block_size)
            bt_row = block_table_ptr + req64 * stride_bt
            z = req >> 30  # the opaque zero

            # the first tile's copies, then Q [R, 576] -> shared memory while they fly (rows past ``rows`` zeros)
            ent, ent_sc = _entries(bt_row, tok_lo, tok_hi, LOAD8, SC_COPY)
            _issue_rope_scales(k_ptr, ent, ent_sc, tok_lo, tok_hi, page_block_size, num_blocks, stride_kb, stride_kp,
                               pe_ring.index(0), sc_ring.index(0), LOAD8, SC_COPY, D_V)
            _issue_codes(k_ptr, ent, tok_lo, tok_hi, page_block_size, num_blocks, stride_kb, stride_kp, bytes_view, LOAD8,
                         D_V)
            q_row = q_ptr + req64 * stride_qb + offs_r_ld * stride_qh
            for c in gl.static_range(D_V // 64):
                q_chunk = gl.load(q_row[:, None] + c * 64 + offs_c_ld[None, :], mask=mask_r_ld[:, None], other=0)
                q_one.index(0).slice(c * 64, 64, dim=1).store(q_chunk)
            q_chunk = gl.load(q_row[:, None] + D_V + offs_c_ld[None, :], mask=mask_r_ld[:, None], other=0)
            qpe_one.index(0).store(q_chunk)

            m_i = gl.full([R], float("-inf"), gl.float32, layout=COL_S)
            l_i = gl.zeros([R], gl.float32, layout=COL_S)
            acc = gl.zeros([D_V, R], gl.float32, layout=S_LAYOUT)  # Oᵀ
            n_tiles = gl.cdiv(tok_hi - tok_lo, BLOCK_N)
            for it in range(0, n_tiles):
                start = tok_lo + it * BLOCK_N
                stage = it % PE_STAGES
                zi = it >> 30  # an opaque zero that varies with the loop (one per request would be hoisted too)
                _stamp(trace_ptr, kb, 0, TRACE, 4)
                # the next tile's entries (its copies go out later in this step) and this tile's, for its mask
                ent, ent_sc = _entries(bt_row, start + BLOCK_N, tok_hi, LOAD8, SC_COPY)
                slot_s = gl.load(bt_row + start + offs_n, mask=start + offs_n < tok_hi, other=-1)
                async_copy.wait_group(0)  # this tile's codes, RoPE dims and scales
                gl.thread_barrier()
                _stamp(trace_ptr, kb, 1, TRACE, 4)
                _decode_in_place(bytes_view, k16_blocks, sc_ring.index(stage), zi, LOAD8, dtype)
                fence_async_shared()  # the tensor cores read the decoded tile next
                gl.thread_barrier()
                _stamp(trace_ptr, kb, 2, TRACE, 4)
                has_next = it + 1 < n_tiles
                if has_next and PE_STAGES == 2:  # into the other stage: its tile's scores are done
                    _issue_rope_scales(k_ptr, ent, ent_sc, start + BLOCK_N, tok_hi, page_block_size, num_blocks,
                                       stride_kb, stride_kp, pe_ring.index(1 - stage), sc_ring.index(1 - stage),
                                       LOAD8, SC_COPY, D_V)
                k_tile = k16_one.index(zi)
                s = gl.zeros([BLOCK_N, R], gl.float32, layout=S_LAYOUT)
                s = warpgroup_mma(k_tile, q_one.index(zi).permute((1, 0)), s, use_acc=False, is_async=True)
                s = warpgroup_mma(pe_ring.index(stage), qpe_one.index(zi).permute((1, 0)), s, is_async=True)
                s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
                _stamp(trace_ptr, kb, 3, TRACE, 4)
                s = s * scale_log2
                offs_j = start + offs_n
                # entries past the list or outside the cache (as _slot_records reads them) get no weight
                visible = (offs_j < tok_hi) & (slot_s >= 0) & (slot_s // page_block_size < num_blocks)
                s = gl.where(visible[:, None], s, float("-inf"))
                m_new = gl.maximum(m_i, gl.max(s, axis=0))
                # a row that has seen no key yet keeps m = -inf; shift by 0 so exp2 gives 0, not NaN
                m_shift = gl.where(m_new == float("-inf"), 0.0, m_new)
                p = gl.exp2(s - m_shift[None, :])
                alpha = gl.exp2(m_i - m_shift)
                l_i = l_i * alpha + gl.sum(p, axis=0)
                m_i = m_new
                if P_OVER_PE:
                    gl.thread_barrier()  # every warp's scores have read the RoPE tile that P goes over
                p_smem.store(p.to(dtype))
                fence_async_shared()
                gl.thread_barrier()
                _stamp(trace_ptr, kb, 4, TRACE, 4)
                acc = acc * alpha[None, :]
                acc = warpgroup_mma(k_tile.permute((1, 0)), p_smem, acc, is_async=True)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                # every warp is done with the tile and with Pᵀ before the next codes land on it
                gl.thread_barrier()
                _stamp(trace_ptr, kb, 5, TRACE, 4)
                if has_next:
                    if PE_STAGES == 1:
                        _issue_rope_scales(k_ptr, ent, ent_sc, start + BLOCK_N, tok_hi, page_block_size, num_blocks,
                                           stride_kb, stride_kp, pe_ring.index(0), sc_ring.index(0), LOAD8, SC_COPY,
                                           D_V)
                    _issue_codes(k_ptr, ent, start + BLOCK_N, tok_hi, page_block_size, num_blocks, stride_kb,
                                 stride_kp, bytes_view, LOAD8, D_V)
                _stamp(trace_ptr, kb, 6, TRACE, 4)
                kb += 1
            async_copy.wait_group(0)  # a request with no tile still issued its first one
            gl.thread_barrier()

            empty = l_i == 0.0
            inv_l = gl.where(empty, 0.0, 1.0 / l_i)
            lse2 = gl.where(empty, float("-inf"), m_i + gl.log2(l_i))
            if HAS_SINK:
                if n_split <= 1:  # split rows get the sink in the combine kernel, from the merged LSE
                    # out *= 1 / (1 + exp(sink - lse)), base 2: a +inf sink gives 0, -inf leaves out as it is
                    sink2 = gl.load(sink_ptr + offs_r_s, mask=mask_r, other=0.0) * 1.4426950408889634
                    inv_l = gl.where(empty, 0.0, inv_l / (1.0 + gl.exp2(sink2 - lse2)))
            # Oᵀ to the store layout through the (now free) tile: no scratch of its own beside the buffers
            o_stage.index(z).store(acc * inv_l[None, :])
            gl.thread_barrier()
            o = o_stage.index(z).load(STORE)  # [D_V, R]
            gl.thread_barrier()  # read before the next request's codes land
            if n_split <= 1:
                o_ptrs = out_ptr + req64 * stride_ob + offs_r_st * stride_oh
                gl.store(o_ptrs[None, :] + offs_v_st[:, None], o.to(out_ptr.dtype.element_ty), mask=mask_st[None, :])
                lse = gl.where(empty, float("inf"), lse2 * 0.6931471805599453)
                # int32 division: an int64 one is a subroutine call, which cost the kernel ~3 % (H200)
                lse_at = lse_ptr + (req // lse_s_q).to(gl.int64) * stride_lb + req % lse_s_q
                gl.store(lse_at + offs_r_s * stride_lh, lse, mask=mask_r)
            else:
                slot = (split_lo + split_idx).to(gl.int64)
                acc_row_st = slot * h_q + offs_r_st  # o_accum is [slots, 1, h_q, D_V]
                gl.store(o_acc_ptr + acc_row_st[None, :] * D_V + offs_v_st[:, None], o, mask=mask_st[None, :])
                gl.store(lse_acc_ptr + slot * h_q + offs_r_s, lse2, mask=mask_r)


def rows_for(h_q: int) -> int:
    """The build of :data:`ROW_TILES` that serves ``h_q`` heads (the smallest that holds them)."""
    return next(r for r in ROW_TILES if h_q <= r)


def pe_stages(rows: int) -> int:
    """Stages of the RoPE and scale rings of the ``rows`` build: two at 16 rows (a tile's RoPE dims and scales issued
    a tile ahead); one at 32, where Q and Pᵀ are twice as large and two programs an SM fit only with Pᵀ over the
    RoPE tile (so the next tile's RoPE dims and scales go out with its codes, after ``P V``)."""
    return 2 if rows <= 16 else 1


def p_over_pe(rows: int) -> bool:
    """Whether the ``rows`` build keeps Pᵀ over its (single) RoPE tile rather than in shared memory of its own:
    where two programs an SM would not fit otherwise (the 32-row build)."""
    return pe_stages(rows) == 1


def sparse_v32_small_heads_fits(h_q: int, is_fp8: bool, q_dtype: torch.dtype) -> bool:
    """Whether this kernel can serve a sparse call: V3.2 FP8 records, a bf16 q (the records' RoPE dims are bf16 and
    are multiplied as they land), at most ``ROW_TILES[-1]`` heads (:data:`ROW_TILES`)."""
    return bool(is_fp8) and q_dtype == torch.bfloat16 and 0 < h_q <= ROW_TILES[-1]


def piece_tiles(tokens: int, topk: int, parts: int, max_splits: int | None) -> int:
    """Tiles the longest piece walks when ``tokens`` lists of ``topk`` entries are planned over ``parts`` pieces
    with no per-list overhead (``max_splits`` pieces a list at most; None: no cap): the plan's payload."""
    blocks = max(-(-topk // BLOCK_N), 1)
    capped = -(-blocks // (max_splits - 1)) if max_splits else 1
    return max(-(-tokens * blocks // parts), capped, 1)


def pieces_for(tokens: int, topk: int, sms: int, max_splits: int | None) -> int:
    """Pieces of the split-KV plan for ``tokens`` lists of up to ``topk`` entries: :data:`PROGRAMS_PER_SM` an SM,
    unless that cuts pieces under :data:`MIN_PIECE_TILES` tiles where one an SM cuts longer ones
    (:func:`piece_tiles`)."""
    two = PROGRAMS_PER_SM * sms
    if (piece_tiles(tokens, topk, two, max_splits) < MIN_PIECE_TILES
            and piece_tiles(tokens, topk, sms, max_splits) > piece_tiles(tokens, topk, two, max_splits)):
        return sms
    return two
