"""Token-sparse MLA decoding (DeepSeek Sparse Attention) in portable Triton: kernel, config, launcher.

Each query token ``t`` of request ``i`` attends to its own list of cache slots, ``indices[i, t, :]``
(``page * page_block_size + offset``), then to the optional extra list over ``extra_k_cache``. The
key of a slot is gathered row by row with masked pointer loads; its first ``d_v`` dims are also the
value. Two cache forms:

* 16-bit keys (``k_cache`` bf16/fp16, q's dtype), read as they are;
* the V3.2 FP8 layout (656 bytes per token: 512 e4m3 codes, 4 fp32 scales each covering 128 dims,
  64 bf16 RoPE dims), dequantized in registers to q's dtype before the matrix products.

Tiling: a program holds ``BLOCK_M`` query heads of one query token (``h_q`` rows; any ``h_q``: tail
rows are masked). The ``s_q`` tokens of a request are separate programs because each has its own index
list: folding them into one tile would gather the same bytes and waste the other tokens' rows of
every product. As in the dense kernel, a 128-head tile slices the output dims across two programs.

Grid: ``(b * s_q * head_tiles * dv_tiles, n_split)``. Split ``p`` of a row walks the ``p``-th share of
the row's effective list (main positions ``< topk_length``, then extra positions ``<
extra_topk_length``). With one split the kernel writes ``out`` and ``lse`` (and applies the sink);
with several it writes normalised partials and base-2 LSEs that :mod:`openmla.ops.combine` merges
(and applies the sink there).

Masking: an entry is used when its position is inside the effective list and its value names a slot
of its cache, ``0 <= idx < num_blocks * page_block_size``; anything else (FlashMLA's ``-1``, or any
out-of-range value) is masked before address arithmetic and never dereferenced. Addresses are int64.
A row with no valid entry gets ``out = 0``, ``lse = +inf``.
"""

from __future__ import annotations

import dataclasses

import torch

from .._runtime import device_arch, num_sms, triton_available
from .combine import combine_splits
from .decode_dense import smem_per_block
from .launch import ShapeCache, launch, scratch

# integer arguments that vary per call: specialising on them (==1, %16) would recompile per batch shape
SPARSE_RUNTIME_INTS = (
    "stride_ib", "stride_is", "stride_jb", "stride_js", "stride_lb", "stride_lh", "s_q", "h_q", "head_tiles",
    "topk", "extra_topk", "page_block_size", "extra_page_block_size", "num_slots", "extra_num_slots", "n_split",
)

V32_SCALE_TILE = 128  # latent dims covered by one fp32 scale of the V3.2 layout
# shortest share of a list worth its own split (FlashMLA's 64-token block); not tuned on a GPU yet
MIN_TOKENS_PER_SPLIT = 64

INT32_MAX = 2**31 - 1

