"""Split-KV tile scheduler: cut a ragged batch into ``num_sm_parts`` equal payloads, on the GPU.

Each request ``i`` costs ``max(ceil(len_i / 64), 1) + 5`` units (64-token blocks plus a fixed
overhead for loading Q and writing O, as FlashMLA costs it). The requests' costs are laid end to end
and cut into consecutive pieces of ``payload = max(ceil(total / num_sm_parts), ceil(max_blocks / (max_splits - 1)))``
units (the second term keeps any request within ``max_splits`` pieces, for the fused combine; some pieces
may then be empty);
piece ``p`` is one program of the split-KV kernel. Request ``i`` occupies ``[P_i, P_{i+1})`` with
its blocks at ``[P_i + 5, P_{i+1})``, so the pieces that touch its blocks are
``f_i = (P_i + 5) // payload`` to ``l_i = (P_{i+1} - 1) // payload``: closed forms, so the whole plan
is one launch of one program with no host synchronisation (CUDA-graph capturable).

Outputs (FlashMLA's old-API layout):

* ``tile_scheduler_metadata``: int32 ``[num_sm_parts, 8]``, row ``p`` =
  ``[begin_req, begin_token, end_req, end_token, begin_split, 0, 0, 0]``: piece ``p`` processes
  requests ``begin_req..end_req`` (inclusive; empty when ``begin_req > end_req``), starting at token
  ``begin_token`` of the first and ending before token ``end_token`` of the last (clipped to the
  length); ``begin_split`` is the first request's split index inside that request.
* ``num_splits``: int32 ``[b + 1]``, cumulative count of splits per request (``num_splits[i+1] -
  num_splits[i]`` pieces touch request ``i``); a request with one split is written directly by the
  split kernel, the others are merged by the last of their programs (eager calls) or by the combine
  kernel (CUDA-graph captures), see :func:`openmla.ops.combine.fuse_combine`.

A zero-length request still costs one (empty) block, so exactly one piece owns it and writes its
``out = 0, lse = +inf``.

:func:`plan_segments` makes the same outputs another way, for small batches: each piece of a request pays the
overhead (as FlashMLA's scheduler charges it), the requests laid into the pieces in order, one loop trip a request.
An even cut of the unit line can leave a request's last block or two in a piece of their own beside the next
request's start (an extra partial to write and merge); laying them in piece by piece does not.
"""

from __future__ import annotations

import torch

from .._runtime import triton_available
from .launch import launch

SCHED_BLOCK = 64  # tokens per scheduling unit; the split kernel's BLOCK_N must divide it
FIXED_OVERHEAD = 5  # units charged per request for its Q load and O write
META_WIDTH = 8
#: Most pieces one request of a small batch is cut into (``plan_dense`` applies it up to
#: ``FUSED_MAX_BATCH`` requests). In eager calls one program merges all of a request's partials (the
#: combine is fused into the split kernel), and merging 66 of them (b=1 on an H100) took longer than the
#: attention itself: b=1, s_k=8192, h_q=128 ran 146.1 µs against 45.0 µs with the combine kernel (graph
#: replays, same run). The payload grows instead, which leaves SMs idle only where a batch is too small to
#: fill them anyway. A CUDA graph replaying an eagerly planned small batch keeps the bound: there b=1,
#: s_k=8192 took 50.0 µs against 44.2 µs unbounded (an H200, one process each).
MAX_SPLITS = 16
_UNBOUNDED = 1 << 30  # max_splits=None: no bound
#: Largest batch :func:`openmla.metadata.plan_dense` plans with :func:`plan_segments` (one loop trip a request)
#: rather than :func:`plan_splitkv`. Measured on an H200 (dense h_q=128, CUDA-graph replays, GPU time a call, each plan
#: beside the other in one command, two runs): b=16 at s_k 512 / 2k / 8k 0.3-0.55 / 0.1-0.3 / 1.65-1.85 µs shorter (four
#: pieces a request at 8k where the even cut gave five, the last of one block), b=1 at 512 keys 0.35-0.6 µs shorter, b=4
#: at 512 keys 0.1-0.35 µs longer, b=1 and b=4 at 2k and 8k and the ragged b=16 batch within 0.2 µs; b=64 at 2k / 8k
#: 7.5-7.8 / 5.2-6.3 µs shorter (every request whole in its piece, as FlashMLA's plan keeps them, where the even cut
#: split them and merged), b=32 at 2k / 8k 2.0-2.4 / 2.7-3.6 shorter, b=24 within 0.5 µs, b=32 at 512 keys 0.5 µs
#: longer, a ragged b=32 batch unchanged (``2026-11-28-h200-dense-medium-segment-plan-ab.txt``); at b=128 within 0.3 %
#: (one run), so larger batches keep the closed form (not measured between 65 and 127).
SEGMENT_PLAN_MAX_BATCH = 64

