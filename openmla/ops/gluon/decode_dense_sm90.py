"""Dense MLA decoding for Hopper (sm_90a) in Gluon: the Triton path's twin with the same launcher signature.

Why a twin: the portable Triton kernel cannot hold a 64 x 512 fp32 output accumulator next to its
pipelined tiles, and Triton's layout choice for chained products makes both warpgroups compute the
same scores. Here the layouts are chosen by hand:

* 8 warps = two warpgroups, 64 query rows per program (all ``s_q * h_q / h_kv`` rows of a KV head
  folded together, 64 at a time).
* Scores ``S = Q Kᵀ`` [64, BLOCK_N]: warpgroup ``w`` computes columns ``w * BLOCK_N/2 ...`` with
  ``wgmma`` over the whole 576-dim key (Q and K both in shared memory); row max and sum span both.
* ``P`` goes to shared memory once; ``O += P V`` [64, 512]: warpgroup ``w`` owns output columns
  ``w*256 .. w*256+255`` (a 64 x 256 fp32 accumulator, 128 registers a thread).
* K/V tiles (the same bytes: V is the first 512 dims of K) are gathered token by token through the
  block table with ``cp.async`` into a two-stage ring, so any page size works; the next tile loads
  while this one is multiplied.

Split-KV plan, causal rule, masking and outputs are exactly those of
:mod:`openmla.ops.decode_dense` (same scheduler metadata, same ``o_accum`` layout, the same combine,
fused into the launch for small eager batches that are not replayed: :mod:`.merge`).
"""

from __future__ import annotations

import torch

from ..._runtime import env_fp8_scores, gluon_available
from ..combine import combine_splits, fuse_combine
from ..decode_dense import GLUON_RUNTIME_INTS, split_workspace, splitkv_args
from ..launch import launch
from ..schedule import SCHED_BLOCK

BLOCK_M = 64
BLOCK_N = 64
NUM_WARPS = 8

