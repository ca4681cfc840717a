"""Where a tile's time goes inside the warp-specialized Hopper kernel (four-warpgroup form), from its trace build.

Usage (sm_90 GPU): ``python -m benchmarks.trace_ws [--json PATH] [--only NAME,...]``

The trace build (``trace=`` of :func:`openmla.ops.gluon.decode_dense_sm90_ws.dense_decode_sm90_ws_fwd` and
:func:`openmla.ops.gluon.decode_sparse_sm90.sparse_decode_sm90_fwd`) stamps the SM's cycle counter at up to ten events
of every KV tile in a few programs (:func:`openmla.ops.gluon.decode_dense_sm90_ws._stamp`):

  0 the loader has the tile's stage          1 the loader published the tile (decoded) or issued its copies
  2 the softmax warpgroup has it, scores issued   3 scores done     4 P published
  5 the first output warpgroup has P         6 it released P and the stage
  7 a decoding loader's codes have all landed (FP8 records); in the e4m3-product kernel
    (:mod:`openmla.ops.gluon.decode_dense_fp8_sm90`, config ``dense_fp8_e4m3_*``) the first output warpgroup has
    decoded its value half, with intervals of their own (:data:`E4M3_PRODUCT_INTERVALS`); with the output
    warpgroups decoding V3.2 records (``output_decode``, configs ``*_output_decode``) the first output
    warpgroup has decoded its half, which it finishes for tile k+1 between issuing tile k's products and their end
    (:data:`OUTPUT_DECODE_INTERVALS`)
  8 the softmax warpgroup's math done (the tile masked, exponentiated, summed)   9 it has the P buffer
    (both stamped by the warp-specialized kernel's softmax warpgroup only: the e4m3-product kernel reads None there)

The small-head sparse kernel (configs ``*_small_heads``) stamps events of its own (:data:`SMALL_SPARSE_INTERVALS`).
The warp-specialized kernel also stamps every program's ``%globaltimer`` at its entry and its end (one clock for all
SMs; :func:`openmla.ops.gluon.decode_dense_sm90_ws._stamp_program`): the ``programs`` line gives their spread and the
first entry to the last end, to read beside the call's time.

For each config this prints the call's time (replayed from a CUDA graph) with and without the stamps (so their cost is in view) and, over the
stamped tiles of a request's steady state, the median cycles of: the tile period (event 1 to the next tile's 1),
the loader's busy time (0 → 1) and its wait for a stage (the last tile's 1 → 0), the softmax warpgroup's wait for K
(last tile's 4 → 2), the score products (2 → 3), softmax and hand-over (3 → 4) split into its math (3 → 8), its
wait for the P buffer (8 → 9) and P written and published (9 → 4), the output warpgroup's wait for P
(last tile's 6 → 5) and its products (5 → 6), and the stage's time with the consumers (1 → 6). Cycles, not time:
the SM clock varies; the period times the tiles gives the scale.
"""
from __future__ import annotations

import argparse
import json
import statistics


def _span(a: int, b: int, a_last: bool = False, b_next: bool = False):
    """Cycles from event ``a`` (of the tile before with ``a_last``) to event ``b`` (of the tile after with
    ``b_next``) of tile ``k``, over a piece's stamped tiles ``t``."""
    return lambda t, k: t[k + b_next][b] - t[k - a_last][a]


# intervals every form of the trace reads alike
_PERIOD = {"period (1 -> next 1)": _span(1, 1, b_next=True)}
_LOADER_WAITS = {"loader waits for a stage (last 1 -> 0)": _span(1, 0, a_last=True)}
_SCORES_SOFTMAX = {"score products (2 -> 3)": _span(2, 3), "softmax and hand-over (3 -> 4)": _span(3, 4),
                   "softmax math (3 -> 8)": _span(3, 8), "waits for the P buffer (8 -> 9)": _span(8, 9),
                   "P written and published (9 -> 4)": _span(9, 4)}

#: the warp-specialized kernel (events in the module docstring)
WS_INTERVALS = {
    **_PERIOD,
    "loader busy (0 -> 1)": _span(0, 1),
    **_LOADER_WAITS,
    "softmax waits for K (last 4 -> 2)": _span(4, 2, a_last=True),
    # event 2 follows the wait for the tile's last box (TMA boxes on ready barriers): while the softmax warpgroup
    # waits for K, this is the tile's landing from its issue
    "K issued to its last box landed (1 -> 2)": _span(1, 2),
    # the stage's release to its scores being issued: 3960-4230 cycles in every form traced on 2026-11-28 (perf-notes
    # item 25), however the loader's issue and the landing split it
    "stage free to its scores issued (0 -> 2)": _span(0, 2),
    **_SCORES_SOFTMAX,
    "output waits for P (last 6 -> 5)": _span(6, 5, a_last=True),
    "output products (5 -> 6)": _span(5, 6),
    "stage with the consumers (1 -> 6)": _span(1, 6),
    "loader waits for its codes (0 -> 7)": _span(0, 7),
    "loader decodes and publishes (7 -> 1)": _span(7, 1),
}

