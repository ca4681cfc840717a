"""GPU time per kernel of a dense decode call, OpenMLA's beside FlashMLA's, on the same inputs (torch.profiler).

Usage (GPU): ``python -m benchmarks.kernel_times [--configs small,ragged] [--calls 50] [--json PATH]
[--only NAMES] [--openmla-only] [--combine-chunks N] [--combine-eager N] [--combine-warps N] [--cuda-graph]
[--flush-l2]``, or for sparse decoding ``--sparse --configs heads [--sparse-parts N]``

``openmla bench`` times a whole call; for small batches that mixes the split kernel, the combine kernel and the
gaps between launches. Here each provider's call runs ``--calls`` times (after a warm-up, so OpenMLA's calls
replay) under :mod:`torch.profiler`, and every kernel it launched is listed with its mean GPU time per call and
its launches per call, so one can tell which kernel a gap is in; the span from the first kernel's start to the
last one's end, per call, adds the GPU's idle time between them (launch gaps). Kernel names are the profiler's (Triton's
kernel function names; FlashMLA's CUDA kernel names, shortened). ``--combine-chunks N`` has the combine kernel
spread each row tile's output dims over ``N`` programs whatever :func:`openmla.ops.combine.combine_col_chunks`
would pick (for comparing its choices in one process); ``--combine-eager`` and ``--combine-warps`` set
:data:`~openmla.ops.combine.COMBINE_EAGER_SPLITS` and :data:`~openmla.ops.combine.COMBINE_NUM_WARPS`. ``--flush-l2`` zeroes a 256 MB buffer before each call, as
``openmla bench`` (``triton.testing.do_bench``) does, so each call starts with a cold L2 as it does there; the
flush's own kernel is left out of the listing and of the spans (a call's span then runs from its first kernel's
start to its last one's end, after the flush).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def kernel_times(fn, calls: int, flush=None) -> tuple[dict[str, tuple[float, float]], float]:
    """``{kernel name: (mean µs per call, launches per call)}`` of ``fn``'s GPU kernels over ``calls`` calls, and
    the µs per call from the first kernel's start to the last one's end (the calls run back to back, so this is
    the kernels plus the GPU's idle time between them). ``flush``: a callable run before each call (an L2
    flush); its kernels are told apart by name (profiled alone first) and left out, and the span is then the
    mean over calls of each call's own first start to last end."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    def gpu_events(prof):
        return [ev for ev in prof.events()
                if ev.device_type == torch.autograd.DeviceType.CUDA and ev.device_time > 0]

    flush_names = set()
    if flush is not None:
        flush()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            flush()
            torch.cuda.synchronize()
        flush_names = {ev.name for ev in gpu_events(prof)}
    for _ in range(5):
        if flush is not None:
            flush()
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            if flush is not None:
                flush()
            fn()
        torch.cuda.synchronize()
    total, count = defaultdict(float), defaultdict(int)
    spans, first, last = [], float("inf"), 0.0
    for ev in sorted(gpu_events(prof), key=lambda e: e.time_range.start):
        if ev.name in flush_names:  # a flush ends the call before it
            if last > first:
                spans.append(last - first)
            first, last = float("inf"), 0.0
            continue
        name = ev.name.split("(")[0][:60]
        total[name] += ev.device_time
        count[name] += 1
        first, last = min(first, ev.time_range.start), max(last, ev.time_range.end)
    if flush is None:
        span = (last - first) / calls if last > first else float("nan")
    else:
        if last > first:
            spans.append(last - first)
        span = sum(spans) / len(spans) if spans else float("nan")
    return {name: (total[name] / calls, count[name] / calls) for name in total}, span


def _shape_config(shape: str):
    """A ``--shapes`` entry, ``b:s_k`` or ``b:s_k:s_q``, as a fixed-length h_q=128 dense config (causal past one
    query token); named ``b{b}_sk{s_k}`` with ``_sq{s_q}`` past one."""
    from benchmarks.configs import DecodeConfig

    try:
        fields = [int(x) for x in shape.split(":")]
    except ValueError:
        fields = []
    if len(fields) not in (2, 3) or min(fields) < 1:
        raise SystemExit(f"--shapes: {shape!r} is not b:s_k or b:s_k:s_q of positive integers")
    b, s_k, s_q = (*fields, 1) if len(fields) == 2 else fields
    return DecodeConfig(f"b{b}_sk{s_k}" + (f"_sq{s_q}" if s_q > 1 else ""), b=b, s_q=s_q, s_k=s_k, h_q=128,
                        varlen=False, causal=s_q > 1)


