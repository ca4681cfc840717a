"""A probe of how fast an SM takes in whole K tiles by TMA, with nothing else running: the dense Hopper kernel's
landing (``docs/perf-notes.md`` item 24) measured without its softmax or hand-overs.

One CTA per SM streams 64-key tiles of a (576-dim, bf16) paged cache as the dense kernel's loader brings them: nine
64x64 boxes a tile on one mbarrier (73,728 bytes), ``STAGES`` tiles in flight, each stage refilled once its tile has
landed and ``CONSUME`` more cycles have passed (a stand-in for the consumers' time with the stage), or (``MMA``) once
one warpgroup has run the tile's tensor-core products on it (the score products, and with ``MMA`` 2 the ``P V``
products too: the dense kernel's shared-memory reads of a tile). ``GROUP`` CTAs in a row read the same page
sequence, as the row tiles of one KV head do (2 at h_q=128 s_q=1, 4 at s_q=2): all but one of each group then
mostly find the tile in L2. The pages read are 16,000 distinct pages (1.18 GB, the standard b=128 s_k=8k config's
cache) drawn at random from a cache of ``--cache-pages``. Nothing is checked against a reference: a throughput probe.

Usage: ``python -m benchmarks.probe_tma_landing --compile`` (any machine: the sm_90a builds) or ``python -m
benchmarks.probe_tma_landing [--spin-only | --products-only] [--cache-pages N] [--json PATH]`` (sm_90 GPU): per form,
cycles a tile per CTA (the cycle counter around the loop, mean over CTAs), of them the refills' issue (page entry and
nine boxes) and the waits for a landing (with one stage, issue plus wait is a tile's whole landing), bytes a cycle an SM
takes in, and TB/s into the SMs chip-wide (CUDA events); with products, their cycles a tile, then the same form
spinning that long.
Findings (H100): ``2026-11-28-h100-probe-tma-landing*.json`` and the notes.
"""
from __future__ import annotations

import argparse
import json

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

D = 576  # a key's dims (512 latent + 64 RoPE), bf16
CHUNKS = D // 64  # 64x64 boxes a tile
TILE_BYTES = 64 * D * 2
CACHE_PAGES = 16000  # 16000 x 73,728 B = 1.18 GB


@gluon.jit
def _spin(cycles, one):
    """Wait ``cycles`` SM cycles (``one``: any [1] tensor, for the layout)."""
    gl.inline_asm_elementwise(
        "{ .reg .u64 t0, t1; .reg .pred p; mov.u64 t0, %clock64; $$SPIN${:uid}: mov.u64 t1, %clock64; "
        "sub.u64 t1, t1, t0; setp.lt.u64 p, t1, $1; @p bra $$SPIN${:uid}; mov.u32 $0, 0; }",
        "=r,l,r", [one.to(gl.int64) + cycles, one], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _issue(desc, pages_ptr, seq, t, bufs, bar, stage, CHUNKS: gl.constexpr):
    """Tile ``t`` of page sequence ``seq`` into ``stage``: nine 64x64 boxes on ``bar``, as the dense loader does."""
    row = gl.load(pages_ptr + seq + t) * 64
    mbarrier.expect(bar, CHUNKS * 64 * 64 * 2)
    for c in gl.static_range(CHUNKS):
        tma.async_copy_global_to_shared(desc, [row, c * 64], bar, bufs.index(stage * CHUNKS + c))


@gluon.jit
def _products(q_s, p_s, bufs, stage, CHUNKS: gl.constexpr, PV: gl.constexpr):
    """The dense kernel's tensor-core reads of one tile, by one warpgroup: the score products ``Q Kᵀ`` (Q from
    shared memory, nine 64-column chunks) and ``P V`` over the eight value chunks (N=64 each, into one accumulator:
    the values are meaningless, the shared-memory traffic is the point: 144 KB and 128 KB a tile); without ``PV``
    the score products only (shorter than a tile's landing, which then shows in the period)."""
    ACC: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 64, 16])
    s = gl.zeros([64, 64], gl.float32, layout=ACC)
    for c in gl.static_range(CHUNKS):
        s = warpgroup_mma(q_s.index(c), bufs.index(stage * CHUNKS + c).permute((1, 0)), s, is_async=True)
    o = gl.zeros([64, 64], gl.float32, layout=ACC)
    if PV:
        for c in gl.static_range(CHUNKS - 1):
            o = warpgroup_mma(p_s, bufs.index(stage * CHUNKS + c), o, is_async=True)
        s, o = warpgroup_mma_wait(num_outstanding=0, deps=(s, o))
    else:
        s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
    return gl.sum(gl.sum(s + o, axis=1), axis=0)


