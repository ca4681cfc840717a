"""The fused split-KV combine in Gluon: the Hopper kernels' twins of :mod:`openmla.ops.combine`'s helpers.

A split-KV program that wrote a partial (normalised output and base-2 LSE) calls :func:`arrive_split`.
After its KV loops it checks its first and last request (only those can be split) with
:func:`merge_arrived`; the one program that sees all of a request's programs arrived merges every partial
of its rows into ``out``/``lse`` with :func:`merge_split_rows`, in the same launch, so nothing is carried
through the loops. Same arithmetic as the Triton helpers (and so as the standalone combine kernel): ``lse2 = log2 Σ 2^lse2_s``, ``out = Σ 2^(lse2_s - lse2) o_s``, a row with no
key in any split gets ``out = 0``, ``lse = +inf``.
"""

from __future__ import annotations

from ..._runtime import gluon_available

if gluon_available():
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl

    @gluon.jit
    def arrive_split(counter_ptr):
        """Count this program's partial in: a release increment after a barrier, so every thread's partial
        stores are ordered before it."""
        gl.thread_barrier()
        gl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")

    @gluon.jit
    def _split_weight(lse_acc_ptr, split_lo, s, n_split, rows_per_slot, acc_row, mask_r, m_shift):
        """Weight ``2^(lse2_s - m)`` of split ``s`` for each row, 0 past the request's last split."""
        slot = (split_lo + s).to(gl.int64)
        lse2_s = gl.load(lse_acc_ptr + slot * rows_per_slot + acc_row, mask=mask_r & (s < n_split),
                         other=float("-inf"), cache_modifier=".cg")
        return gl.exp2(lse2_s - m_shift)

    @gluon.jit
    def _split_tile(o_acc_ptr, split_lo, s, n_split, rows_per_slot, acc_row, mask_r, col, D_V: gl.constexpr):
        """Split ``s``'s partial output at columns ``col`` for each row [R, CHUNK], 0 past the last split."""
        slot = (split_lo + s).to(gl.int64)
        return gl.load(o_acc_ptr + (slot * rows_per_slot + acc_row)[:, None] * D_V + col[None, :],
                       mask=mask_r[:, None] & (s < n_split), other=0.0, cache_modifier=".cg")

    @gluon.jit
    def merge_split_rows(out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, req64, row0, rows, group, kv_head, split_lo,
                         n_split, s_q, h_q, stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
                         R: gl.constexpr, D_V: gl.constexpr, NUM_WARPS: gl.constexpr):
        """Merge the ``n_split`` partials of query rows ``row0 .. row0 + R`` (of ``rows``, row = t * group + g)
        of KV head ``kv_head`` of request ``req64`` into out [b, s_q, h_q, D_V] and lse [b, h_q, s_q].

        Partials are read with ``.cg`` (from L2: other SMs wrote them during this launch). One program
        merges a whole row tile, so the loads are made wide: four splits' tiles of ``CHUNK`` output dims
        in flight at once, ``CHUNK`` sized to 32 fp32 registers a thread per split.
        """
        CHUNK: gl.constexpr = D_V if D_V * R <= 1024 * NUM_WARPS else 1024 * NUM_WARPS // R
        LAYOUT: gl.constexpr = gl.BlockedLayout([1, 4], [2, 16], [NUM_WARPS, 1], [1, 0])
        ROW: gl.constexpr = gl.SliceLayout(1, LAYOUT)
        offs_r = row0 + gl.arange(0, R, layout=ROW)
        mask_r = offs_r < rows
        t_idx = offs_r // group
        head = kv_head * group + offs_r % group
        rows_per_slot = s_q * h_q
        acc_row = t_idx * h_q + head  # row inside a slot of o_accum [slots, s_q, h_q, D_V]
        m = gl.full([R], float("-inf"), gl.float32, layout=ROW)
        for s in range(0, n_split):
            slot = (split_lo + s).to(gl.int64)
            lse2_s = gl.load(lse_acc_ptr + slot * rows_per_slot + acc_row, mask=mask_r, other=float("-inf"),
                             cache_modifier=".cg")
            m = gl.maximum(m, lse2_s)
        m_shift = gl.where(m == float("-inf"), 0.0, m)
        total = gl.zeros([R], gl.float32, layout=ROW)
        for s in range(0, n_split):
            total += _split_weight(lse_acc_ptr, split_lo, s, n_split, rows_per_slot, acc_row, mask_r, m_shift)
        empty = total == 0.0
        inv = gl.where(empty, 0.0, 1.0 / total)
        o_row = out_ptr + req64 * stride_ob + t_idx * stride_os + head * stride_oh
        for c in gl.static_range(D_V // CHUNK):
            col = c * CHUNK + gl.arange(0, CHUNK, layout=gl.SliceLayout(0, LAYOUT))
            acc = gl.zeros([R, CHUNK], gl.float32, layout=LAYOUT)
            for s in range(0, n_split, 4):
                o0 = _split_tile(o_acc_ptr, split_lo, s, n_split, rows_per_slot, acc_row, mask_r, col, D_V)
                o1 = _split_tile(o_acc_ptr, split_lo, s + 1, n_split, rows_per_slot, acc_row, mask_r, col, D_V)
                o2 = _split_tile(o_acc_ptr, split_lo, s + 2, n_split, rows_per_slot, acc_row, mask_r, col, D_V)
                o3 = _split_tile(o_acc_ptr, split_lo, s + 3, n_split, rows_per_slot, acc_row, mask_r, col, D_V)
                w0 = _split_weight(lse_acc_ptr, split_lo, s, n_split, rows_per_slot, acc_row, mask_r, m_shift)
                w1 = _split_weight(lse_acc_ptr, split_lo, s + 1, n_split, rows_per_slot, acc_row, mask_r, m_shift)
                w2 = _split_weight(lse_acc_ptr, split_lo, s + 2, n_split, rows_per_slot, acc_row, mask_r, m_shift)
                w3 = _split_weight(lse_acc_ptr, split_lo, s + 3, n_split, rows_per_slot, acc_row, mask_r, m_shift)
                acc += w0[:, None] * o0 + w1[:, None] * o1 + w2[:, None] * o2 + w3[:, None] * o3
            gl.store(o_row[:, None] + col[None, :], (acc * inv[:, None]).to(out_ptr.dtype.element_ty),
                     mask=mask_r[:, None])
        lse = gl.where(empty, float("inf"), (m_shift + gl.log2(total)) * 0.6931471805599453)
        gl.store(lse_ptr + req64 * stride_lb + head * stride_lh + t_idx, lse, mask=mask_r)

    @gluon.jit(noinline=True)
    def merge_arrived(begin_req, end_req, num_splits_ptr, counter_base, counter_stride, out_ptr, lse_ptr, o_acc_ptr,
                      lse_acc_ptr, row0, rows, group, kv_head, s_q, h_q, stride_ob, stride_os, stride_oh, stride_lb,
                      stride_lh, R: gl.constexpr, D_V: gl.constexpr, NUM_WARPS: gl.constexpr):
        """After a piece's KV loops: merge each of its split requests whose programs have all counted in; the
        program whose compare-and-swap sees the full count takes it and resets the counter (the Triton
        helper of the same name explains why exactly one does). A call (``noinline``): inlined, the merge's
        registers put spill loads into the small-head kernel's KV loop."""
        if begin_req <= end_req:
            for k in range(0, 2):
                req = gl.where(k == 0, begin_req, end_req)
                split_lo = gl.load(num_splits_ptr + req)
                n_split = gl.load(num_splits_ptr + req + 1) - split_lo
                if (n_split > 1) & ((k == 0) | (end_req != begin_req)):
                    counter = counter_base + req.to(gl.int64) * counter_stride
                    if gl.atomic_cas(counter, n_split, 0, sem="acq_rel", scope="gpu") == n_split:
                        merge_split_rows(out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, req.to(gl.int64), row0, rows,
                                         group, kv_head, split_lo, n_split, s_q, h_q, stride_ob, stride_os,
                                         stride_oh, stride_lb, stride_lh, R, D_V, NUM_WARPS)