def _plan_shape(call) -> str | None:
    """``pieces P, splits a request at most S`` of the schedule an OpenMLA call ran (its ``FlashMLASchedMeta`` once
    planned, or its old-form tensors), or None before it is planned: tells which plan the timed calls ran (small
    batches' plans are cut at MAX_SPLITS pieces a request only where the planning call may fuse its merge)."""
    meta, plan = getattr(call, "sched", None), getattr(call, "plan", None)
    if plan is None and meta is not None and getattr(meta, "have_initialized", False):
        plan = meta.tile_scheduler_metadata, meta.num_splits
    if plan is None or plan[1] is None:
        return None
    sched, splits = plan
    most = int((splits[1:] - splits[:-1]).max())
    return f"pieces {sched.shape[0]}, splits a request at most {most}"


def _off(_flag):
    return False


def _fixed_chunks(n: int):
    if n < 1 or n & (n - 1):
        raise SystemExit(f"--combine-chunks: {n}; give a power of two, 1 or more")
    return lambda row_programs, d_v, device: n


_WS = "openmla.ops.gluon.decode_dense_sm90_ws"
_SPARSE = "openmla.ops.gluon.decode_sparse_sm90"
#: What each A/B flag sets: (flag's dest, label in the timing lines, module, attribute, the attribute's value from the
#: flag's, None: the flag's own). A flag left at its default (None, or False for a switch) sets nothing.
DENSE_KNOBS = (
    ("combine_chunks", "combine chunks", "openmla.ops.combine", "combine_col_chunks", _fixed_chunks),
    ("combine_eager", "combine eager", "openmla.ops.combine", "COMBINE_EAGER_SPLITS", None),
    ("combine_warps", "combine warps", "openmla.ops.combine", "COMBINE_NUM_WARPS", None),
    ("masked_softmax", "masked softmax", _WS, "INTERIOR_SOFTMAX", _off),
    ("p_whole", "P whole", _WS, "P_HALVES", _off),
    ("lag_min_rows", "lag from rows", _WS, "LAG_MIN_ROWS", None),
    ("lag_box_a_chunk", "lag box a chunk", _WS, "LAG_HALVES", _off),
    ("fused_max_batch", "fused to b", "openmla.ops.combine", "FUSED_MAX_BATCH", None),
    ("old_form_bounded", "old-form plans bounded", "openmla.metadata", "UNBOUND_REPLAYED_OLD_FORM", _off),
    ("segment_plan_max_batch", "segment plan to b", "openmla.metadata", "SEGMENT_PLAN_MAX_BATCH", None),
    ("plan_overhead", "plan overhead", "openmla.metadata", "DENSE_PLAN_OVERHEAD", None),
)
SPARSE_KNOBS = (
    ("sparse_plan_overhead", "plan overhead", _SPARSE, "PLAN_OVERHEAD", None),
    ("sparse_splits_cap", "splits cap", _SPARSE, "SPLITS_CAP", lambda cap: cap or None),
    ("sparse_rows32_min_tiles", "32-row build from tiles", _SPARSE, "ROWS32_MIN_PIECE_TILES", None),
)


def set_knobs(cli, knobs) -> str:
    """Set the module attribute of each of ``knobs`` whose flag ``cli`` gives; returns the form's label
    (`` label value`` for each, in the table's order; empty when none is given)."""
    import importlib

    form = ""
    for dest, label, module, attribute, value_of in knobs:
        value = getattr(cli, dest)
        if value is None or value is False:
            continue
        setattr(importlib.import_module(module), attribute, value if value_of is None else value_of(value))
        form += f" {label} {value}"
    return form


