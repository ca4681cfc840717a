"""Token-sparse MLA decoding for Hopper (sm_90a) over 16-bit and V3.2 FP8 caches: the warp-specialized kernel on
index lists.

Each query token of each request attends to its own list of cache slots (``indices[i, t, :]``, ``page *
page_block_size + offset``; anything outside the cache is masked). That is dense decoding with one query
token per "request" and the slot list in place of the block table, so this reuses
:mod:`.decode_dense_sm90_ws` in its four-warpgroup form with ``SPARSE`` set: the ``b * s_q`` query tokens
become requests of one token each (``h_q`` rows of the 64-row tile), the split-KV plan balances their
lists (``topk_length``, else ``topk`` entries) across the SMs, and the loader gathers key rows slot by slot
with ``cp.async`` (missing and invalid slots zero-filled and masked in the softmax, so NaN in unused cache
rows never reaches the output). The combine kernel merges split partials; fixed-length lists that the plan keeps
whole (:func:`fixed_lists_unsplit`) need no merge, and none is launched.

Over the V3.2 FP8 cache (656-byte records, ``is_fp8``) the loader gathers each tile's records by ``cp.async``
into the K stage and dequantizes them there to q's dtype (``_gather_fp8_tile`` in
:mod:`.decode_dense_sm90_ws`), so the products are the same as over a 16-bit cache.

At most 16 heads with a bf16 q over the V3.2 cache go to the small-head kernel instead
(:mod:`.decode_sparse_sm90_small_heads`: the keys on ``wgmma``'s 64-row side, the heads on N, two programs an SM;
:data:`SMALL_HEADS`, :func:`small_heads_for`), and 17-32 heads to its 32-row build where the plan's pieces are long
(:data:`ROWS32_MIN_PIECE_TILES`). Plans of fixed-length lists are made once per shape
(:data:`_FIXED_PLANS`) with the per-list overhead of :func:`plan_overhead`.

Served here: bf16/fp16 q over a cache of q's dtype, ``(d_qk, head_dim_v)`` of (576, 512) or (512, 512), or over
the V3.2 FP8 cache (576, 512) whose page stride and base address are multiples of 16 bytes (its 16-byte
copies), with or without an ``attn_sink``; no extra cache (the dispatcher sends those calls to the Triton
kernel). FlashMLA has no sparse decoding over 16-bit caches on SM90.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ..._runtime import InvalidArgumentError, num_sms
from ..combine import combine_splits
from ..decode_dense import split_workspace, splitkv_args
from ..launch import ShapeCache, launch, scratch
from ..schedule import FIXED_OVERHEAD, MAX_SPLITS, plan_segments, plan_segments_torch, plan_splitkv, split_counts
from . import decode_dense_sm90_small_heads as small
from . import decode_dense_sm90_ws as ws
from . import decode_sparse_sm90_small_heads as sparse_small

#: Over V3.2 FP8 records, a bf16 q with at most 16 heads goes to the small-head sparse kernel
#: (:mod:`.decode_sparse_sm90_small_heads`: keys on ``wgmma``'s 64-row side, the heads on N, two programs an SM), not
#: to the 64-row warp-specialized kernel, and 17-32 heads to its 32-row build where :data:`ROWS32_MIN_PIECE_TILES`
#: says. Read at the call.
SMALL_HEADS = True
#: Up to 32 heads, :data:`SMALL_HEADS` sends a call to the small-head kernel's 32-row build where the split-KV plan's
#: pieces (two programs an SM) walk at least this many tiles, else to the warp-specialized kernel (0: always the
#: 32-row build). H200, h_q=32, topk=2048, GPU time a call from CUDA graphs, 32-row build against the
#: warp-specialized kernel (two runs each):
#: (b, s_q) = (64, 2) and (128, 1), pieces of 16 tiles: 131.7-132.1 against 123.4-124.6 µs; (96, 2), 24 tiles:
#: 198.0-200.0 against 197.5-198.4 (a tie: the warp-specialized kernel keeps it); (128, 2), (64, 4) and (256, 1), 31
#: tiles: 226.6-231.2 against 250.5-253.2. Fewer lists lose more (b=16, s_q=2: 50.5 against 43.3). Read at the call.
ROWS32_MIN_PIECE_TILES = 25
#: Units the split-KV plan of fixed-length lists (no ``topk_length``) charges a list beyond its 64-key blocks
#: (``overhead`` of :func:`~openmla.ops.schedule.plan_splitkv`), by row tiles a token: with one (h_q <= 64, either
#: kernel) none, so ``tokens`` lists over about as many pieces come whole or in equal parts (H200, b=64, s_q=2,
#: topk=2048, GPU time a call: h_q 16 / 32 / 64 113.2 / 124.5 / 127.7 µs against 125.5 / 136.0 / 145.9 with the
#: dense kernels' 5); with two (h_q=128) the dense kernels' :data:`FIXED_OVERHEAD` (0 was 0.4-1.5 % slower there).
#: Lists with ``topk_length`` keep :data:`FIXED_OVERHEAD`. :data:`PLAN_OVERHEAD`, when set, overrides both (A/Bs).
FIXED_LIST_OVERHEAD = {1: 0, 2: FIXED_OVERHEAD}
PLAN_OVERHEAD: int | None = None
#: Most pieces the split-KV plan cuts a list into (``max_splits`` of :func:`~openmla.ops.schedule.plan_splitkv`;
#: None: no cap). The combine kernel merges any number (the dense kernels' cap of 16 is their fused merge's bound), and
#: small batches gain from lists cut finer: H200, topk=2048, GPU time a call replayed, no cap against 16, two runs each:
#: h_q=16 b 1 / 4 14.2 / 17.1 against 19.2 / 22.6-22.7 µs, h_q=32 15.8 / 17.6 against 19.9 / 24.6-24.8; b=16 and the
#: h_q=128 b=4 set unchanged (the cap did not bind). Read at the call.
SPLITS_CAP: int | None = None
#: Fixed-length lists planned with an overhead (h_q=128: two row tiles a token) by
#: :func:`~openmla.ops.schedule.plan_segments` (each piece of a list pays it) up to this many lists, else by the even
#: cut. b=64, s_q=2, topk=2048 over 66 pieces: the even cut splits 56 of the 128 lists in two (a merge launch, pieces
#: of up to three lists), the segment plan none (two whole lists a piece, no merge). With no overhead both plans are
#: the same. Planned once per shape (the plans are cached), one loop trip a list.
SEGMENT_PLAN_MAX_LISTS = 1024


def _segment_planned(tokens: int, overhead: int) -> bool:
    """Whether fixed-length lists are planned by :func:`~openmla.ops.schedule.plan_segments`
    (:data:`SEGMENT_PLAN_MAX_LISTS`)."""
    return overhead > 0 and tokens <= SEGMENT_PLAN_MAX_LISTS


def plan_overhead(row_tiles: int, fixed_lists: bool) -> int:
    """The plan's units a list beyond its blocks (:data:`FIXED_LIST_OVERHEAD`; read at the call)."""
    if PLAN_OVERHEAD is not None:
        return PLAN_OVERHEAD
    return FIXED_LIST_OVERHEAD.get(row_tiles, FIXED_OVERHEAD) if fixed_lists else FIXED_OVERHEAD


