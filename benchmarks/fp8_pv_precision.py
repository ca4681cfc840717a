"""What rounding P costs in ``P V`` over an e4m3 cache: the output's error against the fp32 reference when the
kernel's P is fp16 (the e4m3-product kernel), e4m3, or two e4m3 terms, on FlashMLA's dense-decode inputs.

Usage (CPU or GPU): ``python -m benchmarks.fp8_pv_precision [--device cpu] [--json PATH]``

Why: the e4m3-product kernel decodes the value codes to fp16 in shared memory (64 KB written a 64-key tile) so
that ``P V`` runs on 16-bit tensor cores; its trace and A/B forms (``docs/perf-notes.md`` item 21) put the pace on
those bytes. ``P V`` on the e4m3 tensor cores would read the codes as they are (transposed: 32 KB written), but P
must then be e4m3 too. This emulates the kernel's online softmax tile by tile (64 keys, running max, ``l`` summed
from the unrounded P, as the kernel does) with exact fp32 scores, and rounds only the P that multiplies V:

* ``fp16``: P as fp16 (what the kernel does today);
* ``e4m3``: P rounded to e4m3 as it is (values below 2^-9 flush to zero);
* ``e4m3x256``: P * 256 rounded to e4m3 (the scale folded into 1/l; nothing above 448 after the max is subtracted);
* ``two-terms``: ``hi = e4m3(256 P)`` and ``lo = e4m3(256 P - hi)``, two e4m3 products into one accumulator.

V is the e4m3 codes times ``descale_k``, exactly; products and sums are fp32 (the e4m3 tensor cores' shorter
sums are not modelled: their effect on the scores' LSE is in ``docs/perf-notes.md``). Each mode's output, in
bf16, is checked with FlashMLA's output tolerance (``openmla._harness.OUT_TOLERANCE``).
"""

from __future__ import annotations

import argparse
import json

import torch

MODES = ("fp16", "e4m3", "e4m3x256", "two-terms")
BLOCK_N = 64


def _e4m3(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float8_e4m3fn).float()


def rounded_p(p: torch.Tensor, mode: str) -> torch.Tensor:
    """``p`` (fp32, in [0, 1]) as ``mode`` hands it to ``P V``, in units of p."""
    if mode == "fp16":
        return p.half().float()
    if mode == "e4m3":
        return _e4m3(p)
    if mode == "e4m3x256":
        return _e4m3(p * 256) / 256
    if mode == "two-terms":
        hi = _e4m3(p * 256)
        return (hi + _e4m3(p * 256 - hi)) / 256
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def emulate(inp, mode: str) -> torch.Tensor:
    """The kernel's output [b, s_q, h_q, dv] (bf16) for ``inp`` (e4m3 q and cache, h_kv=1) with P rounded as
    ``mode`` says before ``P V``."""
    q = inp.q.float() * inp.descale_q
    b, s_q, h_q, d = q.shape
    dv = inp.head_dim_v
    page = inp.k_cache.shape[1]
    out = torch.zeros(b, s_q, h_q, dv, dtype=torch.bfloat16, device=q.device)
    for i, n in enumerate(inp.seqlens):
        if n == 0:
            continue
        pages = inp.block_table[i, : (n + page - 1) // page].long()
        k = inp.k_cache[pages].float().reshape(-1, d)[:n] * inp.descale_k  # [n, d]: the codes' values, exact
        rows = q[i].reshape(s_q * h_q, d)
        t = torch.arange(s_q, device=q.device).repeat_interleave(h_q)  # each row's query token
        limit = n - s_q + t if inp.causal else torch.full_like(t, n - 1)  # last key each row may see
        m = torch.full((s_q * h_q,), float("-inf"), device=q.device)
        l_sum = torch.zeros(s_q * h_q, device=q.device)
        acc = torch.zeros(s_q * h_q, dv, device=q.device)
        for lo in range(0, n, BLOCK_N):
            keys = torch.arange(lo, min(lo + BLOCK_N, n), device=q.device)
            s = (rows @ k[keys].T) * inp.softmax_scale
            s = s.masked_fill(keys[None, :] > limit[:, None], float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=1))
            safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
            alpha = torch.exp(m - safe)
            p = torch.exp(s - safe[:, None])
            l_sum = l_sum * alpha + p.sum(dim=1)
            acc = acc * alpha[:, None] + rounded_p(p, mode) @ k[keys, :dv]
            m = m_new
        o = torch.where(l_sum[:, None] > 0, acc / l_sum.clamp_min(1e-30)[:, None], torch.zeros_like(acc))
        out[i] = o.reshape(s_q, h_q, dv).to(torch.bfloat16)
    return out


def main(argv=None) -> None:
    from openmla import reference
    from openmla._harness import (
        OUT_TOLERANCE,
        check_close,
        make_dense_decode_inputs,
        quantize_dense_fp8,
        varlen_seqlens,
    )

    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    results = []
    # FlashMLA's dense-decode shapes, fewer requests (the ratio of a row's mass in tiny probabilities is what
    # matters, and it follows s_k, not b)
    for b, s_q, s_k, h_q in [(4, 1, 4096, 128), (4, 2, 4096, 128), (2, 1, 16384, 128), (4, 1, 8192, 16)]:
        seqlens = varlen_seqlens(b, s_k, s_q, seed=b + s_k)
        inp = quantize_dense_fp8(make_dense_decode_inputs(seqlens, s_q, h_q, 1, 576, 512, 64, torch.bfloat16, True,
                                                          args.device, seed=s_k), fp8_q=True)
        ref_out, _ = reference.flash_mla_with_kvcache(*inp.call_args(), None, softmax_scale=inp.softmax_scale,
                                                      causal=inp.causal, descale_q=inp.descale_q,
                                                      descale_k=inp.descale_k)
        for mode in MODES:
            check = check_close("out", emulate(inp, mode), ref_out, *OUT_TOLERANCE)
            rec = dict(b=b, s_q=s_q, s_k=s_k, h_q=h_q, mode=mode, ok=check.ok, max_abs_err=check.max_abs_err,
                       cos_diff=check.cos_diff, message=check.message)
            results.append(rec)
            print(f"b{b} sq{s_q} sk{s_k} h{h_q} {mode:10s} {check}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