@gluon.jit
def _tma_stream(desc, pages_ptr, cycles_ptr, n_tiles, CONSUME: gl.constexpr, STAGES: gl.constexpr,
                GROUP: gl.constexpr, CHUNKS: gl.constexpr, MMA: gl.constexpr = 0):
    SMEM: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    ONE: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES * CHUNKS, 64, 64], SMEM)
    if MMA:  # Q and P beside the stages, zeroed (what they hold does not change the products' time)
        q_s = gl.allocate_shared_memory(gl.bfloat16, [CHUNKS, 64, 64], SMEM)
        p_s = gl.allocate_shared_memory(gl.bfloat16, [64, 64], SMEM)
        ZL: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
        zero = gl.zeros([64, 64], gl.bfloat16, layout=ZL)
        for c in gl.static_range(CHUNKS):
            q_s.index(c).store(zero)
        p_s.store(zero)
        fence_async_shared()
        gl.thread_barrier()
        mma_cycles = gl.zeros([1], gl.int64, layout=gl.BlockedLayout([1], [32], [4], [0]))
        sink = 0.0
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(bars.index(s), count=1)
    seq = (gl.program_id(0) // GROUP) * n_tiles
    one = gl.full([1], 1, gl.int32, layout=ONE)
    issue_cycles = gl.zeros([1], gl.int64, layout=ONE)  # the loop's refills: page entry read, boxes issued
    wait_cycles = gl.zeros([1], gl.int64, layout=ONE)  # waiting for a tile to land
    t0 = gl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [one], dtype=gl.int64, is_pure=False, pack=1)
    for s in gl.static_range(STAGES):
        _issue(desc, pages_ptr, seq, s, bufs, bars.index(s), s, CHUNKS)
    for t in range(n_tiles):
        stage = t % STAGES
        w0 = gl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [one], dtype=gl.int64, is_pure=False, pack=1)
        mbarrier.wait(bars.index(stage), (t // STAGES) & 1)
        w1 = gl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [one], dtype=gl.int64, is_pure=False, pack=1)
        wait_cycles += w1 - w0
        if MMA:
            m0 = gl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [one], dtype=gl.int64, is_pure=False,
                                           pack=1)
            sink += _products(q_s, p_s, bufs, stage, CHUNKS, MMA == 2)
            m1 = gl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [one], dtype=gl.int64, is_pure=False,
                                           pack=1)
            mma_cycles += m1 - m0
        if CONSUME > 0:
            _spin(CONSUME, one)
        if t + STAGES < n_tiles:
            i0 = gl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [one], dtype=gl.int64, is_pure=False,
                                           pack=1)
            _issue(desc, pages_ptr, seq, t + STAGES, bufs, bars.index(stage), stage, CHUNKS)
            i1 = gl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [one], dtype=gl.int64, is_pure=False,
                                           pack=1)
            issue_cycles += i1 - i0
    t1 = gl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [one], dtype=gl.int64, is_pure=False, pack=1)
    row = cycles_ptr + 4 * gl.program_id(0) + one * 0
    gl.store(row, t1 - t0, mask=one == 1)
    gl.store(row + 2, issue_cycles, mask=one == 1)
    gl.store(row + 3, wait_cycles, mask=one == 1)
    if MMA:  # the products' cycles, and their sum so that they are not removed
        gl.store(row + 1, mma_cycles + (sink == 12345.0).to(gl.int64), mask=one == 1)


FORMS = [(stages, group, consume) for group in (1, 2, 4) for stages in (1, 2, 3) for consume in (0, 1400, 2800)]
SIG = {"desc": "tensordesc<bf16[64, 64],NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2, "
               "transposed=False, fp4_padded=False, cga_layout=[])>",
       "pages_ptr": "*i32", "cycles_ptr": "*i64", "n_tiles": "i32"}


def _desc(cache):
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    layout = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    return TensorDescriptor(cache, list(cache.shape), list(cache.stride()), [64, 64], layout)


def build(stages: int, group: int, consume: int, mma: int = 0):
    """One form compiled for sm_90a (no GPU needed): Triton's compiled kernel (its ``asm`` and ``metadata``)."""
    src = GluonASTSource(_tma_stream, SIG, constexprs={"CONSUME": consume, "STAGES": stages, "GROUP": group,
                                                        "CHUNKS": CHUNKS, "MMA": mma})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})


def compile_check() -> None:
    """Build the spinning forms of one group and the products forms for sm_90a (no GPU needed)."""
    for stages, group, consume, mma in [f + (0,) for f in FORMS[:9]] + [(2, 4, 0, 2), (2, 4, 0, 1)]:
        k = build(stages, group, consume, mma)
        print(f"stages {stages} group {group} consume {consume}{' products' if mma else ''}: shared "
              f"{k.metadata.shared} B, {k.asm['ptx'].count('cp.async.bulk.tensor.2d')} box copies, "
              f"{k.asm['ptx'].count('wgmma.mma_async')} wgmma in the PTX")


