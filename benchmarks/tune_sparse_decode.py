"""Sweep the Triton sparse-decode kernel's tile configs and split counts beside FlashMLA, in one process.

Usage (GPU): ``python -m benchmarks.tune_sparse_decode [--json PATH] [--quick]``

Shapes: the sparse ``standard`` and ``heads`` sets of :mod:`benchmarks.configs` (V3.2 FP8 cache, s_q=2,
s_k=32k, topk=2048). Each candidate is checked against the fp32 reference with FlashMLA's sparse
tolerances before it is timed (``do_bench`` median, L2 flushed); FlashMLA runs on the same inputs,
heads zero-padded to 64 where it needs them. The default config of each shape is marked ``*``.
"""

from __future__ import annotations

import argparse
import json


def reg_prefetch_candidates(h_q: int):
    """V3.2 FP8 tiles fed otherwise than by the plain pipeliner: the next tile's records gathered into
    registers (``reg_prefetch``, one stage), or the index list read a tile ahead (``idx_ahead``)."""
    from openmla.ops.decode_sparse import SparseDecodeConfig as C

    if h_q > 16:
        return [C(64, 64, 8, 3, 512, idx_ahead=True), C(64, 64, 8, 1, 512, True)]
    return [C(16, 32, 4, 1, 512, True), C(16, 32, 4, 3, 512, idx_ahead=True), C(16, 32, 4, 4, 512, idx_ahead=True)]


def unchained_candidates(h_q: int, is_fp8: bool):
    """The default tile beside 64-row tiles whose warpgroups split the scores by keys and the output by dims
    (``unchained``; P then takes a shared buffer, so the 64-key tile with the list ahead no longer fits three
    stages). Fewer than 64 heads: rows past ``h_q`` masked."""
    from openmla.ops.decode_sparse import SparseDecodeConfig as C
    from openmla.ops.decode_sparse import sparse_decode_config

    ahead = dict(idx_ahead=True, unchained=True)
    return [sparse_decode_config(h_q, 512, 90, is_fp8=is_fp8),
            C(64, 64, 8, 2, 512, **ahead), C(64, 32, 8, 4, 512, **ahead), C(64, 32, 8, 5, 512, **ahead)]


def candidates(h_q: int, is_fp8: bool = False, only_reg_prefetch: bool = False):
    from openmla.ops.decode_sparse import SparseDecodeConfig as C
    from openmla.ops.decode_sparse import sparse_decode_config

    if only_reg_prefetch and not is_fp8:  # 16-bit keys: register prefetch does not apply; the list read ahead
        default = sparse_decode_config(h_q, 512, 90)
        ahead = [C(64, 32, 8, 3, 512, idx_ahead=True), C(64, 32, 8, 4, 512, idx_ahead=True)] if h_q > 16 else \
            [C(16, 32, 4, 3, 512, idx_ahead=True), C(16, 32, 4, 4, 512, idx_ahead=True)]
        return [default] + ahead
    if only_reg_prefetch:
        default = sparse_decode_config(h_q, 512, 90, is_fp8=is_fp8)
        # and the pipelined tile that served before
        former = C(64, 64, 8, 3, 512) if h_q > 16 else C(16, 32, 4, 3, 512)
        return [default] + [c for c in reg_prefetch_candidates(h_q) + [former] if c != default]
    if is_fp8:
        return candidates(h_q) + reg_prefetch_candidates(h_q)
    if h_q > 64:
        return [C(64, 64, 8, 3, 512), C(64, 64, 8, 4, 512), C(64, 64, 8, 2, 512),
                C(64, 32, 8, 4, 512), C(64, 64, 16, 3, 512), C(128, 32, 8, 2, 256)]
    if h_q > 32:
        return [C(64, 32, 4, 2, 256), C(64, 64, 4, 2, 256), C(64, 32, 8, 2, 512), C(64, 64, 8, 2, 512),
                C(64, 32, 4, 3, 256)]
    bm = max(16, 1 << (h_q - 1).bit_length())
    # the last one pads the heads to a 64-row tile (rows past h_q are masked): the 64-head config's speed
    return [C(bm, 32, 4, 3, 512), C(bm, 32, 4, 2, 512), C(bm, 64, 4, 2, 512), C(bm, 64, 8, 2, 512),
            C(64, 64, 8, 3, 512)]


