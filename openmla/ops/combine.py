"""Split-KV combine: merge the partial outputs of requests cut across several pieces.

Partials are normalised outputs ``o_s`` with their base-2 log-sum-exp ``lse2_s`` (``-inf`` for a
split in which a row saw no key). The merge is ``lse2 = log2 Σ 2^lse2_s``, ``out = Σ 2^(lse2_s -
lse2) o_s``; the natural-log ``lse`` is ``lse2 · ln 2``; a row with no key in any split gets
``out = 0`` and ``lse = +inf``. Requests with a single split were written by the split kernel and are
skipped here.

Two ways to run it: fused into the dense split kernels (:func:`arrive_split` counts a request's finished
programs, and after its KV loops one program that sees them all claims the merge, :func:`merge_arrived`:
one launch per call, what eager calls use), or as
the standalone :func:`combine_splits` kernel (parallel over requests, rows and, for small batches, output
dims: what replayed calls, CUDA-graph captures and sparse decoding use). :func:`fuse_combine` picks.

With an attention sink (sparse decoding), the merged output of head ``h`` is scaled by
``1 / (1 + exp(sink[h] - lse))`` here, where it is final (``+inf`` gives 0, ``-inf`` leaves it); ``lse``
is not changed.
"""

from __future__ import annotations

import torch

from .._runtime import InvalidArgumentError, _device_capability, interpret_mode, num_sms, triton_available
from .launch import launch