if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _store_plan_rows(sched_ptr, offs_p, pmask, begin_req, begin_tok, end_req, end_tok, begin_split):
        """The pieces' rows of ``tile_scheduler_metadata`` (int32 [num_parts, 8], the module docstring's fields; the
        last three zero), one vector over pieces a field."""
        row = sched_ptr + offs_p * 8
        zero = tl.zeros_like(begin_req)
        tl.store(row + 0, begin_req, mask=pmask)
        tl.store(row + 1, begin_tok, mask=pmask)
        tl.store(row + 2, end_req, mask=pmask)
        tl.store(row + 3, end_tok, mask=pmask)
        tl.store(row + 4, begin_split, mask=pmask)
        tl.store(row + 5, zero, mask=pmask)
        tl.store(row + 6, zero, mask=pmask)
        tl.store(row + 7, zero, mask=pmask)

    # num_parts is never specialized: as the constant 1 (Triton's specialization of an int argument equal to 1,
    # a one-piece plan) the kernel failed to lower on sm_90 (ConvertTritonGPUToLLVM, triton 3.6)
    @triton.jit(do_not_specialize=["num_parts"])
    def _plan_splitkv_kernel(
        seqlens_ptr,  # [b] int32
        sched_ptr,  # [num_parts, 8] int32
        num_splits_ptr,  # [b + 1] int32
        b,
        num_parts,
        BLOCK_P: tl.constexpr,
        CHUNK: tl.constexpr,
        SCHED: tl.constexpr,
        OVERHEAD: tl.constexpr,
        MAX_SPLITS: tl.constexpr,
    ):
        offs_c = tl.arange(0, CHUNK)
        # pass 1: total cost
        total = 0
        max_blk = 0
        for start in range(0, b, CHUNK):
            offs = start + offs_c
            mask = offs < b
            lens = tl.load(seqlens_ptr + offs, mask=mask, other=0)
            nblk = tl.maximum((lens + SCHED - 1) // SCHED, 1)
            total += tl.sum(tl.where(mask, nblk + OVERHEAD, 0), axis=0)
            max_blk = tl.maximum(max_blk, tl.max(tl.where(mask, nblk, 0), axis=0))
        # at most MAX_SPLITS pieces per request: its blocks touch at most ceil(nblk / payload) + 1 pieces
        payload = tl.maximum((total + num_parts - 1) // num_parts, (max_blk + MAX_SPLITS - 2) // (MAX_SPLITS - 1))

        offs_p = tl.arange(0, BLOCK_P)
        x0 = offs_p * payload  # [BLOCK_P] first unit of each piece
        x1 = tl.minimum(x0 + payload, total)
        cnt_begin = tl.zeros([BLOCK_P], dtype=tl.int32)
        sum_begin = tl.zeros([BLOCK_P], dtype=tl.int32)
        cnt_end = tl.zeros([BLOCK_P], dtype=tl.int32)
        sum_end = tl.zeros([BLOCK_P], dtype=tl.int32)
        carry_cost = 0
        carry_splits = 0
        tl.store(num_splits_ptr, 0)
        # pass 2: prefix costs, split counts, and each piece's first/last request
        for start in range(0, b, CHUNK):
            offs = start + offs_c
            mask = offs < b
            lens = tl.load(seqlens_ptr + offs, mask=mask, other=0)
            nblk = tl.maximum((lens + SCHED - 1) // SCHED, 1)
            cost = tl.where(mask, nblk + OVERHEAD, 0)
            incl = tl.cumsum(cost, axis=0) + carry_cost  # P_{i+1}
            excl = incl - cost  # P_i
            first = (excl + OVERHEAD) // payload
            last = (incl - 1) // payload
            splits = tl.where(mask, last - first + 1, 0)
            cum = tl.cumsum(splits, axis=0) + carry_splits
            tl.store(num_splits_ptr + 1 + offs, cum, mask=mask)
            carry_cost += tl.sum(cost, axis=0)
            carry_splits += tl.sum(splits, axis=0)
            before = (incl[None, :] <= x0[:, None]) & mask[None, :]  # [BLOCK_P, CHUNK]
            cnt_begin += tl.sum(before.to(tl.int32), axis=1)
            sum_begin += tl.sum(tl.where(before, cost[None, :], 0), axis=1)
            started = ((excl + OVERHEAD)[None, :] < x1[:, None]) & mask[None, :]
            cnt_end += tl.sum(started.to(tl.int32), axis=1)
            sum_end += tl.sum(tl.where(started, cost[None, :], 0), axis=1)

        pmask = offs_p < num_parts
        begin_req = cnt_begin
        end_req = cnt_end - 1
        has_work = (begin_req <= end_req) & pmask
        len_end = tl.load(seqlens_ptr + end_req, mask=has_work, other=0)
        nblk_end = tl.maximum((len_end + SCHED - 1) // SCHED, 1)
        p_begin = sum_begin
        p_end = sum_end - (nblk_end + OVERHEAD)
        begin_blk = tl.maximum(x0 - (p_begin + OVERHEAD), 0)
        end_blk = tl.minimum(x1 - (p_end + OVERHEAD), nblk_end)
        begin_split = offs_p - (p_begin + OVERHEAD) // payload
        # pieces with no work get an empty request range [b, b - 1]
        begin_req = tl.where(has_work, begin_req, b)
        end_req = tl.where(has_work, end_req, b - 1)
        _store_plan_rows(sched_ptr, offs_p, pmask, begin_req, tl.where(has_work, begin_blk * SCHED, 0), end_req,
                         tl.where(has_work, tl.minimum(end_blk * SCHED, tl.maximum(len_end, 0)), 0),
                         tl.where(has_work, begin_split, 0))


    # b and num_parts never specialized (a one-piece or one-request plan as a constant: see _plan_splitkv_kernel)
    @triton.jit(do_not_specialize=["b", "num_parts"])
    def _plan_segments_kernel(
        seqlens_ptr,  # [b] int32
        sched_ptr,  # [num_parts, 8] int32
        num_splits_ptr,  # [b + 1] int32
        b,
        num_parts,
        BLOCK_B: tl.constexpr,
        BLOCK_P: tl.constexpr,
        SCHED: tl.constexpr,
        OVERHEAD: tl.constexpr,
        MAX_SPLITS: tl.constexpr,
    ):
        """:func:`plan_segments`: the requests laid into the pieces in order, one request a loop trip (the state is
        the current piece ``q`` and the units left in it, ``room``); the pieces' rows are vectors over pieces."""
        offs_b = tl.arange(0, BLOCK_B)
        mask_b = offs_b < b
        lens = tl.load(seqlens_ptr + offs_b, mask=mask_b, other=0)
        nblk = tl.where(mask_b, tl.maximum((lens + SCHED - 1) // SCHED, 1), 0)
        total = tl.sum(tl.where(mask_b, nblk + OVERHEAD, 0), axis=0)
        max_blk = tl.max(nblk, axis=0)
        width = tl.maximum((total + num_parts - 1) // num_parts, (max_blk + MAX_SPLITS - 2) // (MAX_SPLITS - 1))
        width = tl.maximum(width, 1)  # blocks a piece holds when one request fills it
        cap = width + OVERHEAD
        offs_p = tl.arange(0, BLOCK_P)
        begin_req = tl.zeros([BLOCK_P], dtype=tl.int32) + b  # an empty piece: requests [b, b - 1]
        end_req = begin_req - 1
        begin_tok = tl.zeros([BLOCK_P], dtype=tl.int32)
        end_tok = tl.zeros([BLOCK_P], dtype=tl.int32)
        begin_split = tl.zeros([BLOCK_P], dtype=tl.int32)
        counts = tl.zeros([BLOCK_B], dtype=tl.int32)
        q = 0
        room = cap
        for i in range(0, b):
            n = tl.sum(tl.where(offs_b == i, nblk, 0), axis=0)
            s_k = tl.sum(tl.where(offs_b == i, lens, 0), axis=0)
            # blocks of request i that piece q takes: all of them, or what its room holds past one overhead
            first = tl.where(room >= n + OVERHEAD, n, tl.maximum(room - OVERHEAD, 0))
            at_q = (offs_p == q) & (first > 0)
            starts_q = at_q & (room == cap)  # nothing laid into piece q yet
            begin_req = tl.where(starts_q, i, begin_req)
            begin_tok = tl.where(starts_q, 0, begin_tok)
            begin_split = tl.where(starts_q, 0, begin_split)
            end_req = tl.where(at_q, i, end_req)
            end_tok = tl.where(at_q, tl.minimum(first * SCHED, s_k), end_tok)
            # the rest: k_full pieces of `width` blocks after piece q, then a last piece with the remainder
            rest = n - first
            split0 = (first > 0).to(tl.int32)
            k_full = tl.where(rest > width, (rest - 1) // width, 0)
            j = offs_p - (q + 1)
            full = (rest > 0) & (j >= 0) & (j < k_full)
            last = (rest > 0) & (j == k_full)
            seg_lo = first + j * width  # first block of piece q + 1 + j
            begin_req = tl.where(full | last, i, begin_req)
            begin_tok = tl.where(full | last, seg_lo * SCHED, begin_tok)
            begin_split = tl.where(full | last, split0 + j, begin_split)
            end_req = tl.where(full | last, i, end_req)
            end_tok = tl.where(full, (seg_lo + width) * SCHED, tl.where(last, s_k, end_tok))
            counts = tl.where(offs_b == i, split0 + tl.where(rest > 0, k_full + 1, 0), counts)
            room = tl.where(rest > 0, cap - (rest - k_full * width) - OVERHEAD, room - first - OVERHEAD)
            q = tl.where(rest > 0, q + 1 + k_full, q)
        pmask = offs_p < num_parts
        _store_plan_rows(sched_ptr, offs_p, pmask, begin_req, begin_tok, end_req, end_tok, begin_split)
        tl.store(num_splits_ptr, 0)
        tl.store(num_splits_ptr + 1 + offs_b, tl.cumsum(counts, axis=0), mask=mask_b)


def plan_splitkv(
    cache_seqlens: torch.Tensor, num_sm_parts: int, max_splits: int | None = MAX_SPLITS,
    overhead: int = FIXED_OVERHEAD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plan a ragged batch's split-KV schedule on ``cache_seqlens.device`` (one launch, no sync).

    Args:
        cache_seqlens: [b] int32 tokens per request.
        num_sm_parts: pieces to cut the work into (one split-kernel program each, per row tile).
        max_splits: most pieces per request (:data:`MAX_SPLITS`; the fused combine's bound), or None for
            no bound.
        overhead: units charged per request on top of its blocks (:data:`FIXED_OVERHEAD`, what a request's Q load
            and output write cost the dense kernels, in KV blocks).

    Returns:
        ``(tile_scheduler_metadata int32 [num_sm_parts, 8], num_splits int32 [b + 1])``; see the
        module docstring for the fields.
    """
    b = cache_seqlens.shape[0]
    device = cache_seqlens.device
    if device.type != "cuda" and not _interpreting():
        return plan_splitkv_torch(cache_seqlens, num_sm_parts, max_splits, overhead)
    sched = torch.empty(num_sm_parts, META_WIDTH, dtype=torch.int32, device=device)
    num_splits = torch.empty(b + 1, dtype=torch.int32, device=device)
    block_p = max(16, triton.next_power_of_2(num_sm_parts))
    chunk = 32 if block_p <= 256 else 16
    launch(_plan_splitkv_kernel, (1,),
        cache_seqlens, sched, num_splits, b, num_sm_parts,
        BLOCK_P=block_p, CHUNK=chunk, SCHED=SCHED_BLOCK, OVERHEAD=overhead, MAX_SPLITS=max_splits or _UNBOUNDED,
        num_warps=4,
    )
    return sched, num_splits


def _interpreting() -> bool:
    from .._runtime import interpret_mode

    return interpret_mode() and triton_available()


def _cut(cache_seqlens: torch.Tensor, num_sm_parts: int, max_splits: int | None, overhead: int):
    """The plan's arithmetic over requests: (lens, nblk, incl, excl, total, payload, splits a request), int64."""
    max_splits = max_splits or _UNBOUNDED
    lens = cache_seqlens.to(torch.int64)
    b = lens.shape[0]
    nblk = torch.clamp((lens + SCHED_BLOCK - 1) // SCHED_BLOCK, min=1)
    cost = nblk + overhead
    incl = torch.cumsum(cost, 0)
    excl = incl - cost
    total = int(incl[-1]) if b > 0 else 0
    max_blk = int(nblk.max()) if b > 0 else 0
    payload = max((total + num_sm_parts - 1) // num_sm_parts, (max_blk + max_splits - 2) // (max_splits - 1), 1)
    first = (excl + overhead) // payload
    last = (incl - 1) // payload
    return lens, nblk, incl, excl, total, payload, last - first + 1


def split_counts(cache_seqlens: torch.Tensor, num_sm_parts: int, max_splits: int | None = MAX_SPLITS,
                 overhead: int = FIXED_OVERHEAD) -> torch.Tensor:
    """Pieces :func:`plan_splitkv` cuts each request into (int64 [b], on ``cache_seqlens``' device): a request of
    one piece is written straight to the output by the split kernels, so a batch whose requests all have one needs
    no merge."""
    return _cut(cache_seqlens, num_sm_parts, max_splits, overhead)[-1]


def plan_splitkv_torch(
    cache_seqlens: torch.Tensor, num_sm_parts: int, max_splits: int | None = MAX_SPLITS,
    overhead: int = FIXED_OVERHEAD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same plan as :func:`plan_splitkv`, computed with plain PyTorch ops (CPU path, tests)."""
    lens, nblk, incl, excl, total, payload, counts = _cut(cache_seqlens, num_sm_parts, max_splits, overhead)
    b = lens.shape[0]
    num_splits = torch.zeros(b + 1, dtype=torch.int64, device=lens.device)
    num_splits[1:] = torch.cumsum(counts, 0)
    sched = torch.zeros(num_sm_parts, META_WIDTH, dtype=torch.int64, device=lens.device)
    for p in range(num_sm_parts):
        x0 = p * payload
        x1 = min(x0 + payload, total)
        begin_req = int((incl <= x0).sum())
        end_req = int(((excl + overhead) < x1).sum()) - 1
        if begin_req > end_req:
            sched[p, 0], sched[p, 2] = b, b - 1
            continue
        p_begin, p_end = int(excl[begin_req]), int(excl[end_req])
        sched[p, 0] = begin_req
        sched[p, 1] = max(x0 - (p_begin + overhead), 0) * SCHED_BLOCK
        sched[p, 2] = end_req
        end_blk = min(x1 - (p_end + overhead), int(nblk[end_req]))
        sched[p, 3] = min(end_blk * SCHED_BLOCK, int(lens[end_req]))
        sched[p, 4] = p - (p_begin + overhead) // payload
    return sched.to(torch.int32), num_splits.to(torch.int32)


def plan_segments(
    cache_seqlens: torch.Tensor, num_sm_parts: int, max_splits: int | None = MAX_SPLITS,
    overhead: int = FIXED_OVERHEAD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A split-KV plan that charges ``overhead`` units for every piece of a request, not once a request: the same
    outputs as :func:`plan_splitkv`, on ``cache_seqlens.device`` (one launch of one program, no host sync).

    Each piece holds ``width + overhead`` units, ``width = max(ceil(total / num_sm_parts), ceil(max_blocks /
    (max_splits - 1)))`` (``total`` as :func:`plan_splitkv` counts it); the requests are laid in in order, each
    piece of a request paying ``overhead`` before its blocks, and a piece whose room left holds no block of the
    next request past that overhead ends there. So a piece holds at most ``width`` blocks, a request whose first
    piece is shared is cut into ``ceil`` of the rest over ``width``, and no request ends in a piece of a block or
    two beside the next one's start, which :func:`plan_splitkv`'s even cuts of the unit line give (b=16, s_k=8k,
    66 pieces: five pieces a request, the last of one block and the next request's start, against four of at most
    33 blocks). It always fits: each boundary between pieces costs at most one ``overhead`` (paid again by a
    request continued past it, or left unused before a request that starts after it), and each piece has one
    more. One loop trip a request (:func:`plan_dense` uses it for small batches, :data:`SEGMENT_PLAN_MAX_BATCH`).
    """
    b = cache_seqlens.shape[0]
    device = cache_seqlens.device
    if device.type != "cuda" and not _interpreting():
        return plan_segments_torch(cache_seqlens, num_sm_parts, max_splits, overhead)
    sched = torch.empty(num_sm_parts, META_WIDTH, dtype=torch.int32, device=device)
    num_splits = torch.empty(b + 1, dtype=torch.int32, device=device)
    launch(_plan_segments_kernel, (1,),
        cache_seqlens, sched, num_splits, b, num_sm_parts,
        BLOCK_B=max(16, triton.next_power_of_2(b)), BLOCK_P=max(16, triton.next_power_of_2(num_sm_parts)),
        SCHED=SCHED_BLOCK, OVERHEAD=overhead, MAX_SPLITS=max_splits or _UNBOUNDED, num_warps=4,
    )
    return sched, num_splits


def plan_segments_torch(
    cache_seqlens: torch.Tensor, num_sm_parts: int, max_splits: int | None = MAX_SPLITS,
    overhead: int = FIXED_OVERHEAD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`plan_segments` as a host loop over the pieces (CPU path, tests), written apart from the kernel's
    closed forms: each piece takes the requests in order while its room holds the rest of one, then what its room
    holds past one overhead of the next."""
    lens = cache_seqlens.to("cpu", torch.int64).tolist()
    b = len(lens)
    nblk = [max(-(-n // SCHED_BLOCK), 1) for n in lens]
    total = sum(n + overhead for n in nblk)
    max_splits = max_splits or _UNBOUNDED
    width = max(-(-total // num_sm_parts), -(-max(nblk, default=0) // (max_splits - 1)), 1)
    sched = torch.zeros(num_sm_parts, META_WIDTH, dtype=torch.int32)
    counts = [0] * b
    req, blk, split = 0, 0, 0
    for p in range(num_sm_parts):
        room, row = width + overhead, [req, blk * SCHED_BLOCK, -1, 0, split]
        while req < b:
            left = nblk[req] - blk
            if room >= left + overhead:  # the rest of the request fits
                room -= left + overhead
                row[2:4] = [req, lens[req]]
                counts[req] = split + 1
                req, blk, split = req + 1, 0, 0
            else:
                if room > overhead:
                    blk += room - overhead
                    row[2:4] = [req, min(blk * SCHED_BLOCK, lens[req])]
                    split += 1
                break
        sched[p, :5] = torch.tensor(row if row[2] >= 0 else [b, 0, b - 1, 0, 0], dtype=torch.int32)
    if req < b:  # cannot happen (plan_segments' docstring); a plan that drops requests must not reach a kernel
        raise RuntimeError(f"plan_segments_torch: {b - req} of {b} requests left over {num_sm_parts} pieces")
    num_splits = torch.tensor([0] + counts, dtype=torch.int64).cumsum(0).to(torch.int32)
    return sched.to(cache_seqlens.device), num_splits.to(cache_seqlens.device)