#: the e4m3-product kernel's event 7 is the first output warpgroup's decode of its value half, done
E4M3_PRODUCT_INTERVALS = {
    **_PERIOD,
    "loader issue (0 -> 1)": _span(0, 1),
    **_LOADER_WAITS,
    "softmax waits for codes (last 4 -> 2)": _span(4, 2, a_last=True),
    **_SCORES_SOFTMAX,
    "output decodes (last 6 -> 7)": _span(6, 7, a_last=True),
    "output waits for P after its decode (7 -> 5)": _span(7, 5),
    "output products (5 -> 6)": _span(5, 6),
    "codes in flight before the scores (1 -> 2)": _span(1, 2),
}

#: the output warpgroups decoding V3.2 records: event 7 of tile k is stamped inside the output warpgroup's step k-1
OUTPUT_DECODE_INTERVALS = {
    **_PERIOD,
    "loader issue (0 -> 1)": _span(0, 1),
    **_LOADER_WAITS,
    "copies issued to decoded (1 -> 7)": _span(1, 7),
    "decode after the last products issued (last 5 -> 7)": _span(5, 7, a_last=True),
    "decoded to scores issued (7 -> 2)": _span(7, 2),
    **_SCORES_SOFTMAX,
    "output waits for P (last 6 -> 5)": _span(6, 5, a_last=True),
    "output products and next decode (5 -> 6)": _span(5, 6),
}


#: the small-head sparse kernel (:mod:`openmla.ops.gluon.decode_sparse_sm90_small_heads`, configs ``*_small_heads``):
#: one warpgroup in lockstep, two programs an SM; its events (``TRACE_EVENTS`` there) 0 the step begins, 1 the
#: tile's codes, RoPE dims and scales have landed, 2 decoded in place, 3 scores done (with the next tile's RoPE dims
#: and scales issued before them), 4 P published, 5 ``P V`` done, 6 the next tile's codes issued
SMALL_SPARSE_INTERVALS = {
    "period (0 -> next 0)": _span(0, 0, b_next=True),
    "codes issued to landed (last 6 -> 1)": _span(6, 1, a_last=True),
    "decode in place (1 -> 2)": _span(1, 2),
    "RoPE and scales issued, score products (2 -> 3)": _span(2, 3),
    "softmax and P published (3 -> 4)": _span(3, 4),
    "value products (4 -> 5)": _span(4, 5),
    "next codes issued (5 -> 6)": _span(5, 6),
}


def _intervals(trace, names=None) -> dict:
    """Median cycles of each interval over the stamped pieces' tiles (the first two and last of a piece left out,
    and tiles the trace did not reach); ``names`` the intervals (default: :data:`WS_INTERVALS`)."""
    names = names or WS_INTERVALS
    out = {}
    for name, f in names.items():
        vals = []
        for piece in trace:
            tiles = [t for t in piece if all(x > 0 for x in t[:7])]
            for k in range(2, len(tiles) - 2):
                v = f(tiles, k)
                if 0 <= v < 10**7:  # a request boundary or an unwritten slot gives nonsense: skip it
                    vals.append(v)
        out[name] = statistics.median(vals) if vals else None
    return out


def _timeline(trace) -> dict:
    """A piece's start and end: the median over the stamped pieces of each event's cycles after the program's entry
    (event 10), for tiles 0, 1, 2 (events 0-6) and the piece's last stamped tile (events 0-6, then 11 the first
    output warpgroup's last store and 12 the softmax warpgroup's); None where no piece stamped it. Read beside the
    call's time and its tiles a piece, it says what a request's start (Q and the first tiles landing with nothing in
    flight) and end (the last products, ``1/l`` handed over, the output stored) cost beyond its steady state."""
    rows = {"0": [], "1": [], "2": [], "last": []}
    for piece in trace:
        tiles = [t for t in piece if all(x > 0 for x in t[:7])]
        if len(tiles) < 4 or piece[0][10] <= 0:
            continue
        t0 = piece[0][10]
        for key, t in (("0", tiles[0]), ("1", tiles[1]), ("2", tiles[2])):
            rows[key].append([t[e] - t0 for e in range(7)])
        rows["last"].append([tiles[-1][e] - t0 if tiles[-1][e] > 0 else None for e in (*range(7), 11, 12)])
    return {key: [statistics.median(x) if (x := [v[e] for v in vals if v[e] is not None]) else None
                  for e in range(len(vals[0]))] if vals else [] for key, vals in rows.items()}