if gluon_available():
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        async_copy,
        fence_async_shared,
        warpgroup_mma,
        warpgroup_mma_wait,
    )

    from .merge import arrive_split, merge_arrived

    @gluon.jit
    def _issue_kv_tile(k_ptr, bt_row, dst_nope, dst_pe, start, tok_hi, page_block_size, num_blocks, kv_head,
                       stride_kb, stride_kp, stride_kh,
                       BLOCK_N: gl.constexpr, D_V: gl.constexpr, D_PE: gl.constexpr, LOAD: gl.constexpr):
        """cp.async K tile tokens ``start..start+BLOCK_N``: dims [0, D_V) to ``dst_nope``, the rest to
        ``dst_pe``. Tokens at or past ``tok_hi`` are not read (zero-filled)."""
        offs_j = start + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, LOAD))
        mask_j = offs_j < tok_hi
        page = gl.load(bt_row + offs_j // page_block_size, mask=mask_j, other=0)
        page = gl.minimum(gl.maximum(page, 0), num_blocks - 1)
        k_row = page.to(gl.int64) * stride_kb + (offs_j % page_block_size) * stride_kp + kv_head * stride_kh
        offs_c = gl.arange(0, 64, layout=gl.SliceLayout(0, LOAD))
        for c in gl.static_range(D_V // 64):
            ptrs = k_ptr + (k_row[:, None] + c * 64) + offs_c[None, :]
            async_copy.async_copy_global_to_shared(dst_nope.slice(c * 64, 64, dim=1), ptrs, mask=mask_j[:, None])
        if D_PE > 0:
            ptrs = k_ptr + (k_row[:, None] + D_V) + offs_c[None, :]
            async_copy.async_copy_global_to_shared(dst_pe, ptrs, mask=mask_j[:, None])

    @gluon.jit
    def _piece_bounds(sched_ptr, part):
        """Piece ``part`` of the split-KV plan: (begin_req, begin_tok, end_req, end_tok, begin_split)."""
        sched = sched_ptr + part * 8
        return gl.load(sched + 0), gl.load(sched + 1), gl.load(sched + 2), gl.load(sched + 3), gl.load(sched + 4)

    @gluon.jit
    def _request_span(req, begin_req, begin_tok, end_req, end_tok, begin_split, seqlens_ptr, num_splits_ptr,
                      max_blocks, page_block_size):
        """A piece's share of request ``req``: (s_k, tok_lo, tok_hi, split_lo, n_split, split_idx), ``s_k``
        clamped to what the block table covers (the Triton kernels' helper of the same name, in Gluon)."""
        s_k = gl.minimum(gl.load(seqlens_ptr + req), max_blocks * page_block_size)
        tok_lo = gl.where(req == begin_req, begin_tok, 0)
        tok_hi = gl.where(req == end_req, gl.minimum(end_tok, s_k), s_k)
        split_lo = gl.load(num_splits_ptr + req)
        n_split = gl.load(num_splits_ptr + req + 1) - split_lo
        split_idx = gl.where(req == begin_req, begin_split, 0)
        return s_k, tok_lo, tok_hi, split_lo, n_split, split_idx

    @gluon.jit
    def _softmax_max(s, m_i, scale_log2, start, tok_hi, limit, offs_n, CAUSAL: gl.constexpr,
                     INTERIOR: gl.constexpr = False):
        """The first half of :func:`_online_softmax`: the tile's scores masked (and, not ``INTERIOR``, scaled), the
        new running max and the shift the exponent subtracts (0 for a row with no key so far)."""
        gl.static_assert(not (INTERIOR and CAUSAL), "the interior-tile softmax is built without the causal mask")
        BLOCK_N: gl.constexpr = s.shape[1]
        if INTERIOR:
            if start + BLOCK_N > tok_hi:
                s = gl.where((start + offs_n < tok_hi)[None, :], s, float("-inf"))
            m_new = gl.maximum(m_i, gl.max(s, axis=1) * scale_log2)
        else:  # the masked form, in the order it had before INTERIOR (ptxas's allocation of the forms that run it)
            s = s * scale_log2
            offs_j = start + offs_n
            if CAUSAL:
                visible = (offs_j[None, :] < tok_hi) & (offs_j[None, :] <= limit[:, None])
            else:
                visible = (offs_j < tok_hi)[None, :]
            s = gl.where(visible, s, float("-inf"))
            m_new = gl.maximum(m_i, gl.max(s, axis=1))
        m_shift = gl.where(m_new == float("-inf"), 0.0, m_new)
        return s, m_new, m_shift

    @gluon.jit
    def _softmax_exp(s, m_shift, scale_log2, INTERIOR: gl.constexpr = False):
        """The second half of :func:`_online_softmax`: the tile's unnormalised probabilities ``P`` (fp32)."""
        if INTERIOR:
            p = gl.exp2(s * scale_log2 - m_shift[:, None])
        else:
            p = gl.exp2(s - m_shift[:, None])
        return p

    @gluon.jit
    def _online_softmax(s, m_i, l_i, scale_log2, start, tok_hi, limit, offs_n, CAUSAL: gl.constexpr,
                        INTERIOR: gl.constexpr = False):
        """One tile of online softmax in base 2: ``(p, alpha, m_new, l_new)``; keys at or past ``tok_hi``
        (and, causal, past each row's ``limit``) get weight 0; a row with no key so far keeps ``m = -inf``.

        ``INTERIOR`` (no causal mask; needs ``scale_log2 > 0``, which the launcher checks): the max is taken over the
        unscaled scores and the scale folded into the exponent (one fused multiply-add an element), and a tile whose
        keys all lie before ``tok_hi`` skips the mask. The softmax runs with the tensor cores idle
        (``docs/perf-notes.md`` item 24), so its instruction count is on the tile's chain. (With the causal mask, a
        one-compare mask measured no faster at s_q=2 and cost ``ptxas`` 8 B more stack in a cp.async build.)"""
        s, m_new, m_shift = _softmax_max(s, m_i, scale_log2, start, tok_hi, limit, offs_n, CAUSAL, INTERIOR)
        p = _softmax_exp(s, m_shift, scale_log2, INTERIOR)
        alpha = gl.exp2(m_i - m_shift)
        l_new = l_i * alpha + gl.sum(p, axis=1)
        return p, alpha, m_new, l_new

    @gluon.jit(do_not_specialize=list(GLUON_RUNTIME_INTS))  # one build a form whatever the cache size
    def _dense_decode_sm90_kernel(
        q_ptr, k_ptr, block_table_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
        out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, counters_ptr,
        stride_qb, stride_qs, stride_qh,
        stride_kb, stride_kp, stride_kh,
        stride_bt,
        stride_ob, stride_os, stride_oh,
        stride_lb, stride_lh,
        s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks, num_blocks, scale_log2,
        CAUSAL: gl.constexpr, FUSED_COMBINE: gl.constexpr,
        BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
        D_V: gl.constexpr, D_PE: gl.constexpr,
    ):
        dtype: gl.constexpr = q_ptr.dtype.element_ty
        # [4, 2] warps: warpgroup w owns columns w*N/2.. of S and w*D_V/2.. of O
        S_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2],
                                                           instr_shape=[16, BLOCK_N // 2, 16])
        O_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2],
                                                           instr_shape=[16, D_V // 2, 16])
        LOAD: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [8, 1], [1, 0])
        SMEM: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        ROW_S: gl.constexpr = gl.SliceLayout(1, S_LAYOUT)
        ROW_O: gl.constexpr = gl.SliceLayout(1, O_LAYOUT)

        gl.static_assert(D_PE == 0 or D_PE == 64, "the RoPE part must be 0 or 64 dims")
        q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, D_V], SMEM)
        k_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_N, D_V], SMEM)
        if D_PE > 0:
            qpe_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, D_PE], SMEM)
            kpe_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_N, D_PE], SMEM)
        else:
            qpe_smem = q_smem
            kpe_smem = k_smem
        p_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, BLOCK_N], SMEM)

        pid_m = gl.program_id(0)
        part = gl.program_id(1)
        kv_head = pid_m // row_tiles
        tile = pid_m % row_tiles

        begin_req, begin_tok, end_req, end_tok, begin_split = _piece_bounds(sched_ptr, part)

        # rows of this tile in the load layout (for Q) and in the two MMA layouts (for masks, stores)
        offs_r_ld = tile * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, LOAD))
        offs_r_s = tile * BLOCK_M + gl.arange(0, BLOCK_M, layout=ROW_S)
        offs_r_o = tile * BLOCK_M + gl.arange(0, BLOCK_M, layout=ROW_O)
        offs_c_ld = gl.arange(0, 64, layout=gl.SliceLayout(0, LOAD))
        offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, S_LAYOUT))
        offs_v = gl.arange(0, D_V, layout=gl.SliceLayout(0, O_LAYOUT))

        for req in range(begin_req, end_req + 1):
            req64 = req.to(gl.int64)
            s_k, tok_lo, tok_hi, split_lo, n_split, split_idx = _request_span(
                req, begin_req, begin_tok, end_req, end_tok, begin_split, seqlens_ptr, num_splits_ptr, max_blocks,
                page_block_size)
            bt_row = block_table_ptr + req64 * stride_bt

            # Q tile -> shared memory, 64 dims at a time
            mask_r_ld = offs_r_ld < rows
            q_row = q_ptr + req64 * stride_qb + (offs_r_ld // group) * stride_qs \
                + (kv_head * group + offs_r_ld % group) * stride_qh
            for c in gl.static_range(D_V // 64):
                q_chunk = gl.load(q_row[:, None] + c * 64 + offs_c_ld[None, :], mask=mask_r_ld[:, None], other=0.0)
                q_smem.slice(c * 64, 64, dim=1).store(q_chunk)
            if D_PE > 0:
                qpe_smem.store(gl.load(q_row[:, None] + D_V + offs_c_ld[None, :], mask=mask_r_ld[:, None], other=0.0))

            t_s = offs_r_s // group
            limit = s_k - s_q + t_s  # [BLOCK_M] last key each row may see (read only with CAUSAL)
            m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, layout=ROW_S)
            l_i = gl.zeros([BLOCK_M], gl.float32, layout=ROW_S)
            acc = gl.zeros([BLOCK_M, D_V], gl.float32, layout=O_LAYOUT)

            n_tiles = gl.cdiv(tok_hi - tok_lo, BLOCK_N)
            _issue_kv_tile(k_ptr, bt_row, k_smem.index(0), kpe_smem.index(0), tok_lo, tok_hi, page_block_size,
                           num_blocks, kv_head, stride_kb, stride_kp, stride_kh, BLOCK_N, D_V, D_PE, LOAD)
            async_copy.commit_group()
            for it in range(0, n_tiles):
                start = tok_lo + it * BLOCK_N
                stage = it % 2
                # prefetch the next tile into the other stage (fully masked past the range: reads nothing)
                _issue_kv_tile(k_ptr, bt_row, k_smem.index(1 - stage), kpe_smem.index(1 - stage), start + BLOCK_N,
                               tok_hi, page_block_size, num_blocks, kv_head, stride_kb, stride_kp, stride_kh,
                               BLOCK_N, D_V, D_PE, LOAD)
                async_copy.commit_group()
                async_copy.wait_group(1)
                fence_async_shared()
                gl.thread_barrier()
                k_tile = k_smem.index(stage)

                s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=S_LAYOUT)
                s = warpgroup_mma(q_smem, k_tile.permute((1, 0)), s, use_acc=False, is_async=True)
                if D_PE > 0:
                    s = warpgroup_mma(qpe_smem, kpe_smem.index(stage).permute((1, 0)), s, is_async=True)
                s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
                p, alpha, m_i, l_i = _online_softmax(s, m_i, l_i, scale_log2, start, tok_hi, limit, offs_n, CAUSAL)

                p_smem.store(p.to(dtype))
                fence_async_shared()
                gl.thread_barrier()
                acc = acc * gl.convert_layout(alpha, ROW_O)[:, None]
                acc = warpgroup_mma(p_smem, k_tile, acc, is_async=True)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                # every warp is done with this stage and with P before they are overwritten
                gl.thread_barrier()
            async_copy.wait_group(0)
            gl.thread_barrier()

            l_o = gl.convert_layout(l_i, ROW_O)
            m_o = gl.convert_layout(m_i, ROW_O)
            empty = l_o == 0.0
            o = acc * gl.where(empty, 0.0, 1.0 / l_o)[:, None]
            lse2 = gl.where(empty, float("-inf"), m_o + gl.log2(l_o))
            mask_r_o = offs_r_o < rows
            t_o = offs_r_o // group
            head_o = kv_head * group + offs_r_o % group
            if n_split <= 1:
                o_ptrs = out_ptr + req64 * stride_ob + t_o * stride_os + head_o * stride_oh
                gl.store(o_ptrs[:, None] + offs_v[None, :], o.to(dtype), mask=mask_r_o[:, None])
                lse = gl.where(empty, float("inf"), lse2 * 0.6931471805599453)
                gl.store(lse_ptr + req64 * stride_lb + head_o * stride_lh + t_o, lse, mask=mask_r_o)
            else:
                slot = (split_lo + split_idx).to(gl.int64)
                acc_row = (slot * s_q + t_o) * h_q + head_o  # o_accum is [slots, s_q, h_q, D_V]
                gl.store(o_acc_ptr + acc_row[:, None] * D_V + offs_v[None, :], o, mask=mask_r_o[:, None])
                gl.store(lse_acc_ptr + acc_row, lse2, mask=mask_r_o)
                if FUSED_COMBINE:  # one counter per request and row tile
                    arrive_split(counters_ptr + req64 * gl.num_programs(0) + pid_m)
        if FUSED_COMBINE:
            merge_arrived(begin_req, end_req, num_splits_ptr, counters_ptr + pid_m, gl.num_programs(0), out_ptr, lse_ptr,
                          o_acc_ptr, lse_acc_ptr, tile * BLOCK_M, rows, group, kv_head, s_q, h_q, stride_ob, stride_os,
                          stride_oh, stride_lb, stride_lh, BLOCK_M, D_V, gl.num_warps())


