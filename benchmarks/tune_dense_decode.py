"""Sweep the Triton dense-decode kernel's configs on the standard shapes, beside FlashMLA, in one process.

Usage (GPU): ``python -m benchmarks.tune_dense_decode [--json PATH] [--quick]``

For each shape it builds one set of inputs (FlashMLA's test recipe: varlen, NaN past each length,
random page permutation), checks every candidate against FlashMLA's output (or the fp32 reference
when FlashMLA is absent), and times the whole decode call with ``triton.testing.do_bench`` (median),
metadata planned once outside the timing as serving loops do. Prints a table; ``--json`` keeps it.
"""

from __future__ import annotations

import argparse
import json

import torch


def make_inputs(b, s_q, s_k, h_q, h_kv, d, dv, page, dtype, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    lens = torch.normal(float(s_k), s_k / 2, (b,), generator=g).round().clamp(s_q, 2 * s_k).to(torch.int32)
    max_blocks = (int(lens.max()) + page - 1) // page
    num_blocks = b * max_blocks
    q = (torch.randn(b, s_q, h_q, d, generator=g) / 10).clamp(-1, 1).to(dtype).cuda()
    k_cache = (torch.randn(num_blocks, page, h_kv, d, generator=g) / 10).clamp(-1, 1).to(dtype).cuda()
    block_table = torch.randperm(num_blocks, generator=g).view(b, max_blocks).to(torch.int32).cuda()
    for i in range(b):
        n = int(lens[i])
        used = (n + page - 1) // page
        last = block_table[i, used - 1]
        if n % page:
            k_cache[last, n % page :] = float("nan")
        k_cache[block_table[i, used:].long()] = float("nan")
    return q, k_cache, block_table, lens.cuda()


def flops_bytes(lens, s_q, h_q, h_kv, d, dv):
    total = float(lens.sum())
    b = lens.numel()
    flops = 2.0 * h_q * s_q * total * (d + dv)
    nbytes = total * h_kv * d * 2 + b * s_q * h_q * (d + dv) * 2
    return flops, nbytes


def time_checked(call, ref_out, ref_lse, what: str):
    """``(us, max |out - ref_out|, max |lse - ref_lse|)`` of ``call`` (do_bench median), or None after printing
    why a candidate that fails to compile or launch is skipped (the sweep goes on)."""
    import triton

    try:
        out, lse = call()
        torch.cuda.synchronize()
        err = (out.float() - ref_out.float()).abs().max().item()
        lse_err = (lse - ref_lse).abs().max().item()
        return triton.testing.do_bench(call, warmup=50, rep=300, return_mode="median") * 1e3, err, lse_err
    except Exception as exc:  # noqa: BLE001 - keep sweeping past a config that fails to compile
        print(f"  {what}: {type(exc).__name__}: {str(exc)[:300]}")
        return None


def candidates(rows):
    from openmla.ops.decode_dense import DenseDecodeConfig as C

    # 64-row tiles on two warpgroups holding the whole output, scores computed once (``unchained``)
    # (rows past the heads masked: the small-row tiles' mma.sync needs all of Q in every warp's registers)
    unchained = [C(64, 32, 8, 2, 512, tma_k=True, unchained=True), C(64, 64, 8, 2, 512, tma_k=True, unchained=True),
                 C(64, 32, 8, 3, 512, tma_k=True, unchained=True, page_ahead=True),
                 C(64, 32, 8, 2, 512, unchained=True)]
    if rows <= 16:  # the small-row TMA tile with the block table read a tile ahead (two and three K buffers)
        unchained += [C(16, 32, 4, 3, 512, tma_k=True, page_ahead=True),
                      C(16, 32, 4, 4, 512, tma_k=True, page_ahead=True)]
    tma = [C(128, 32, 8, 2, 256, tma_k=True)] if rows > 64 else [C(64, 32, 4, 2, 256, tma_k=True)] if rows > 32 \
        else [C(16, 64, 4, 2, 512, tma_k=True), C(16, 32, 4, 3, 512, tma_k=True)] if rows <= 16 \
        else [C(32, 64, 4, 2, 512, tma_k=True)]  # whole K tiles by TMA (the default tiles' shapes)
    if rows > 64:
        return [C(128, 32, 8, 2, 256), C(128, 32, 8, 3, 256), C(128, 64, 8, 2, 256), C(128, 16, 8, 3, 256),
                C(64, 32, 4, 2, 256), C(64, 64, 4, 2, 256), C(64, 32, 8, 2, 512)] + tma + unchained
    if rows > 32:
        return [C(64, 32, 4, 2, 256), C(64, 64, 4, 2, 256), C(64, 32, 4, 3, 256), C(64, 32, 8, 2, 512),
                C(64, 16, 4, 3, 512)] + tma + unchained
    bm = max(16, 1 << (rows - 1).bit_length())
    if bm == 16:
        return [C(16, 64, 4, 2, 512), C(16, 64, 8, 2, 512), C(16, 64, 4, 3, 512), C(16, 128, 4, 2, 512),
                C(16, 64, 4, 2, 512, "tokens")] + tma + unchained
    return [C(32, 64, 8, 2, 512, "tokens"), C(32, 64, 4, 2, 512, "tokens"), C(32, 64, 4, 2, 512),
            C(32, 64, 8, 2, 512), C(32, 32, 4, 3, 512)] + tma + unchained


def main(argv=None):
    import triton

    import openmla
    from openmla.ops.decode_dense import dense_decode_config, dense_decode_fwd, num_sm_parts_for
    from openmla.ops.schedule import plan_splitkv

    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--triton-only", action="store_true")
    ap.add_argument("--gluon-only", action="store_true")
    ap.add_argument("--max-rows", type=int, default=None, help="only shapes with at most this many rows per KV head")
    ap.add_argument("--kinds", default=None,
                    help="comma-separated kernel kinds to run (e.g. gluon-ws-pvfirst,gluon-ws-softmax-only); default all")
    ap.add_argument("--min-rows", type=int, default=None, help="only shapes with at least this many rows per KV head")
    ap.add_argument("--tma-ab", action="store_true",
                    help="portable kernel only: the default tile beside the whole-tile TMA candidates, nothing else")
    ap.add_argument("--unchained-ab", action="store_true",
                    help="portable kernel only: the default tile beside the unchained candidates, nothing else")
    ap.add_argument("--tail-ab", action="store_true",
                    help="portable kernel only: the default tile beside the same tile with its tail tiles by TMA")
    args = ap.parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    try:
        import flash_mla
    except Exception as exc:  # the anchor is optional
        print("flash_mla not importable:", exc)
        flash_mla = None
    shapes = [(128, 1, 4096, 128), (128, 1, 8192, 128), (128, 1, 16384, 128), (128, 2, 4096, 128),
              (128, 2, 8192, 128), (128, 2, 16384, 128), (128, 1, 8192, 16), (128, 1, 8192, 32),
              (128, 1, 8192, 64), (128, 2, 8192, 16)]
    if args.quick:
        shapes = [shapes[1], shapes[4], shapes[6], shapes[7], shapes[9]]
    if args.max_rows is not None:
        shapes = [sh for sh in shapes if sh[1] * sh[3] <= args.max_rows]  # h_kv = 1
    if args.min_rows is not None:
        shapes = [sh for sh in shapes if sh[1] * sh[3] >= args.min_rows]
    card = torch.cuda.get_device_name()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    results = []
    d, dv, h_kv, page = 576, 512, 1, 64
    for b, s_q, s_k, h_q in shapes:
        q, k_cache, block_table, lens = make_inputs(b, s_q, s_k, h_q, h_kv, d, dv, page, dtype)
        scale = 192 ** -0.5
        flops, nbytes = flops_bytes(lens.cpu(), s_q, h_q, h_kv, d, dv)
        ref_out = None
        fm_us = None
        if flash_mla is not None:
            sched, _ = flash_mla.get_mla_metadata()
            fm = lambda: flash_mla.flash_mla_with_kvcache(  # noqa: E731
                q, k_cache, block_table, lens, dv, sched, softmax_scale=scale, causal=True, use_legacy=True)
            ref_out, ref_lse = fm()
            fm_us = triton.testing.do_bench(fm, warmup=50, rep=300, return_mode="median") * 1e3
        if ref_out is None:
            ref_out, ref_lse = openmla.reference.dense_decode(q, k_cache, block_table, lens, dv, scale, True)
        rows = s_q * h_q // h_kv
        default = dense_decode_config(rows, d, dv, 90, tma_keys=64)  # this page-64, one-KV-head cache: 64-key TMA tiles
        default_parts = num_sm_parts_for(rows, h_kv, sms, dv, arch=90)  # the plan the new metadata API makes
        runs = [("gluon", None, m) for m in (1, 2)] if not args.triton_only else []
        if not args.triton_only and rows > 32:  # the warp-specialized kernel, both softmax orders
            runs += [("gluon-ws-pvfirst", None, 1), ("gluon-ws-overlap", None, 1), ("gluon-ws-pvfirst-waits", None, 1),
                     ("gluon-ws-softmax-only", None, 1), ("gluon-ws-pvfirst-tma", None, 1),
                     ("gluon-ws-softmax-only-tma", None, 1)]
            # on both warpgroup splits: "+box" one ready barrier per TMA box, "+ld64" the loader at 64 registers
            # "+allocs": each box's ready barriers in an allocation of their own (box_allocs)
            runs += [(f"gluon-ws-{form}-tma{extra}", None, 1) for form in ("pvfirst", "softmax-only")
                     for extra in ("+box", "+box+ld64", "+box+allocs")]
        if not args.triton_only and rows <= 32:  # the small-head layout beside the 64-row one
            # the warp-specialized 64-row kernel's default form, rows past ``rows`` masked
            runs.append(("gluon-ws-softmax-only-tma+box", None, 1))
            runs.append(("gluon-tokens", None, 1))
            runs.append(("gluon-tokens-cpasync", None, 1))  # K tiles by cp.async where TMA could bring them
            if rows > 16:  # 32 rows: one warpgroup (R=32 per wgmma) beside two (16 each)
                runs += [("gluon-tokens-1wg", None, 1), ("gluon-tokens-2wg", None, 1)]
        cands = candidates(rows)
        if args.tma_ab:
            runs, cands = [], [default] + [c for c in cands if c.tma_k]
        if args.unchained_ab:
            runs, cands = [], [default] + [c for c in cands if c.unchained or c.page_ahead]
        if args.tail_ab:
            import dataclasses

            runs, cands = [], [default, dataclasses.replace(default, tail_tma=True)]
        runs += [] if args.gluon_only else [
            ("triton", cfg, m) for cfg in cands
            for m in ((1, 2, 3) if cfg == default and not args.tail_ab
                      else (1, 2, 3) if cfg.block_m <= 32 and cfg.layout == "rows" else (1,))]
        if args.kinds:
            runs = [r for r in runs if r[0] in args.kinds.split(",")]
        for kind, cfg, parts_mult in runs:
            if kind.startswith("gluon-ws"):
                from openmla.ops.gluon.decode_dense_sm90_ws import dense_decode_sm90_ws_fwd

                parts = max(sms // (h_kv * -(-rows // 64)), 1)
                sched_t, splits = plan_splitkv(lens, parts)
                overlap, async_arrive, solo = "overlap" in kind, "waits" not in kind, "softmax-only" in kind
                call = lambda: dense_decode_sm90_ws_fwd(  # noqa: E731
                    q, k_cache, block_table, lens, dv, sched_t, splits, scale, True, overlap=overlap,
                    async_arrive=async_arrive, softmax_only=solo, tma_k="-tma" in kind, box_ready="+box" in kind,
                    loader_regs=64 if "+ld64" in kind else None, box_allocs="+allocs" in kind)
            elif kind == "gluon-tokens-cpasync":
                from openmla.ops.gluon.decode_dense_sm90_small_heads import dense_decode_sm90_small_heads_fwd

                parts = max(sms // h_kv, 1)
                sched_t, splits = plan_splitkv(lens, parts)
                call = lambda: dense_decode_sm90_small_heads_fwd(  # noqa: E731
                    q, k_cache, block_table, lens, dv, sched_t, splits, scale, True, fused_combine=False, tma_k=False)
            elif kind.startswith("gluon"):
                from openmla.ops.gluon.decode_dense_sm90 import dense_decode_sm90_fwd

                layout = "tokens" if kind.startswith("gluon-tokens") else "rows"
                wgs = {"gluon-tokens-1wg": 1, "gluon-tokens-2wg": 2}.get(kind)
                parts = max(sms * parts_mult // (h_kv * -(-rows // 64)), 1)
                sched_t, splits = plan_splitkv(lens, parts)
                call = lambda: dense_decode_sm90_fwd(  # noqa: E731
                    q, k_cache, block_table, lens, dv, sched_t, splits, scale, True, layout=layout, warpgroups=wgs,
                    fused_combine=False)
            else:
                programs = h_kv * -(-rows // cfg.block_m) * (dv // cfg.dv_tile)
                parts = max(sms * parts_mult // programs, 1)
                sched_t, splits = plan_splitkv(lens, parts)
                call = lambda: dense_decode_fwd(  # noqa: E731
                    q, k_cache, block_table, lens, dv, sched_t, splits, scale, True, config=cfg)
            timed = time_checked(call, ref_out, ref_lse, f"{kind} {cfg}")
            if timed is None:
                continue
            us, err, lse_err = timed
            cfg_d = cfg.__dict__ if cfg else {"block_m": 64, "block_n": 64, "num_warps": 8, "num_stages": 2,
                                              "dv_tile": 512}
            if kind.startswith("gluon-ws"):  # 4 softmax + 4 output (+ 4 more when softmax-only) + 4 loader warps
                cfg_d = {"block_m": 64, "block_n": 64, "num_warps": 16 if "softmax-only" in kind else 12,
                         "num_stages": 2, "dv_tile": 512,
                         "layout": kind[len("gluon-"):]}
            if kind.startswith("gluon-tokens"):  # KV tokens on the 64-row side, query rows on the 16/32 side
                from openmla.ops.gluon.decode_dense_sm90_small_heads import rows_tile, warpgroups_for

                warps = {"gluon-tokens-1wg": 4, "gluon-tokens-2wg": 8}.get(kind, 4 * warpgroups_for(rows_tile(rows)))
                cfg_d = {"block_m": 16 if rows <= 16 else 32, "block_n": 64, "num_warps": warps,
                         "num_stages": 2, "dv_tile": 512, "layout": "tokens"}
            rec = dict(op="dense_decode", backend=kind, card=card, b=b, s_q=s_q, s_k=s_k, h_q=h_q, config=cfg_d,
                       parts=parts, openmla_us=us, flash_mla_us=fm_us,
                       ratio=(fm_us / us) if fm_us else None, max_abs_err=err, lse_err=lse_err,
                       tflops=flops / us / 1e6, gbps=nbytes / us / 1e3,
                       default=(cfg == default and parts == default_parts))
            results.append(rec)
            r = f"{rec['ratio']:.3f}" if rec["ratio"] else "-"
            fm_s = f"{fm_us:8.1f}" if fm_us else "       -"
            c = cfg_d
            forms = "".join(f" {name}" for name, key in (("tma", "tma_k"), ("unchained", "unchained"),
                                                         ("page-ahead", "page_ahead"), ("tail-tma", "tail_tma"))
                            if c.get(key))
            print(f"b{b} sq{s_q} sk{s_k} h{h_q} {kind} {c.get('layout', 'rows')}{forms} bm{c['block_m']} "
                  f"bn{c['block_n']} w{c['num_warps']} "
                  f"st{c['num_stages']} dv{c['dv_tile']} parts{parts}: {us:8.1f} us vs FlashMLA {fm_s} ratio {r} "
                  f"{rec['tflops']:6.1f} TF {rec['gbps']:7.1f} GB/s err {err:.2e} lse {lse_err:.1e}"
                  + (" *" if rec["default"] else ""), flush=True)
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    best = {}
    for r in results:
        key = (r["b"], r["s_q"], r["s_k"], r["h_q"])
        if key not in best or r["openmla_us"] < best[key]["openmla_us"]:
            best[key] = r
    print(f"\nbest per shape on {card}:")
    for key, r in best.items():
        print(key, r["backend"], r["config"], r["parts"], f"{r['openmla_us']:.1f} us ratio {r['ratio']}")


if __name__ == "__main__":
    main()