def _time_gluon(cfg, inp, ref, extras, fm_us, card, results, list_ahead=None, output_decode=None,
                loader_regs=None, small_heads=None) -> None:
    """Time the sm_90 Gluon sparse kernel on ``inp`` with ``extras`` (sink, lengths), checked first;
    ``list_ahead``: its loader reading each tile's list entries a tile ahead, ``output_decode``: the output
    warpgroups decoding V3.2 records, ``loader_regs``: the loader partition's registers, ``small_heads``: the
    small-head kernel (at most 16 heads) or the warp-specialized one (``None``: the defaults)."""
    import torch
    import triton

    from openmla._harness import check_sparse_decode
    from openmla.ops.gluon.decode_sparse_sm90 import sparse_decode_sm90_fwd

    def call():
        return sparse_decode_sm90_fwd(inp.q, inp.k_cache, inp.indices, inp.head_dim_v, inp.softmax_scale,
                                      extras.get("topk_length"), is_fp8=inp.is_fp8, attn_sink=extras.get("attn_sink"),
                                      list_ahead=list_ahead, output_decode=output_decode, loader_regs=loader_regs,
                                      small_heads=small_heads)
    out, lse = call()
    torch.cuda.synchronize()
    problems = [str(c) for c in check_sparse_decode(out, lse, *ref) if not c.ok]
    us = triton.testing.do_bench(call, warmup=50, rep=300, return_mode="median") * 1e3
    results.append(dict(op="sparse_decode", backend="gluon", card=card, config=cfg.name, h_q=cfg.h_q, b=cfg.b,
                        openmla_us=us, flash_mla_us=fm_us, ratio=(fm_us / us) if fm_us else None,
                        check=problems or "ok", sink=bool(extras), list_ahead=list_ahead, output_decode=output_decode,
                        loader_regs=loader_regs, small_heads=small_heads))
    form = "" if list_ahead is None else (" list-ahead" if list_ahead else " list-in-step")
    form += "" if output_decode is None else (f" output-decode{output_decode}" if output_decode else " loader-decode")
    form += "" if loader_regs is None else f" loader-regs{loader_regs}"
    form += "" if small_heads is None else (" small-heads" if small_heads else " warp-specialized")
    print(f"{cfg.name} gluon{' sink' if extras else ''}{form}: {us:8.1f} us (FlashMLA {fm_us or 0:7.1f}) "
          f"{'ok' if not problems else problems}", flush=True)


def _gluon_forms(args) -> list[dict]:
    """The Gluon kernel's forms an A/B option asks for, in their order, as :func:`_time_gluon` keywords (empty
    without one)."""
    if args.gluon_small_heads:
        return [dict(small_heads=bool(int(f))) for f in args.gluon_small_heads_order.split(",")]
    if args.gluon_output_decode:
        return [dict(output_decode=int(f)) for f in args.gluon_output_decode_order.split(",")]
    if args.gluon_loader_regs:
        return [dict(loader_regs=int(r)) for r in args.gluon_loader_regs.split(",")]
    if args.gluon_list_ahead:
        return [dict(list_ahead=ahead) for ahead in (False, True, False, True)]
    return []