def main(argv=None) -> None:
    import torch

    from benchmarks.configs import get_configs
    from benchmarks.runner import _flash_mla_call, _graphed, _load_flash_mla, _openmla_call, _openmla_old_form_call
    from openmla._harness import make_dense_decode_inputs, parse_dtype

    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="small,ragged")
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--shapes", default=None,
                    help="instead of --configs: dense h_q=128 calls of fixed lengths, 'b:s_k' (s_q=1) or "
                         "'b:s_k:s_q' (causal) separated by commas (e.g. 64:64,64:512,32:512:4), to time what a call "
                         "costs beyond its tiles")
    ap.add_argument("--json")
    ap.add_argument("--only", default=None,
                    help="comma-separated config names: time only these (e.g. one config under a profiler)")
    ap.add_argument("--openmla-only", action="store_true", help="time OpenMLA's calls only")
    ap.add_argument("--combine-chunks", type=int, default=None,
                    help="programs sharing a row tile's output dims in the combine kernel (a power of two)")
    ap.add_argument("--cuda-graph", action="store_true", help="time replays of each call captured in a CUDA graph")
    ap.add_argument("--combine-eager", type=int, default=None,
                    help="most splits the combine kernel merges in one round trip (COMBINE_EAGER_SPLITS: 0 or 4)")
    ap.add_argument("--combine-warps", type=int, default=None, help="warps of a combine program (COMBINE_NUM_WARPS)")
    ap.add_argument("--masked-softmax", action="store_true",
                    help="the Hopper dense kernel's softmax masks every tile (INTERIOR_SOFTMAX off)")
    ap.add_argument("--lag-min-rows", type=int, default=None,
                    help="query rows per KV head from which the Hopper dense kernel's right output warpgroup runs a "
                         "tile behind the left one (LAG_MIN_ROWS; 0: always, 1000000: never)")
    ap.add_argument("--lag-box-a-chunk", action="store_true",
                    help="with the right output warpgroup a tile behind, a TMA box per 64-column chunk rather than "
                         "one per value half (LAG_HALVES off)")
    ap.add_argument("--p-whole", action="store_true",
                    help="the Hopper dense kernel hands each tile's P over whole (P_HALVES off)")
    ap.add_argument("--old-form", action="store_true",
                    help="OpenMLA's calls take the old metadata form (get_mla_metadata(cache_seqlens, ...) tensors, "
                         "as SGLang passes them) instead of a FlashMLASchedMeta")
    ap.add_argument("--old-form-bounded", action="store_true",
                    help="old-form plans of small batches cut at MAX_SPLITS pieces a request even while calls replay "
                         "(UNBOUND_REPLAYED_OLD_FORM of openmla.metadata off: the policy before)")
    ap.add_argument("--fused-max-batch", type=int, default=None,
                    help="largest batch whose eager calls merge partials in the split kernel, and whose plans cut a "
                         "request into at most MAX_SPLITS pieces for it (FUSED_MAX_BATCH of openmla.ops.combine; "
                         "0: no call fuses, no plan is bounded)")
    ap.add_argument("--segment-plan-max-batch", type=int, default=None,
                    help="largest batch the dense plan cuts with plan_segments rather than the closed form "
                         "(SEGMENT_PLAN_MAX_BATCH of openmla.metadata; 0: never)")
    ap.add_argument("--plan-overhead", type=int, default=None,
                    help="KV blocks the dense plan charges a request on top of its own (DENSE_PLAN_OVERHEAD of "
                         "openmla.metadata; default 5)")
    ap.add_argument("--flush-l2", action="store_true",
                    help="zero a 256 MB buffer before each call (a cold L2, as openmla bench times calls)")
    ap.add_argument("--sparse", action="store_true",
                    help="sparse decoding (indices=...): --configs names sparse sets (standard, heads, small, bf16), "
                         "FlashMLA on q padded to its head counts")
    ap.add_argument("--sparse-plan-overhead", type=int, default=None,
                    help="with --sparse: units the Hopper kernels' split-KV plan charges a list beyond its blocks "
                         "(PLAN_OVERHEAD of openmla.ops.gluon.decode_sparse_sm90)")
    ap.add_argument("--sparse-rows32-min-tiles", type=int, default=None,
                    help="with --sparse: at 17-32 heads the small-head kernel's 32-row build serves calls whose pieces "
                         "walk at least this many tiles (ROWS32_MIN_PIECE_TILES of "
                         "openmla.ops.gluon.decode_sparse_sm90; 0: every call, 1000000: none)")
    ap.add_argument("--sparse-splits-cap", type=int, default=None,
                    help="with --sparse: most pieces the Hopper kernels' plan cuts a list into (SPLITS_CAP of "
                         "openmla.ops.gluon.decode_sparse_sm90; 0: no cap)")
    ap.add_argument("--sparse-parts", type=int, default=None,
                    help="with --sparse: pieces of the Hopper kernels' split-KV plan (num_sm_parts) instead of the "
                         "launcher's count")
    cli = ap.parse_args(argv)
    if cli.plan_overhead is not None and cli.plan_overhead < 0:
        raise SystemExit(f"--plan-overhead: {cli.plan_overhead} blocks; the plan charges a request 0 or more")
    if cli.sparse:
        dense_only = [flag for flag, value in (("--shapes", cli.shapes), ("--plan-overhead", cli.plan_overhead),
                                               ("--old-form", cli.old_form or None),
                                               ("--old-form-bounded", cli.old_form_bounded or None))
                      if value is not None]
        if dense_only:
            raise SystemExit(f"{', '.join(dense_only)}: dense decoding only, not with --sparse (the sparse plan's "
                             f"charge is --sparse-plan-overhead)")
        return _sparse_main(cli)
    only = None if cli.only is None else set(cli.only.split(","))
    if only is not None and not cli.shapes:
        known = {cfg.name for group in cli.configs.split(",") for cfg in get_configs(group, None, "dense_decode")}
        if only - known:
            raise SystemExit(f"--only names no config of --configs {cli.configs}: {', '.join(sorted(only - known))}; "
                             f"known: {', '.join(sorted(known))}")
    form = set_knobs(cli, DENSE_KNOBS)
    flash_mla, missing = _load_flash_mla()
    card = torch.cuda.get_device_name()
    flush = None
    if cli.flush_l2:
        scratch = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device="cuda")
        flush = scratch.zero_
    print(f"GPU time per call by kernel on {card} (mean of {cli.calls} calls"
          + (", L2 flushed before each)" if flush else ")"))
    results = []
    groups = [get_configs(group, None, "dense_decode") for group in cli.configs.split(",")]
    if cli.shapes:
        groups = [[_shape_config(shape) for shape in cli.shapes.split(",")]]
    for group in groups:
        for cfg in group:
            if only is not None and cfg.name not in only:
                continue
            inp = make_dense_decode_inputs(cfg.seqlens(), cfg.s_q, cfg.h_q, cfg.h_kv, cfg.d, cfg.dv,
                                           cfg.page_block_size, parse_dtype(cfg.dtype), cfg.causal, "cuda", cfg.seed)
            providers = [("openmla", _openmla_old_form_call(inp) if cli.old_form else _openmla_call(inp))]
            if flash_mla is not None and not cli.openmla_only:
                providers.append(("flash_mla", _flash_mla_call(flash_mla, inp)))
            elif not cli.openmla_only:
                print(f"  FlashMLA not timed: {missing}")
            for provider, fn in providers:
                if cli.cuda_graph:
                    fn = _graphed(fn)
                times, span = kernel_times(fn, cli.calls, flush)
                busy = sum(us for us, _ in times.values())
                print(f"{cfg.name} {provider}: {busy:7.1f} us of kernels a call, {span:7.1f} us first start to last end"
                      + (f" ({form.strip()})" if form else ""))
                for name, (us, n) in sorted(times.items(), key=lambda kv: -kv[1][0]):
                    print(f"    {us:7.1f} us  x{n:.0f}  {name}")
                plan = _plan_shape(providers[0][1]) if provider == "openmla" else None
                if plan:
                    print(f"    plan: {plan}")
                results.append(dict(config=cfg.name, provider=provider, card=card, kernel_us=busy, span_us=span,
                                    cuda_graph=cli.cuda_graph, flush_l2=cli.flush_l2, plan=plan,
                                    combine_chunks=cli.combine_chunks, combine_eager=cli.combine_eager,
                                    combine_warps=cli.combine_warps,
                                    kernels={k: dict(us=v[0], launches=v[1]) for k, v in times.items()}))
            torch.cuda.empty_cache()
    if cli.json:
        with open(cli.json, "w") as f:
            json.dump(results, f, indent=1)


