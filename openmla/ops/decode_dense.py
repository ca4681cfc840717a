"""Dense MLA decoding over a paged KV cache, in portable Triton: split-KV kernel, config, launcher.

MLA decoding is multi-query attention per KV head: the ``s_q * h_q / h_kv`` query rows that share a
KV head are folded into the M dimension of the matrix products (``BLOCK_M`` rows per program, 64 on
big shapes so Hopper can use ``wgmma``), against one ``d``-dim key whose first ``d_v`` dims are also
the value. Each KV tile is loaded once and feeds both products (``S = Q Kᵀ`` and ``O += P V``).

Grid: ``(row_tiles * h_kv, num_sm_parts)``. Program ``(m, p)`` walks piece ``p`` of the split-KV plan
(:mod:`openmla.ops.schedule`): one or more requests, each over a token range. A request that only
this piece touches is written straight to ``out``/``lse``; a request cut across pieces writes a
normalised partial output and its log2-LSE to ``o_accum``/``lse_accum``. In eager calls of up to 16
requests that no later call replays the kernel merges them itself (each program counts itself in per
request and row tile; after its KV loops the one that sees the full count merges:
:func:`openmla.ops.combine.merge_arrived`, one launch per call); larger batches, replayed calls and
CUDA-graph captures launch the combine kernel after it (:func:`openmla.ops.combine.fuse_combine` picks).

Masking rules (the reference's): keys ``j >= cache_seqlens[i]`` are never loaded (no NaN from unused
slots, no read of garbage block-table entries); with ``causal`` query token ``t`` sees ``j <= s_k -
s_q + t``; a row that sees nothing gets ``out = 0`` and ``lse = +inf``.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from .._runtime import aligned16, device_arch, triton_available
from .combine import combine_splits, fuse_combine
from .launch import launch
from .schedule import SCHED_BLOCK

# integer arguments that vary per call: specialising on them (==1, %16) would recompile per batch shape
SPLITKV_RUNTIME_INTS = (
    "stride_bt", "stride_lb", "stride_lh", "s_q", "h_q", "group", "rows", "row_tiles",
    "page_block_size", "max_blocks", "num_blocks",
)

# the Gluon kernels' share of those: the ints a serving engine's cache, block table and page size change, so that
# those build once. The heads, s_q, group and rows keep Triton's hints: with every int above unhinted the Hopper kernels
# took 0.5 % longer at s_q=1, 2-5 % at s_q=2 and 4 % at 16 heads; with these six, within 1.7 % either way of fully
# hinted builds (H200, benchmarks/results/2026-11-28-h200-dense-unhinted-ints-ab.txt).
GLUON_RUNTIME_INTS = ("stride_bt", "max_blocks", "num_blocks", "page_block_size", "stride_lb", "stride_lh")

if triton_available():
    import triton
    import triton.language as tl

    from .combine import arrive_split, merge_arrived
    from .fp8 import e4m3_to, e4m3_unit
    from .online_softmax import online_softmax_step, online_softmax_step_unchained

    @triton.jit
    def _load_operand(ptrs, mask, dtype: tl.constexpr, IS_FP8: tl.constexpr, FP8_NATIVE: tl.constexpr):
        """A tile of q or K as it is, or (``IS_FP8``) e4m3 bytes decoded to ``dtype`` (see :mod:`.fp8`: the
        value itself, or the value / 256 on the bit-move path). Masked elements are 0."""
        if IS_FP8:
            return e4m3_to(tl.load(ptrs, mask=mask, other=0), dtype, FP8_NATIVE)
        else:
            return tl.load(ptrs, mask=mask, other=0.0)

    @triton.jit
    def _box_operand(desc, row, col, dtype: tl.constexpr, IS_FP8: tl.constexpr, FP8_NATIVE: tl.constexpr,
                     keep_rows=None):
        """A TMA box of K at (``row``, ``col``) as it is, or (``IS_FP8``) its e4m3 bytes decoded to ``dtype``
        (:func:`_load_operand`'s convention). ``keep_rows`` [BLOCK_N]: rows outside it become 0 (a tail tile's
        slots past the length, which may hold NaN)."""
        tile = desc.load([row, col])
        if keep_rows is not None:
            tile = tl.where(keep_rows[:, None], tile, tl.zeros_like(tile))
        if IS_FP8:
            tile = e4m3_to(tile, dtype, FP8_NATIVE)
        return tile

    @triton.jit
    def _piece_bounds(sched_ptr, part):
        """Piece ``part`` of the split-KV plan: (begin_req, begin_tok, end_req, end_tok, begin_split)."""
        sched = sched_ptr + part * 8
        return tl.load(sched + 0), tl.load(sched + 1), tl.load(sched + 2), tl.load(sched + 3), tl.load(sched + 4)

    @triton.jit
    def _request_span(req, begin_req, begin_tok, end_req, end_tok, begin_split, seqlens_ptr, num_splits_ptr,
                      max_blocks, page_block_size):
        """A piece's share of request ``req``: (s_k, tok_lo, tok_hi, split_lo, n_split, split_idx). ``s_k`` is
        clamped to what the block table covers: the kernels never read past it, whatever cache_seqlens says."""
        s_k = tl.minimum(tl.load(seqlens_ptr + req), max_blocks * page_block_size)
        tok_lo = tl.where(req == begin_req, begin_tok, 0)
        tok_hi = tl.where(req == end_req, tl.minimum(end_tok, s_k), s_k)
        split_lo = tl.load(num_splits_ptr + req)
        n_split = tl.load(num_splits_ptr + req + 1) - split_lo
        split_idx = tl.where(req == begin_req, begin_split, 0)
        return s_k, tok_lo, tok_hi, split_lo, n_split, split_idx

    @triton.jit
    def _fp8_scales(scale_log2, descale_q_ptr, descale_k_ptr, Q_FP8: tl.constexpr, KV_FP8: tl.constexpr,
                    FP8_NATIVE: tl.constexpr):
        """(score scale, value scale) of per-tensor FP8: the descales (read on the device, so a call needs
        no host sync) and the bit-move decoding's 256 folded into fp32 factors; (scale_log2, 1) for 16 bits."""
        score_scale = scale_log2
        descale_k = 1.0
        if Q_FP8:
            score_scale = score_scale * (tl.load(descale_q_ptr) * e4m3_unit(FP8_NATIVE))
        if KV_FP8:
            descale_k = tl.load(descale_k_ptr) * e4m3_unit(FP8_NATIVE)
            score_scale = score_scale * descale_k
        return score_scale, descale_k

    @triton.jit
    def _attend_tile(q_v, q_w, q_pe, k_v, k_w, k_pe, offs_j, mask_j, acc, m_i, l_i, limit, score_scale,
                     CAUSAL: tl.constexpr, D_V: tl.constexpr, D_PE: tl.constexpr, DV_TILE: tl.constexpr,
                     always=True, UNCHAIN: tl.constexpr = False):
        """One KV tile: scores over the latent (``v``, ``w``: the program's output dims and the rest) and RoPE
        dims, the masked online-softmax step, ``acc += P V``. ``k_w`` / ``k_pe`` are unused stand-ins where
        there is no such part. ``UNCHAIN``: see :class:`DenseDecodeConfig` (``unchained``); ``always`` must then be
        a run-time value that is true. Returns (acc, m_i, l_i)."""
        if CAUSAL:
            visible = mask_j[None, :] & (offs_j[None, :] <= limit[:, None])
        else:
            visible = mask_j[None, :]
        if UNCHAIN:  # see online_softmax_step_unchained
            scores = tl.dot(q_v, tl.trans(k_v)) * score_scale  # [BLOCK_M, BLOCK_N]
            if D_PE > 0:
                scores = scores + tl.dot(q_pe, tl.trans(k_pe)) * score_scale
            p, alpha, m_new, l_i = online_softmax_step_unchained(scores, visible, m_i, l_i, always, k_v.dtype)
        else:
            scores = tl.dot(q_v, tl.trans(k_v))  # [BLOCK_M, BLOCK_N]
            if D_V > DV_TILE:
                scores = tl.dot(q_w, tl.trans(k_w), scores)
            if D_PE > 0:
                scores = tl.dot(q_pe, tl.trans(k_pe), scores)
            p, alpha, m_new, l_i = online_softmax_step(scores * score_scale, visible, m_i, l_i)
            p = p.to(k_v.dtype)
        acc = acc * alpha[:, None]
        acc = tl.dot(p, k_v, acc)
        return acc, m_new, l_i

    @triton.jit(do_not_specialize=list(SPLITKV_RUNTIME_INTS))
    def _dense_decode_splitkv_kernel(
        q_ptr, k_ptr, block_table_ptr, seqlens_ptr, sched_ptr, num_splits_ptr,
        out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, counters_ptr,
        stride_qb, stride_qs, stride_qh,
        stride_kb, stride_kp, stride_kh,
        stride_bt,
        stride_ob, stride_os, stride_oh,
        stride_lb, stride_lh,
        s_q, h_q, group, rows, row_tiles, page_block_size, max_blocks, num_blocks, scale_log2,
        descale_q_ptr, descale_k_ptr, k_desc_v, k_desc_pe,
        CAUSAL: tl.constexpr, FUSED_COMBINE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        D_V: tl.constexpr, D_PE: tl.constexpr, DV_TILE: tl.constexpr,
        Q_FP8: tl.constexpr, KV_FP8: tl.constexpr, FP8_NATIVE: tl.constexpr, TMA_K: tl.constexpr = False,
        UNCHAIN: tl.constexpr = False, PAGE_AHEAD: tl.constexpr = False, TAIL_TMA: tl.constexpr = False,
    ):
        # program axis 0 = (kv head, row tile, slice of the output's D_V dims)
        pid_m = tl.program_id(0)
        part = tl.program_id(1)
        NUM_DV_TILES: tl.constexpr = D_V // DV_TILE
        dv_tile = pid_m % NUM_DV_TILES
        kv_head = pid_m // NUM_DV_TILES // row_tiles
        tile = pid_m // NUM_DV_TILES % row_tiles

        offs_r = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M] row = t * group + g
        mask_r = offs_r < rows
        t_idx = offs_r // group
        head = kv_head * group + offs_r % group
        # this program's output dims first, then (when the output is sliced) the rest of the latent dims
        offs_v = dv_tile * DV_TILE + tl.arange(0, DV_TILE)
        offs_w = (dv_tile * DV_TILE + DV_TILE + tl.arange(0, D_V - DV_TILE if D_V > DV_TILE else 16)) % D_V
        offs_n = tl.arange(0, BLOCK_N)

        begin_req, begin_tok, end_req, end_tok, begin_split = _piece_bounds(sched_ptr, part)

        # Per-tensor FP8 (KV_FP8, and Q_FP8 for an e4m3 q): the e4m3 codes are decoded in registers
        # to a 16-bit type, exactly (every e4m3 value is an fp16 and a bf16), and the descale factors
        # are folded in afterwards in fp32: S = (q_codes . k_codes) * (scale * descale_q * descale_k),
        # O = (P @ k_codes) * descale_k, since V is the first D_V dims of K. This equals dequantizing
        # first (x.float() * descale, the reference) up to fp32 rounding, and is more accurate than
        # rounding dequantized keys to 16 bits: no 16-bit value here is ever rounded but P, exactly as
        # in the 16-bit path. Matrix products run in q's dtype, or fp16 for an e4m3 q (more mantissa
        # for P than bf16; e4m3 codes are at most 448). The descales are read on the device, so a
        # call stays free of host syncs (CUDA graphs).
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

            q_row = q_ptr + req64 * stride_qb + t_idx * stride_qs + head * stride_qh  # [BLOCK_M]
            # [BLOCK_M, DV_TILE]
            q_v = _load_operand(q_row[:, None] + offs_v[None, :], mask_r[:, None], dtype, Q_FP8, FP8_NATIVE)
            q_w = q_v  # stand-ins where there is no such part (never used then)
            q_pe = q_v
            if D_V > DV_TILE:
                q_w = _load_operand(q_row[:, None] + offs_w[None, :], mask_r[:, None], dtype, Q_FP8, FP8_NATIVE)
            if D_PE > 0:
                offs_pe = tl.arange(0, D_PE)
                q_pe = _load_operand(q_row[:, None] + D_V + offs_pe[None, :], mask_r[:, None], dtype, Q_FP8,
                                     FP8_NATIVE)
            limit = s_k - s_q + t_idx  # [BLOCK_M] last key each row may see (read with CAUSAL only)

            m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
            l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
            acc = tl.zeros([BLOCK_M, DV_TILE], dtype=tl.float32)
            bt_row = block_table_ptr + req64 * stride_bt
            tail_lo = tok_lo
            if TMA_K:
                # whole tiles by TMA (one KV head; pages hold whole tiles, so a tile is BLOCK_N consecutive rows
                # of the cache seen as [num_blocks * page_block_size, d]); the tail tile below, masked, because
                # the slots past a sequence's length may hold anything (NaN) and 0 * NaN is NaN in P V
                tail_lo = tok_lo + (tok_hi - tok_lo) // BLOCK_N * BLOCK_N
                if PAGE_AHEAD:  # the first tile's page; each iteration reads the next one's
                    page_next = tl.load(bt_row + tok_lo // page_block_size, mask=tok_lo < tail_lo, other=0)
                for start in range(tok_lo, tail_lo, BLOCK_N):
                    offs_j = start + offs_n
                    if PAGE_AHEAD:
                        # read a tile ahead, the copies depend on no load of their own iteration, so Triton's
                        # pipeliner keeps more than one tile of K in flight
                        here = page_next
                        page_next = tl.load(bt_row + (start + BLOCK_N) // page_block_size,
                                            mask=start + BLOCK_N < tail_lo, other=0)
                    else:
                        here = tl.load(bt_row + start // page_block_size)
                    page_c = tl.minimum(tl.maximum(here, 0), num_blocks - 1)
                    row = page_c * page_block_size + start % page_block_size
                    k_v = _box_operand(k_desc_v, row, dv_tile * DV_TILE, dtype, KV_FP8, FP8_NATIVE)
                    k_w = k_v
                    if D_V > DV_TILE:  # the other half of the latent dims (two slices at most with TMA)
                        k_w = _box_operand(k_desc_v, row, (dv_tile * DV_TILE + DV_TILE) % D_V, dtype, KV_FP8,
                                           FP8_NATIVE)
                    k_pe = k_v
                    if D_PE > 0:
                        k_pe = _box_operand(k_desc_pe, row, D_V, dtype, KV_FP8, FP8_NATIVE)
                    acc, m_i, l_i = _attend_tile(q_v, q_w, q_pe, k_v, k_w, k_pe, offs_j, offs_j < tok_hi, acc, m_i,
                                                 l_i, limit, score_scale, CAUSAL, D_V, D_PE, DV_TILE,
                                                 start < tok_hi, UNCHAIN)
            for start in range(tail_lo, tok_hi, BLOCK_N):
                offs_j = start + offs_n  # [BLOCK_N]
                mask_j = offs_j < tok_hi
                if TMA_K and TAIL_TMA:
                    # the tail tile as a box too (it lies in one page: pieces start on whole tiles), its key rows
                    # past the length zeroed in registers, since they may hold NaN and 0 * NaN is NaN in P V;
                    # the scores of those keys are masked, so the RoPE dims need no zeroing
                    page = tl.load(bt_row + start // page_block_size)
                    page = tl.minimum(tl.maximum(page, 0), num_blocks - 1)
                    row = page * page_block_size + start % page_block_size
                    k_v = _box_operand(k_desc_v, row, dv_tile * DV_TILE, dtype, KV_FP8, FP8_NATIVE, mask_j)
                    k_w = k_v
                    if D_V > DV_TILE:
                        k_w = _box_operand(k_desc_v, row, (dv_tile * DV_TILE + DV_TILE) % D_V, dtype, KV_FP8,
                                           FP8_NATIVE, mask_j)
                    k_pe = k_v
                    if D_PE > 0:
                        k_pe = _box_operand(k_desc_pe, row, D_V, dtype, KV_FP8, FP8_NATIVE)
                else:
                    page = tl.load(bt_row + offs_j // page_block_size, mask=mask_j, other=0)
                    # a page number outside the cache (a caller's bug) must not fault the GPU
                    page = tl.minimum(tl.maximum(page, 0), num_blocks - 1)
                    k_row = page.to(tl.int64) * stride_kb + (offs_j % page_block_size) * stride_kp + kv_head * stride_kh
                    k_ptrs = k_ptr + k_row[:, None]
                    # [BLOCK_N, DV_TILE]
                    k_v = _load_operand(k_ptrs + offs_v[None, :], mask_j[:, None], dtype, KV_FP8, FP8_NATIVE)
                    k_w = k_v
                    if D_V > DV_TILE:
                        k_w = _load_operand(k_ptrs + offs_w[None, :], mask_j[:, None], dtype, KV_FP8, FP8_NATIVE)
                    k_pe = k_v
                    if D_PE > 0:
                        k_pe = _load_operand(k_ptrs + D_V + offs_pe[None, :], mask_j[:, None], dtype, KV_FP8,
                                             FP8_NATIVE)
                acc, m_i, l_i = _attend_tile(q_v, q_w, q_pe, k_v, k_w, k_pe, offs_j, mask_j, acc, m_i, l_i, limit,
                                             score_scale, CAUSAL, D_V, D_PE, DV_TILE, start < tok_hi, UNCHAIN)

            empty = l_i == 0.0
            inv_l = tl.where(empty, 0.0, 1.0 / l_i)
            if KV_FP8:
                inv_l = inv_l * descale_k  # V = descale_k * k_codes
            o = acc * inv_l[:, None]
            lse2 = tl.where(empty, float("-inf"), m_i + tl.math.log2(l_i))
            write_lse = mask_r & (dv_tile == 0)
            if n_split <= 1:
                o_ptrs = out_ptr + req64 * stride_ob + t_idx * stride_os + head * stride_oh
                tl.store(o_ptrs[:, None] + offs_v[None, :], o.to(out_ptr.dtype.element_ty), mask=mask_r[:, None])
                lse = tl.where(empty, float("inf"), lse2 * 0.6931471805599453)
                tl.store(lse_ptr + req64 * stride_lb + head * stride_lh + t_idx, lse, mask=write_lse)
            else:
                slot = (split_lo + split_idx).to(tl.int64)
                acc_row = (slot * s_q + t_idx) * h_q + head  # o_accum is [slots, s_q, h_q, D_V]
                tl.store(o_acc_ptr + acc_row[:, None] * D_V + offs_v[None, :], o, mask=mask_r[:, None])
                tl.store(lse_acc_ptr + acc_row, lse2, mask=write_lse)
                if FUSED_COMBINE:  # one counter per request and row tile: every split, every slice of D_V
                    arrive_split(counters_ptr + req64 * (tl.num_programs(0) // NUM_DV_TILES) + pid_m // NUM_DV_TILES)
        if FUSED_COMBINE:
            merge_arrived(begin_req, end_req, num_splits_ptr, counters_ptr + pid_m // NUM_DV_TILES,
                          tl.num_programs(0) // NUM_DV_TILES, NUM_DV_TILES, out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr,
                          tile * BLOCK_M, rows, group, kv_head, s_q, h_q, stride_ob, stride_os, stride_oh, stride_lb,
                          stride_lh, BLOCK_M, D_V)


@dataclasses.dataclass(frozen=True)
class DenseDecodeConfig:
    """Tile shape and launch parameters of the split-KV kernel.

    ``dv_tile`` < ``d_v`` slices the output dims across programs: each program recomputes the
    scores but holds only a ``block_m x dv_tile`` fp32 accumulator (a 128 x 512 one does not fit
    in registers next to the pipelined tiles).
    """

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    dv_tile: int
    #: ``"rows"``: query rows on the M side (this module's kernel); ``"tokens"``: KV tokens on M and
    #: ``block_m`` query rows on N (:mod:`.decode_dense_small_heads`, whole output per program)
    layout: str = "rows"
    #: ``"rows"`` layout, 16-bit and per-tensor FP8 caches: whole KV tiles by TMA (Hopper and newer) where the
    #: cache allows it (:func:`k_descriptors`; e4m3 codes decoded in registers), the tail tile of each piece by
    #: masked loads unless ``tail_tma``
    tma_k: bool = False
    #: ``"rows"`` layout: the two products get their warp layouts each on its own. Triton lays out a product
    #: whose result reaches another product with all warps on its rows ("chained"), so a 64-row tile on two
    #: warpgroups would compute its scores twice and a 128-row one cannot hold a 512-dim output: the output
    #: had to be sliced across programs that each recompute the scores (1.5x the FLOPs at d=576). With the
    #: softmax in a branch the compiler keeps (``_attend_tile``), the chain is hidden: the scores split by
    #: columns and the output by dims between the warpgroups, and one 64-row program holds the whole output.
    unchained: bool = False
    #: with ``tma_k``: each whole-tile iteration reads the next tile's page number, so the copies of a tile
    #: depend on no load of their own iteration and Triton's pipeliner gives K ``num_stages - 1`` buffers
    #: (otherwise one: the block-table read takes the first stage)
    page_ahead: bool = False
    #: with ``tma_k``: each piece's tail tile comes as a box too, its rows past the length zeroed in registers
    #: (otherwise by masked pointer loads)
    tail_tma: bool = False


# most dynamic shared memory one block may use, by compute capability (bytes); others (sm_86, sm_89,
# sm_120, ...) have 99 KB
_SMEM_PER_BLOCK = {80: 166912, 87: 166912, 90: 232448, 100: 232448, 103: 232448}
_SMALL_SMEM_PER_BLOCK = 101376


def smem_per_block(arch: int | None) -> int:
    """Shared memory a block may use on ``arch`` (``None``, the CPU interpreter: Hopper's)."""
    return 232448 if arch is None else _SMEM_PER_BLOCK.get(arch, _SMALL_SMEM_PER_BLOCK)


#: KV tiles of the whole-tile TMA configs, longest first: a cache's pages must hold whole tiles of one
TMA_TILE_KEYS = (64, 32)
#: the shortest of them (the small-row tile's)
TMA_BLOCK_N = 32


@functools.lru_cache(maxsize=256)  # a pure function of its arguments, asked on every decode call
def dense_decode_config(rows: int, d_qk: int, d_v: int, arch: int | None, tma_keys: int = 0,
                        kv_fp8: bool = False, cache_aligned16: bool = True) -> DenseDecodeConfig:
    """Pick the tile shape from the rows per KV head (``s_q * h_q / h_kv``), the head dims and the arch.

    Many rows (compute-bound): 128-row tiles on 8 warps (Triton gives each warp 16 rows, and
    Hopper's ``wgmma`` takes 64 rows a warpgroup), output dims sliced in two, where 227 KB of shared
    memory a block allow (Hopper, Blackwell datacenter parts); 64-row tiles elsewhere (A100: 163 KB;
    sm_86/89/120: 99 KB, with 16-token KV tiles). Few rows (memory-bound, at most 32): one tile that
    holds them and the whole output; on 227 KB parts, 32 rows use the ``"tokens"`` layout (KV tokens on
    the M side, so Hopper multiplies 64-token tiles with ``wgmma``). Shared memory per config was read
    from sm_80 and sm_90a compiles of the d=576 kernels (tests/test_aot.py checks it against each
    arch's limit).

    ``tma_keys``: the longest TMA tile the cache's pages hold (:func:`tma_tile_keys`; 0: none). On 227 KB
    parts, measured on an H200 (b=128, s_k=8k unless named, FlashMLA in the same run):

    - 16 rows: 32-key TMA tiles in three stages with the block table read a tile ahead (``page_ahead``, two
      K buffers in flight), two programs an SM: 330.0 µs against 411.9 for the same tile without it and
      488.6 for the pointer tile (FlashMLA 321.6).
    - more rows, pages of 64 keys: 64-row tiles on two warpgroups holding the whole output, the scores
      computed once (``unchained``), 64-key TMA tiles: h_q=128 535.5 / 946.3 / 1788.2 µs at s_k 4k / 8k / 16k
      against 702.2 / 1292.7 / 2465.5 for the 128-row tile with the output sliced in two (s_q=2: 1019.6 /
      1879.9 / 3591.7 against 1377.9 / 2606.1 / 5062.5), h_q=64 539.5 against 1286.4, h_q=32 530.4 against
      the tokens layout's 714.5, s_q=2 h_q=16 553.6 against 719.7. Its 32-key form was slower than the
      sliced tile (1417.3 µs at h_q=128). Each piece's tail tile by TMA as well (``tail_tma``), another H200:
      h_q=128 513.0 / 911.1 / 1721.2 µs against 536.6 / 954.8 / 1808.6 (s_q=2: 955.4 / 1767.4 / 3348.6 against
      1018.5 / 1899.5 / 3631.5), h_q 32 / 64 504.0 / 512.8 against 533.2 / 543.0; the 16-row tile did not gain
      from it (332.3 against 328.2 µs) and keeps its tails on masked loads.
    - ``kv_fp8`` (per-tensor e4m3 codes: boxes of bytes decoded in registers), q and cache e4m3, another
      H200: the same tiles beat the pointer tiles everywhere measured — h_q=16 473.5 µs against 703.9
      (FlashMLA's FP8 kernel 226.8, the Gluon small-head kernel that serves Hopper 473.2), h_q 32 / 64 903.2 /
      912.8 against 1055.2 / 1564.0, h_q=128 s_k 4k / 8k 930.2 / 1744.0 against 1010.6 / 1876.3, s_q=2 3530.7
      against 3736.1 (the Hopper kernels: 380.0-1428.3 µs, 0.59-0.64 of FlashMLA). Pages of 32 keys keep the
      pointer tiles above 16 rows over codes (the sliced 128-row TMA tile was not timed with them).
    - more than 64 rows, pages of 32 keys: the 128-row tile with 32-key TMA tiles (1273.3 against the
      pointer tile's 1471.6 µs at h_q=128 in an earlier run).

    ``cache_aligned16``: the cache's base address and strides are multiples of 16 bytes
    (:func:`openmla._runtime.aligned16`). The ``"tokens"`` layout is kept to such caches: over a bf16 cache two
    bytes off a 16-byte boundary it hit an illegal memory access on an H200 (Triton 3.6; 8 elements off, or the
    row-major tile on the same cache, ran correctly), so other caches take the row-major tile.
    """
    limit = smem_per_block(arch)
    if kv_fp8 and rows > 16 and tma_keys < 64:
        tma_keys = 0  # the sliced 128-row TMA tile was not timed over e4m3 codes
    if tma_keys >= 32 and limit >= 200 * 1024 and rows <= 16:
        return DenseDecodeConfig(block_m=16, block_n=32, num_warps=4, num_stages=3, dv_tile=d_v, tma_k=True,
                                 page_ahead=True)
    if tma_keys >= 64 and limit >= 200 * 1024 and d_v <= 512:
        return DenseDecodeConfig(block_m=64, block_n=64, num_warps=8, num_stages=2, dv_tile=d_v, tma_k=True,
                                 unchained=True, tail_tma=True)
    if tma_keys >= 32 and limit >= 200 * 1024 and rows > 64:
        return DenseDecodeConfig(block_m=128, block_n=32, num_warps=8, num_stages=2,
                                 dv_tile=min(d_v, 256), tma_k=True)
    if rows <= 32:
        # Measured on an H200 (b=128, s_k=8k, same run): 16 rows, row-major 16x64 tiles at two pieces per
        # SM 481 us, tokens layout 659 us, the former 16x32 three-stage tiles 636 us; 32 rows, tokens
        # layout on 8 warps 706 us, row-major 752 us. Elsewhere (not measured yet) the row-major tiles
        # that served before, sized for 99 KB of shared memory.
        block_m = 16 if rows <= 16 else 32
        if limit >= 200 * 1024 and block_m == 16:
            return DenseDecodeConfig(block_m=16, block_n=64, num_warps=4, num_stages=2, dv_tile=d_v)
        if limit >= 200 * 1024 and cache_aligned16:
            return DenseDecodeConfig(block_m=32, block_n=64, num_warps=8, num_stages=2, dv_tile=d_v, layout="tokens")
        if limit >= 200 * 1024:  # the row-major tile that ran correctly over misaligned caches
            return DenseDecodeConfig(block_m=32, block_n=64, num_warps=4, num_stages=2, dv_tile=d_v)
        return DenseDecodeConfig(block_m=block_m, block_n=32, num_warps=4, num_stages=3, dv_tile=d_v)  # <= 75 KB
    if rows > 64 and limit >= 200 * 1024:  # 188-216 KB
        return DenseDecodeConfig(block_m=128, block_n=32, num_warps=8, num_stages=2, dv_tile=min(d_v, 256))
    if limit >= 120 * 1024:  # 112 KB
        return DenseDecodeConfig(block_m=64, block_n=32, num_warps=4, num_stages=2, dv_tile=min(d_v, 256))
    return DenseDecodeConfig(block_m=64, block_n=16, num_warps=4, num_stages=2, dv_tile=min(d_v, 256))  # 92 KB


def num_sm_parts_for(
    rows: int, h_kv: int, sm_count: int, d_v: int = 512, backend: str = "triton", cap_at_sm_count: bool = False,
    arch: int | None = None, kv_fp8: bool = False,
) -> int:
    """How many split-KV pieces to cut a batch into so that the SMs are kept busy.

    One program per SM, except the row-major Triton kernel's small (16/32-row, memory-bound) tiles,
    which streamed faster with two programs per SM (an H200, same run: 612 against 1055 us at
    h_q=16, b=128, s_k=8k); the ``"tokens"`` layout's 64-token tiles fill an SM's shared memory alone.
    The Triton kernel's tile is the one a 16-bit MLA cache gets (one KV head, pages of 64: TMA tiles on sm_90
    and newer), or an FP8 cache with ``kv_fp8``; the plan is planned before the cache is seen.
    ``cap_at_sm_count``: never more pieces than SMs, for the old metadata API (callers size CUDA-graph
    buffers of ``[num_SMs, 8]``).
    """
    if backend == "gluon":
        programs_per_part = h_kv * -(-rows // 64)
        per_sm = 1
    else:
        tma_keys = TMA_TILE_KEYS[0] if h_kv == 1 and (arch is None or arch >= 90) else 0
        cfg = dense_decode_config(rows, 576, d_v, arch, tma_keys, kv_fp8)
        programs_per_part = h_kv * -(-rows // cfg.block_m) * (d_v // cfg.dv_tile)
        per_sm = 2 if cfg.block_m <= 32 and cfg.layout == "rows" else 1
    parts = max(sm_count * per_sm // programs_per_part, 1)
    return min(parts, sm_count) if cap_at_sm_count else parts


def splitkv_args(q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits,
                 out, lse, workspace, row_tiles: int, softmax_scale: float) -> tuple:
    """The positional arguments of the split-KV kernels, Triton's and Gluon's alike, in their order.

    ``workspace``: ``(o_accum, lse_accum, counters)`` from :func:`split_workspace`. The Triton kernel takes
    two more, ``descale_q_ptr`` and ``descale_k_ptr`` (per-tensor FP8), which its launcher appends (as does
    the Gluon small-head kernel's; the 64-row Gluon kernel reads 16-bit caches only and has no such
    arguments).
    """
    _, s_q, h_q, _ = q.shape
    num_blocks, page_block_size, h_kv, _ = k_cache.shape
    group = h_q // h_kv
    o_accum, lse_accum, counters = workspace
    # one stride() tuple per tensor: this runs on every decode call
    sq, sk, so, sl = q.stride(), k_cache.stride(), out.stride(), lse.stride()
    return (
        q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits,
        out, lse, o_accum, lse_accum, counters,
        sq[0], sq[1], sq[2],
        sk[0], sk[1], sk[2],
        block_table.stride(0),
        so[0], so[1], so[2],
        sl[0], sl[1],
        s_q, h_q, group, s_q * group, row_tiles, page_block_size, block_table.shape[1], num_blocks,
        softmax_scale * 1.4426950408889634,  # exp2 in the kernels: fold log2(e) into the scale
    )


#: cache dtypes the whole-tile TMA path reads: 16-bit keys, and per-tensor e4m3 codes (as they are or as bytes)
_TMA_DTYPES = (torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.uint8, torch.int8)


def tma_tile_keys(k_cache: torch.Tensor, arch: int | None) -> int:
    """The longest of :data:`TMA_TILE_KEYS` whose tiles :func:`cache_allows_tma` lets TMA read from ``k_cache``;
    0 where none."""
    return next((n for n in TMA_TILE_KEYS if cache_allows_tma(k_cache, arch, n)), 0)


def cache_allows_tma(k_cache: torch.Tensor, arch: int | None, block_n: int = TMA_BLOCK_N) -> bool:
    """Whether the ``"rows"`` kernel can bring whole ``block_n``-key tiles of ``k_cache`` as TMA boxes of the
    cache seen as [num_blocks * page_block_size, d]: a 16-bit or per-tensor e4m3 cache (:data:`_TMA_DTYPES`)
    with one KV head, pages that hold whole tiles and lie back to back, rows 16-byte aligned, an arch with
    TMA (sm_90 and newer; ``None``: the interpreter)."""
    num_blocks, page_block_size, h_kv, d = k_cache.shape
    sk = k_cache.stride()
    return (k_cache.dtype in _TMA_DTYPES and (arch is None or arch >= 90) and h_kv == 1
            and page_block_size % block_n == 0 and sk[3] == 1
            and (num_blocks <= 1 or sk[0] == page_block_size * sk[1]) and (sk[1] * k_cache.element_size()) % 16 == 0
            and k_cache.data_ptr() % 16 == 0)


def k_descriptors(k_cache: torch.Tensor, cfg: DenseDecodeConfig, head_dim_v: int, arch: int | None) -> tuple:
    """TMA descriptors of ``k_cache`` seen as [num_blocks * page_block_size, d] for the ``"rows"`` kernel's
    whole tiles: ``(latent, rope)`` with [block_n, dv_tile] and [block_n, d - head_dim_v] blocks (rope None
    without RoPE dims), or ``(None, None)`` where the config does not ask for them, its output is sliced in
    more than two, or :func:`cache_allows_tma` says no.
    """
    d = k_cache.shape[3]
    sk = k_cache.stride()
    if (not cfg.tma_k or cfg.layout != "rows" or head_dim_v // cfg.dv_tile > 2
            or not cache_allows_tma(k_cache, arch, cfg.block_n)):
        return None, None
    num_blocks, page_block_size = k_cache.shape[:2]
    from triton.tools.tensor_descriptor import TensorDescriptor

    rows = [num_blocks * page_block_size, d]
    latent = TensorDescriptor(k_cache, rows, [sk[1], 1], [cfg.block_n, cfg.dv_tile])
    rope = TensorDescriptor(k_cache, rows, [sk[1], 1], [cfg.block_n, d - head_dim_v]) if d > head_dim_v else None
    return latent, rope


def split_workspace(q: torch.Tensor, head_dim_v: int, num_parts: int, fused_merge: bool = True
                    ) -> tuple[torch.Tensor, ...]:
    """Buffers for split partials and the fused combine: ``(o_accum, lse_accum, counters)``.

    ``o_accum`` fp32 [b + num_parts, s_q, h_q, d_v] and ``lse_accum`` fp32 [b + num_parts, s_q, h_q]: a
    request is cut into at most (pieces touching it) splits, so all splits fit in ``b + num_parts`` slots.
    ``counters`` int32 [b * s_q * h_q], zeros: one arrival counter per (request, KV head, row tile) — a
    tile holds at least one row, so this bounds every kernel's count. The kernels leave them at zero, so
    a workspace serves any number of launches on one stream (the layers of a decode step, graph replays),
    but not two launches running at once. ``fused_merge=False`` (a kernel that never merges, the combine
    kernel does): ``counters`` is an unset one-element stand-in, so no zero-fill runs.
    """
    b, s_q, h_q, _ = q.shape
    slots = b + num_parts
    o_accum = torch.empty(slots, s_q, h_q, head_dim_v, dtype=torch.float32, device=q.device)
    lse_accum = torch.empty(slots, s_q, h_q, dtype=torch.float32, device=q.device)
    if not fused_merge:
        return o_accum, lse_accum, torch.empty(1, dtype=torch.int32, device=q.device)
    counters = torch.zeros(b * s_q * h_q, dtype=torch.int32, device=q.device)
    return o_accum, lse_accum, counters


def dense_decode_fwd(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int,
    tile_scheduler_metadata: torch.Tensor,
    num_splits: torch.Tensor,
    softmax_scale: float,
    causal: bool,
    config: DenseDecodeConfig | None = None,
    workspace: tuple[torch.Tensor, ...] | None = None,
    descale_q: torch.Tensor | None = None,
    descale_k: torch.Tensor | None = None,
    fp8_native: bool | None = None,
    fused_combine: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the split-KV kernel, and the combine kernel unless it is fused. Inputs are validated by
    :mod:`openmla.api`.

    Args:
        q: [b, s_q, h_q, d] bf16/fp16, or float8_e4m3fn with a per-tensor FP8 cache; last dim contiguous.
        k_cache: [num_blocks, page_block_size, h_kv, d], q's dtype, or per-tensor FP8 (float8_e4m3fn, or
            its bytes as uint8/int8) with ``descale_k``; last dim contiguous.
        block_table: [b, max_blocks] int32, last dim contiguous.
        cache_seqlens: [b] int32 contiguous.
        tile_scheduler_metadata, num_splits: from :func:`openmla.ops.schedule.plan_splitkv`.
        workspace: :func:`split_workspace`'s buffers, reused across calls on one stream (allocated here
            when None).
        descale_q, descale_k: fp32 one-element tensors on q's device, read by the kernel: the e4m3 q
            (resp. cache) holds ``x / descale``. ``descale_q`` is required for an e4m3 q and must be None
            otherwise; ``descale_k`` likewise for an FP8 cache.
        fp8_native: decode e4m3 with fp8 instructions (default: on sm_89+ and in the interpreter) or
            with integer bit moves (sm_80/86, which have none).
        fused_combine: merge split partials in the split kernel (one launch) or with the combine kernel;
            default :func:`openmla.ops.combine.fuse_combine`. The plan should match (``max_splits``).

    Returns:
        out [b, s_q, h_q, head_dim_v] in q's dtype (bf16 for an e4m3 q), lse [b, h_q, s_q] fp32.
    """
    b, s_q, h_q, d = q.shape
    h_kv = k_cache.shape[2]
    rows = s_q * (h_q // h_kv)
    q_fp8 = q.dtype == torch.float8_e4m3fn
    kv_fp8 = k_cache.dtype in (torch.float8_e4m3fn, torch.uint8, torch.int8)
    if q_fp8 != (descale_q is not None) or kv_fp8 != (descale_k is not None):
        raise ValueError("descale_q (descale_k) must be given exactly when q (k_cache) is FP8")
    if q_fp8 and not kv_fp8:
        raise ValueError("an e4m3 q needs an FP8 cache")
    arch = device_arch(q.device)
    if fp8_native is None:
        fp8_native = arch is None or arch >= 89
    if config is None:  # whole K tiles by TMA where the cache allows it (16-bit caches only)
        config = dense_decode_config(rows, d, head_dim_v, arch, tma_keys=tma_tile_keys(k_cache, arch), kv_fp8=kv_fp8,
                                     cache_aligned16=aligned16(k_cache))
    cfg = config
    if SCHED_BLOCK % cfg.block_n != 0:
        raise ValueError(f"block_n={cfg.block_n} must divide the scheduler's {SCHED_BLOCK}-token unit")
    if head_dim_v % cfg.dv_tile != 0:
        raise ValueError(f"dv_tile={cfg.dv_tile} must divide head_dim_v={head_dim_v}")
    if cfg.unchained and cfg.dv_tile != head_dim_v:
        raise ValueError("an unchained tile holds the whole output: dv_tile must equal head_dim_v")
    row_tiles = -(-rows // cfg.block_m)
    num_parts = tile_scheduler_metadata.shape[0]
    out = torch.empty(b, s_q, h_q, head_dim_v, dtype=torch.bfloat16 if q_fp8 else q.dtype, device=q.device)
    lse = torch.empty(b, h_q, s_q, dtype=torch.float32, device=q.device)
    if workspace is None:
        workspace = split_workspace(q, head_dim_v, num_parts)
    fused = fuse_combine(q.device, b) if fused_combine is None else bool(fused_combine)
    # FP8 tensors go in as their bytes; an absent descale is never read (lse stands in: one fp32 pointer
    # type for every launch, so the 16-bit path compiles to a single variant)
    q_in = q.view(torch.uint8) if q_fp8 else q
    k_in = k_cache.view(torch.uint8) if kv_fp8 else k_cache
    if cfg.layout == "tokens":
        from .decode_dense_small_heads import _dense_decode_tokens_kernel

        if head_dim_v != cfg.dv_tile:
            raise ValueError("the tokens layout holds the whole output: dv_tile must equal head_dim_v")
        kernel, consts = _dense_decode_tokens_kernel, dict(R=cfg.block_m)
    else:
        desc_v, desc_pe = k_descriptors(k_in, cfg, head_dim_v, arch)
        kernel, consts = _dense_decode_splitkv_kernel, dict(BLOCK_M=cfg.block_m, DV_TILE=cfg.dv_tile,
                                                            k_desc_v=desc_v, k_desc_pe=desc_pe,
                                                            TMA_K=desc_v is not None, UNCHAIN=cfg.unchained,
                                                            PAGE_AHEAD=cfg.page_ahead, TAIL_TMA=cfg.tail_tma)
    launch(kernel, (row_tiles * h_kv * (head_dim_v // cfg.dv_tile), num_parts),
        *splitkv_args(q_in, k_in, block_table, cache_seqlens, tile_scheduler_metadata, num_splits,
                      out, lse, workspace, row_tiles, softmax_scale),
        descale_q if q_fp8 else lse, descale_k if kv_fp8 else lse,
        CAUSAL=bool(causal and s_q > 1), FUSED_COMBINE=fused,
        **consts, BLOCK_N=cfg.block_n, D_V=head_dim_v, D_PE=d - head_dim_v,
        Q_FP8=q_fp8, KV_FP8=kv_fp8, FP8_NATIVE=bool(fp8_native) or not kv_fp8,  # 16-bit: one variant per arch
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if not fused:
        combine_splits(out, lse, workspace[0], workspace[1], num_splits)
    return out, lse