def main(argv=None) -> None:
    import torch
    import triton

    from benchmarks.configs import get_configs
    from benchmarks.runner import (
        _flash_mla_sparse_call,
        _flash_mla_sparse_heads,
        _flash_mla_sparse_unsupported,
        _load_flash_mla,
        _pad_heads,
    )
    from openmla import reference
    from openmla._harness import check_sparse_decode, make_sparse_decode_inputs, sparse_decode_flops_bytes
    from openmla.ops.decode_sparse import sparse_decode_config, sparse_decode_fwd

    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true", help="the b=64 standard shape and h_q=16 only")
    ap.add_argument("--only", default=None, help="comma-separated config names to run")
    ap.add_argument("--sink", action="store_true",
                    help="time OpenMLA with an attention sink and topk_length (all lists full; the kernel variant "
                         "that serves them), checked against the reference without: the sink is -inf; the sm_90 "
                         "Gluon kernel is timed on the same call first")
    ap.add_argument("--reg-prefetch", action="store_true",
                    help="only the default tile, the tiles fed by register prefetch or with the list read ahead, "
                         "and the plain pipelined tile (one split count)")
    ap.add_argument("--gluon-list-ahead", action="store_true",
                    help="only the sm_90 Gluon kernel, its loader reading each tile's list entries with the tile or a "
                         "tile ahead (list_ahead), alternated twice")
    ap.add_argument("--gluon-output-decode", action="store_true",
                    help="only the sm_90 Gluon kernel over the V3.2 cache, its loader or its output warpgroups "
                         "decoding each tile (output_decode 0, 1), in the order of --gluon-output-decode-order")
    ap.add_argument("--gluon-output-decode-order", default="0,1,1,0",
                    help="with --gluon-output-decode: the output_decode values to time, comma-separated, in order")
    ap.add_argument("--gluon-small-heads", action="store_true",
                    help="only the sm_90 Gluon kernels over the V3.2 cache at most 16 heads: the small-head kernel (1) "
                         "or the warp-specialized one (0), in the order of --gluon-small-heads-order")
    ap.add_argument("--gluon-small-heads-order", default="1,0,1,0",
                    help="with --gluon-small-heads: the forms to time, comma-separated, in order")
    ap.add_argument("--gluon-loader-regs", default=None,
                    help="only the sm_90 Gluon kernel with its default decoder, its loader at these registers in "
                         "this order (comma-separated, e.g. 64,56,56,64)")
    ap.add_argument("--unchained", action="store_true",
                    help="only the default tile and the unchained 64-row tiles (one split count)")
    args = ap.parse_args(argv)
    flash_mla, missing = _load_flash_mla()
    if missing:
        print(missing)
    cfgs = get_configs("standard", op="sparse_decode") + get_configs("heads", op="sparse_decode")
    if args.only:  # the BF16-cache set only when named
        cfgs += get_configs("bf16", op="sparse_decode")
    if args.quick:
        cfgs = [c for c in cfgs if c.name in ("sparse_std_b64", "sparse_heads_h16")]
    if args.only:
        cfgs = [c for c in cfgs if c.name in args.only.split(",")]
    card = torch.cuda.get_device_name()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    results = []
    for cfg in cfgs:
        inp = make_sparse_decode_inputs(cfg.b, cfg.s_q, cfg.h_q, cfg.s_k, cfg.topk, cfg.page_block_size, cfg.kv_format,
                                        cfg.d_qk, cfg.dv, torch.bfloat16, "cuda", cfg.seed, cfg.invalid_frac)
        flops, nbytes = sparse_decode_flops_bytes(cfg.b, cfg.s_q, cfg.h_q, cfg.topk, cfg.d_qk, cfg.dv,
                                                  inp.n_unique_tokens, inp.bytes_per_token, 2)
        ref = reference.flash_mla_with_kvcache(inp.q, inp.k_cache, None, None, inp.head_dim_v, None,
                                               softmax_scale=inp.softmax_scale, indices=inp.indices,
                                               is_fp8_kvcache=inp.is_fp8)
        fm_us = None
        if flash_mla is not None and _flash_mla_sparse_heads(cfg.h_q) and not _flash_mla_sparse_unsupported(cfg):
            fm = _flash_mla_sparse_call(flash_mla, inp, _pad_heads(inp.q, _flash_mla_sparse_heads(cfg.h_q)))
            fm()
            fm_us = triton.testing.do_bench(fm, warmup=50, rep=300, return_mode="median") * 1e3
        extras = {}
        if args.sink:  # a -inf sink scales nothing and full lengths cut nothing: the reference stays valid
            extras = dict(attn_sink=torch.full((cfg.h_q,), float("-inf"), device="cuda"),
                          topk_length=torch.full((cfg.b,), cfg.topk, dtype=torch.int32, device="cuda"))
        if args.sink:  # the Hopper kernel on the same call, for comparison (it takes sinks too)
            _time_gluon(cfg, inp, ref, extras, fm_us, card, results)
        gluon_forms = _gluon_forms(args)
        if gluon_forms:  # only the Gluon kernel, its forms alternated in this process
            for form in gluon_forms:
                _time_gluon(cfg, inp, ref, extras, fm_us, card, results, **form)
            inp = ref = None
            torch.cuda.empty_cache()
            continue
        default = sparse_decode_config(cfg.h_q, cfg.dv, 90, is_fp8=inp.is_fp8)
        tiles = unchained_candidates(cfg.h_q, inp.is_fp8) if args.unchained else \
            candidates(cfg.h_q, inp.is_fp8, args.reg_prefetch)
        for tile in tiles:
            programs = cfg.b * cfg.s_q * -(-cfg.h_q // tile.block_m) * (cfg.dv // tile.dv_tile)
            for splits in ((None,) if args.only or args.reg_prefetch or args.unchained else (None, 1, 2)):
                def call(tile=tile, splits=splits):
                    return sparse_decode_fwd(inp.q, inp.k_cache, inp.indices, inp.head_dim_v, inp.softmax_scale,
                                             is_fp8=inp.is_fp8, config=tile, num_splits=splits, **extras)
                try:
                    out, lse = call()
                    torch.cuda.synchronize()
                    problems = [str(c) for c in check_sparse_decode(out, lse, *ref) if not c.ok]
                    us = triton.testing.do_bench(call, warmup=50, rep=300, return_mode="median") * 1e3
                except Exception as exc:  # keep sweeping past a config that fails to compile
                    print(f"  {cfg.name} {tile} splits={splits}: {type(exc).__name__}: {str(exc)[:300]}")
                    continue
                rec = dict(op="sparse_decode", card=card, config=cfg.name, h_q=cfg.h_q, b=cfg.b, tile=tile.__dict__,
                           programs=programs, splits=splits, sms=sms, openmla_us=us, flash_mla_us=fm_us,
                           ratio=(fm_us / us) if fm_us else None, check=problems or "ok",
                           tflops=flops / us / 1e6, gbps=nbytes / us / 1e3,
                           default=(tile == default and splits is None))
                results.append(rec)
                r = f"{rec['ratio']:.3f}" if rec["ratio"] else "-"
                t = tile
                print(f"{cfg.name} bm{t.block_m} bn{t.block_n} w{t.num_warps} st{t.num_stages} dv{t.dv_tile}"
                      f"{' reg-prefetch' if t.reg_prefetch else ''}"
                      f"{' idx-ahead' if t.idx_ahead else ''}{' unchained' if t.unchained else ''} "
                      f"splits={splits}: {us:8.1f} us (FlashMLA {fm_us or 0:7.1f}) ratio {r} "
                      f"{rec['tflops']:6.1f} TF {rec['gbps']:6.0f} GB/s {'ok' if not problems else problems}"
                      + (" *" if rec["default"] else ""), flush=True)
        inp = ref = None
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
