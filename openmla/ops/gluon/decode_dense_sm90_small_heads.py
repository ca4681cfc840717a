"""Dense MLA decoding for Hopper (sm_90a) in Gluon when a KV head has few query rows (``s_q * h_q / h_kv <= 32``).

Why a layout of its own: ``wgmma`` multiplies 64 rows at a time. The 64-row kernel
(:mod:`.decode_dense_sm90`) puts the query rows there, so with 16 rows (h_q = 16, what tensor parallelism
leaves on a GPU) three quarters of every product is padding, and on an H200 that padded work, not the
memory system, set its speed: h_q 16, 32 and 64 all took 400-422 µs at s_k=8k, b=128. Here the KV tokens
take the 64-row side and the query rows the other (``N = R``, 16 or 32), so the products do no padded
work and the kernel streams the cache:

* ``Sᵀ = K Qᵀ`` [64 tokens, R]: A = the K tile in shared memory (K-major), B = ``Qᵀ`` (the Q tile in
  shared memory, permuted).
* softmax down the columns (one per query row): ``m``, ``l`` are [R] vectors.
* ``Oᵀ += Vᵀ Pᵀ`` [512, R]: A = the K tile's first 512 dims, permuted (an MN-major operand), B = ``Pᵀ``
  through shared memory.
* one warpgroup (``WGS`` > 1 splits the rows between warpgroups sharing the K tiles, each row's softmax
  inside its warpgroup; slower at 32 rows on an H200, kept for tuning).
* K/V tiles of 64 tokens into a two-stage ring, the next tile loading while this one is multiplied:
  gathered through the block table with ``cp.async`` (any page size), or, where the cache allows it
  (``TMA_K``: one KV head, pages of whole 64-key tiles, TMA-able strides, 16-bit keys; the descriptor of
  :func:`openmla.ops.gluon.decode_dense_sm90_ws.tma_view`), a whole tile as nine 64x64 TMA boxes issued by
  one thread on the stage's ready barrier (a request's last, partial tile still by ``cp.async``, its
  missing rows zero-filled). Per-box barriers, as the warp-specialized kernel has, would split the score
  product in nine; here that cost ``ptxas`` up to 33 more registers (16 rows) and 232-368 more bytes of
  stack (32 rows).
* per-tensor FP8 caches (``KV_FP8``): the ring holds the e4m3 bytes (half the traffic), decoded exactly
  into one 16-bit tile in shared memory before the products; an e4m3 q (``Q_FP8``) is decoded to fp16,
  the products run in fp16, the descales are applied in fp32 (as in the Triton kernels).

Split-KV plan, causal rule, masking and outputs are exactly those of :mod:`openmla.ops.decode_dense`
(same scheduler metadata, same ``o_accum`` layout, the same combine, fused into the launch for small
eager batches: :mod:`.merge`).
"""

from __future__ import annotations

import functools

import torch

from ..._runtime import gluon_available
from ..combine import combine_splits, fuse_combine
from ..decode_dense import GLUON_RUNTIME_INTS, split_workspace, splitkv_args
from ..launch import launch
from ..schedule import SCHED_BLOCK
from .decode_dense_sm90_ws import tma_view

#: K tiles by TMA where :func:`tma_view` allows it (16-bit caches).
TMA_K = True

#: KV tokens per tile: the 64-row side of ``wgmma``.
BLOCK_N = 64
#: Query rows per warpgroup (the ``N`` of each warpgroup's products).
ROWS_PER_WARPGROUP = 16
#: Most query rows per KV head this kernel takes; more go to the 64-row kernel. (64 rows would need
#: 229 KB of shared memory for Q, two K stages and Pᵀ: more than a Hopper block may use.)
MAX_ROWS = 32


def rows_tile(rows: int) -> int:
    """Query rows per program: ``rows`` rounded up to 16 or 32 (one warpgroup per 16)."""
    if not 0 < rows <= MAX_ROWS:
        raise ValueError(f"the small-head kernel takes 1..{MAX_ROWS} rows per KV head, got {rows}")
    return 16 if rows <= 16 else 32