def small_heads_for(h_q: int, is_fp8: bool, q_dtype: torch.dtype, tokens: int | None = None, topk: int = 0,
                    sms: int = 0) -> bool:
    """Whether :func:`sparse_decode_sm90_fwd` sends a call to the small-head kernel by default: :data:`SMALL_HEADS`
    and :func:`.decode_sparse_sm90_small_heads.sparse_v32_small_heads_fits`, and either at most 16 heads (its 16-row
    build) or, for its 32-row build, ``tokens`` lists of ``topk`` entries whose pieces over two programs on each of
    ``sms`` SMs walk at least :data:`ROWS32_MIN_PIECE_TILES` tiles (``tokens`` None: the shape is not known, so only
    with that threshold 0)."""
    if not (SMALL_HEADS and sparse_small.sparse_v32_small_heads_fits(h_q, is_fp8, q_dtype)):
        return False
    if h_q <= sparse_small.ROW_TILES[0] or ROWS32_MIN_PIECE_TILES <= 0:
        return True
    if tokens is None:
        return False
    parts = sparse_small.PROGRAMS_PER_SM * sms
    return sparse_small.piece_tiles(tokens, topk, parts, SPLITS_CAP) >= ROWS32_MIN_PIECE_TILES


def small_heads_for_some_shapes(h_q: int, is_fp8: bool, q_dtype: torch.dtype) -> bool:
    """Whether :func:`small_heads_for` sends calls with ``h_q`` heads to the small-head kernel for some shapes only
    (17-32 heads: the 32-row build for long pieces), for the dispatcher's reason."""
    return (SMALL_HEADS and h_q > sparse_small.ROW_TILES[0] and ROWS32_MIN_PIECE_TILES > 0
            and sparse_small.sparse_v32_small_heads_fits(h_q, is_fp8, q_dtype))


