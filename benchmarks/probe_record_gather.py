"""A probe of how fast an SM gathers V3.2 FP8 records, with nothing else running: the rate a sparse small-head
kernel would meet first (``docs/perf-notes.md``, "Next", sparse at 16 and 32 heads).

Each CTA gathers 64-record tiles of a V3.2 cache (656 bytes a token: 512 e4m3 codes, four fp32 scales, 64 bf16 RoPE
dims) as the sparse kernel's loader does: the codes as eight [64, 64] byte blocks, the RoPE dims as a [64, 64] bf16
block and the scales as one 16-byte copy a record, all ``cp.async`` of 16 bytes (41 a record, 2624 a tile), one
commit group a tile. ``STAGES`` tiles are in flight a CTA, ``CTAS`` CTAs an SM (a persistent grid of
``CTAS x SMs``), so ``STAGES x CTAS`` tiles an SM; each tile's stage is refilled once its copies have landed (all
threads' ``wait_group`` and a CTA barrier, as a consumer needs). The records are those a top-2048 list picks: 32
tiles of distinct tokens drawn from one request's 32,768, 64 requests (1.37 GB, the standard V3.2 config's cache),
each CTA going through its own lists. The ``bulk`` forms bring each record instead by one ``cp.async.bulk`` (the TMA
unit's 1-D copy of 656 contiguous bytes; ``bulk3``: three, each value half's codes and the rest) issued by 64 lanes,
counted in bytes on the stage's mbarrier. Nothing is checked against a reference: a throughput probe (a bulk form's
mbarrier completes only once the tile's 41,984 bytes have landed, so a wrong copy would hang it, not pass).

What it answers: 1.5x FlashMLA at h_q=16 (b=64, s_q=2, topk=2048; FlashMLA on q padded to 64 heads moved the 172 MB
of records at 1.43 TB/s on an H200) needs ~2.15 TB/s of these reads; if the chip's rate for them stays under that
with several tiles in flight an SM, no small-head layout reaches 1.5x.

Usage: ``python -m benchmarks.probe_record_gather --compile`` (any machine: the sm_90a builds) or ``python -m
benchmarks.probe_record_gather [--tiles N] [--json PATH]`` (sm_90 GPU): per form, cycles a tile per CTA (the cycle
counter around the loop, mean over CTAs), of them the issue of a tile's copies and the waits for a landing, bytes a
cycle an SM, and TB/s chip-wide (CUDA events, median of five launches).
Findings (H200): ``2026-11-28-h200-probe-record-gather.{json,txt}`` and the notes.
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
from triton.experimental.gluon.language.nvidia.ampere import async_copy

RECORD = gl.constexpr(656)  # bytes a V3.2 token: 512 e4m3 codes, 4 fp32 scales, 64 bf16 RoPE dims
D_V = gl.constexpr(512)
TILE_BYTES = 64 * 656
TOPK = 2048  # list entries a query row
S_K = 32768  # tokens a request
REQUESTS = 64


@gluon.jit
def _clock(one):
    return gl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [one], dtype=gl.int64, is_pure=False, pack=1)


@gluon.jit
def _issue(k_ptr, slots_ptr, tile, codes, rope, scales, stage, WARPS: gl.constexpr):
    """The copies of one tile (``slots_ptr[64 tile ..]``: record indices) into ``stage``, committed as one group."""
    CVT: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [WARPS, 1], [1, 0])  # 16 B a thread
    ROPE: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [WARPS, 1], [1, 0])
    SCALES: gl.constexpr = gl.BlockedLayout([1, 4], [32, 1], [WARPS, 1], [1, 0])
    offs_j = gl.arange(0, 64, layout=gl.SliceLayout(1, CVT))
    slot = gl.load(slots_ptr + tile.to(gl.int64) * 64 + offs_j)
    rec = k_ptr + slot.to(gl.int64) * RECORD
    offs_c = gl.arange(0, 64, layout=gl.SliceLayout(0, CVT))
    for c in gl.static_range(D_V // 64):
        async_copy.async_copy_global_to_shared(codes.index(stage * (D_V // 64) + c),
                                               rec[:, None] + c * 64 + offs_c[None, :])
    rec_pe = gl.convert_layout(rec, gl.SliceLayout(1, ROPE))
    pe_ptr = (rec_pe + D_V + 16).to(gl.pointer_type(gl.bfloat16))
    offs_e = gl.arange(0, 64, layout=gl.SliceLayout(0, ROPE))
    async_copy.async_copy_global_to_shared(rope.index(stage), pe_ptr[:, None] + offs_e[None, :])
    rec_sc = gl.convert_layout(rec, gl.SliceLayout(1, SCALES))
    sc_ptr = (rec_sc + D_V).to(gl.pointer_type(gl.float32))
    offs_t = gl.arange(0, 4, layout=gl.SliceLayout(0, SCALES))
    async_copy.async_copy_global_to_shared(scales.index(stage), sc_ptr[:, None] + offs_t[None, :])
    async_copy.commit_group()


@gluon.jit
def _gather_stream(k_ptr, slots_ptr, cycles_ptr, n_tiles, STAGES: gl.constexpr, WARPS: gl.constexpr):
    CODES: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0])
    ONE: gl.constexpr = gl.BlockedLayout([1], [32], [WARPS], [0])
    codes = gl.allocate_shared_memory(gl.uint8, [STAGES * (D_V // 64), 64, 64], CODES)
    rope = gl.allocate_shared_memory(gl.bfloat16, [STAGES, 64, 64], CODES)
    scales = gl.allocate_shared_memory(gl.float32, [STAGES, 64, 4], CODES)
    first = gl.program_id(0) * n_tiles
    one = gl.full([1], 1, gl.int32, layout=ONE)
    issue_cycles = gl.zeros([1], gl.int64, layout=ONE)
    wait_cycles = gl.zeros([1], gl.int64, layout=ONE)
    t0 = _clock(one)
    for s in gl.static_range(STAGES):
        _issue(k_ptr, slots_ptr, first + s, codes, rope, scales, s, WARPS)
    for t in range(n_tiles):
        stage = t % STAGES
        w0 = _clock(one)
        async_copy.wait_group(STAGES - 1)  # this thread's copies of tile t have landed
        gl.thread_barrier()  # and every thread's: a consumer could read the stage now
        w1 = _clock(one)
        wait_cycles += w1 - w0
        # a tile past the end is issued too (the lists are padded), so that every trip commits one group
        _issue(k_ptr, slots_ptr, first + t + STAGES, codes, rope, scales, stage, WARPS)
        issue_cycles += _clock(one) - w1
    async_copy.wait_group(0)
    t1 = _clock(one)
    row = cycles_ptr + 4 * gl.program_id(0) + one * 0
    gl.store(row, t1 - t0, mask=one == 1)
    gl.store(row + 1, issue_cycles, mask=one == 1)
    gl.store(row + 2, wait_cycles, mask=one == 1)


STAGE_BYTES = gl.constexpr(42 * 1024)  # a bulk form's stage: 64 records (41,984 B), then its mbarrier


@gluon.jit
def _bulk_issue(k_ptr, slots_ptr, tile, dst0, bar_off, lane, PIECES: gl.constexpr, REC_STRIDE: gl.constexpr):
    """A tile's 64 records by bulk copies (``cp.async.bulk``, the TMA unit's 1-D copy of contiguous bytes), lanes
    0..63 one record each, to shared byte ``dst0 + REC_STRIDE * lane`` (offsets from ``global_smem``: Gluon has no
    way to hand a shared address to inline PTX, so the caller's only allocation must lie at offset 0), counted in
    bytes on the mbarrier at byte ``bar_off`` (lane 0 arrives and expects the tile's bytes). ``PIECES`` 1: one copy
    of 656 bytes a record; 3: three (each value half's 256 codes, then the scales and RoPE dims' 144 bytes), as a
    kernel that lands each value half where its own warpgroup decodes it would."""
    slot = gl.load(slots_ptr + tile.to(gl.int64) * 64 + lane, mask=lane < 64, other=0)
    src = k_ptr + slot.to(gl.int64) * RECORD
    dst = dst0 + lane * REC_STRIDE
    bar = bar_off + lane * 0
    if PIECES == 1:
        copies: gl.constexpr = ("@p cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [dst], [$4], "
                                "656, [bar]; ")
    else:
        copies: gl.constexpr = (
            "@p cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [dst], [$4], 256, [bar]; "
            "add.u32 dst, dst, 256; add.u64 src, $4, 256; "
            "@p cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [dst], [src], 256, [bar]; "
            "add.u32 dst, dst, 256; add.u64 src, src, 256; "
            "@p cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [dst], [src], 144, [bar]; ")
    gl.inline_asm_elementwise(
        "{ .reg .pred p, q; .reg .u32 base, dst, bar; .reg .b64 st, src; "
        "setp.lt.u32 p, $1, 64; setp.eq.u32 q, $1, 0; mov.u32 base, global_smem; "
        "add.u32 bar, base, $3; add.u32 dst, base, $2; "
        "@q mbarrier.arrive.expect_tx.shared::cta.b64 st, [bar], 41984; " + copies + "mov.u32 $0, 0; }",
        "=r,r,r,r,l", [lane, dst, bar, src], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _bulk_init(bar_off, lane):
    """Lane 0 initializes the mbarrier at shared byte ``bar_off`` (one arrival a phase)."""
    gl.inline_asm_elementwise(
        "{ .reg .pred q; .reg .u32 bar; setp.eq.u32 q, $1, 0; mov.u32 bar, global_smem; add.u32 bar, bar, $2; "
        "@q mbarrier.init.shared::cta.b64 [bar], 1; mov.u32 $0, 0; }",
        "=r,r,r", [lane, bar_off + lane * 0], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _bulk_init_fence(one):
    """Make the mbarriers' initialization visible to the copy engine (then a CTA barrier)."""
    gl.inline_asm_elementwise("fence.mbarrier_init.release.cluster; mov.u32 $0, 0;", "=r,r", [one], dtype=gl.int32,
                              is_pure=False, pack=1)


@gluon.jit
def _bulk_wait(bar_off, phase, lane):
    """Every thread waits for phase ``phase`` of the mbarrier at shared byte ``bar_off``."""
    gl.inline_asm_elementwise(
        "{ .reg .pred p; .reg .u32 bar; mov.u32 bar, global_smem; add.u32 bar, bar, $1; "
        "$$W${:uid}: mbarrier.try_wait.parity.shared::cta.b64 p, [bar], $2; @!p bra $$W${:uid}; mov.u32 $0, 0; }",
        "=r,r,r", [bar_off + lane * 0, phase + lane * 0], dtype=gl.int32, is_pure=False,
        pack=1)


@gluon.jit
def _bulk_stream(k_ptr, slots_ptr, cycles_ptr, n_tiles, STAGES: gl.constexpr, WARPS: gl.constexpr,
                 PIECES: gl.constexpr):
    """The gather by bulk copies, one a record (:func:`_bulk_issue`), ``STAGES`` tiles in flight."""
    LANES: gl.constexpr = gl.BlockedLayout([1], [32], [WARPS], [0])  # one element a thread
    bufs = gl.allocate_shared_memory(gl.uint8, [STAGES * 42, 1024], gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    lane = gl.arange(0, 32 * WARPS, layout=LANES)
    one = gl.full([1], 1, gl.int32, layout=gl.BlockedLayout([1], [32], [WARPS], [0]))
    BAR: gl.constexpr = 64 * RECORD  # a stage's mbarrier, after its records
    for s in gl.static_range(STAGES):
        _bulk_init(s * STAGE_BYTES + BAR, lane)
    _bulk_init_fence(one)
    gl.thread_barrier()
    first = gl.program_id(0) * n_tiles
    issue_cycles = gl.zeros([1], gl.int64, layout=gl.BlockedLayout([1], [32], [WARPS], [0]))
    wait_cycles = gl.zeros([1], gl.int64, layout=gl.BlockedLayout([1], [32], [WARPS], [0]))
    t0 = _clock(one)
    for s in gl.static_range(STAGES):
        _bulk_issue(k_ptr, slots_ptr, first + s, s * STAGE_BYTES, s * STAGE_BYTES + BAR, lane, PIECES, RECORD)
    for t in range(n_tiles):
        stage = t % STAGES
        w0 = _clock(one)
        _bulk_wait(stage * STAGE_BYTES + BAR, (t // STAGES) & 1, lane)
        gl.thread_barrier()  # every thread past the wait: a consumer could read the stage, and it can be refilled
        w1 = _clock(one)
        wait_cycles += w1 - w0
        if t + STAGES < n_tiles:
            _bulk_issue(k_ptr, slots_ptr, first + t + STAGES, stage * STAGE_BYTES, stage * STAGE_BYTES + BAR, lane,
                        PIECES, RECORD)
        issue_cycles += _clock(one) - w1
    t1 = _clock(one)
    row = cycles_ptr + 4 * gl.program_id(0) + one * 0
    gl.store(row, t1 - t0, mask=one == 1)
    gl.store(row + 1, issue_cycles, mask=one == 1)
    gl.store(row + 2, wait_cycles, mask=one == 1)
    # bytes of the first stage read back (stored only where one is 0x5a), so that the allocation stays
    keep = bufs.index(0).load(gl.BlockedLayout([8], [32], [WARPS], [0]))
    gl.store(cycles_ptr + 4 * gl.program_id(0) + 3 + keep.to(gl.int64) * 0, keep.to(gl.int64), mask=keep == 0x5A)


# (route, warps, stages a CTA, CTAs an SM): 42 KB a stage, so at most 5 stages an SM
FORMS = [("cp.async", 4, 1, 1), ("cp.async", 4, 2, 1), ("cp.async", 4, 3, 1), ("cp.async", 4, 4, 1),
         ("cp.async", 8, 2, 1), ("cp.async", 8, 4, 1), ("cp.async", 4, 1, 2), ("cp.async", 4, 2, 2),
         ("cp.async", 8, 2, 2), ("cp.async", 4, 1, 4), ("cp.async", 4, 1, 5),
         ("bulk", 4, 1, 1), ("bulk", 4, 2, 1), ("bulk", 4, 3, 1), ("bulk", 4, 4, 1), ("bulk", 4, 2, 2),
         ("bulk", 4, 1, 4), ("bulk3", 4, 1, 1), ("bulk3", 4, 2, 1), ("bulk3", 4, 3, 1), ("bulk3", 4, 2, 2)]
KERNELS = {"cp.async": _gather_stream, "bulk": _bulk_stream, "bulk3": _bulk_stream}
PIECES = {"bulk": 1, "bulk3": 3}  # bulk copies a record
SIG = {"k_ptr": "*u8", "slots_ptr": "*i32", "cycles_ptr": "*i64", "n_tiles": "i32"}


def build(route: str, warps: int, stages: int):
    """One form compiled for sm_90a (no GPU needed): Triton's compiled kernel (its ``asm`` and ``metadata``)."""
    src = GluonASTSource(KERNELS[route], SIG, constexprs={"STAGES": stages, "WARPS": warps,
                                                          **({"PIECES": PIECES[route]} if route in PIECES else {})},
                         attrs={(i,): [["tt.divisibility", 16]] for i in range(3)})  # 16-byte aligned, as at launch
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})


def compile_check() -> None:
    """Build each (route, warps, stages) form for sm_90a and count its copies (no GPU needed). The bulk forms'
    inline PTX addresses shared memory from offset 0, so their one allocation must lie there: checked in the LLVM IR
    (no shared access at a constant offset from ``global_smem`` beyond the allocation's own indexing)."""
    for route, warps, stages in sorted({f[:3] for f in FORMS}):
        k = build(route, warps, stages)
        ptx = k.asm["ptx"]
        line = (f"{route} warps {warps} stages {stages}: shared {k.metadata.shared} B, "
                f"{ptx.count('cp.async.cg.shared.global')} 16-byte cp.async, "
                f"{ptx.count('cp.async.bulk.shared::cluster.global')} bulk copies in the PTX")
        if route in PIECES:
            assert k.metadata.shared == stages * 42 * 1024, f"{line}: a second shared allocation"
        print(line)


def _slots(n_tiles_total: int, g: torch.Generator) -> torch.Tensor:
    """Record indices [n_tiles_total * 64]: lists of TOPK distinct tokens of one request's S_K, requests in turn."""
    lists = -(-n_tiles_total * 64 // TOPK)
    out = []
    for start in range(0, lists, 256):
        n = min(256, lists - start)
        pick = torch.rand(n, S_K, generator=g).topk(TOPK, dim=1).indices.to(torch.int32)
        req = (torch.arange(start, start + n, dtype=torch.int32) % REQUESTS)[:, None]
        out.append(req * S_K + pick)
    return torch.cat(out).reshape(-1)[: n_tiles_total * 64].contiguous()


def launch_us(launch) -> float:
    """Median µs of five launches of ``launch`` (CUDA events around each; it has been launched once before)."""
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        launch()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return sorted(times)[len(times) // 2]


def _measure(cache, g, sms, card, route, warps, stages, ctas, n_tiles):
    grid = sms * ctas
    slots = _slots(grid * n_tiles + stages, g).cuda()  # + the padded tiles the last trips issue
    cycles = torch.zeros(grid, 4, dtype=torch.int64, device="cuda")
    kw = dict(STAGES=stages, WARPS=warps, num_warps=warps, **({"PIECES": PIECES[route]} if route in PIECES else {}))
    kernel = KERNELS[route]
    kernel[(grid,)](cache, slots, cycles, n_tiles, **kw)  # compile and warm up
    torch.cuda.synchronize()
    us = launch_us(lambda: kernel[(grid,)](cache, slots, cycles, n_tiles, **kw))
    per_tile = cycles[:, 0].double().mean().item() / n_tiles
    issue = cycles[:, 1].double().mean().item() / n_tiles
    wait = cycles[:, 2].double().mean().item() / n_tiles
    tb_s = grid * n_tiles * TILE_BYTES / us / 1e6
    row = dict(card=card, route=route, warps=warps, stages=stages, ctas_per_sm=ctas,
               tiles_in_flight_per_sm=stages * ctas,
               tiles_per_cta=n_tiles, us=us, cycles_per_tile_per_cta=per_tile, issue_cycles_per_tile=issue,
               wait_cycles_per_tile=wait, bytes_per_cycle_per_sm=ctas * TILE_BYTES / per_tile, tb_s=tb_s)
    print(f"{route:>8} warps {warps} stages {stages} CTAs an SM {ctas} ({stages * ctas} tiles in flight an SM): "
          f"{per_tile:7.0f} cycles a tile a CTA (issue {issue:5.0f}, wait {wait:5.0f}), "
          f"{row['bytes_per_cycle_per_sm']:5.1f} B a cycle an SM, {us:8.1f} us, {tb_s:5.2f} TB/s")
    return row


def run(json_path: str | None, n_tiles: int) -> None:
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    card = torch.cuda.get_device_name()
    g = torch.Generator().manual_seed(0)
    cache = torch.randint(0, 256, (REQUESTS * S_K * RECORD,), dtype=torch.uint8, device="cuda")
    print(f"{card}: {sms} SMs, tiles of 64 V3.2 records ({TILE_BYTES} B, 2624 16-byte cp.async), {n_tiles} tiles a "
          f"CTA; mean over CTAs")
    results = [_measure(cache, g, sms, card, r, w, s, c, n_tiles) for r, w, s, c in FORMS]
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"results": results}, f, indent=1)


def probe_main(compile_check, run, argv=None) -> None:
    """The command line of this probe and of :mod:`benchmarks.probe_fp8_decode`: ``--compile`` builds for sm_90a
    (``compile_check()``), otherwise ``run(json_path, tiles)`` on the GPU."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--compile", action="store_true", help="build for sm_90a only (no GPU)")
    ap.add_argument("--json")
    ap.add_argument("--tiles", type=int, default=64, help="tiles a CTA (default 64)")
    cli = ap.parse_args(argv)
    if cli.compile:
        compile_check()
    else:
        run(cli.json, cli.tiles)


def main(argv=None) -> None:
    probe_main(compile_check, run, argv)


if __name__ == "__main__":
    main()