if triton_available():
    import triton
    import triton.language as tl

    from .fp8 import _e4m3_over_256, e4m3_to, e4m3_unit
    from .online_softmax import online_softmax_step, online_softmax_step_unchained
    from .words import byte_of, interleave_quarters, unpack_halves

    @triton.jit
    def _load_keys(rows, offs_d, first, valid, dtype: tl.constexpr, IS_FP8: tl.constexpr,
                   FP8_NATIVE: tl.constexpr, BLOCK_N: tl.constexpr, WIDTH: tl.constexpr, D_V: tl.constexpr):
        """Latent dims ``offs_d`` of the key rows at ``rows`` ([BLOCK_N] row pointers), as ``dtype``
        [BLOCK_N, WIDTH]. ``offs_d`` is ``(first + arange(WIDTH)) % D_V``, so for FP8 (``first`` and
        ``WIDTH`` multiples of 128) it is made of whole 128-dim scale tiles. Rows with ``valid`` false
        read nothing and give 0."""
        if IS_FP8:
            TILES: tl.constexpr = WIDTH // 128
            codes = tl.load(rows[:, None] + offs_d[None, :], mask=valid[:, None], other=0)
            if FP8_NATIVE:  # sm_89+ (and the interpreter) convert e4m3 in hardware
                vals = codes.to(tl.float8e4nv, bitcast=True).to(tl.float32)
                unit = 1.0
            else:
                vals = _e4m3_over_256(codes)
                unit = 256.0
            scale_idx = ((first + tl.arange(0, TILES) * 128) % D_V) // 128  # [TILES] scale of each 128-dim run
            scale_ptrs = (rows + D_V).to(tl.pointer_type(tl.float32))
            scales = tl.load(scale_ptrs[:, None] + scale_idx[None, :], mask=valid[:, None], other=0.0) * unit
            vals = tl.reshape(tl.reshape(vals, (BLOCK_N, TILES, 128)) * scales[:, :, None], (BLOCK_N, WIDTH))
            return vals.to(dtype)
        else:
            return tl.load(rows[:, None] + offs_d[None, :], mask=valid[:, None], other=0.0)

    @triton.jit
    def _tile_rows(start, hi, n_main, idx_row, extra_idx_row, k_ptr, extra_k_ptr, num_slots, extra_num_slots,
                   page_block_size, extra_page_block_size, stride_kb, stride_kp, stride_xb, stride_xp,
                   HAS_EXTRA: tl.constexpr, BLOCK_N: tl.constexpr):
        """Row pointers ([BLOCK_N], int64 offsets from the cache's base) and validity of list positions
        ``start + arange(BLOCK_N)`` in ``[0, hi)``: main positions below ``n_main``, then the extra list.
        Invalid entries point at slot 0 and must be masked by the caller; nothing here dereferences them."""
        offs_j = start + tl.arange(0, BLOCK_N)
        in_main = (offs_j < n_main) & (offs_j < hi)
        idx = tl.load(idx_row + offs_j, mask=in_main, other=-1)
        valid = in_main & (idx >= 0) & (idx < num_slots)
        slot = tl.where(valid, idx, 0)
        rows = k_ptr + ((slot // page_block_size).to(tl.int64) * stride_kb
                        + (slot % page_block_size).to(tl.int64) * stride_kp)
        if HAS_EXTRA:
            in_extra = (offs_j >= n_main) & (offs_j < hi)
            x_idx = tl.load(extra_idx_row + (offs_j - n_main), mask=in_extra, other=-1)
            x_valid = in_extra & (x_idx >= 0) & (x_idx < extra_num_slots)
            x_slot = tl.where(x_valid, x_idx, 0)
            x_rows = extra_k_ptr + ((x_slot // extra_page_block_size).to(tl.int64) * stride_xb
                                    + (x_slot % extra_page_block_size).to(tl.int64) * stride_xp)
            rows = tl.where(in_main, rows, x_rows)
            valid = valid | x_valid
        return rows, valid

    @triton.jit
    def _load_v32_tile(rows, valid, D_V: tl.constexpr, D_PE: tl.constexpr):
        """The raw V3.2 records at ``rows`` (uint8 row pointers): the codes as four [BLOCK_N, 32] int32
        tensors (one 128-dim scale tile each, four codes a word: a uint8 tensor would hold one code a
        register), their four fp32 scales ([BLOCK_N] each) and the bf16 RoPE dims [BLOCK_N, D_PE].
        Rows with ``valid`` false read nothing (codes 0, scales 0, RoPE 0)."""
        words = rows.to(tl.pointer_type(tl.int32))
        offs = tl.arange(0, 32)
        w0 = tl.load(words[:, None] + offs[None, :], mask=valid[:, None], other=0)
        w1 = tl.load(words[:, None] + (32 + offs)[None, :], mask=valid[:, None], other=0)
        w2 = tl.load(words[:, None] + (64 + offs)[None, :], mask=valid[:, None], other=0)
        w3 = tl.load(words[:, None] + (96 + offs)[None, :], mask=valid[:, None], other=0)
        scale_ptrs = (rows + D_V).to(tl.pointer_type(tl.float32))
        s0 = tl.load(scale_ptrs, mask=valid, other=0.0)
        s1 = tl.load(scale_ptrs + 1, mask=valid, other=0.0)
        s2 = tl.load(scale_ptrs + 2, mask=valid, other=0.0)
        s3 = tl.load(scale_ptrs + 3, mask=valid, other=0.0)
        # the RoPE dims as words too (two bf16 a word), for the same reason
        pe_words = (rows + D_V + 16).to(tl.pointer_type(tl.int32))
        pe = tl.load(pe_words[:, None] + tl.arange(0, D_PE // 2)[None, :], mask=valid[:, None], other=0)
        return w0, w1, w2, w3, s0, s1, s2, s3, pe

    @triton.jit
    def _dequant_tile(words, scale, dtype: tl.constexpr, FP8_NATIVE: tl.constexpr):
        """One 128-dim scale tile held as [BLOCK_N, 32] int32 words (code ``4 j + m`` in byte ``m`` of
        word ``j``): ``dtype(fp32(e4m3) * scale)`` as [BLOCK_N, 128] in dim order."""
        unit = (scale * e4m3_unit(FP8_NATIVE))[:, None]
        b0 = e4m3_to(byte_of(words, 0), tl.float32, FP8_NATIVE) * unit
        b1 = e4m3_to(byte_of(words, 8), tl.float32, FP8_NATIVE) * unit
        b2 = e4m3_to(byte_of(words, 16), tl.float32, FP8_NATIVE) * unit
        b3 = e4m3_to(byte_of(words, 24), tl.float32, FP8_NATIVE) * unit
        return interleave_quarters(b0, b1, b2, b3).to(dtype)

    @triton.jit
    def _store_rows(row_ptrs, offs, vals, mask_rows):
        """``vals`` [BLOCK_M, W] to ``row_ptrs[:, None] + offs[None, :]``, rows past ``mask_rows`` skipped."""
        tl.store(row_ptrs[:, None] + offs[None, :], vals.to(row_ptrs.dtype.element_ty), mask=mask_rows[:, None])

    @triton.jit
    def _store_scale_tiles(row_ptrs, factor, mask_rows, acc_0, acc_1, acc_2, acc_3):
        """A 512-dim output held as four [BLOCK_M, 128] accumulators, each row scaled by ``factor``."""
        offs = tl.arange(0, 128)
        _store_rows(row_ptrs, offs, acc_0 * factor[:, None], mask_rows)
        _store_rows(row_ptrs, 128 + offs, acc_1 * factor[:, None], mask_rows)
        _store_rows(row_ptrs, 256 + offs, acc_2 * factor[:, None], mask_rows)
        _store_rows(row_ptrs, 384 + offs, acc_3 * factor[:, None], mask_rows)

    @triton.jit(do_not_specialize=list(SPARSE_RUNTIME_INTS))
    def _sparse_decode_kernel(
        q_ptr, k_ptr, idx_ptr, extra_k_ptr, extra_idx_ptr, topk_len_ptr, extra_topk_len_ptr, sink_ptr,
        out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr,
        stride_qb, stride_qs, stride_qh,
        stride_kb, stride_kp,
        stride_xb, stride_xp,
        stride_ib, stride_is,
        stride_jb, stride_js,
        stride_ob, stride_os, stride_oh,
        stride_lb, stride_lh,
        s_q, h_q, head_tiles, topk, extra_topk, page_block_size, extra_page_block_size,
        num_slots, extra_num_slots, n_split, scale_log2,
        IS_FP8: tl.constexpr, FP8_NATIVE: tl.constexpr, HAS_EXTRA: tl.constexpr, HAS_TOPK_LEN: tl.constexpr,
        HAS_EXTRA_TOPK_LEN: tl.constexpr, HAS_SINK: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        D_V: tl.constexpr, D_PE: tl.constexpr, DV_TILE: tl.constexpr, REG_PREFETCH: tl.constexpr,
        IDX_AHEAD: tl.constexpr, UNCHAIN: tl.constexpr = False,
    ):
        # program axis 0 = (request, query token, head tile, slice of the output's D_V dims)
        pid = tl.program_id(0)
        split = tl.program_id(1)
        NUM_DV_TILES: tl.constexpr = D_V // DV_TILE
        dv_tile = pid % NUM_DV_TILES
        head_tile = pid // NUM_DV_TILES % head_tiles
        row = pid // NUM_DV_TILES // head_tiles  # = req * s_q + t
        t = row % s_q
        req = row // s_q
        req64 = tl.cast(req, tl.int64)
        dtype = q_ptr.dtype.element_ty

        head = head_tile * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
        mask_h = head < h_q
        # this program's output dims first, then (when the output is sliced) the rest of the latent dims
        W: tl.constexpr = D_V - DV_TILE if D_V > DV_TILE else DV_TILE
        offs_v = dv_tile * DV_TILE + tl.arange(0, DV_TILE)
        offs_w = (dv_tile * DV_TILE + DV_TILE + tl.arange(0, W)) % D_V

        q_row = q_ptr + req64 * stride_qb + t * stride_qs + head * stride_qh  # [BLOCK_M]
        if REG_PREFETCH:
            # the query as four 128-dim scale tiles, each multiplying one tile of dequantized codes
            offs_c = tl.arange(0, 128)
            q_0 = tl.load(q_row[:, None] + offs_c[None, :], mask=mask_h[:, None], other=0.0)
            q_1 = tl.load(q_row[:, None] + (128 + offs_c)[None, :], mask=mask_h[:, None], other=0.0)
            q_2 = tl.load(q_row[:, None] + (256 + offs_c)[None, :], mask=mask_h[:, None], other=0.0)
            q_3 = tl.load(q_row[:, None] + (384 + offs_c)[None, :], mask=mask_h[:, None], other=0.0)
        else:
            q_v = tl.load(q_row[:, None] + offs_v[None, :], mask=mask_h[:, None], other=0.0)  # [BLOCK_M, DV_TILE]
            if D_V > DV_TILE:
                q_w = tl.load(q_row[:, None] + offs_w[None, :], mask=mask_h[:, None], other=0.0)
        if D_PE > 0:
            offs_pe = tl.arange(0, D_PE)
            q_pe = tl.load(q_row[:, None] + D_V + offs_pe[None, :], mask=mask_h[:, None], other=0.0)

        # this row's effective list: main positions [0, n_main), then extra positions [0, n_extra)
        n_main = topk
        if HAS_TOPK_LEN:
            n_main = tl.minimum(tl.maximum(tl.load(topk_len_ptr + req), 0), topk)
        n_extra = 0
        if HAS_EXTRA:
            n_extra = extra_topk
            if HAS_EXTRA_TOPK_LEN:
                n_extra = tl.minimum(tl.maximum(tl.load(extra_topk_len_ptr + req), 0), extra_topk)
        total = n_main + n_extra
        per_split = tl.cdiv(tl.cdiv(total, n_split), BLOCK_N) * BLOCK_N
        lo = split * per_split
        hi = tl.minimum(lo + per_split, total)

        idx_row = idx_ptr + req64 * stride_ib + t * stride_is
        extra_idx_row = extra_idx_ptr + req64 * stride_jb + t * stride_js
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        if REG_PREFETCH:
            # V3.2 records gathered one tile ahead into registers: the loads of tile j+1 are issued before
            # tile j's products and waited for only when decoded. (Triton's pipeliner, given these loads,
            # issues the next tile's copy after this tile's last product and waits for it at the top of
            # the loop, so the gather's latency is never hidden.) Run with num_stages=1.
            acc_0 = tl.zeros([BLOCK_M, 128], dtype=tl.float32)
            acc_1 = tl.zeros([BLOCK_M, 128], dtype=tl.float32)
            acc_2 = tl.zeros([BLOCK_M, 128], dtype=tl.float32)
            acc_3 = tl.zeros([BLOCK_M, 128], dtype=tl.float32)
            rows, valid = _tile_rows(lo, hi, n_main, idx_row, extra_idx_row, k_ptr, extra_k_ptr, num_slots,
                                     extra_num_slots, page_block_size, extra_page_block_size, stride_kb,
                                     stride_kp, stride_xb, stride_xp, HAS_EXTRA, BLOCK_N)
            c_0, c_1, c_2, c_3, s_0, s_1, s_2, s_3, k_pe = _load_v32_tile(rows, valid, D_V, D_PE)
            for start in range(lo, hi, BLOCK_N):
                k_0 = _dequant_tile(c_0, s_0, dtype, FP8_NATIVE)
                k_1 = _dequant_tile(c_1, s_1, dtype, FP8_NATIVE)
                k_2 = _dequant_tile(c_2, s_2, dtype, FP8_NATIVE)
                k_3 = _dequant_tile(c_3, s_3, dtype, FP8_NATIVE)
                k_pe_cur = unpack_halves(k_pe, tl.bfloat16, dtype)
                valid_cur = valid
                # the next tile (positions past hi are masked: the last prefetch reads nothing)
                rows, valid = _tile_rows(start + BLOCK_N, hi, n_main, idx_row, extra_idx_row, k_ptr, extra_k_ptr,
                                         num_slots, extra_num_slots, page_block_size, extra_page_block_size,
                                         stride_kb, stride_kp, stride_xb, stride_xp, HAS_EXTRA, BLOCK_N)
                c_0, c_1, c_2, c_3, s_0, s_1, s_2, s_3, k_pe = _load_v32_tile(rows, valid, D_V, D_PE)

                scores = tl.dot(q_0, tl.trans(k_0))
                scores = tl.dot(q_1, tl.trans(k_1), scores)
                scores = tl.dot(q_2, tl.trans(k_2), scores)
                scores = tl.dot(q_3, tl.trans(k_3), scores)
                scores = tl.dot(q_pe, tl.trans(k_pe_cur), scores)
                p, alpha, m_new, l_i = online_softmax_step(scores * scale_log2, valid_cur[None, :], m_i, l_i)
                p = p.to(dtype)
                acc_0 = tl.dot(p, k_0, acc_0 * alpha[:, None])
                acc_1 = tl.dot(p, k_1, acc_1 * alpha[:, None])
                acc_2 = tl.dot(p, k_2, acc_2 * alpha[:, None])
                acc_3 = tl.dot(p, k_3, acc_3 * alpha[:, None])
                m_i = m_new
        else:
            acc = tl.zeros([BLOCK_M, DV_TILE], dtype=tl.float32)
            if IDX_AHEAD:
                rows_next, valid_next = _tile_rows(lo, hi, n_main, idx_row, extra_idx_row, k_ptr, extra_k_ptr,
                                                   num_slots, extra_num_slots, page_block_size,
                                                   extra_page_block_size, stride_kb, stride_kp, stride_xb, stride_xp,
                                                   HAS_EXTRA, BLOCK_N)
            for start in range(lo, hi, BLOCK_N):
                if IDX_AHEAD:
                    # the list read one tile ahead: the key loads then depend on no load of their own
                    # iteration, which lets the pipeliner issue them a whole stage early
                    rows, valid = rows_next, valid_next
                    rows_next, valid_next = _tile_rows(start + BLOCK_N, hi, n_main, idx_row, extra_idx_row, k_ptr,
                                                       extra_k_ptr, num_slots, extra_num_slots, page_block_size,
                                                       extra_page_block_size, stride_kb, stride_kp, stride_xb,
                                                       stride_xp, HAS_EXTRA, BLOCK_N)
                else:
                    rows, valid = _tile_rows(start, hi, n_main, idx_row, extra_idx_row, k_ptr, extra_k_ptr,
                                             num_slots, extra_num_slots, page_block_size, extra_page_block_size,
                                             stride_kb, stride_kp, stride_xb, stride_xp, HAS_EXTRA, BLOCK_N)
                k_v = _load_keys(rows, offs_v, dv_tile * DV_TILE, valid, dtype, IS_FP8, FP8_NATIVE,
                                 BLOCK_N, DV_TILE, D_V)  # [BLOCK_N, DV_TILE]
                if UNCHAIN:  # products kept apart, each scaled (see online_softmax_step_unchained)
                    scores = tl.dot(q_v, tl.trans(k_v)) * scale_log2  # [BLOCK_M, BLOCK_N]
                else:
                    scores = tl.dot(q_v, tl.trans(k_v))  # [BLOCK_M, BLOCK_N]
                if D_V > DV_TILE:
                    k_w = _load_keys(rows, offs_w, dv_tile * DV_TILE + DV_TILE, valid, dtype, IS_FP8, FP8_NATIVE,
                                     BLOCK_N, W, D_V)
                    scores = tl.dot(q_w, tl.trans(k_w), scores)
                if D_PE > 0:
                    if IS_FP8:
                        # past the codes and the 16 bytes of fp32 scales: the RoPE dims, stored as bf16
                        pe_rows = (rows + D_V + 16).to(tl.pointer_type(tl.bfloat16))
                    else:
                        pe_rows = rows + D_V
                    k_pe = tl.load(pe_rows[:, None] + offs_pe[None, :], mask=valid[:, None], other=0.0).to(dtype)
                    if UNCHAIN:
                        scores = scores + tl.dot(q_pe, tl.trans(k_pe)) * scale_log2
                    else:
                        scores = tl.dot(q_pe, tl.trans(k_pe), scores)
                if UNCHAIN:
                    p, alpha, m_new, l_i = online_softmax_step_unchained(scores, valid[None, :], m_i, l_i, start < hi,
                                                                         dtype)
                else:
                    p, alpha, m_new, l_i = online_softmax_step(scores * scale_log2, valid[None, :], m_i, l_i)
                    p = p.to(dtype)
                acc = acc * alpha[:, None]
                acc = tl.dot(p, k_v, acc)
                m_i = m_new

        empty = l_i == 0.0
        inv_l = tl.where(empty, 0.0, 1.0 / l_i)
        lse2 = tl.where(empty, float("-inf"), m_i + tl.math.log2(l_i))
        write_lse = mask_h & (dv_tile == 0)
        if n_split <= 1:
            factor = inv_l
            if HAS_SINK:
                # out *= 1 / (1 + exp(sink - lse)), in base 2; +inf sink -> 0, -inf -> 1
                sink2 = tl.load(sink_ptr + head, mask=mask_h, other=0.0) * 1.4426950408889634
                factor = factor * tl.where(empty, 0.0, 1.0 / (1.0 + tl.math.exp2(sink2 - lse2)))
            out_rows = out_ptr + req64 * stride_ob + t * stride_os + head * stride_oh
            if REG_PREFETCH:
                _store_scale_tiles(out_rows, factor, mask_h, acc_0, acc_1, acc_2, acc_3)
            else:
                _store_rows(out_rows, offs_v, acc * factor[:, None], mask_h)
            lse = tl.where(empty, float("inf"), lse2 * 0.6931471805599453)
            tl.store(lse_ptr + req64 * stride_lb + head * stride_lh + t, lse, mask=write_lse)
        else:
            slot_acc = req64 * n_split + split
            acc_row = (slot_acc * s_q + t) * h_q + head  # o_accum is [b * n_split, s_q, h_q, D_V]
            part_rows = o_acc_ptr + acc_row * D_V
            if REG_PREFETCH:
                _store_scale_tiles(part_rows, inv_l, mask_h, acc_0, acc_1, acc_2, acc_3)
            else:
                _store_rows(part_rows, offs_v, acc * inv_l[:, None], mask_h)
            tl.store(lse_acc_ptr + acc_row, lse2, mask=write_lse)


@dataclasses.dataclass(frozen=True)
class SparseDecodeConfig:
    """Tile shape and launch parameters of the sparse kernel.

    ``block_m`` heads of one query token per program; ``dv_tile`` < ``d_v`` slices the output dims
    across programs (a 128 x 512 fp32 accumulator does not fit in registers); ``block_n`` gathered
    keys per step. ``reg_prefetch`` (V3.2 FP8 caches with the whole 512-dim output per program only):
    gather the next tile's records into registers while this tile's products run, instead of leaving
    the loads to Triton's pipeliner; such configs take ``num_stages=1``.
    """

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    dv_tile: int
    reg_prefetch: bool = False
    #: (the pipelined form) read the index list one tile ahead, so that the key loads depend on no load of
    #: their own iteration and Triton's pipeliner keeps ``num_stages - 2`` tiles in flight (without it the
    #: index load takes the first stage and the next tile is copied after this tile's last product)
    idx_ahead: bool = False
    #: (the pipelined form, whole output) the scores split by keys and the output by dims between the two
    #: warpgroups of a 64-row tile, instead of both warpgroups computing all the scores
    #: (:func:`openmla.ops.online_softmax.online_softmax_step_unchained` says why they would)
    unchained: bool = False


def sparse_decode_config(h_q: int, d_v: int, arch: int | None = None, is_fp8: bool = False) -> SparseDecodeConfig:
    """Pick the tile from the head count (the rows of one query token), the head dims and the arch.

    Where 227 KB of shared memory a block allow (Hopper, Blackwell datacenter parts), more than 16
    heads take 64-row, 64-token tiles on 8 warps holding the whole 512-dim output, rows past ``h_q``
    masked. Measured beside the alternatives (V3.2 FP8, s_q=2, topk=2048, b=64): on an H200, 467 us at
    h_q=128 against 527 us for 128-row tiles with the output sliced in two, and 244 us against 456 us at
    h_q=64; on an H100, three stages rather than two, 459.1 against 462.5 us (b=128: 890.0 against
    904.9 us), and h_q=32 in the padded tile 246.4 against 392.4 us in a 32-row one (the gather, not the
    products, sets the speed). Elsewhere more than 32 heads take 64-row tiles with 32-token (16 on
    99 KB parts) KV tiles on 4 warps, output sliced. Fewer heads: the smallest tile of at least 16 rows
    that holds them and the whole output, three stages where shared memory allows (h_q=16 on an H100:
    207.2 us against 240.8 us in the padded 64-row tile). tests/test_aot.py checks each arch's limit.

    ``is_fp8`` (the V3.2 cache) on those parts, fed two other ways (kernel times, H200, b=64, two
    processes on one host; docs/perf-notes.md has the runs): 64-row tiles read the index list a tile
    ahead (``idx_ahead``), so the pipeliner keeps a tile's records in flight: h_q=128 406.2-406.3 us
    against 459.5-462.3 for the plain pipelined tile (b=128 797.5-797.7 against 898.9-900.0), h_q 32 / 64
    207.2-207.6 / 209.6 against 235.8 / 238.3-238.8. The 16-row tile gathers the next tile's records into
    registers (``reg_prefetch``): h_q=16 183.6-186.0 us against 208.5-211.8 (``idx_ahead`` 202.7-202.8).
    """
    limit = smem_per_block(arch)
    if is_fp8 and d_v == 512 and limit >= 200 * 1024:
        if h_q > 16:
            return SparseDecodeConfig(block_m=64, block_n=64, num_warps=8, num_stages=3, dv_tile=d_v, idx_ahead=True)
        return SparseDecodeConfig(block_m=16, block_n=32, num_warps=4, num_stages=1, dv_tile=d_v, reg_prefetch=True)
    if h_q > 16 and limit >= 200 * 1024:
        return SparseDecodeConfig(block_m=64, block_n=64, num_warps=8, num_stages=3, dv_tile=d_v)
    if h_q > 32:
        block_n = 32 if limit >= 120 * 1024 else 16
        return SparseDecodeConfig(block_m=64, block_n=block_n, num_warps=4, num_stages=2, dv_tile=min(d_v, 256))
    block_m = max(16, 1 << (h_q - 1).bit_length())
    block_n = 16 if block_m >= 32 and limit < 120 * 1024 else 32
    stages = 3 if limit >= 200 * 1024 else 2
    return SparseDecodeConfig(block_m=block_m, block_n=block_n, num_warps=4, num_stages=stages, dv_tile=d_v)


def programs_per_sm(cfg: SparseDecodeConfig) -> int:
    """Programs of ``cfg`` that run at once on one SM, as the split count assumes: two of the small
    (<= 32-row) tiles, one of the others (shared memory or registers allow no more)."""
    return 2 if cfg.block_m <= 32 else 1


#: A program's fixed cost (query load, epilogue, launch share) in list entries, for choosing splits.
SPLIT_OVERHEAD_TOKENS = 64


def num_splits_for(programs: int, list_len: int, sm_count: int, per_sm: int = 1) -> int:
    """Splits per row for ``programs`` row programs on ``sm_count`` SMs (``per_sm`` programs each at once).

    Each split keeps at least :data:`MIN_TOKENS_PER_SPLIT` entries of the ``list_len``-entry list (main +
    extra topk). The count minimises waves x (entries per split + :data:`SPLIT_OVERHEAD_TOKENS`), the
    smallest count on ties: splitting 128 programs in two pays when 264 fit at once (h_q=16 on an H200:
    217 against 321 us) and costs a second wave when only 132 do (h_q=64: 272 against 244 us).
    """
    slots = max(sm_count * per_sm, 1)
    most = max(1, -(-list_len // MIN_TOKENS_PER_SPLIT))
    best, best_cost = 1, None
    for splits in range(1, most + 1):
        waves = -(-programs * splits // slots)
        cost = waves * (list_len / splits + SPLIT_OVERHEAD_TOKENS)
        if best_cost is None or cost < best_cost:
            best, best_cost = splits, cost
    return best


def _slot_count(cache: torch.Tensor) -> int:
    # indices are int32: a cache with more slots still cannot be named past INT32_MAX, which stays invalid
    return min(cache.shape[0] * cache.shape[1], INT32_MAX)


def sparse_decode_fwd(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    indices: torch.Tensor,
    head_dim_v: int,
    softmax_scale: float,
    attn_sink: torch.Tensor | None = None,
    topk_length: torch.Tensor | None = None,
    extra_k_cache: torch.Tensor | None = None,
    extra_indices_in_kvcache: torch.Tensor | None = None,
    extra_topk_length: torch.Tensor | None = None,
    is_fp8: bool = False,
    config: SparseDecodeConfig | None = None,
    num_splits: int | None = None,
    sm_count: int | None = None,
    fp8_native: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the sparse kernel, then the combine when rows are split. Inputs are validated by :mod:`openmla.api`.

    Args:
        q: [b, s_q, h_q, d_qk] bf16/fp16, last dim contiguous.
        k_cache: [num_blocks, page_block_size, 1, d_qk] in q's dtype, or with ``is_fp8`` the V3.2 layout
            [num_blocks, page_block_size, 1, 656] as uint8/int8/float8_e4m3fn (``d_qk`` 576, ``head_dim_v``
            512; ``stride(0)`` a multiple of 4 bytes, for the fp32 scales); last dim contiguous.
        indices: int32 [b, s_q, topk], last dim contiguous; slot ``page * page_block_size + offset``, any
            value outside the cache is masked.
        softmax_scale: the scale of ``q·k``.
        attn_sink: fp32 [h_q] contiguous, or None.
        topk_length: int32 [b] contiguous, or None (values are clamped to [0, topk]).
        extra_k_cache, extra_indices_in_kvcache, extra_topk_length: the extra scope (same format as
            ``k_cache``, own page size), or None.
        config: tile override (default :func:`sparse_decode_config`).
        num_splits: splits per row override (default :func:`num_splits_for` with ``sm_count``, itself
            defaulting to the device's SM count).
        fp8_native: convert e4m3 with fp8 instructions (default: on sm_89+ and in the interpreter) or
            with integer bit moves (sm_80/86, which have none).

    Returns:
        out [b, s_q, h_q, head_dim_v] in q's dtype, lse [b, h_q, s_q] fp32 (natural log).
    """
    b, s_q, h_q, d_qk = q.shape
    topk = indices.shape[2]
    d_pe = d_qk - head_dim_v
    arch = device_arch(q.device)
    cfg = config or sparse_decode_config(h_q, head_dim_v, arch, is_fp8=is_fp8)
    if head_dim_v % cfg.dv_tile != 0:
        raise ValueError(f"dv_tile={cfg.dv_tile} must divide head_dim_v={head_dim_v}")
    if is_fp8:
        if (d_qk, head_dim_v) != (576, 512) or k_cache.shape[-1] * k_cache.element_size() != 656:
            raise ValueError("the FP8 path reads the V3.2 layout: d_qk 576, head_dim_v 512, 656 bytes per token")
        if cfg.dv_tile % V32_SCALE_TILE != 0:
            raise ValueError(f"dv_tile={cfg.dv_tile} must be a multiple of the {V32_SCALE_TILE}-dim scale tile")
    if cfg.reg_prefetch and not (is_fp8 and cfg.dv_tile == head_dim_v):
        raise ValueError(f"reg_prefetch serves V3.2 FP8 caches with dv_tile == head_dim_v (512); got "
                         f"is_fp8={is_fp8}, dv_tile={cfg.dv_tile}, head_dim_v={head_dim_v}")
    if fp8_native is None:
        fp8_native = arch is None or arch >= 89
    has_extra = extra_k_cache is not None
    extra_topk = extra_indices_in_kvcache.shape[2] if has_extra else 0
    head_tiles = -(-h_q // cfg.block_m)
    dv_tiles = head_dim_v // cfg.dv_tile
    programs = b * s_q * head_tiles * dv_tiles
    if num_splits is None:
        num_splits = num_splits_for(programs, topk + extra_topk, sm_count or num_sms(q.device), programs_per_sm(cfg))

    def as_bytes(cache):
        return cache.view(torch.uint8) if is_fp8 else cache

    k = as_bytes(k_cache)
    xk = as_bytes(extra_k_cache) if has_extra else k
    xidx = extra_indices_in_kvcache if has_extra else indices
    out = torch.empty(b, s_q, h_q, head_dim_v, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, h_q, s_q, dtype=torch.float32, device=q.device)
    if num_splits > 1:
        o_accum = torch.empty(b * num_splits, s_q, h_q, head_dim_v, dtype=torch.float32, device=q.device)
        lse_accum = torch.empty(b * num_splits, s_q, h_q, dtype=torch.float32, device=q.device)
        scratch(o_accum, lse_accum)  # split partials: written by the split kernel before the combine reads them
        # made (on a shape's first call) before the split kernel: the combine kernel reads them before its PDL wait
        split_offsets = _split_offsets(q.device, b, num_splits)
    else:  # never written (the kernel stores straight to out/lse); fp32 like the real ones, so one compiled variant
        o_accum = lse_accum = lse
    dummy = indices  # stands in for absent optional tensors (never read: their HAS_* flag is off)
    # one stride() tuple a tensor: each call crosses into C++, and this is on every decode step's host path
    sq, sk, sxk, si, sxi, so, sl = q.stride(), k.stride(), xk.stride(), indices.stride(), xidx.stride(), \
        out.stride(), lse.stride()
    launch(_sparse_decode_kernel, (programs, num_splits),
        q, k, indices, xk, xidx,
        topk_length if topk_length is not None else dummy,
        extra_topk_length if extra_topk_length is not None else dummy,
        attn_sink if attn_sink is not None else lse,
        out, lse, o_accum, lse_accum,
        sq[0], sq[1], sq[2],
        sk[0], sk[1],
        sxk[0], sxk[1],
        si[0], si[1],
        sxi[0], sxi[1],
        so[0], so[1], so[2],
        sl[0], sl[1],
        s_q, h_q, head_tiles, topk, extra_topk, k_cache.shape[1], xk.shape[1] if has_extra else 1,
        _slot_count(k_cache), _slot_count(extra_k_cache) if has_extra else 0, num_splits,
        softmax_scale * 1.4426950408889634,
        IS_FP8=bool(is_fp8), FP8_NATIVE=fp8_native, HAS_EXTRA=has_extra, HAS_TOPK_LEN=topk_length is not None,
        HAS_EXTRA_TOPK_LEN=has_extra and extra_topk_length is not None, HAS_SINK=attn_sink is not None,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, D_V=head_dim_v, D_PE=d_pe, DV_TILE=cfg.dv_tile,
        REG_PREFETCH=cfg.reg_prefetch, IDX_AHEAD=cfg.idx_ahead, UNCHAIN=cfg.unchained,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if num_splits > 1:
        combine_splits(out, lse, o_accum, lse_accum, split_offsets, attn_sink=attn_sink)
    return out, lse


# The combine kernel's split offsets, [0, n, 2n, ...] for b requests of n splits each: they depend on (b, n) only
_SPLIT_OFFSETS = ShapeCache()


def _split_offsets(device: torch.device, b: int, num_splits: int) -> torch.Tensor:
    """int32 [b + 1]: request ``i``'s splits start at ``i * num_splits`` in the partials."""
    return _SPLIT_OFFSETS.get(device, (b, num_splits), lambda: torch.arange(
        0, (b + 1) * num_splits, num_splits, dtype=torch.int32, device=device))