#: Fewest query rows per KV head that the warp-specialized 64-row kernel takes from the tokens kernel over MLA's
#: (576, 512) 16-bit caches with whole 64-key TMA tiles, when the partials go to the combine kernel. H200, b=128
#: s_k=8k, whole calls, same run (``2026-11-28-h200-tune-ws-small-rows.json``): 32 rows (h_q=32, and s_q=2 x 16
#: heads) 323.6 / 322.4 us in the 64-row tile (rows past 32 masked) against 345.1 / 360.6 in the tokens kernel
#: (FlashMLA 323.6 / 324.7); 16 rows 312.6 against 307.2, so the tokens kernel keeps those.
WS_MIN_ROWS_MLA_TMA = 17


def layout_for(rows: int, fused: bool = False, fp8_codes: bool = False, mla_tma: bool = False) -> str:
    """Which Hopper kernel serves ``rows = s_q * h_q / h_kv`` query rows per KV head.

    ``"tokens"`` (KV tokens on the 64-row side, :mod:`.decode_dense_sm90_small_heads`) up to 32 rows,
    where a 64-row tile would spend half or more of its products on padding, except from
    :data:`WS_MIN_ROWS_MLA_TMA` rows over MLA's (576, 512) 16-bit caches with whole 64-key TMA tiles
    (``mla_tma``) when the partials go to the combine kernel: there the warp-specialized kernel's padded
    tile streams the cache faster than the 32-row tokens tile (one warpgroup doing all of a tile's work).
    Above 32 rows: ``"ws"``, the warp-specialized kernel (:mod:`.decode_dense_sm90_ws`, softmax overlapped with
    the tensor cores), when the split partials go to the combine kernel; ``"rows"`` (this module's kernel,
    which can merge its own partials) when the call fuses the combine (``fused``: small eager batches that are
    not replayed, see :func:`openmla.ops.combine.fuse_combine`).

    ``fp8_codes``: a per-tensor FP8 cache of (576, 512) dims, which the warp-specialized kernel serves at
    every row count, rows past the heads masked in its 64-row tile: over e4m3 codes the tokens kernel keeps
    its 32-row tiles' decode in spilled registers (~800 B of stack a thread) and ran 1.3-1.6x slower than
    the padded tile (H200, h_q 16 / 32, ``docs/perf-notes.md``).
    """
    from .decode_dense_sm90_small_heads import MAX_ROWS

    if fp8_codes:
        return "ws"
    if rows <= MAX_ROWS and not (mla_tma and not fused and rows >= WS_MIN_ROWS_MLA_TMA):
        return "tokens"
    return "rows" if fused else "ws"