# Plans of lists with no topk_length (every list topk entries long): they depend on the shapes only, so one
# plan serves every later call with the same (device, tokens, topk, parts), on any stream and in CUDA-graph
# captures (which otherwise would replay the planning launches with every step).
_FIXED_PLANS = ShapeCache()


@triton.jit(do_not_specialize=["tokens", "s_q", "topk"])
def _token_lengths_kernel(topk_length_ptr, lens_ptr, tokens, s_q, topk, BLOCK: tl.constexpr):
    """``lens[t] = clamp(topk_length[t // s_q], 0, topk)`` for the ``tokens = b * s_q`` query tokens (int32)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < tokens
    n = tl.load(topk_length_ptr + offs // s_q, mask=mask, other=0)
    tl.store(lens_ptr + offs, tl.minimum(tl.maximum(n, 0), topk), mask=mask)


def token_lengths(topk_length: torch.Tensor, s_q: int, topk: int) -> torch.Tensor:
    """Each query token's list length: ``topk_length`` int32 [b] clamped to [0, topk], repeated ``s_q`` times
    (int32 [b * s_q]). One launch, so a recorded call replays it with the next call's lengths."""
    tokens = topk_length.shape[0] * s_q
    lens = torch.empty(tokens, dtype=torch.int32, device=topk_length.device)
    block = 1024
    launch(_token_lengths_kernel, (triton.cdiv(tokens, block),), topk_length, lens, tokens, s_q, topk, BLOCK=block)
    return lens


def _fixed_length_plan(device: torch.device, tokens: int, topk: int, parts: int, overhead: int,
                       splits_cap: int | None = MAX_SPLITS):
    """``(lens, sched, splits)`` for ``tokens`` lists of ``topk`` entries over ``parts`` pieces, ``overhead`` units a
    list, at most ``splits_cap`` pieces a list (:func:`~openmla.ops.schedule.plan_segments` where
    :func:`_segment_planned`, else :func:`~openmla.ops.schedule.plan_splitkv`)."""
    def make():
        lens = torch.full((tokens,), topk, dtype=torch.int32, device=device)
        plan = plan_segments if _segment_planned(tokens, overhead) else plan_splitkv
        return (lens, *plan(lens, parts, splits_cap, overhead=overhead))

    return _FIXED_PLANS.get(device, (tokens, topk, parts, overhead, splits_cap), make)


@functools.lru_cache(maxsize=256)
def fixed_lists_unsplit(tokens: int, topk: int, parts: int, overhead: int = FIXED_OVERHEAD,
                        splits_cap: int | None = MAX_SPLITS) -> bool:
    """Whether the plan of ``tokens`` lists of ``topk`` entries over ``parts`` pieces (``overhead`` units a list, at
    most ``splits_cap`` pieces a list) keeps every list in one piece (computed on the host, once per shape): then the
    split kernel writes every output itself and no merge runs."""
    lens = torch.full((tokens,), topk, dtype=torch.int32)
    if _segment_planned(tokens, overhead):
        return bool((plan_segments_torch(lens, parts, splits_cap, overhead)[1].diff() <= 1).all())
    return int(split_counts(lens, parts, splits_cap, overhead=overhead).max()) <= 1