def warpgroups_for(r: int) -> int:
    """Warpgroups of a program with ``r`` query rows by default: one. At 32 rows one warpgroup (N = 32
    per ``wgmma``) took 363.6 us where two (16 rows each) took 401.8 us (H200, b=128, s_k=8k, same run)."""
    return 1


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

    from .decode_dense_sm90 import _issue_kv_tile, _piece_bounds, _request_span
    from .decode_dense_sm90_ws import _tma_tile
    from .merge import arrive_split, merge_arrived

    @functools.lru_cache(maxsize=None)
    def p_smem_layout(r: int):
        """Shared layout of ``Pᵀ`` [64, r] (16-bit): swizzle as wide as one row of it (32 or 64 bytes)."""
        return gl.NVMMASharedLayout(swizzle_byte_width=min(2 * r, 128), element_bitwidth=16, rank=2)

    @gluon.jit
    def _as_operand(x, dtype: gl.constexpr, IS_FP8: gl.constexpr):
        """A loaded tile as the products' ``dtype``: e4m3 bytes decoded (exactly), 16-bit values as they are."""
        if IS_FP8:
            return x.to(gl.float8e4nv, bitcast=True).to(dtype)
        else:
            return x

    @gluon.jit
    def _issue_tile(k_ptr, k_desc, bt_row, ring, ring_pe, k_ready, kb, start, tok_hi, page_block_size, num_blocks,
                    kv_head, stride_kb, stride_kp, stride_kh, BLOCK_N: gl.constexpr, D_V: gl.constexpr,
                    D_PE: gl.constexpr, COPY: gl.constexpr, TMA_K: gl.constexpr, K_BOXES: gl.constexpr):
        """Issue the ``kb``-th tile of this program (tokens ``start..start+BLOCK_N``) into stage ``kb % 2``
        and commit a ``cp.async`` group (empty for a TMA tile, so the groups count tiles either way). With
        ``TMA_K`` the stage's ready barrier completes once a tile: on the tile's bytes, or at once for a
        ``cp.async`` tile (its copies are waited for through the groups)."""
        stage = kb % 2
        if TMA_K:
            if start + BLOCK_N <= tok_hi:
                page_id = gl.load(bt_row + start // page_block_size)
                page_id = gl.minimum(gl.maximum(page_id, 0), num_blocks - 1)
                _tma_tile(k_desc, page_id * page_block_size + start % page_block_size, ring.index(stage),
                          ring.index(stage).slice(D_V // 2, D_V // 2, dim=1), ring_pe.index(stage), k_ready, stage,
                          D_V, D_PE, K_BOXES, False)
            else:
                _issue_kv_tile(k_ptr, bt_row, ring.index(stage), ring_pe.index(stage), start, tok_hi,
                               page_block_size, num_blocks, kv_head, stride_kb, stride_kp, stride_kh, BLOCK_N, D_V,
                               D_PE, COPY)
                for c in gl.static_range(K_BOXES):
                    mbarrier.arrive(k_ready.index(stage * K_BOXES + c), count=1)
        else:
            _issue_kv_tile(k_ptr, bt_row, ring.index(stage), ring_pe.index(stage), start, tok_hi, page_block_size,
                           num_blocks, kv_head, stride_kb, stride_kp, stride_kh, BLOCK_N, D_V, D_PE, COPY)
        async_copy.commit_group()

    @gluon.jit
    def _scores_t(k_tile, kpe_tile, q_smem, qpe_smem, k_ready, kb, S_LAYOUT: gl.constexpr, BLOCK_N: gl.constexpr,
                  R: gl.constexpr, D_V: gl.constexpr, D_PE: gl.constexpr, TMA_K: gl.constexpr,
                  K_BOXES: gl.constexpr):
        """Issue ``Sᵀ = K Qᵀ`` [BLOCK_N, R] for the ``kb``-th tile, with ``TMA_K`` once its stage's ready barrier
        completes (TMA writes need no fence before the tensor cores)."""
        if TMA_K:
            mbarrier.wait(k_ready.index((kb % 2) * K_BOXES), (kb // 2) & 1)
        s = gl.zeros([BLOCK_N, R], gl.float32, layout=S_LAYOUT)
        s = warpgroup_mma(k_tile, q_smem.permute((1, 0)), s, use_acc=False, is_async=True)
        if D_PE > 0:
            s = warpgroup_mma(kpe_tile, qpe_smem.permute((1, 0)), s, is_async=True)
        return s

    @gluon.jit(do_not_specialize=list(GLUON_RUNTIME_INTS))  # one build a form whatever the cache size
    def _dense_decode_sm90_small_heads_kernel(
        q_ptr, k_ptr, block_table_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
        out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, counters_ptr,
        stride_qb, stride_qs, stride_qh,
        stride_kb, stride_kp, stride_kh,
        stride_bt,
        stride_ob, stride_os, stride_oh,
        stride_lb, stride_lh,
        s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks, num_blocks, scale_log2,
        descale_q_ptr, descale_k_ptr, k_desc,
        CAUSAL: gl.constexpr, FUSED_COMBINE: gl.constexpr,
        R: gl.constexpr, BLOCK_N: gl.constexpr,
        D_V: gl.constexpr, D_PE: gl.constexpr,
        P_SMEM: gl.constexpr, WGS: gl.constexpr,
        Q_FP8: gl.constexpr, KV_FP8: gl.constexpr, TMA_K: gl.constexpr,
    ):
        # Per-tensor FP8 (as the Triton kernels do it): e4m3 codes decoded exactly to 16 bits, products in
        # fp16 for an e4m3 q (more mantissa for P than bf16) or in q's dtype, descales applied in fp32.
        if Q_FP8:
            dtype: gl.constexpr = gl.float16
        else:
            dtype: gl.constexpr = q_ptr.dtype.element_ty
        # tokens (and output dims) on the M side, query rows on N; warpgroup w owns rows w*R/WGS ..
        S_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, WGS],
                                                           instr_shape=[16, R // WGS, 16])
        O_LAYOUT: gl.constexpr = S_LAYOUT
        LOAD: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4 * WGS, 1], [1, 0])
        # output stores: output dims fastest, so each query row's 512 dims are written contiguously
        STORE: gl.constexpr = gl.BlockedLayout([4, 1], [32, 1], [1, 4 * WGS], [0, 1])
        SMEM: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        # FP8 tiles land as bytes, 16 a thread per copy, and are decoded into the 16-bit tile in SMEM
        LOAD8: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [4 * WGS, 1], [1, 0])
        SMEM8: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=64, element_bitwidth=8, rank=2)
        COL_S: gl.constexpr = gl.SliceLayout(0, S_LAYOUT)
        COL_ST: gl.constexpr = gl.SliceLayout(0, STORE)

        gl.static_assert(D_PE == 0 or D_PE == 64, "the RoPE part must be 0 or 64 dims")
        q_smem = gl.allocate_shared_memory(dtype, [R, D_V], SMEM)
        if D_PE > 0:
            qpe_smem = gl.allocate_shared_memory(dtype, [R, D_PE], SMEM)
        else:
            qpe_smem = q_smem
        if KV_FP8:
            # the copy ring holds bytes; one 16-bit tile holds the decoded keys the products read
            ring = gl.allocate_shared_memory(gl.uint8, [2, BLOCK_N, D_V], SMEM8)
            k16_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, D_V], SMEM)
            if D_PE > 0:
                ring_pe = gl.allocate_shared_memory(gl.uint8, [2, BLOCK_N, D_PE], SMEM8)
                kpe16_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, D_PE], SMEM)
            else:
                ring_pe = ring
                kpe16_smem = k16_smem
            COPY: gl.constexpr = LOAD8
        else:
            ring = gl.allocate_shared_memory(dtype, [2, BLOCK_N, D_V], SMEM)
            if D_PE > 0:
                ring_pe = gl.allocate_shared_memory(dtype, [2, BLOCK_N, D_PE], SMEM)
            else:
                ring_pe = ring
            COPY: gl.constexpr = LOAD
        p_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, R], P_SMEM)  # Pᵀ: [tokens, rows]
        gl.static_assert(not (TMA_K and KV_FP8), "TMA tiles are 16-bit keys")
        K_BOXES: gl.constexpr = 1  # ready barriers a stage (module docstring)
        if TMA_K:
            k_ready = gl.allocate_shared_memory(gl.int64, [2 * K_BOXES, 1], mbarrier.MBarrierLayout())
            for i in gl.static_range(2 * K_BOXES):
                mbarrier.init(k_ready.index(i), count=1)
            fence_async_shared()
            gl.thread_barrier()
        else:  # never used: no barrier is waited for or arrived at
            k_ready = p_smem

        pid_m = gl.program_id(0)
        part = gl.program_id(1)
        kv_head = pid_m // row_tiles
        tile = pid_m % row_tiles

        begin_req, begin_tok, end_req, end_tok, begin_split = _piece_bounds(sched_ptr, part)

        offs_r_ld = tile * R + gl.arange(0, R, layout=gl.SliceLayout(1, LOAD))
        offs_c_ld = gl.arange(0, 64, layout=gl.SliceLayout(0, LOAD))
        offs_r_s = tile * R + gl.arange(0, R, layout=COL_S)  # query rows along N
        offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, S_LAYOUT))  # tokens along M
        offs_r_st = tile * R + gl.arange(0, R, layout=COL_ST)
        offs_v_st = gl.arange(0, D_V, layout=gl.SliceLayout(1, STORE))

        kb = 0  # tiles issued by this program: tile kb sits in stage kb % 2
        score_scale = scale_log2
        if Q_FP8:
            score_scale = score_scale * gl.load(descale_q_ptr)
        if KV_FP8:
            descale_k = gl.load(descale_k_ptr)
            score_scale = score_scale * descale_k

        for req in range(begin_req, end_req + 1):
            req64 = req.to(gl.int64)
            s_k, tok_lo, tok_hi, split_lo, n_split, split_idx = _request_span(
                req, begin_req, begin_tok, end_req, end_tok, begin_split, seqlens_ptr, num_splits_ptr, max_blocks,
                page_block_size)
            bt_row = block_table_ptr + req64 * stride_bt

            # Q tile [R, d] -> shared memory, 64 dims at a time (rows past ``rows`` are zeros)
            mask_r_ld = offs_r_ld < rows
            q_row = q_ptr + req64 * stride_qb + (offs_r_ld // group) * stride_qs \
                + (kv_head * group + offs_r_ld % group) * stride_qh
            for c in gl.static_range(D_V // 64):
                q_chunk = gl.load(q_row[:, None] + c * 64 + offs_c_ld[None, :], mask=mask_r_ld[:, None], other=0)
                q_smem.slice(c * 64, 64, dim=1).store(_as_operand(q_chunk, dtype, Q_FP8))
            if D_PE > 0:
                q_chunk = gl.load(q_row[:, None] + D_V + offs_c_ld[None, :], mask=mask_r_ld[:, None], other=0)
                qpe_smem.store(_as_operand(q_chunk, dtype, Q_FP8))

            if CAUSAL:
                limit = s_k - s_q + offs_r_s // group  # [R] last key each query row may see
            m_i = gl.full([R], float("-inf"), gl.float32, layout=COL_S)
            l_i = gl.zeros([R], gl.float32, layout=COL_S)
            acc = gl.zeros([D_V, R], gl.float32, layout=O_LAYOUT)  # Oᵀ

            n_tiles = gl.cdiv(tok_hi - tok_lo, BLOCK_N)
            if not TMA_K:  # no barrier phase to carry across requests: each request starts on stage 0
                kb = 0
            _issue_tile(k_ptr, k_desc, bt_row, ring, ring_pe, k_ready, kb, tok_lo, tok_hi, page_block_size,
                        num_blocks, kv_head, stride_kb, stride_kp, stride_kh, BLOCK_N, D_V, D_PE, COPY, TMA_K,
                        K_BOXES)
            kb += 1
            for it in range(0, n_tiles):
                start = tok_lo + it * BLOCK_N
                cur = kb - 1  # this tile's issue number
                stage = cur % 2
                # prefetch the next tile into the other stage (fully masked past the range: reads nothing)
                _issue_tile(k_ptr, k_desc, bt_row, ring, ring_pe, k_ready, kb, start + BLOCK_N, tok_hi,
                            page_block_size, num_blocks, kv_head, stride_kb, stride_kp, stride_kh, BLOCK_N, D_V, D_PE,
                            COPY, TMA_K, K_BOXES)
                kb += 1
                async_copy.wait_group(1)
                fence_async_shared()
                gl.thread_barrier()
                if KV_FP8:
                    # decode this tile's bytes into the 16-bit tile (the last tile's products are done:
                    # the loop ends on a barrier after them); zero-filled tokens stay 0
                    for c in gl.static_range(D_V // 64):
                        codes = ring.index(stage).slice(c * 64, 64, dim=1).load(LOAD8)
                        k16_smem.slice(c * 64, 64, dim=1).store(_as_operand(codes, dtype, True))
                    if D_PE > 0:
                        kpe16_smem.store(_as_operand(ring_pe.index(stage).load(LOAD8), dtype, True))
                    fence_async_shared()
                    gl.thread_barrier()
                    k_tile = k16_smem
                    kpe_tile = kpe16_smem
                else:
                    k_tile = ring.index(stage)
                    kpe_tile = ring_pe.index(stage)

                s = _scores_t(k_tile, kpe_tile, q_smem, qpe_smem, k_ready, cur, S_LAYOUT, BLOCK_N, R, D_V, D_PE, TMA_K,
                              K_BOXES)
                s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
                s = s * score_scale
                offs_j = start + offs_n
                if CAUSAL:
                    visible = (offs_j[:, None] < tok_hi) & (offs_j[:, None] <= limit[None, :])
                else:
                    visible = (offs_j < tok_hi)[:, None]
                s = gl.where(visible, s, float("-inf"))
                m_new = gl.maximum(m_i, gl.max(s, axis=0))
                # a row that has seen no key yet keeps m = -inf; shift by 0 so exp2 gives 0, not NaN
                m_shift = gl.where(m_new == float("-inf"), 0.0, m_new)
                p = gl.exp2(s - m_shift[None, :])
                alpha = gl.exp2(m_i - m_shift)
                l_i = l_i * alpha + gl.sum(p, axis=0)
                m_i = m_new

                p_smem.store(p.to(dtype))
                fence_async_shared()
                gl.thread_barrier()
                acc = acc * alpha[None, :]
                acc = warpgroup_mma(k_tile.permute((1, 0)), p_smem, acc, is_async=True)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                # every warp is done with this stage and with Pᵀ before they are overwritten
                gl.thread_barrier()
            async_copy.wait_group(0)
            gl.thread_barrier()

            empty = l_i == 0.0
            inv_l = gl.where(empty, 0.0, 1.0 / l_i)
            if KV_FP8:
                inv_l = inv_l * descale_k  # V = descale_k * k_codes
            o = gl.convert_layout(acc * inv_l[None, :], STORE)  # [D_V, R]
            lse2 = gl.where(empty, float("-inf"), m_i + gl.log2(l_i))
            mask_r = offs_r_s < rows
            t_s = offs_r_s // group
            head_s = kv_head * group + offs_r_s % group
            mask_st = offs_r_st < rows
            t_st = offs_r_st // group
            head_st = kv_head * group + offs_r_st % group
            if n_split <= 1:
                o_ptrs = out_ptr + req64 * stride_ob + t_st * stride_os + head_st * stride_oh
                gl.store(o_ptrs[None, :] + offs_v_st[:, None], o.to(out_ptr.dtype.element_ty), mask=mask_st[None, :])
                lse = gl.where(empty, float("inf"), lse2 * 0.6931471805599453)
                gl.store(lse_ptr + req64 * stride_lb + head_s * stride_lh + t_s, lse, mask=mask_r)
            else:
                slot = (split_lo + split_idx).to(gl.int64)
                acc_row_st = (slot * s_q + t_st) * h_q + head_st  # o_accum is [slots, s_q, h_q, D_V]
                gl.store(o_acc_ptr + acc_row_st[None, :] * D_V + offs_v_st[:, None], o, mask=mask_st[None, :])
                gl.store(lse_acc_ptr + (slot * s_q + t_s) * h_q + head_s, lse2, mask=mask_r)
                if FUSED_COMBINE:  # one counter per request and row tile
                    arrive_split(counters_ptr + req64 * gl.num_programs(0) + pid_m)
        if FUSED_COMBINE:
            merge_arrived(begin_req, end_req, num_splits_ptr, counters_ptr + pid_m, gl.num_programs(0), out_ptr, lse_ptr,
                          o_acc_ptr, lse_acc_ptr, tile * R, rows, group, kv_head, s_q, h_q, stride_ob, stride_os,
                          stride_oh, stride_lb, stride_lh, R, D_V, gl.num_warps())


def dense_decode_sm90_small_heads_fwd(
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
    warpgroups: int | None = None,
    descale_q: torch.Tensor | None = None,
    descale_k: torch.Tensor | None = None,
    fused_combine: bool | None = None,
    tma_k: bool = TMA_K,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`openmla.ops.decode_dense.dense_decode_fwd`, on Hopper, for ``s_q * h_q / h_kv <= 32``.

    Per-tensor FP8 as there: a float8_e4m3fn (or uint8/int8) cache with ``descale_k``, q bf16/fp16 or
    e4m3 with ``descale_q`` (output bf16). ``warpgroups``: how many warpgroups share a program's rows
    (default :func:`warpgroups_for`; 1 or ``R / 16``), for tuning. ``tma_k``: whole K tiles by TMA where
    the cache allows it (16-bit keys, :func:`tma_view`).
    """
    b, s_q, h_q, d = q.shape
    h_kv = k_cache.shape[2]
    rows = s_q * (h_q // h_kv)
    r = rows_tile(rows)
    wgs = warpgroups or warpgroups_for(r)
    if wgs not in (1, r // ROWS_PER_WARPGROUP):
        raise ValueError(f"warpgroups must be 1 or {r // ROWS_PER_WARPGROUP} for {r} rows, got {wgs}")
    q_fp8 = q.dtype == torch.float8_e4m3fn
    kv_fp8 = k_cache.dtype in (torch.float8_e4m3fn, torch.uint8, torch.int8)
    if q_fp8 != (descale_q is not None) or kv_fp8 != (descale_k is not None):
        raise ValueError("descale_q (descale_k) must be given exactly when q (k_cache) is FP8")
    if q_fp8 and not kv_fp8:
        raise ValueError("an e4m3 q needs an FP8 cache")
    num_parts = tile_scheduler_metadata.shape[0]
    if SCHED_BLOCK % BLOCK_N:
        raise ValueError("the scheduler's unit must be a multiple of the sm_90 kernel's KV tile")
    out = torch.empty(b, s_q, h_q, head_dim_v, dtype=torch.bfloat16 if q_fp8 else q.dtype, device=q.device)
    lse = torch.empty(b, h_q, s_q, dtype=torch.float32, device=q.device)
    if workspace is None:
        workspace = split_workspace(q, head_dim_v, num_parts)
    fused = fuse_combine(q.device, b) if fused_combine is None else bool(fused_combine)
    # FP8 tensors go in as their bytes; an absent descale is never read (lse stands in)
    q_in = q.view(torch.uint8) if q_fp8 else q
    k_in = k_cache.view(torch.uint8) if kv_fp8 else k_cache
    k_desc = tma_view(k_cache) if tma_k and not kv_fp8 else None
    launch(_dense_decode_sm90_small_heads_kernel, (h_kv, num_parts),
        *splitkv_args(q_in, k_in, block_table, cache_seqlens, tile_scheduler_metadata, num_splits,
                      out, lse, workspace, 1, softmax_scale),
        descale_q if q_fp8 else lse, descale_k if kv_fp8 else lse, k_desc,
        CAUSAL=bool(causal and s_q > 1), FUSED_COMBINE=fused, R=r, BLOCK_N=BLOCK_N, D_V=head_dim_v, D_PE=d - head_dim_v,
        P_SMEM=p_smem_layout(r), WGS=wgs, Q_FP8=q_fp8, KV_FP8=kv_fp8, TMA_K=k_desc is not None,
        num_warps=4 * wgs,
    )
    if not fused:
        combine_splits(out, lse, workspace[0], workspace[1], num_splits)
    return out, lse