def _measure(desc, g, sms, card, stages, group, consume, mma=0, cache_pages=CACHE_PAGES):
    seqs = sms // group
    n_tiles = CACHE_PAGES // seqs  # the tiles read are CACHE_PAGES distinct pages of the cache's cache_pages
    pages = torch.randperm(cache_pages, generator=g)[: seqs * n_tiles].to(torch.int32).cuda()
    cycles = torch.zeros(seqs * group, 4, dtype=torch.int64, device="cuda")
    args = (desc, pages, cycles, n_tiles)
    kw = dict(CONSUME=consume, STAGES=stages, GROUP=group, CHUNKS=CHUNKS, MMA=mma, num_warps=4)
    _tma_stream[(seqs * group,)](*args, **kw)  # compile and warm up
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        _tma_stream[(seqs * group,)](*args, **kw)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    us = sorted(times)[len(times) // 2]
    per_tile = cycles[:, 0].double().mean().item() / n_tiles
    mma_per_tile = cycles[:, 1].double().mean().item() / n_tiles if mma else None
    issue_per_tile = cycles[:, 2].double().mean().item() / (n_tiles - stages)
    wait_per_tile = cycles[:, 3].double().mean().item() / n_tiles
    tb_s = seqs * group * n_tiles * TILE_BYTES / us / 1e6
    row = dict(card=card, cache_pages=cache_pages, stages=stages, group=group, consume=consume,
               products=("", "scores", "scores+pv")[mma],
               tiles_per_cta=n_tiles, us=us, cycles_per_tile=per_tile, product_cycles_per_tile=mma_per_tile,
               issue_cycles_per_tile=issue_per_tile, wait_cycles_per_tile=wait_per_tile,
               bytes_per_cycle=TILE_BYTES / per_tile, tb_s_into_sms=tb_s)
    print(f"{cache_pages} pages, stages {stages} group {group} consume {consume:4d}"
          f"{('', ' + scores', ' + scores, P V')[mma]}: "
          f"{per_tile:7.0f} "
          f"cycles a tile, {TILE_BYTES / per_tile:5.1f} B a cycle an SM, {us:8.1f} us, {tb_s:5.2f} TB/s into the SMs"
          + f"; issue {issue_per_tile:.0f}, wait for a landing {wait_per_tile:.0f}"
          + (f"; products {mma_per_tile:.0f} cycles a tile" if mma else ""))
    return row


def run(json_path: str | None, spin_only: bool, products: bool, cache_pages: int) -> None:
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    card = torch.cuda.get_device_name()
    g = torch.Generator().manual_seed(0)
    cache = torch.randn(cache_pages * 64, D, generator=g).to(torch.bfloat16).cuda()
    desc = _desc(cache)
    results = []
    print(f"{card}: {sms} CTAs (one an SM), 64-key tiles of {TILE_BYTES} B as {CHUNKS} boxes; mean over CTAs")
    if spin_only:
        for stages, group, consume in FORMS:
            results.append(_measure(desc, g, sms, card, stages, group, consume, cache_pages=cache_pages))
    # the consumer's time spent on tensor-core products that read the stage (and Q, P) from shared memory, then
    # the same time spent spinning: a longer period with the products says their reads slow the landing
    # (2: scores and P V, 1: scores only, whose time is under a tile's landing, so a slower landing shows)
    for mma in (2, 1) if products else ():
        for group in (1, 2, 4):
            with_products = _measure(desc, g, sms, card, 2, group, 0, mma=mma, cache_pages=cache_pages)
            spin = int(round(with_products["product_cycles_per_tile"]))
            results += [with_products, _measure(desc, g, sms, card, 2, group, spin, cache_pages=cache_pages)]
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"results": results}, f, indent=1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--compile", action="store_true", help="build for sm_90a only (no GPU)")
    ap.add_argument("--json")
    ap.add_argument("--products-only", action="store_true", help="only the products-against-spin pairs")
    ap.add_argument("--spin-only", action="store_true", help="only the spinning forms")
    ap.add_argument("--cache-pages", type=int, default=CACHE_PAGES,
                    help=f"pages of the cache the {CACHE_PAGES} read are drawn from (more: spread over more memory)")
    cli = ap.parse_args(argv)
    if cli.compile:
        compile_check()
    else:
        run(cli.json, not cli.products_only, not cli.spin_only, cli.cache_pages)


if __name__ == "__main__":
    main()