def sparse_decode_sm90_fwd(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    indices: torch.Tensor,
    head_dim_v: int,
    softmax_scale: float,
    topk_length: torch.Tensor | None = None,
    num_sm_parts: int | None = None,
    is_fp8: bool = False,
    prefetch_l2: bool = ws.SPARSE_FP8_PREFETCH_L2,
    loader_regs: int | None = None,
    attn_sink: torch.Tensor | None = None,
    list_ahead: bool | None = None,
    trace: torch.Tensor | None = None,
    output_decode: int | None = None,
    small_heads: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse decode on Hopper; inputs validated by :mod:`openmla.api`.

    Args:
        q: [b, s_q, h_q, d_qk] bf16/fp16, last dim contiguous; d_qk 576 or 512.
        k_cache: [num_blocks, page_block_size, 1, d_qk] in q's dtype, last dim contiguous; with ``is_fp8`` the
            V3.2 layout [num_blocks, page_block_size, 1, 656] (uint8/int8/float8_e4m3fn bytes, ``stride(1)``
            656, ``stride(0)`` and the base address multiples of 16 bytes), d_qk 576.
        indices: int32 [b, s_q, topk]: slot ``page * page_block_size + offset``; any value outside the
            cache (FlashMLA's ``-1`` or any other) is masked.
        head_dim_v: 512.
        softmax_scale: the scale of ``q·k``.
        topk_length: int32 [b] or None: entries of each request's lists used (clamped to [0, topk]).
        num_sm_parts: pieces of the split-KV plan (default: one per SM and row tile).
        is_fp8: ``k_cache`` holds V3.2 FP8 records.
        prefetch_l2: with ``is_fp8`` and the loader decoding (``output_decode=0``), ask L2 for each tile's records
            one tile ahead (``_gather_fp8_tile``).
        loader_regs: the loader partition's registers (default from :data:`SPARSE_FP8_WORKER_REGS` /
            :data:`SOLO_WORKER_REGS`; the softmax warpgroup gets what the others leave).
        attn_sink: fp32 [h_q] contiguous, or None: out of head ``h`` is scaled by ``1 / (1 + exp(sink[h] -
            lse))`` (lse unchanged; +inf gives 0, -inf no change), in the kernel for rows it writes straight
            to ``out`` and in the combine kernel for split rows.
        list_ahead: the loader reads each tile's list entries a tile ahead (``None``: ``SPARSE_FP8_LIST_AHEAD``
            with ``is_fp8`` and no ``prefetch_l2`` (which reads the next tile's list itself), else ``LIST_AHEAD``,
            of :mod:`.decode_dense_sm90_ws`, read at the call).
        output_decode: with ``is_fp8``, who decodes each tile's codes: 0 the loader, 1 the output warpgroups (the
            loader only gathering; ``None``: ``SPARSE_FP8_OUTPUT_DECODE`` of :mod:`.decode_dense_sm90_ws`, read at
            the call).
        trace: a diagnostic: the kernel's trace build stamps into this buffer (``trace_buffer`` of
            :mod:`.decode_dense_sm90_ws`; ``benchmarks/trace_ws.py``), in either kernel; a wrong one is an
            ``InvalidArgumentError``.
        small_heads: run the small-head kernel (``None``: :func:`small_heads_for`, unless an option of the
            warp-specialized kernel above is given; ``True`` where it cannot serve the call, or with any of those
            options, is an ``InvalidArgumentError``).

    Returns:
        out [b, s_q, h_q, head_dim_v] in q's dtype (0 for a token with no valid entry), lse [b, h_q, s_q]
        fp32 natural log (+inf for such a token).
    """
    b, s_q, h_q, d = q.shape
    ws_options = {"prefetch_l2": prefetch_l2 != ws.SPARSE_FP8_PREFETCH_L2, "loader_regs": loader_regs is not None,
                  "list_ahead": list_ahead is not None, "output_decode": output_decode is not None}
    if small_heads is None:
        small_heads = (small_heads_for(h_q, is_fp8, q.dtype, b * s_q, indices.shape[2], num_sms(q.device))
                       and not any(ws_options.values()))
    elif small_heads:
        if not sparse_small.sparse_v32_small_heads_fits(h_q, is_fp8, q.dtype):
            raise InvalidArgumentError(f"small_heads=True: the small-head sparse kernel takes V3.2 FP8 records, a "
                                       f"bf16 q and at most {sparse_small.ROW_TILES[-1]} heads; got is_fp8={is_fp8}, "
                                       f"q {q.dtype}, h_q={h_q}: leave small_heads=None")
        given = [name for name, set_ in ws_options.items() if set_]
        if given:
            raise InvalidArgumentError(f"small_heads=True with {', '.join(given)}: those are options of the "
                                       f"warp-specialized kernel; pass small_heads=False or None with them")
    if small_heads:
        return _small_heads_fwd(q, k_cache, indices, head_dim_v, softmax_scale, topk_length, num_sm_parts,
                                attn_sink, trace)
    if list_ahead is None:
        list_ahead = (ws.SPARSE_FP8_LIST_AHEAD and not prefetch_l2) if is_fp8 else ws.LIST_AHEAD
    row_tiles = -(-h_q // ws.BLOCK_M)
    parts = num_sm_parts or max(num_sms(q.device) // row_tiles, 1)
    plan = _plan_tokens(q, indices, head_dim_v, topk_length, parts, plan_overhead(row_tiles, topk_length is None))
    output_decode = int(ws.SPARSE_FP8_OUTPUT_DECODE if output_decode is None else output_decode) if is_fp8 else 0
    if output_decode not in (0, 1):
        raise InvalidArgumentError(f"output_decode: 0 (the loader decodes) or 1 (the output warpgroups do), got "
                                   f"{output_decode}")
    if output_decode and prefetch_l2:
        raise InvalidArgumentError("prefetch_l2 asks L2 for a tile's records while the loader decodes the tile "
                                   "before; with output_decode=1 the loader issues each tile's copies as soon as "
                                   "its stage is free: pass output_decode=0 with it")
    if output_decode:
        regs = ws.SPARSE_FP8_OUTPUT_DECODE_REGS
    else:
        regs = ws.SPARSE_FP8_WORKER_REGS if is_fp8 else ws.SOLO_WORKER_REGS
    if loader_regs is not None:
        regs = (regs[0], int(loader_regs))
    ws.check_trace(trace, q.device)
    if is_fp8:
        k_cache = k_cache.view(torch.uint8)  # the kernel addresses records in bytes
    launch(ws._dense_decode_sm90_ws_kernel, (row_tiles, parts),
        *splitkv_args(plan.q_tok, k_cache, plan.lists, plan.lens, plan.sched, plan.splits, plan.out_tok, plan.lse,
                      plan.workspace, row_tiles, softmax_scale), None, attn_sink, None, None, trace,
        CAUSAL=False, OVERLAP=False, SOFTMAX_ONLY=True, TMA_K=False, BLOCK_M=ws.BLOCK_M, BLOCK_N=ws.BLOCK_N,
        D_V=head_dim_v, D_PE=d - head_dim_v, SOFTMAX_WARPS=ws.NUM_WARPS, OUTPUT_WARPS=ws.WORKER_WARPS[0],
        LOADER_WARPS=ws.WORKER_WARPS[1], OUTPUT_REGS=regs[0], LOADER_REGS=regs[1], ASYNC_ARRIVE=True, K_BOXES=1,
        SPARSE=True, KV_FP8=bool(is_fp8),
        PREFETCH_L2=bool(is_fp8 and prefetch_l2), HAS_SINK=attn_sink is not None, KV_E4M3=False, Q_E4M3=False,
        LIST_AHEAD=bool(list_ahead), TRACE=trace is not None, BOX_ALLOCS=False, OUTPUT_DECODE=output_decode,
        lse_s_q=plan.out.shape[1],
        num_warps=ws.NUM_WARPS,
        maxnreg=ws.SOLO_MAXNREG,
    )
    return _merge(plan, topk_length is not None, attn_sink)


def _small_heads_fwd(q, k_cache, indices, head_dim_v, softmax_scale, topk_length, num_sm_parts, attn_sink,
                     trace=None):
    """:func:`sparse_decode_sm90_fwd` through the small-head kernel (:mod:`.decode_sparse_sm90_small_heads`: V3.2
    FP8 records, bf16 q, ``h_q`` <= 16): each query token a request of ``h_q`` rows, one program a piece of the
    split-KV plan (``PROGRAMS_PER_SM`` an SM), split partials merged by the combine kernel (which applies the sink
    to them)."""
    b, s_q, h_q, d = q.shape
    topk = indices.shape[2]
    rows = sparse_small.rows_for(h_q)
    parts = num_sm_parts or sparse_small.pieces_for(b * s_q, topk, num_sms(q.device), SPLITS_CAP)
    plan = _plan_tokens(q, indices, head_dim_v, topk_length, parts, plan_overhead(1, topk_length is None))
    ws.check_trace(trace, q.device)
    launch(sparse_small._sparse_v32_small_heads_kernel, (1, parts),
        *splitkv_args(plan.q_tok, k_cache.view(torch.uint8), plan.lists, plan.lens, plan.sched, plan.splits,
                      plan.out_tok, plan.lse, plan.workspace, 1, softmax_scale),
        attn_sink, trace, s_q,
        R=rows, BLOCK_N=sparse_small.BLOCK_N, D_V=head_dim_v, D_PE=d - head_dim_v,
        P_SMEM=small.p_smem_layout(rows), HAS_SINK=attn_sink is not None, TRACE=trace is not None,
        PE_STAGES=sparse_small.pe_stages(rows), P_OVER_PE=sparse_small.p_over_pe(rows),
        num_warps=4,
    )
    return _merge(plan, topk_length is not None, attn_sink)


class _TokenPlan(NamedTuple):
    """A sparse call as the split-KV kernels take it: each of the ``b * s_q`` query tokens a request of ``h_q`` rows
    (``q_tok`` [tokens, 1, h_q, d]) with its own list (``lists`` [tokens, topk]), the plan of those lists over ``parts``
    pieces (``lens``, ``sched``, ``splits``; ``overhead`` units a list, at most ``splits_cap`` pieces a list), the
    outputs (``out`` [b, s_q, h_q, d_v] and its per-token view ``out_tok``, ``lse`` fp32 [b, h_q, s_q], FlashMLA's
    layout, which the kernels write with request ``t``'s lse at ``[t // s_q, :, t % s_q]``) and the
    split partials' ``workspace``."""
    q_tok: torch.Tensor
    lists: torch.Tensor
    lens: torch.Tensor
    sched: torch.Tensor
    splits: torch.Tensor
    out: torch.Tensor
    out_tok: torch.Tensor
    lse: torch.Tensor
    workspace: tuple
    parts: int
    overhead: int
    splits_cap: int | None


def _plan_tokens(q, indices, head_dim_v, topk_length, parts, overhead) -> _TokenPlan:
    """Plan and allocate a sparse call for either Hopper kernel (:class:`_TokenPlan`): fixed-length lists by the plan
    cached for their shape, lists with ``topk_length`` by launches a replay repeats with the call's lengths."""
    b, s_q, h_q, d = q.shape
    topk = indices.shape[2]
    tokens = b * s_q
    q_tok = q.reshape(tokens, 1, h_q, d)
    splits_cap = SPLITS_CAP
    if topk_length is None:
        lens, sched, splits = _fixed_length_plan(q.device, tokens, topk, parts, overhead, splits_cap)
    else:
        lens = token_lengths(topk_length, s_q, topk)
        sched, splits = plan_splitkv(lens, parts, splits_cap, overhead=overhead)
        scratch(lens, sched, splits)
    out = torch.empty(b, s_q, h_q, head_dim_v, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, h_q, s_q, dtype=torch.float32, device=q.device)
    workspace = split_workspace(q_tok, head_dim_v, parts, fused_merge=False)  # the combine kernel merges
    scratch(*workspace)  # written by the split kernel before the combine kernel reads them
    return _TokenPlan(q_tok, indices.reshape(tokens, topk), lens, sched, splits, out,
                      out.view(tokens, 1, h_q, head_dim_v), lse, workspace, parts, overhead, splits_cap)


def _merge(plan: _TokenPlan, lengths_given: bool, attn_sink) -> tuple[torch.Tensor, torch.Tensor]:
    """After the split kernel: merge split partials (the combine kernel applies ``attn_sink`` to them) unless every
    list is one piece (fixed-length lists the plan keeps whole: :func:`fixed_lists_unsplit`; lists with
    ``topk_length`` are planned on the device, so they always merge). Both kernels write the lse in FlashMLA's
    [b, h_q, s_q] layout (``lse_s_q``), so no launch re-lays it out."""
    s_q = plan.out.shape[1]
    tokens, topk = plan.lists.shape
    if lengths_given or not fixed_lists_unsplit(tokens, topk, plan.parts, plan.overhead, plan.splits_cap):
        combine_splits(plan.out_tok, plan.lse, plan.workspace[0], plan.workspace[1], plan.splits,
                       attn_sink=attn_sink, lse_s_q=s_q)
    return plan.out, plan.lse