if triton_available():
    import triton
    import triton.language as tl
    from triton.language.extra.cuda import gdc_wait

    @triton.jit
    def arrive_split(counter_ptr):
        """Count this program's partial in (the fused combine): a release increment after a barrier, so
        every thread's partial stores are ordered before it."""
        tl.debug_barrier()
        tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")

    @triton.jit
    def _split_lse(lse_acc_ptr, split_lo, s, n_split, rows_per_slot, acc_row, mask_r):
        """Split ``s``'s base-2 LSE for each row, ``-inf`` past the request's last split."""
        slot = (split_lo + s).to(tl.int64)
        return tl.load(lse_acc_ptr + slot * rows_per_slot + acc_row, mask=mask_r & (s < n_split),
                       other=float("-inf"), cache_modifier=".cg")

    @triton.jit
    def _split_weight(lse_acc_ptr, split_lo, s, n_split, rows_per_slot, acc_row, mask_r, m_shift):
        """Weight ``2^(lse2_s - m)`` of split ``s`` for each row, 0 past the request's last split."""
        return tl.math.exp2(_split_lse(lse_acc_ptr, split_lo, s, n_split, rows_per_slot, acc_row, mask_r) - m_shift)

    @triton.jit
    def _split_tile(o_acc_ptr, split_lo, s, n_split, rows_per_slot, acc_row, mask_r, col,
                    D_V: tl.constexpr):
        """Split ``s``'s partial output at columns ``col`` for each row [R, CHUNK], 0 past the last split."""
        slot = (split_lo + s).to(tl.int64)
        return tl.load(o_acc_ptr + (slot * rows_per_slot + acc_row)[:, None] * D_V + col[None, :],
                       mask=mask_r[:, None] & (s < n_split), other=0.0, cache_modifier=".cg")

    @triton.jit
    def _merged_scale(m_shift, total, sink_ptr, head, mask_r, HAS_SINK: tl.constexpr):
        """From a row's ``m_shift`` and ``total = Σ 2^(lse2_s - m_shift)`` over its splits: ``(empty, lse2, inv)``,
        whether no split saw a key, the merged base-2 LSE, and the factor of ``Σ 2^(lse2_s - m_shift) o_s`` that
        gives the output (0 for an empty row; with ``HAS_SINK`` times ``1 / (1 + exp(sink[head] - lse))``)."""
        empty = total == 0.0
        lse2 = m_shift + tl.math.log2(total)
        inv = tl.where(empty, 0.0, 1.0 / total)
        if HAS_SINK:
            # base 2: 1 / (1 + 2^(sink·log2e - lse2)); empty rows stay 0 whatever the sink
            sink2 = tl.load(sink_ptr + head, mask=mask_r, other=0.0) * 1.4426950408889634
            inv = inv * tl.where(empty, 0.0, 1.0 / (1.0 + tl.math.exp2(sink2 - lse2)))
        return empty, lse2, inv

    @triton.jit
    def _weighted_tiles(o_acc_ptr, lse_acc_ptr, split_lo, s, n_split, rows_per_slot, acc_row, mask_r, col, m_shift,
                        D_V: tl.constexpr):
        """``Σ 2^(lse2_k - m) o_k`` over splits ``k = s .. s+3`` (those of the request) at columns ``col``:
        [R, len(col)] fp32. Its eight loads are independent, so they are in flight together."""
        o0 = _split_tile(o_acc_ptr, split_lo, s, n_split, rows_per_slot, acc_row, mask_r, col, D_V)
        o1 = _split_tile(o_acc_ptr, split_lo, s + 1, n_split, rows_per_slot, acc_row, mask_r, col, D_V)
        o2 = _split_tile(o_acc_ptr, split_lo, s + 2, n_split, rows_per_slot, acc_row, mask_r, col, D_V)
        o3 = _split_tile(o_acc_ptr, split_lo, s + 3, n_split, rows_per_slot, acc_row, mask_r, col, D_V)
        w0 = _split_weight(lse_acc_ptr, split_lo, s, n_split, rows_per_slot, acc_row, mask_r, m_shift)
        w1 = _split_weight(lse_acc_ptr, split_lo, s + 1, n_split, rows_per_slot, acc_row, mask_r, m_shift)
        w2 = _split_weight(lse_acc_ptr, split_lo, s + 2, n_split, rows_per_slot, acc_row, mask_r, m_shift)
        w3 = _split_weight(lse_acc_ptr, split_lo, s + 3, n_split, rows_per_slot, acc_row, mask_r, m_shift)
        return w0[:, None] * o0 + w1[:, None] * o1 + w2[:, None] * o2 + w3[:, None] * o3

    @triton.jit
    def merge_split_rows(
        out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, sink_ptr,
        req64, t_idx, head, mask_r, split_lo, n_split, s_q, h_q,
        stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
        D_V: tl.constexpr, DV_CHUNK: tl.constexpr, HAS_SINK: tl.constexpr,
    ):
        """Merge the ``n_split`` partials of rows ``(t_idx, head)`` [R] of request ``req64`` into out and lse.

        Partials are read with ``.cg`` (from L2, past this SM's L1): in the fused combine other SMs
        wrote them during this launch. One program merges a whole row tile there, so the loads are
        made wide: ``DV_CHUNK`` output dims (at most) of four splits in flight at once. With one 64-dim
        chunk of one split at a time a program merged at about 55 GB/s (inferred, not profiled: b=1,
        s_k=512 on an H100 took 18 µs longer fused, for 1 MB of partials per program).
        """
        CHUNK: tl.constexpr = DV_CHUNK if DV_CHUNK < D_V else D_V
        rows_per_slot = s_q * h_q
        acc_row = t_idx * h_q + head  # row inside a slot of o_accum [slots, s_q, h_q, D_V]
        m = tl.full(t_idx.shape, float("-inf"), dtype=tl.float32)
        for s in range(0, n_split):
            slot = (split_lo + s).to(tl.int64)
            lse2_s = tl.load(lse_acc_ptr + slot * rows_per_slot + acc_row, mask=mask_r, other=float("-inf"),
                             cache_modifier=".cg")
            m = tl.maximum(m, lse2_s)
        m_shift = tl.where(m == float("-inf"), 0.0, m)
        total = tl.zeros(t_idx.shape, dtype=tl.float32)
        for s in range(0, n_split):
            total += _split_weight(lse_acc_ptr, split_lo, s, n_split, rows_per_slot, acc_row, mask_r, m_shift)
        empty, lse2, inv = _merged_scale(m_shift, total, sink_ptr, head, mask_r, HAS_SINK)
        o_row = out_ptr + req64 * stride_ob + t_idx * stride_os + head * stride_oh
        for c in tl.static_range(D_V // CHUNK):
            col = c * CHUNK + tl.arange(0, CHUNK)
            acc = tl.zeros([t_idx.shape[0], CHUNK], dtype=tl.float32)
            for s in range(0, n_split, 4):
                acc += _weighted_tiles(o_acc_ptr, lse_acc_ptr, split_lo, s, n_split, rows_per_slot, acc_row, mask_r,
                                       col, m_shift, D_V)
            tl.store(o_row[:, None] + col[None, :], (acc * inv[:, None]).to(out_ptr.dtype.element_ty),
                     mask=mask_r[:, None])
        lse = tl.where(empty, float("inf"), lse2 * 0.6931471805599453)
        tl.store(lse_ptr + req64 * stride_lb + head * stride_lh + t_idx, lse, mask=mask_r)

    @triton.jit(noinline=True)
    def merge_arrived(begin_req, end_req, num_splits_ptr, counter_base, counter_stride, arrivals_per_split,
                      out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, row0, rows, group, kv_head, s_q, h_q,
                      stride_ob, stride_os, stride_oh, stride_lb, stride_lh, R: tl.constexpr, D_V: tl.constexpr):
        """After a piece's KV loops: merge each of its split requests whose programs have all counted in
        (:func:`arrive_split`), for query rows ``row0 .. row0 + R`` (of ``rows``; row = t * group + g) of KV
        head ``kv_head``.

        Only a piece's first and last requests can be split (those in between are wholly its own). The
        program whose compare-and-swap sees the full count takes the merge and puts the counter back to 0
        (for the next launch and CUDA-graph replays); the last to arrive always checks after arriving, so
        exactly one program merges each request. Nothing is carried through the KV loops, and the merge is
        a call (``noinline``), not inlined code: inlined, its registers made Hopper builds spill inside the
        KV loops of the kernels that call it.
        """
        offs_r = row0 + tl.arange(0, R)
        mask_r = offs_r < rows
        t_idx = offs_r // group
        head = kv_head * group + offs_r % group
        if begin_req <= end_req:
            for k in range(0, 2):
                req = tl.where(k == 0, begin_req, end_req)
                split_lo = tl.load(num_splits_ptr + req)
                n_split = tl.load(num_splits_ptr + req + 1) - split_lo
                if (n_split > 1) & ((k == 0) | (end_req != begin_req)):
                    arrivals = n_split * arrivals_per_split
                    counter = counter_base + req.to(tl.int64) * counter_stride
                    if tl.atomic_cas(counter, arrivals, 0, sem="acq_rel", scope="gpu") == arrivals:
                        # 4096 // R output dims at a time: four splits' tiles in 128 registers a thread on 4 warps
                        merge_split_rows(out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, lse_ptr, req.to(tl.int64), t_idx,
                                         head, mask_r, split_lo, n_split, s_q, h_q, stride_ob, stride_os, stride_oh,
                                         stride_lb, stride_lh, D_V, 4096 // R, False)

    @triton.jit
    def _load4(o_acc_ptr, lse_acc_ptr, split_lo, s, n_split, rows_per_slot, acc_row, mask_r, col, D_V: tl.constexpr):
        """Splits ``s .. s+3``'s tiles at ``col`` and their LSEs (:func:`_split_tile`, :func:`_split_lse`): eight
        independent loads, in flight together."""
        return (_split_tile(o_acc_ptr, split_lo, s, n_split, rows_per_slot, acc_row, mask_r, col, D_V),
                _split_tile(o_acc_ptr, split_lo, s + 1, n_split, rows_per_slot, acc_row, mask_r, col, D_V),
                _split_tile(o_acc_ptr, split_lo, s + 2, n_split, rows_per_slot, acc_row, mask_r, col, D_V),
                _split_tile(o_acc_ptr, split_lo, s + 3, n_split, rows_per_slot, acc_row, mask_r, col, D_V),
                _split_lse(lse_acc_ptr, split_lo, s, n_split, rows_per_slot, acc_row, mask_r),
                _split_lse(lse_acc_ptr, split_lo, s + 1, n_split, rows_per_slot, acc_row, mask_r),
                _split_lse(lse_acc_ptr, split_lo, s + 2, n_split, rows_per_slot, acc_row, mask_r),
                _split_lse(lse_acc_ptr, split_lo, s + 3, n_split, rows_per_slot, acc_row, mask_r))

    @triton.jit
    def _max4(l0, l1, l2, l3):
        return tl.maximum(tl.maximum(l0, l1), tl.maximum(l2, l3))

    @triton.jit
    def _weigh4(o0, o1, o2, o3, l0, l1, l2, l3, m_shift):
        """``(Σ 2^(l_k - m) o_k, Σ 2^(l_k - m))`` over four loaded splits."""
        w0 = tl.math.exp2(l0 - m_shift)
        w1 = tl.math.exp2(l1 - m_shift)
        w2 = tl.math.exp2(l2 - m_shift)
        w3 = tl.math.exp2(l3 - m_shift)
        return w0[:, None] * o0 + w1[:, None] * o1 + w2[:, None] * o2 + w3[:, None] * o3, (w0 + w1) + (w2 + w3)

    @triton.jit
    def _online_merge(o_acc_ptr, lse_acc_ptr, split_lo, n_split, rows_per_slot, acc_row, mask_r, col,
                      D_V: tl.constexpr, UNROLL: tl.constexpr):
        """``(m_shift, total, acc)`` of rows ``acc_row`` at ``col`` over a request's ``n_split`` partials, ``UNROLL``
        (4, 8 or 16) splits a round: each round loads its splits' tiles and LSEs together (one L2 round trip) and folds
        them in against the running largest LSE, rescaling what came before (as an online softmax does over keys),
        so no pass over the LSEs precedes the tiles. ``m_shift``: the largest base-2 LSE (0 where no split saw a
        key), ``total = Σ 2^(lse2_s - m_shift)``, ``acc = Σ 2^(lse2_s - m_shift) o_s``."""
        m = tl.full(acc_row.shape, float("-inf"), dtype=tl.float32)
        m_shift = tl.zeros(acc_row.shape, dtype=tl.float32)
        total = tl.zeros(acc_row.shape, dtype=tl.float32)
        acc = tl.zeros([acc_row.shape[0], col.shape[0]], dtype=tl.float32)
        for s in range(0, n_split, UNROLL):
            # every load of the round first, then the arithmetic that waits for them
            a0, a1, a2, a3, la0, la1, la2, la3 = _load4(o_acc_ptr, lse_acc_ptr, split_lo, s, n_split, rows_per_slot,
                                                        acc_row, mask_r, col, D_V)
            if UNROLL >= 8:
                b0, b1, b2, b3, lb0, lb1, lb2, lb3 = _load4(o_acc_ptr, lse_acc_ptr, split_lo, s + 4, n_split,
                                                            rows_per_slot, acc_row, mask_r, col, D_V)
            if UNROLL == 16:
                c0, c1, c2, c3, lc0, lc1, lc2, lc3 = _load4(o_acc_ptr, lse_acc_ptr, split_lo, s + 8, n_split,
                                                            rows_per_slot, acc_row, mask_r, col, D_V)
                d0, d1, d2, d3, ld0, ld1, ld2, ld3 = _load4(o_acc_ptr, lse_acc_ptr, split_lo, s + 12, n_split,
                                                            rows_per_slot, acc_row, mask_r, col, D_V)
            m_new = tl.maximum(m, _max4(la0, la1, la2, la3))
            if UNROLL >= 8:
                m_new = tl.maximum(m_new, _max4(lb0, lb1, lb2, lb3))
            if UNROLL == 16:
                m_new = tl.maximum(m_new, tl.maximum(_max4(lc0, lc1, lc2, lc3), _max4(ld0, ld1, ld2, ld3)))
            m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
            # what came before, against the new shift: 0 while no split has seen a key (m = -inf), else <= 1
            alpha = tl.math.exp2(m - m_shift)
            pa, ta = _weigh4(a0, a1, a2, a3, la0, la1, la2, la3, m_shift)
            acc = acc * alpha[:, None] + pa
            total = total * alpha + ta
            if UNROLL >= 8:
                pb, tb = _weigh4(b0, b1, b2, b3, lb0, lb1, lb2, lb3, m_shift)
                acc += pb
                total += tb
            if UNROLL == 16:
                pc, tc = _weigh4(c0, c1, c2, c3, lc0, lc1, lc2, lc3, m_shift)
                pd, td = _weigh4(d0, d1, d2, d3, ld0, ld1, ld2, ld3, m_shift)
                acc += pc + pd
                total += tc + td
            m = m_new
        return m_shift, total, acc

    @triton.jit
    def _eager_merge(o_acc_ptr, lse_acc_ptr, sink_ptr, split_lo, n_split, rows_per_slot, acc_row, head, mask_r, col,
                     D_V: tl.constexpr, HAS_SINK: tl.constexpr):
        """A request of at most four splits in one round trip: the four splits' LSEs and tiles at ``col`` are
        loaded together (nothing between them and the request's offsets), then weighed in registers.
        Returns ``(acc, empty, lse2, inv)`` as :func:`_merged_scale` gives them, ``acc = Σ 2^(lse2_s - m) o_s``."""
        o0 = _split_tile(o_acc_ptr, split_lo, 0, n_split, rows_per_slot, acc_row, mask_r, col, D_V)
        o1 = _split_tile(o_acc_ptr, split_lo, 1, n_split, rows_per_slot, acc_row, mask_r, col, D_V)
        o2 = _split_tile(o_acc_ptr, split_lo, 2, n_split, rows_per_slot, acc_row, mask_r, col, D_V)
        o3 = _split_tile(o_acc_ptr, split_lo, 3, n_split, rows_per_slot, acc_row, mask_r, col, D_V)
        l0 = _split_lse(lse_acc_ptr, split_lo, 0, n_split, rows_per_slot, acc_row, mask_r)
        l1 = _split_lse(lse_acc_ptr, split_lo, 1, n_split, rows_per_slot, acc_row, mask_r)
        l2 = _split_lse(lse_acc_ptr, split_lo, 2, n_split, rows_per_slot, acc_row, mask_r)
        l3 = _split_lse(lse_acc_ptr, split_lo, 3, n_split, rows_per_slot, acc_row, mask_r)
        m = tl.maximum(tl.maximum(l0, l1), tl.maximum(l2, l3))
        m_shift = tl.where(m == float("-inf"), 0.0, m)
        w0 = tl.math.exp2(l0 - m_shift)
        w1 = tl.math.exp2(l1 - m_shift)
        w2 = tl.math.exp2(l2 - m_shift)
        w3 = tl.math.exp2(l3 - m_shift)
        empty, lse2, inv = _merged_scale(m_shift, (w0 + w1) + (w2 + w3), sink_ptr, head, mask_r, HAS_SINK)
        acc = w0[:, None] * o0 + w1[:, None] * o1 + w2[:, None] * o2 + w3[:, None] * o3
        return acc, empty, lse2, inv

    @triton.jit(do_not_specialize=["lse_s_q"])
    def _decode_combine_kernel(
        out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, num_splits_ptr, sink_ptr,
        stride_ob, stride_os, stride_oh,
        stride_lb, stride_lh,
        s_q, h_q, lse_s_q,
        BLOCK_R: tl.constexpr, D_V: tl.constexpr, HAS_SINK: tl.constexpr, PDL: tl.constexpr,
        COL_CHUNK: tl.constexpr, EAGER_SPLITS: tl.constexpr,
    ):
        """Program ``(req, row tile, column chunk)``: rows ``BLOCK_R * pid1 ..`` (row = t * h_q + head) of a split
        request, output dims ``COL_CHUNK * pid2 ..``; the chunk that holds dim 0 also writes the LSE.

        Each program is a short chain of L2 round trips, so the chain is kept short: the request's split
        offsets are read before the PDL wait (every launcher makes them before the split kernel starts), so a
        request with one split returns without waiting; a request of at most ``EAGER_SPLITS`` (4, or 0 for
        none) splits loads all its LSEs and tiles in one round trip (:func:`_eager_merge`: the common case of
        large batches, where a request is cut at most once or twice). More splits are merged online
        (:func:`_online_merge`): each round trip brings several splits' tiles and LSEs together (sixteen of up to
        64 dims, eight of up to 128, four of more) and folds them in against the running largest LSE. Small
        batches have few (request, row tile) pairs, so their columns are spread over programs too
        (:func:`combine_col_chunks`). ``lse_s_q``: requests that share an lse row of ``lse`` (request
        ``req``'s lse at row ``req // lse_s_q``, column ``req % lse_s_q``; 1 for dense calls; a runtime int, so
        one build serves every value)."""
        req = tl.program_id(0)
        split_lo = tl.load(num_splits_ptr + req)
        n_split = tl.load(num_splits_ptr + req + 1) - split_lo
        if n_split > 1:
            if PDL:
                # launched as a programmatic dependent of the split kernel: its partials are visible past this wait
                gdc_wait()
            req64 = tl.cast(req, tl.int64)
            offs_r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)  # row = t * h_q + head
            mask_r = offs_r < s_q * h_q
            t_idx = offs_r // h_q
            head = offs_r % h_q
            rows_per_slot = s_q * h_q
            acc_row = t_idx * h_q + head  # row inside a slot of o_accum [slots, s_q, h_q, D_V]
            col = tl.program_id(2) * COL_CHUNK + tl.arange(0, COL_CHUNK)
            if n_split <= EAGER_SPLITS:
                acc, empty, lse2, inv = _eager_merge(o_acc_ptr, lse_acc_ptr, sink_ptr, split_lo, n_split,
                                                     rows_per_slot, acc_row, head, mask_r, col, D_V, HAS_SINK)
            else:
                # a round trip brings UNROLL splits' [BLOCK_R, COL_CHUNK] tiles: 32 KB of registers at most
                UNROLL: tl.constexpr = 16 if COL_CHUNK <= 64 else 8 if COL_CHUNK <= 128 else 4
                m_shift, total, acc = _online_merge(o_acc_ptr, lse_acc_ptr, split_lo, n_split, rows_per_slot,
                                                    acc_row, mask_r, col, D_V, UNROLL)
                empty, lse2, inv = _merged_scale(m_shift, total, sink_ptr, head, mask_r, HAS_SINK)
            o_row = out_ptr + req64 * stride_ob + t_idx * stride_os + head * stride_oh
            tl.store(o_row[:, None] + col[None, :], (acc * inv[:, None]).to(out_ptr.dtype.element_ty),
                     mask=mask_r[:, None])
            if tl.program_id(2) == 0:
                lse = tl.where(empty, float("inf"), lse2 * 0.6931471805599453)
                # int32 division (inlined; an int64 one is a subroutine call)
                lse_at = lse_ptr + (req // lse_s_q).to(tl.int64) * stride_lb + req % lse_s_q
                tl.store(lse_at + head * stride_lh + t_idx, lse, mask=mask_r)


#: Launch the combine kernel as a programmatic dependent of the split kernel before it on SM90+ (PDL, as
#: FlashMLA does): its launch overlaps the split kernel's end; it waits (``griddepcontrol.wait``) before reading
#: the partials. Read at each call. Measured on an H200 (dense small and ragged batches, alternated twice in one
#: process, ``benchmarks/combine_pdl_ab.py``): replayed eager calls 2-4.5 % faster where their times were stable
#: (b=1 s_k=8k 39.9 against 41.6 us, b=4 43.1 against 45.1-45.5, b=16 90.2-90.5 against 92.4, the ragged b=16
#: batch 78.2-78.4 against 80.4-80.5), CUDA-graph replays within 1 %. The kernel reads the split offsets before
#: its wait (so requests with one split return at once): they must exist before the split kernel starts.
COMBINE_PDL = True


def combine_pdl(device: torch.device) -> bool:
    """Whether :func:`combine_splits` launches with PDL on ``device``: :data:`COMBINE_PDL`, a CUDA device of
    SM90 or later (``griddepcontrol`` is an SM90 instruction: the card's own capability, not ``OPENMLA_ARCH``),
    not the interpreter."""
    if not COMBINE_PDL or device.type != "cuda" or interpret_mode():
        return False
    return _device_capability(torch.cuda.current_device() if device.index is None else device.index)[0] >= 9


#: Largest batch whose eager calls merge split partials in the split kernel (see :func:`fuse_combine`).
FUSED_MAX_BATCH = 16


def fuse_combine(device: torch.device, b: int, replayed: bool = False) -> bool:
    """Whether a dense decode call of batch ``b`` merges its split partials inside the split kernel (one
    launch) rather than with the combine kernel (a second launch).

    Fused: eager calls of at most :data:`FUSED_MAX_BATCH` requests. A launch through Triton costs tens of
    microseconds of host time, as much as a small batch's GPU time, and the fused merge saves it: on an
    H200 (same machine, previous version beside it) b 1-16 at s_k 512-8192 took 43-130 µs a call against
    80-158 µs. The fused merge costs GPU time, though (one program merges a row tile, where the combine
    kernel spreads a request over many), which shows where the GPU, not the host, sets the pace: b=128,
    h_q=32 380.4 against 351.4 µs, a ragged b=16 batch (64 to 32k tokens) 144.2 against 104.0 µs. So larger
    batches, and CUDA-graph captures (no host time to save: b 1-16 replays took 22.0-125.3 µs with the
    combine kernel, 32.2-134.8 µs fused, an H100), use the combine kernel. So do calls that a step's later
    calls replay (``replayed``, :mod:`openmla.replay`): a replay starts both kernels through their compiled
    launchers, a few microseconds of host time.
    """
    return not replayed and b <= FUSED_MAX_BATCH and not (
        device.type == "cuda" and torch.cuda.is_current_stream_capturing())


#: Requests of at most this many splits are merged in one round trip (their LSEs and tiles loaded together);
#: 0 sends every request through the general loops. 4: the tiles of four splits fill a program's registers
#: (four [8, 512] fp32 tiles are 128 a thread on 4 warps), and at large batches a request is cut at most a few
#: times (b=128: at most 3 splits on the standard configs).
COMBINE_EAGER_SPLITS = 4
#: Warps of a combine program.
COMBINE_NUM_WARPS = 4
#: The combine kernel spreads a row tile's output dims over at most this many programs (small batches).
COMBINE_MAX_COL_CHUNKS = 8
#: Programs per SM the combine kernel's column chunks aim for (:func:`combine_col_chunks`).
COMBINE_PROGRAMS_PER_SM = 4
#: Widest chunk of output dims one combine program takes, whatever the batch: a 512-dim program holds four
#: splits' [8, 512] fp32 tiles in 211 registers a thread (two programs an SM), a 256-dim one in 121 (four;
#: sm_90a compiles on a CPU).
COMBINE_MAX_CHUNK_DIMS = 256


def combine_col_chunks(row_programs: int, d_v: int, device: torch.device) -> int:
    """How many programs share a row tile's ``d_v`` output dims in the combine kernel: the fewest (powers of two,
    up to :data:`COMBINE_MAX_COL_CHUNKS`, chunks of at least 32 dims) that give ``row_programs`` (requests times
    row tiles) times the chunks :data:`COMBINE_PROGRAMS_PER_SM` programs per SM, so that small batches read their
    partials from many SMs at once. Measured on an H200, every count beside the others (dense small and ragged
    batches, ``benchmarks/kernel_times.py --combine-chunks``): with the two-pass merge
    (``benchmarks/results/2026-11-27-h200-combine-chunks.txt``) b=1 and 4 fastest with 8, b=16 (256 row tiles)
    with 2, so two programs per SM; since the online merge, which takes more splits a round trip the narrower a
    program's chunk, b=16 with 4 (s_k 2k / 8k 6.9 / 7.7 µs of combine against 7.5 / 8.4-8.5 with 2 and 8.5 / 11.0
    with 8, the ragged batch 8.0 against 8.7-8.9 and 7.6-7.7; ``2026-11-28-h200-combine-chunks-online.txt``), so
    four, while sparse calls of at most two pieces a list took the same time with 2 or 4. Chunks are
    at most :data:`COMBINE_MAX_CHUNK_DIMS` wide, so large batches take two programs a 512-dim row tile as well:
    b=128 on an H200 (L2 flushed before each call, ``2026-11-28-h200-combine-eager-chunks.txt``) 10.9 against
    12.5 µs at h_q=64, 11.1-12.1 against 12.8-13.9 at h_q=128. CPU tensors (the interpreter, where every program
    costs Python time) keep one program a row tile."""
    if device.type != "cuda":
        return 1
    sms = num_sms(device)
    chunks = max(d_v // COMBINE_MAX_CHUNK_DIMS, 1)
    while (row_programs * chunks < COMBINE_PROGRAMS_PER_SM * sms and chunks < COMBINE_MAX_COL_CHUNKS
           and d_v // (2 * chunks) >= 32):
        chunks *= 2
    return chunks


def combine_splits(
    out: torch.Tensor,
    lse: torch.Tensor,
    o_accum: torch.Tensor,
    lse_accum: torch.Tensor,
    num_splits: torch.Tensor,
    attn_sink: torch.Tensor | None = None,
    col_chunks: int | None = None,
    lse_s_q: int = 1,
) -> None:
    """Merge split partials into ``out`` [b, s_q, h_q, d_v] and ``lse`` [b, h_q, s_q] in place.

    Args:
        o_accum: [slots, s_q, h_q, d_v] fp32 normalised partial outputs.
        lse_accum: [slots, s_q, h_q] fp32 base-2 LSE of each partial.
        num_splits: [b + 1] int32 cumulative splits per request (slot of split ``k`` of request
            ``i`` is ``num_splits[i] + k``).
        attn_sink: fp32 [h_q] contiguous, or None (dense decoding): scales each merged output by
            ``1 / (1 + exp(sink - lse))``.
        col_chunks: programs sharing a row tile's output dims (a power of two dividing ``d_v``); ``None``: by
            :func:`combine_col_chunks` (``openmla warmup`` compiles each width it can pick).
        lse_s_q: the sparse launchers' layout, where each of a call's ``b * lse_s_q`` query tokens is a request of
            one token (``out`` [b * lse_s_q, 1, h_q, d_v]) and ``lse`` is the call's [b, h_q, lse_s_q]: token
            ``t``'s lse goes to ``lse[t // lse_s_q, :, t % lse_s_q]``, as FlashMLA lays it out. 1: one lse row a
            request.

    On SM90+ the launch is a programmatic dependent of the kernel before it on the stream (:func:`combine_pdl`):
    the kernel waits for that one to finish before reading the partials, and that one, a plain launch, started
    after every kernel before it had finished. ``num_splits`` is read before the wait, so it must have been
    written before the kernel before this launch started (a schedule planned before the split kernel, as every
    caller here does), not by that kernel nor after it.
    """
    b, s_q, h_q, d_v = out.shape
    pdl = combine_pdl(out.device)
    block_r = 8 if d_v >= 256 else 16
    if col_chunks is not None and (col_chunks < 1 or col_chunks & (col_chunks - 1) or d_v % col_chunks):
        raise InvalidArgumentError(f"col_chunks={col_chunks}: the combine kernel takes a power of two that divides "
                                   f"d_v={d_v} (or None to let combine_col_chunks pick)")
    chunks = col_chunks or combine_col_chunks(b * triton.cdiv(s_q * h_q, block_r), d_v, out.device)
    grid = (b, triton.cdiv(s_q * h_q, block_r), chunks)
    launch(_decode_combine_kernel, grid,
        out, lse, o_accum, lse_accum, num_splits,
        attn_sink if attn_sink is not None else lse_accum,  # not read without a sink
        out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1),
        s_q, h_q, lse_s_q,
        BLOCK_R=block_r, D_V=d_v, HAS_SINK=attn_sink is not None, PDL=pdl, COL_CHUNK=d_v // chunks,
        EAGER_SPLITS=COMBINE_EAGER_SPLITS,
        num_warps=COMBINE_NUM_WARPS,
        **({"launch_pdl": True} if pdl else {}),
    )
