"""The online-softmax step the portable Triton kernels share (dense and sparse decoding)."""

from __future__ import annotations

from .._runtime import triton_available

if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def online_softmax_step(scores, visible, m_i, l_i):
        """One KV tile of online softmax in base 2.

        ``scores`` [M, N] fp32 already in log2 units (products times ``scale * log2(e)``), ``visible`` a mask
        broadcastable to it (keys outside it get weight 0), ``m_i``/``l_i`` [M] the running max and sum.
        Returns ``(p, alpha, m_new, l_new)``: the tile's weights, the factor that rescales what was
        accumulated so far, and the updated max and sum. A row that has seen no key keeps ``m = -inf``.
        """
        scores = tl.where(visible, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        # rows that have seen no key yet keep m = -inf; shift by 0 so exp2 gives 0, not NaN
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(scores - m_shift[:, None])
        alpha = tl.math.exp2(m_i - m_shift)
        return p, alpha, m_new, l_i * alpha + tl.sum(p, axis=1)

    @triton.jit
    def online_softmax_step_unchained(scores, visible, m_i, l_i, always, dtype: tl.constexpr):
        """:func:`online_softmax_step` with ``p`` cast to ``dtype``, inside a branch that hides the scores' use
        from Triton's layout heuristic.

        Triton puts every warp of a product on its rows when anything computed from its result reaches another
        product (the scores reach ``P V`` through ``p`` and through ``alpha``). Values made inside an ``if``
        leave it only through its yield, which the heuristic does not follow, and the compiler keeps a branch
        whose two sides yield values made inside them. ``always`` must be a run-time scalar that is true; the
        other side is never taken. Callers must also keep the scores' own products apart (``a + dot(...)``
        becomes one chain of products): sum products that were each scaled.
        """
        if always:
            p, alpha, m_new, l_new = online_softmax_step(scores, visible, m_i, l_i)
            p = p.to(dtype)
        else:
            p = tl.zeros(scores.shape, dtype)
            alpha = m_i
            m_new = m_i
            l_new = l_i
        return p, alpha, m_new, l_new