def _program_spans(trace, pieces: int, programs: int) -> list[list[int]]:
    """Each stamped program's ``[launch index, entry, end]`` (``%globaltimer`` ns) from the trace buffer's rows after
    its first ``pieces`` (two slots a program in launch order, ``programs`` at most; a program that did not stamp
    both is left out)."""
    flat = [x for row in trace[pieces:] for tile in row for x in tile][:2 * programs]
    return [[i // 2, flat[i], flat[i + 1]] for i in range(0, len(flat) - 1, 2) if flat[i] > 0 and flat[i + 1] > 0]


def _programs(spans) -> dict | None:
    """Program spans (:func:`_program_spans`) read as µs: how many programs stamped, the spread of their entries and
    of their ends, the first entry to the last end (to set beside the kernel's time: what it leaves out is before the
    programs' entry stamps and after their last stores), and the median and longest program. None where no program
    stamped (kernels other than the warp-specialized one)."""
    if not spans:
        return None
    entries, ends = [a for _, a, _ in spans], [b for _, _, b in spans]
    lengths = [b - a for _, a, b in spans]
    return {"programs": len(spans), "entry spread us": (max(entries) - min(entries)) / 1e3,
            "end spread us": (max(ends) - min(ends)) / 1e3,
            "first entry to last end us": (max(ends) - min(entries)) / 1e3,
            "median program us": statistics.median(lengths) / 1e3, "longest program us": max(lengths) / 1e3}


def _by_piece_work(spans, sched, lens, programs_a_piece: int) -> dict:
    """Program time (µs, globaltimer) by its piece's work: ``{(tiles, requests): (programs, median, longest)}``,
    with ``spans`` from :func:`_program_spans`, ``sched`` the plan's rows and ``lens`` the requests' lengths (the
    piece's work as :func:`benchmarks.plan_pieces.piece_work` counts it), and ``programs_a_piece`` the programs along
    the launch's first axis (row tiles times KV heads): if programs track their tiles and not their requests, the
    plan's per-request charge is too high."""
    from benchmarks.plan_pieces import piece_work

    work = piece_work(sched, lens)
    groups = {}
    for index, entry, end in spans:
        groups.setdefault(work[index // programs_a_piece], []).append((end - entry) / 1e3)
    return {key: (len(v), statistics.median(v), max(v)) for key, v in sorted(groups.items())}


def _replayed_us(torch, triton, fn) -> float:
    """Median µs of ``fn`` replayed from a CUDA graph (its GPU time, without the launcher's host time)."""
    fn()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return triton.testing.do_bench(graph.replay, warmup=25, rep=200, return_mode="median") * 1e3


def main(argv=None) -> None:
    import torch
    import triton

    from benchmarks.configs import get_configs
    from openmla._harness import make_dense_decode_inputs, make_sparse_decode_inputs, quantize_dense_fp8
    from openmla.metadata import plan_dense
    from openmla.ops.decode_dense import num_sm_parts_for
    from openmla.ops.gluon.decode_dense_fp8_sm90 import dense_decode_fp8_sm90_fwd
    from openmla.ops.gluon.decode_dense_sm90_ws import (
        TRACE_PIECES,
        TRACE_PROGRAMS,
        dense_decode_sm90_ws_fwd,
        trace_buffer,
    )
    from openmla.ops.gluon.decode_sparse_sm90 import sparse_decode_sm90_fwd
    from openmla.ops.schedule import plan_splitkv

    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--only", help="comma-separated config names: trace only these")
    args = ap.parse_args(argv)
    card = torch.cuda.get_device_name()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    calls = {}
    for name in ("sparse_std_b64", "sparse_heads_h64", "sparse_bf16_b64", "sparse_heads_h16"):
        cfg = next(c for s in ("standard", "heads", "bf16") for c in get_configs(s, op="sparse_decode")
                   if c.name == name)
        inp = make_sparse_decode_inputs(cfg.b, cfg.s_q, cfg.h_q, cfg.s_k, cfg.topk, cfg.page_block_size,
                                        cfg.kv_format, cfg.d_qk, cfg.dv, torch.bfloat16, "cuda", cfg.seed,
                                        cfg.invalid_frac)
        if cfg.h_q <= 16:  # the small-head kernel (its own events: SMALL_SPARSE_INTERVALS)
            calls[f"{name}_small_heads"] = (lambda inp=inp: lambda trace=None: sparse_decode_sm90_fwd(
                inp.q, inp.k_cache, inp.indices, inp.head_dim_v, inp.softmax_scale, is_fp8=True, trace=trace,
                small_heads=True))()
        calls[name] = (lambda inp=inp: lambda trace=None: sparse_decode_sm90_fwd(
            inp.q, inp.k_cache, inp.indices, inp.head_dim_v, inp.softmax_scale, is_fp8=inp.is_fp8, trace=trace,
            output_decode=0))()
        if inp.is_fp8:  # the output warpgroups decoding (its event 7: OUTPUT_DECODE_INTERVALS)
            calls[f"{name}_output_decode"] = (lambda inp=inp: lambda trace=None: sparse_decode_sm90_fwd(
                inp.q, inp.k_cache, inp.indices, inp.head_dim_v, inp.softmax_scale, is_fp8=True, trace=trace,
                output_decode=1))()
    g = torch.Generator().manual_seed(0)
    lens = torch.normal(8192.0, 4096.0, (128,), generator=g).round().clamp(1, 16384).int().tolist()
    dense = make_dense_decode_inputs(lens, 1, 128, 1, 576, 512, 64, torch.bfloat16, False, "cuda", 0)
    sched, splits = plan_splitkv(dense.cache_seqlens, num_sm_parts_for(128, 1, sms, backend="gluon", arch=90))
    # MTP: s_q=2 (256 rows a KV head: four row tiles a token read each K tile), causal
    dense_sq2 = make_dense_decode_inputs(lens, 2, 128, 1, 576, 512, 64, torch.bfloat16, True, "cuda", 0)
    plan_sq2 = plan_splitkv(dense_sq2.cache_seqlens, num_sm_parts_for(256, 1, sms, backend="gluon", arch=90))
    shapes = {"": (dense, (sched, splits), False), "_sq2": (dense_sq2, plan_sq2, True)}
    # the warp-specialized kernel's forms traced, (config suffix, shape, the launcher's switches); the defaults first
    dense_forms = (
        ("", "", {}),
        ("_sq2", "_sq2", {}),
        # all boxes' ready barriers in one allocation (box_allocs off, the default before version 20)
        ("_one_alloc", "", dict(box_allocs=False)),
        # one ready barrier a stage (box_ready off): the softmax warpgroup's stamp 2 then follows the whole tile's
        # landing with no score product issued in between, so "K issued to its last box landed" is the landing
        ("_stage_ready", "", dict(box_ready=False)),
        ("_sq2_stage_ready", "_sq2", dict(box_ready=False)),
        # P handed over whole (p_halves off, the default before 2026-11-28's item 25): with P in halves (the default
        # at s_q=1) "softmax math (3 -> 8)" is the max alone and "P written and published (9 -> 4)" holds the
        # factor's hand-over, the exponentials and both halves of P
        ("_p_whole", "", dict(p_halves=False)),
        # the right output warpgroup a tile behind the left one (lag; the default from 256 rows, so at s_q=2): forced
        # on at s_q=1, off at s_q=2 (the form before it), and at s_q=2 with a TMA box per chunk (lag_halves off);
        # events 5 and 6 are the left output warpgroup's
        ("_lag", "", dict(lag=True)),
        ("_sq2_no_lag", "_sq2", dict(lag=False)),
        ("_sq2_lag_box_a_chunk", "_sq2", dict(lag=True, lag_halves=False)),
    )

    def ws_call(inp, plan, causal, form):
        return lambda trace=None: dense_decode_sm90_ws_fwd(
            *inp.call_args()[:4], 512, *plan, inp.softmax_scale, causal, softmax_only=True, trace=trace, **form)

    # the dense configs' plans, lengths and row tiles (programs a piece), for program time by piece work
    plans = {}
    for suffix, shape, form in dense_forms:
        calls[f"dense_b128_sk8192_h128{suffix}"] = ws_call(*shapes[shape], form)
        inp, plan, _ = shapes[shape]
        plans[f"dense_b128_sk8192_h128{suffix}"] = (plan[0], inp.cache_seqlens, 4 if shape == "_sq2" else 2)
    # one short request a piece (b=64, 512 keys, as the API plans it: eight tiles, no split), for the cost of a
    # request's start and end (its ``first tiles`` timeline below)
    short = make_dense_decode_inputs([512] * 64, 1, 128, 1, 576, 512, 64, torch.bfloat16, False, "cuda", 0)
    short_plan = plan_dense(short.cache_seqlens, 128, 1, backend="gluon")
    calls["dense_b64_sk512_h128"] = ws_call(short, short_plan, False, {})
    plans["dense_b64_sk512_h128"] = (short_plan[0], short.cache_seqlens, 2)
    # dense FP8 with an e4m3 q: the e4m3-product kernel (its event 7: E4M3_PRODUCT_INTERVALS); at 16 and 32 heads
    # (one row tile) with the transposed output products (N = 16 or 32, two P buffers: the default there), those with
    # one P buffer, and the padded 64-row ones
    def e4m3_call(inp, plan, **form):
        fp8 = quantize_dense_fp8(inp, fp8_q=True)
        return lambda trace=None: dense_decode_fp8_sm90_fwd(
            *fp8.call_args()[:4], 512, *plan, fp8.softmax_scale, False, descale_q=fp8.descale_q,
            descale_k=fp8.descale_k, trace=trace, **form)

    calls["dense_fp8_e4m3_b128_sk8192_h128"] = e4m3_call(dense, (sched, splits))
    for h_q in (16, 32):
        inp = make_dense_decode_inputs(lens, 1, h_q, 1, 576, 512, 64, torch.bfloat16, False, "cuda", 0)
        plan = plan_splitkv(inp.cache_seqlens, num_sm_parts_for(h_q, 1, sms, backend="gluon", arch=90))
        calls[f"dense_fp8_e4m3_b128_sk8192_h{h_q}"] = e4m3_call(inp, plan)
        calls[f"dense_fp8_e4m3_b128_sk8192_h{h_q}_one_p"] = e4m3_call(inp, plan, p_bufs=1)
        calls[f"dense_fp8_e4m3_b128_sk8192_h{h_q}_padded"] = e4m3_call(inp, plan, transposed_max_rows=0)
    if args.only:
        unknown = set(args.only.split(",")) - set(calls)
        if unknown:
            raise SystemExit(f"unknown config(s) {', '.join(sorted(unknown))}; known: {', '.join(calls)}")
        calls = {k: v for k, v in calls.items() if k in args.only.split(",")}
    results = []
    for name, call in calls.items():
        buf = trace_buffer("cuda")
        call(trace=buf)
        torch.cuda.synchronize()
        plain_us, traced_us = (_replayed_us(torch, triton, fn) for fn in (call, lambda: call(trace=buf)))
        buf.zero_()
        call(trace=buf)
        torch.cuda.synchronize()
        trace = buf.tolist()
        iv = _intervals(trace[:TRACE_PIECES], E4M3_PRODUCT_INTERVALS if name.startswith("dense_fp8_e4m3")
                        else OUTPUT_DECODE_INTERVALS if "_output_decode" in name
                        else SMALL_SPARSE_INTERVALS if name.endswith("_small_heads") else None)
        results.append(dict(card=card, config=name, plain_us=plain_us, traced_us=traced_us, cycles=iv))
        line = _timeline(trace[:TRACE_PIECES])
        results[-1]["first_tiles"] = line
        # each stamped program's launch index (program_id(1) * programs along axis 0 + program_id(0)), entry, end
        results[-1]["program_ns"] = spans = _program_spans(trace, TRACE_PIECES, TRACE_PROGRAMS)
        results[-1]["programs"] = progs = _programs(spans)
        print(f"{name}: {plain_us:.1f} us, traced {traced_us:.1f} us ({card})")
        for k, v in iv.items():
            print(f"    {k:42s} {'-' if v is None else f'{v:8.0f}'} cycles")
        print("    first and last tiles, median cycles from the program's entry (events 0-6 of tiles 0, 1, 2; 0-6, 11, 12 "
              "of the piece's last):")
        for tile, events in line.items():
            print(f"      {tile:>6s} " + " ".join("-" if e is None else f"{e:7.0f}" for e in events))
        if progs:
            print("    programs (globaltimer, us): " + ", ".join(
                f"{k} {v}" if k == "programs" else f"{k} {v:.2f}" for k, v in progs.items()))
        if progs and name in plans:
            sched, lens, per_piece = plans[name]
            work = _by_piece_work(results[-1]["program_ns"], sched.tolist(), lens.tolist(), per_piece)
            results[-1]["by_piece_work"] = [[*k, *v] for k, v in work.items()]
            print("    program time by its piece's (tiles, requests): " + "; ".join(
                f"{k}: {n} programs, median {med:.1f}, longest {top:.1f} us" for k, (n, med, top) in work.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results}, f, indent=1)


if __name__ == "__main__":
    main()