def _sparse_main(cli) -> None:
    """``--sparse``: each sparse config's calls, OpenMLA's and FlashMLA's (q padded to the heads it takes), by
    kernel."""
    import torch

    from benchmarks.configs import get_configs
    from benchmarks.runner import (
        _flash_mla_sparse_call,
        _flash_mla_sparse_heads,
        _flash_mla_sparse_unsupported,
        _graphed,
        _load_flash_mla,
        _openmla_sparse_call,
        _pad_heads,
    )
    from openmla._harness import make_sparse_decode_inputs

    set_knobs(cli, SPARSE_KNOBS)
    if cli.sparse_parts is not None:
        from openmla.ops.gluon import decode_sparse_sm90

        launcher = decode_sparse_sm90.sparse_decode_sm90_fwd

        def with_parts(*args, **kw):
            return launcher(*args, **dict(kw, num_sm_parts=cli.sparse_parts))
        decode_sparse_sm90.sparse_decode_sm90_fwd = with_parts
    flash_mla, missing = _load_flash_mla()
    card = torch.cuda.get_device_name()
    only = None if cli.only is None else set(cli.only.split(","))
    print(f"GPU time per call by kernel on {card} (mean of {cli.calls} calls)"
          + (f", {cli.sparse_parts} pieces" if cli.sparse_parts else "")
          + (f", plan overhead {cli.sparse_plan_overhead}" if cli.sparse_plan_overhead is not None else "")
          + (f", at most {cli.sparse_splits_cap or 'any number of'} pieces a list"
             if cli.sparse_splits_cap is not None else "")
          + (f", 32-row small-head build from {cli.sparse_rows32_min_tiles} tiles a piece"
             if cli.sparse_rows32_min_tiles is not None else ""))
    results = []
    for group in cli.configs.split(","):
        for cfg in get_configs(group, op="sparse_decode"):
            if only is not None and cfg.name not in only:
                continue
            inp = make_sparse_decode_inputs(cfg.b, cfg.s_q, cfg.h_q, cfg.s_k, cfg.topk, cfg.page_block_size,
                                            cfg.kv_format, cfg.d_qk, cfg.dv, torch.bfloat16, "cuda", cfg.seed,
                                            cfg.invalid_frac)
            providers = [("openmla", _openmla_sparse_call(inp))]
            heads = _flash_mla_sparse_heads(cfg.h_q)
            if flash_mla is not None and not cli.openmla_only and heads and not _flash_mla_sparse_unsupported(cfg):
                providers.append(("flash_mla", _flash_mla_sparse_call(flash_mla, inp, _pad_heads(inp.q, heads))))
            elif not cli.openmla_only and flash_mla is None:
                print(f"  FlashMLA not timed: {missing}")
            for provider, fn in providers:
                if cli.cuda_graph:
                    fn = _graphed(fn)
                times, span = kernel_times(fn, cli.calls)
                busy = sum(us for us, _ in times.values())
                print(f"{cfg.name} {provider}: {busy:7.1f} us of kernels a call, {span:7.1f} us first start to last end")
                for name, (us, n) in sorted(times.items(), key=lambda kv: -kv[1][0]):
                    print(f"    {us:7.1f} us  x{n:.0f}  {name}")
                results.append(dict(config=cfg.name, provider=provider, card=card, kernel_us=busy, span_us=span,
                                    cuda_graph=cli.cuda_graph, sparse_parts=cli.sparse_parts,
                                    sparse_plan_overhead=cli.sparse_plan_overhead,
                                    kernels={k: dict(us=v[0], launches=v[1]) for k, v in times.items()}))
            torch.cuda.empty_cache()
    if cli.json:
        with open(cli.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