def dense_decode_sm90_fwd(
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
    layout: str | None = None,
    warpgroups: int | None = None,
    descale_q: torch.Tensor | None = None,
    descale_k: torch.Tensor | None = None,
    fused_combine: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`openmla.ops.decode_dense.dense_decode_fwd`, on Hopper.

    ``layout``: ``"rows"`` puts the query rows on ``wgmma``'s 64-row side (this module's kernel),
    ``"ws"`` too, warp-specialized (:mod:`.decode_dense_sm90_ws`, never fuses the combine),
    ``"tokens"`` the KV tokens (:mod:`.decode_dense_sm90_small_heads`, at most 32 rows per KV head,
    ``warpgroups`` passed on); default :func:`layout_for` the shape, the cache and the combine.

    Per-tensor FP8 (``descale_k``, and ``descale_q`` for an e4m3 q): (576, 512) dims with an e4m3 q go to the
    e4m3-product kernel (:mod:`.decode_dense_fp8_sm90`) unless ``OPENMLA_FP8_SCORES=exact`` or ``layout="ws"``,
    and otherwise to the warp-specialized kernel, at every row count (the combine kernel merges splits;
    ``layout="tokens"`` still takes the tokens kernel); other dims to the tokens layout up to 32 rows and above that to the Triton
    kernel (:func:`openmla.ops.decode_dense.dense_decode_fwd`), as :func:`openmla.explain` says.
    """
    b, s_q, h_q, d = q.shape
    h_kv = k_cache.shape[2]
    rows = s_q * (h_q // h_kv)
    fused = fuse_combine(q.device, b) if fused_combine is None else bool(fused_combine)
    requested = layout
    if layout is None:
        from .decode_dense_sm90_small_heads import MAX_ROWS
        from .decode_dense_sm90_ws import tma_tiles_fit

        mla = (d, head_dim_v) == (576, 512)
        # the cache is read only where it decides (17-32 rows, 16-bit MLA caches, partials to the combine kernel)
        mla_tma = (mla and descale_k is None and not fused and WS_MIN_ROWS_MLA_TMA <= rows <= MAX_ROWS
                   and tma_tiles_fit(k_cache))
        layout = layout_for(rows, fused, descale_k is not None and mla, mla_tma=mla_tma)
    if layout == "tokens":
        from .decode_dense_sm90_small_heads import dense_decode_sm90_small_heads_fwd

        return dense_decode_sm90_small_heads_fwd(q, k_cache, block_table, cache_seqlens, head_dim_v,
                                                 tile_scheduler_metadata, num_splits, softmax_scale, causal,
                                                 workspace, warpgroups, descale_q=descale_q, descale_k=descale_k,
                                                 fused_combine=fused)
    if descale_k is not None and (d, head_dim_v) == (576, 512):
        from .decode_dense_fp8_sm90 import dense_decode_fp8_sm90_fwd, serves

        if requested != "ws" and serves(q, k_cache, head_dim_v, descale_q, descale_k) and env_fp8_scores() == "e4m3":
            # an e4m3 q: the scores on the e4m3 tensor cores, no decode before them (OPENMLA_FP8_SCORES)
            return dense_decode_fp8_sm90_fwd(q, k_cache, block_table, cache_seqlens, head_dim_v,
                                             tile_scheduler_metadata, num_splits, softmax_scale, causal, workspace,
                                             descale_q=descale_q, descale_k=descale_k)
        # the warp-specialized kernel decodes the codes (an e4m3 q's too) in its loader (the 64-row lockstep
        # kernel reads 16-bit caches only); it leaves split partials to the combine kernel
        from .decode_dense_sm90_ws import dense_decode_sm90_ws_fwd

        return dense_decode_sm90_ws_fwd(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata,
                                        num_splits, softmax_scale, causal, workspace, descale_k=descale_k,
                                        descale_q=descale_q)
    if descale_k is not None:  # other dims: the Triton kernel
        from ..decode_dense import dense_decode_fwd

        return dense_decode_fwd(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata,
                                num_splits, softmax_scale, causal, workspace=workspace, descale_q=descale_q,
                                descale_k=descale_k, fused_combine=fused)
    if layout == "ws":
        if fused_combine:
            raise ValueError("the warp-specialized kernel (layout='ws') leaves split partials to the combine "
                             "kernel: pass fused_combine=False or None, or layout='rows'")
        from .decode_dense_sm90_ws import dense_decode_sm90_ws_fwd

        return dense_decode_sm90_ws_fwd(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata,
                                        num_splits, softmax_scale, causal, workspace)
    if layout != "rows":
        raise ValueError(f"layout={layout!r}; expected 'rows', 'ws' or 'tokens'")
    row_tiles = -(-rows // BLOCK_M)
    num_parts = tile_scheduler_metadata.shape[0]
    if SCHED_BLOCK % BLOCK_N:
        raise ValueError("the scheduler's unit must be a multiple of the sm_90 kernel's KV tile")
    out = torch.empty(b, s_q, h_q, head_dim_v, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, h_q, s_q, dtype=torch.float32, device=q.device)
    if workspace is None:
        workspace = split_workspace(q, head_dim_v, num_parts)
    launch(_dense_decode_sm90_kernel, (row_tiles * h_kv, num_parts),
        *splitkv_args(q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits,
                      out, lse, workspace, row_tiles, softmax_scale),
        CAUSAL=bool(causal and s_q > 1), FUSED_COMBINE=fused, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, D_V=head_dim_v,
        D_PE=d - head_dim_v, num_warps=NUM_WARPS,
    )
    if not fused:
        combine_splits(out, lse, workspace[0], workspace[1], num_splits)
    return out, lse
