"""Dense decoding over per-tensor FP8 caches: the portable kernel's tiles beside what serves the call, and
FlashMLA's dense FP8 kernel, on the standard shapes, in one process.

Usage (GPU): ``python -m benchmarks.tune_dense_fp8 [--json PATH] [--max-rows N]``

q and cache are e4m3 codes with per-tensor descales (``amax / 448``; the slots past each length hold code 0
here, as ``openmla bench --dtype fp8`` times them, since FlashMLA's FP8 kernel multiplies the masked tail of a
sequence's last page by a zero probability). Rows timed: ``served`` (``flash_mla_with_kvcache`` as dispatched:
the Gluon kernels on Hopper), the Triton kernel's default FP8 tile (pointer loads, e4m3 decoded in registers),
and its TMA tiles (boxes of codes decoded in registers: the 16-row tile with the block table read a tile
ahead, the unchained 64-row tile), each checked against the fp32 reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from benchmarks.tune_dense_decode import flops_bytes, make_inputs, time_checked


def tma_candidates(rows: int, dv: int):
    from openmla.ops.decode_dense import DenseDecodeConfig as C

    unchained = C(64, 64, 8, 2, dv, tma_k=True, unchained=True, tail_tma=True)
    if rows <= 16:
        rows16 = C(16, 32, 4, 3, dv, tma_k=True, page_ahead=True)
        return [rows16, dataclasses.replace(rows16, tail_tma=True), unchained]
    return [unchained]


def main(argv=None) -> None:
    import triton

    import openmla
    from openmla.kvcache import quantize_fp8_per_tensor
    from openmla.ops.decode_dense import dense_decode_config, dense_decode_fwd
    from openmla.ops.schedule import plan_splitkv

    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--max-rows", type=int, default=None, help="only shapes with at most this many rows")
    ap.add_argument("--min-rows", type=int, default=None, help="only shapes with at least this many rows")
    ap.add_argument("--gluon-list-ahead", action="store_true",
                    help="only the served call, the warp-specialized kernel's loader reading each tile's block-table "
                         "entries with the tile or a tile ahead (list_ahead), alternated twice")
    ap.add_argument("--e4m3-transposed", action="store_true",
                    help="only the served call, the e4m3-product kernel with the padded 64-row output products only "
                         "(TRANSPOSED_MAX_ROWS 0) and with the transposed ones for up to 32 rows (32) with one and "
                         "two P buffers (TRANSPOSED_P_BUFS), alternated twice")
    args = ap.parse_args(argv)
    from openmla.ops.gluon import decode_dense_fp8_sm90 as e4m3_products
    from openmla.ops.gluon import decode_dense_sm90_ws as ws

    try:
        import flash_mla
    except Exception as exc:  # the anchor is optional
        print("flash_mla not importable:", exc)
        flash_mla = None
    shapes = [(128, 1, 8192, 16), (128, 1, 8192, 32), (128, 1, 8192, 64), (128, 1, 8192, 128), (128, 2, 8192, 128),
              (128, 1, 4096, 128)]
    if args.max_rows is not None:
        shapes = [sh for sh in shapes if sh[1] * sh[3] <= args.max_rows]
    if args.min_rows is not None:
        shapes = [sh for sh in shapes if sh[1] * sh[3] >= args.min_rows]
    card = torch.cuda.get_device_name()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    d, dv, h_kv, page = 576, 512, 1, 64
    results = []
    for b, s_q, s_k, h_q in shapes:
        q, k_cache, block_table, lens = make_inputs(b, s_q, s_k, h_q, h_kv, d, dv, page, torch.bfloat16)
        k_cache = torch.nan_to_num(k_cache, nan=0.0)
        descale_k = (k_cache.float().abs().amax() / 448).clamp_min(1e-12).reshape(1)
        descale_q = (q.float().abs().amax() / 448).clamp_min(1e-12).reshape(1)
        k_codes, q_codes = quantize_fp8_per_tensor(k_cache, descale_k), quantize_fp8_per_tensor(q, descale_q)
        scale = d ** -0.5
        ref_out, ref_lse = openmla.reference.dense_decode(q_codes.float() * descale_q, k_codes, block_table, lens,
                                                          dv, scale, True, descale_k=descale_k)
        flops, nbytes = flops_bytes(lens.cpu(), s_q, h_q, h_kv, d, dv)
        nbytes = nbytes - float(lens.sum()) * h_kv * d  # one byte a cached element
        rows = s_q * h_q // h_kv
        fm_us = None
        if flash_mla is not None:
            sched, _ = flash_mla.get_mla_metadata()
            sched.tile_scheduler_metadata, sched.num_splits = flash_mla.get_mla_decoding_metadata(
                lens, rows, h_kv, is_fp8_kvcache=True, use_legacy=True)
            fm = lambda: flash_mla.flash_mla_with_kvcache(  # noqa: E731
                q_codes, k_codes, block_table, lens, dv, sched, None, softmax_scale=scale, causal=True,
                is_fp8_kvcache=True, descale_q=descale_q, descale_k=descale_k, use_legacy=True)
            fm()
            fm_us = triton.testing.do_bench(fm, warmup=50, rep=300, return_mode="median") * 1e3
        meta, _ = openmla.get_mla_metadata()
        served = lambda: openmla.flash_mla_with_kvcache(  # noqa: E731
            q_codes, k_codes, block_table, lens, dv, meta, None, softmax_scale=scale, causal=True,
            is_fp8_kvcache=True, descale_q=descale_q, descale_k=descale_k)
        runs = [("served", None, served)]
        # A/Bs of module defaults, each form with a schedule object of its own: a call's kernel choice is recorded
        # and replayed per schedule object and signature (openmla.replay), and module defaults are not in the
        # signature, so forms sharing one object would all replay the first form's kernel
        def with_form(module, knobs, form):
            form_meta = openmla.get_mla_metadata()[0]

            def call():
                saved = [getattr(module, k) for k in knobs]
                for k, v in zip(knobs, form):
                    setattr(module, k, v)
                try:
                    return openmla.flash_mla_with_kvcache(
                        q_codes, k_codes, block_table, lens, dv, form_meta, None, softmax_scale=scale, causal=True,
                        is_fp8_kvcache=True, descale_q=descale_q, descale_k=descale_k)
                finally:
                    for k, v in zip(knobs, saved):
                        setattr(module, k, v)
            return call

        if args.gluon_list_ahead:
            calls = {a: with_form(ws, ("LIST_AHEAD",), (a,)) for a in (False, True)}
            runs = [(f"served list-ahead={a}", None, calls[a]) for a in (False, True, False, True)]
        if args.e4m3_transposed:
            forms = [(0, 1), (32, 1), (32, 2)]
            calls = {f: with_form(e4m3_products, ("TRANSPOSED_MAX_ROWS", "TRANSPOSED_P_BUFS"), f) for f in forms}
            runs = [(f"served transposed<={f[0]} p-bufs={f[1]}", None, calls[f]) for f in forms + forms]
        served_only = args.gluon_list_ahead or args.e4m3_transposed
        for cfg in [] if served_only else [dense_decode_config(rows, d, dv, 90)] + tma_candidates(rows, dv):
            programs = h_kv * -(-rows // cfg.block_m) * (dv // cfg.dv_tile)
            per_sm = 2 if cfg.block_m <= 32 and cfg.layout == "rows" and cfg.num_stages <= 3 else 1
            sched_t, splits = plan_splitkv(lens, max(sms * per_sm // programs, 1))
            runs.append(("triton", cfg, lambda cfg=cfg, sched_t=sched_t, splits=splits: dense_decode_fwd(
                q_codes, k_codes, block_table, lens, dv, sched_t, splits, scale, True, config=cfg,
                descale_q=descale_q, descale_k=descale_k)))
        for kind, cfg, call in runs:
            timed = time_checked(call, ref_out, ref_lse, f"{kind} {cfg}")
            if timed is None:
                continue
            us, err, lse_err = timed
            rec = dict(op="dense_decode", dtype="fp8", backend=kind, card=card, b=b, s_q=s_q, s_k=s_k, h_q=h_q,
                       config=cfg.__dict__ if cfg else None, openmla_us=us, flash_mla_us=fm_us,
                       ratio=(fm_us / us) if fm_us else None, max_abs_err=err, lse_err=lse_err,
                       tflops=flops / us / 1e6, gbps=nbytes / us / 1e3)
            results.append(rec)
            forms = "" if cfg is None else "".join(
                f" {name}" for name, key in (("tma", "tma_k"), ("unchained", "unchained"), ("page-ahead", "page_ahead"),
                                             ("tail-tma", "tail_tma")) if getattr(cfg, key))
            tile = "" if cfg is None else f" bm{cfg.block_m} bn{cfg.block_n} w{cfg.num_warps} s{cfg.num_stages}"
            r = f"{rec['ratio']:.3f}" if rec["ratio"] else "-"
            print(f"fp8 b{b} sq{s_q} sk{s_k} h{h_q} {kind}{forms}{tile}: {us:8.1f} us vs FlashMLA "
                  f"{fm_us or 0:8.1f} ratio {r} {rec['tflops']:6.1f} TF {rec['gbps']:7.1f} GB/s err {err:.2e} "
                  f"lse {lse_err:.1e}", flush=True)
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
