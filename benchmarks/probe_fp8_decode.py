"""A probe of what decoding a tile of V3.2 FP8 codes costs an SM by each route the codes can take, with nothing else
running: through shared memory (as the sparse Hopper kernel's output warpgroups decode today) or straight from
global memory into registers (``docs/perf-notes.md``, sparse section, "What the numbers leave").

One CTA an SM, 8 warps (the two output warpgroups), goes through 64-record tiles of a V3.2 cache (656 bytes a
token: 512 e4m3 codes, four fp32 scales, 64 bf16 RoPE dims), the records those of top-2048 lists as in
:mod:`benchmarks.probe_record_gather`, and writes each tile's 512 value dims as bf16 (``code * scale``, the kernel's
rule) into a two-stage [64, 512] NVMMA-swizzled ring, as the kernel's K stages. Forms (``ROUTE``):

* ``smem``: the codes land by ``cp.async`` (16 bytes, one commit group a tile, two tiles in flight) in a staging
  ring of their own, then every thread reads its codes back and writes their bf16 values: the kernel's route
  (its codes land in the upper half of the bf16 buffer and are decoded in place; here they have their own bytes,
  which only makes the shared-memory traffic the same with fewer barriers).
* ``registers``: each thread loads its codes and scales (16-byte global loads) for tile ``t + 1`` before it
  decodes tile ``t`` from registers: no staging bytes written or read in shared memory.
* ``registers-now``: the same loads issued in the trip that decodes them (their latency exposed).
* ``decode-only``: the codes of the first two tiles, landed once, decoded again and again: the decode's own cost
  (its shared-memory read and write) with no global traffic.
* ``bulk``: each record lands whole by one bulk copy (``cp.async.bulk``: the TMA unit's 1-D copy, issued by 64
  lanes, counted in bytes on a stage's mbarrier; :mod:`benchmarks.probe_record_gather` measured the gather alone)
  into a row of 1024 bytes of one of two staging stages, and every thread decodes [64, 128] slices (a row's 128
  bytes across 8 lanes: rows 1024 bytes apart then meet no bank conflict) with each key's scale read from the
  landed record. One bf16 stage (shared memory holds two 64 KB record stages and one 64 KB bf16 stage); the
  inline PTX addresses shared memory from offset 0, so this form keeps one allocation and views it three ways.

Nothing is checked against a reference: a cost probe. Usage: ``python -m benchmarks.probe_fp8_decode --compile`` (any
machine: the sm_90a builds, registers and spills) or ``python -m benchmarks.probe_fp8_decode [--tiles N] [--json
PATH]`` (sm_90 GPU): per form, cycles a tile per CTA (mean over CTAs) and TB/s of records chip-wide.
Findings (H200): ``2026-11-28-h200-probe-fp8-decode*.json`` and the notes.
"""
from __future__ import annotations

import json

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared

from benchmarks.probe_record_gather import (
    RECORD,
    REQUESTS,
    S_K,
    TILE_BYTES,
    _bulk_init,
    _bulk_init_fence,
    _bulk_issue,
    _bulk_wait,
    _clock,
    _slots,
    launch_us,
    probe_main,
)
from openmla.ops.aot import _resource_usage

D_V = gl.constexpr(512)
BLOCKS = gl.constexpr(8)  # 64-code blocks a record
WARPS = 8
ROUTES = ("smem", "registers", "registers-now", "decode-only", "bulk")


@gluon.jit
def _records(k_ptr, slots_ptr, tile, CVT: gl.constexpr):
    """Byte pointers [64] (``CVT``'s row slice) to the records of tile ``tile``."""
    offs_j = gl.arange(0, 64, layout=gl.SliceLayout(1, CVT))
    slot = gl.load(slots_ptr + tile.to(gl.int64) * 64 + offs_j)
    return k_ptr + slot.to(gl.int64) * RECORD


@gluon.jit
def _values(codes, scale):
    """bf16 ``fp32(e4m3 codes) * scale`` (one scale a row), the sparse kernel's rule."""
    return (codes.to(gl.float8e4nv, bitcast=True).to(gl.float32) * scale[:, None]).to(gl.bfloat16)


@gluon.jit
def _load_codes(rec, CVT: gl.constexpr):
    """A tile's codes and scales into registers: eight [64, 64] uint8 blocks (16 bytes a thread each) and the four
    scales [64] fp32."""
    offs_c = gl.arange(0, 64, layout=gl.SliceLayout(0, CVT))
    ptrs = rec[:, None] + offs_c[None, :]
    sc_ptr = (rec + D_V).to(gl.pointer_type(gl.float32))
    return (gl.load(ptrs), gl.load(ptrs + 64), gl.load(ptrs + 128), gl.load(ptrs + 192), gl.load(ptrs + 256),
            gl.load(ptrs + 320), gl.load(ptrs + 384), gl.load(ptrs + 448),
            gl.load(sc_ptr), gl.load(sc_ptr + 1), gl.load(sc_ptr + 2), gl.load(sc_ptr + 3))


@gluon.jit
def _store_values(dst, c0, c1, c2, c3, c4, c5, c6, c7, s0, s1, s2, s3):
    """A tile's bf16 values into the [64, 512] stage ``dst``."""
    dst.slice(0, 64, dim=1).store(_values(c0, s0))
    dst.slice(64, 64, dim=1).store(_values(c1, s0))
    dst.slice(128, 64, dim=1).store(_values(c2, s1))
    dst.slice(192, 64, dim=1).store(_values(c3, s1))
    dst.slice(256, 64, dim=1).store(_values(c4, s2))
    dst.slice(320, 64, dim=1).store(_values(c5, s2))
    dst.slice(384, 64, dim=1).store(_values(c6, s3))
    dst.slice(448, 64, dim=1).store(_values(c7, s3))


@gluon.jit
def _issue_codes(rec, codes, scales, stage, CVT: gl.constexpr):
    """``cp.async`` a tile's codes (eight [64, 64] byte blocks) and scales (four rows of 64 fp32, 4 bytes a copy, as
    the kernel copies them) into staging ``stage``."""
    SCALES: gl.constexpr = gl.BlockedLayout([1], [32], [8], [0])
    offs_c = gl.arange(0, 64, layout=gl.SliceLayout(0, CVT))
    for c in gl.static_range(BLOCKS):
        async_copy.async_copy_global_to_shared(codes.index(stage * BLOCKS + c), rec[:, None] + c * 64 + offs_c[None, :])
    sc_ptr = (gl.convert_layout(rec, SCALES) + D_V).to(gl.pointer_type(gl.float32))
    for t in gl.static_range(4):
        async_copy.async_copy_global_to_shared(scales.index(stage * 4 + t), sc_ptr + t)
    async_copy.commit_group()


@gluon.jit
def _decode_staged(codes, scales, dst, stage, CVT: gl.constexpr):
    """Read staging ``stage``'s codes and scales back and write their values into ``dst``."""
    row: gl.constexpr = gl.SliceLayout(1, CVT)
    s0 = scales.index(stage * 4).load(row)
    s1 = scales.index(stage * 4 + 1).load(row)
    s2 = scales.index(stage * 4 + 2).load(row)
    s3 = scales.index(stage * 4 + 3).load(row)
    base = stage * BLOCKS
    _store_values(dst, codes.index(base).load(CVT), codes.index(base + 1).load(CVT), codes.index(base + 2).load(CVT),
                  codes.index(base + 3).load(CVT), codes.index(base + 4).load(CVT), codes.index(base + 5).load(CVT),
                  codes.index(base + 6).load(CVT), codes.index(base + 7).load(CVT), s0, s1, s2, s3)


@gluon.jit
def _decode_records(raw, stage, SLICE: gl.constexpr):
    """Decode the landed records of staging ``stage`` (rows of 1024 bytes: codes, then the four fp32 scales) into
    the bf16 stage at the front of ``raw``; ``SLICE``: the [64, 128] layout, a row's 128 bytes across 8 lanes."""
    PLAIN3: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0])
    NVMMA: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    dst = raw._reinterpret(gl.bfloat16, [3, 64, 512], NVMMA).index(0)
    recs = raw._reinterpret(gl.uint8, [3, 64, 1024], PLAIN3).index(1 + stage)
    words = raw._reinterpret(gl.float32, [3, 64, 256], PLAIN3).index(1 + stage)
    for q in gl.static_range(4):
        codes = recs.slice(128 * q, 128, dim=1).load(SLICE)
        scale = words.slice(128 + q, 1, dim=1).load(SLICE)  # [64, 1]: scale q covers dims 128q ..
        vals = (codes.to(gl.float8e4nv, bitcast=True).to(gl.float32) * scale).to(gl.bfloat16)
        dst.slice(128 * q, 128, dim=1).store(vals)


@gluon.jit
def _bulk_decode_stream(k_ptr, slots_ptr, cycles_ptr, n_tiles):
    """The ``bulk`` route: records by bulk copies, two tiles in flight, decoded from their landed rows."""
    SLICE: gl.constexpr = gl.BlockedLayout([1, 16], [4, 8], [8, 1], [1, 0])
    LANES: gl.constexpr = gl.BlockedLayout([1], [32], [8], [0])
    raw = gl.allocate_shared_memory(gl.uint8, [192, 1024], gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    lane = gl.arange(0, 256, layout=LANES)
    one = gl.full([1], 1, gl.int32, layout=LANES)
    STAGE0: gl.constexpr = 65536  # staging stage s at byte 65536 (s + 1); its mbarrier in row 0's unused bytes
    BAR: gl.constexpr = 1016
    for s in gl.static_range(2):
        _bulk_init(STAGE0 * (s + 1) + BAR, lane)
    _bulk_init_fence(one)
    gl.thread_barrier()
    first = gl.program_id(0) * n_tiles
    t0 = _clock(one)
    for s in gl.static_range(2):
        _bulk_issue(k_ptr, slots_ptr, first + s, STAGE0 * (s + 1), STAGE0 * (s + 1) + BAR, lane, 1, 1024)
    for t in range(n_tiles):
        stage = t % 2
        _bulk_wait(STAGE0 * (stage + 1) + BAR, (t // 2) & 1, lane)
        _decode_records(raw, stage, SLICE)
        fence_async_shared()  # as the kernel: the tensor cores read the stage next
        gl.thread_barrier()  # every thread's codes read: the staging stage can be refilled
        # the lists are padded by two tiles
        _bulk_issue(k_ptr, slots_ptr, first + t + 2, STAGE0 * (stage + 1), STAGE0 * (stage + 1) + BAR, lane, 1,
                    1024)
    _bulk_wait(STAGE0 * ((n_tiles % 2) + 1) + BAR, (n_tiles // 2) & 1, lane)  # the padded tiles' copies
    _bulk_wait(STAGE0 * (((n_tiles + 1) % 2) + 1) + BAR, ((n_tiles + 1) // 2) & 1, lane)
    t1 = _clock(one)
    keep = raw._reinterpret(gl.bfloat16, [3, 64, 512], gl.NVMMASharedLayout(
        swizzle_byte_width=128, element_bitwidth=16, rank=2)).index(0).slice(0, 64, dim=1).load(SLICE)
    gl.store(cycles_ptr + 4 * gl.program_id(0) + one * 0, t1 - t0, mask=one == 1)
    gl.store(cycles_ptr + 4 * gl.program_id(0) + 1 + keep.to(gl.int64) * 0, keep.to(gl.int64), mask=keep == 12345.0)


@gluon.jit
def _decode_stream(k_ptr, slots_ptr, cycles_ptr, n_tiles, ROUTE: gl.constexpr):
    CVT: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [8, 1], [1, 0])  # 16 B a thread
    PLAIN: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0])
    NVMMA: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    ONE: gl.constexpr = gl.BlockedLayout([1], [32], [8], [0])
    ring = gl.allocate_shared_memory(gl.bfloat16, [2, 64, 512], NVMMA)
    one = gl.full([1], 1, gl.int32, layout=ONE)
    first = gl.program_id(0) * n_tiles
    t0 = _clock(one)
    if ROUTE == 1 or ROUTE == 2:  # registers (ahead), registers-now
        if ROUTE == 1:
            c0, c1, c2, c3, c4, c5, c6, c7, s0, s1, s2, s3 = _load_codes(_records(k_ptr, slots_ptr, first, CVT), CVT)
        for t in range(n_tiles):
            if ROUTE == 1:
                n0, n1, n2, n3, n4, n5, n6, n7, m0, m1, m2, m3 = _load_codes(
                    _records(k_ptr, slots_ptr, first + t + 1, CVT), CVT)  # the lists are padded by a tile
            else:
                c0, c1, c2, c3, c4, c5, c6, c7, s0, s1, s2, s3 = _load_codes(
                    _records(k_ptr, slots_ptr, first + t, CVT), CVT)
            _store_values(ring.index(t % 2), c0, c1, c2, c3, c4, c5, c6, c7, s0, s1, s2, s3)
            fence_async_shared()  # as the kernel: the tensor cores read the stage next
            gl.thread_barrier()
            if ROUTE == 1:
                c0, c1, c2, c3, c4, c5, c6, c7 = n0, n1, n2, n3, n4, n5, n6, n7
                s0, s1, s2, s3 = m0, m1, m2, m3
    else:  # smem, decode-only
        codes = gl.allocate_shared_memory(gl.uint8, [2 * BLOCKS, 64, 64], PLAIN)
        scales = gl.allocate_shared_memory(gl.float32, [2 * 4, 64], gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
        for s in gl.static_range(2):
            _issue_codes(_records(k_ptr, slots_ptr, first + s, CVT), codes, scales, s, CVT)
        if ROUTE == 3:
            async_copy.wait_group(0)
            gl.thread_barrier()
        for t in range(n_tiles):
            stage = t % 2
            if ROUTE == 0:
                async_copy.wait_group(1)
                gl.thread_barrier()
            _decode_staged(codes, scales, ring.index(stage), stage, CVT)
            fence_async_shared()
            gl.thread_barrier()  # codes read and values written by every thread
            if ROUTE == 0:
                _issue_codes(_records(k_ptr, slots_ptr, first + t + 2, CVT), codes, scales, stage, CVT)
        async_copy.wait_group(0)
    t1 = _clock(one)
    # one value of the ring read back, so that the stores are not removed
    keep = ring.index(0).slice(0, 64, dim=1).load(CVT)
    row = cycles_ptr + 4 * gl.program_id(0) + one * 0
    gl.store(row, t1 - t0, mask=one == 1)
    gl.store(row + 1, gl.sum(gl.sum(keep.to(gl.float32), axis=1), axis=0).to(gl.int64) + one * 0, mask=one == 1)


SIG = {"k_ptr": "*u8", "slots_ptr": "*i32", "cycles_ptr": "*i64", "n_tiles": "i32"}


def _kernel(route: int):
    return _bulk_decode_stream if ROUTES[route] == "bulk" else _decode_stream


def build(route: int):
    """One form compiled for sm_90a (no GPU needed): Triton's compiled kernel (its ``asm`` and ``metadata``)."""
    src = GluonASTSource(_kernel(route), SIG, constexprs={} if ROUTES[route] == "bulk" else {"ROUTE": route},
                         attrs={(i,): [["tt.divisibility", 16]] for i in range(3)})  # 16-byte aligned, as at launch
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": WARPS})


def compile_check() -> None:
    """Build each form for sm_90a and report its registers, stack and loads (no GPU needed)."""
    for route, name in enumerate(ROUTES):
        k = build(route)
        ptx = k.asm["ptx"]
        usage = _resource_usage(k.asm["cubin"])
        if name == "bulk":  # its inline PTX addresses shared memory from offset 0: one allocation only
            assert k.metadata.shared == 192 * 1024, f"bulk: {k.metadata.shared} B of shared memory, a second allocation"
        print(f"{name}: shared {k.metadata.shared} B, registers {usage.get('REG')}, stack {usage.get('STACK')} B, "
              f"{ptx.count('ld.global.v4')} 16-byte global loads, "
              f"{ptx.count('cp.async.cg.shared.global')} 16-byte cp.async, "
              f"{ptx.count('cp.async.bulk.shared::cluster.global')} bulk copies in the PTX")


def _measure(cache, g, sms, card, route, n_tiles):
    slots = _slots(sms * n_tiles + 2, g).cuda()  # + the padded tiles the last trips load
    cycles = torch.zeros(sms, 4, dtype=torch.int64, device="cuda")
    kernel, kw = _kernel(route), ({} if ROUTES[route] == "bulk" else {"ROUTE": route})
    kernel[(sms,)](cache, slots, cycles, n_tiles, num_warps=WARPS, **kw)  # compile and warm up
    torch.cuda.synchronize()
    us = launch_us(lambda: kernel[(sms,)](cache, slots, cycles, n_tiles, num_warps=WARPS, **kw))
    per_tile = cycles[:, 0].double().mean().item() / n_tiles
    tb_s = sms * n_tiles * TILE_BYTES / us / 1e6
    row = dict(card=card, route=ROUTES[route], tiles_per_cta=n_tiles, us=us, cycles_per_tile=per_tile, tb_s=tb_s)
    print(f"{ROUTES[route]:>14}: {per_tile:7.0f} cycles a tile, {us:8.1f} us, {tb_s:5.2f} TB/s of records")
    return row


def run(json_path: str | None, n_tiles: int) -> None:
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    card = torch.cuda.get_device_name()
    g = torch.Generator().manual_seed(0)
    # codes of small values (|x| < 2: bytes 0x00-0x3f and 0x80-0xbf) and scales of 1.0, so nothing overflows
    cache = torch.randint(0, 64, (REQUESTS * S_K, RECORD), dtype=torch.uint8)
    cache |= (torch.randint(0, 2, cache.shape, dtype=torch.uint8) << 7)
    cache[:, 512:528] = torch.ones(REQUESTS * S_K, 4, dtype=torch.float32).view(torch.uint8)
    cache = cache.reshape(-1).cuda()
    print(f"{card}: {sms} CTAs (one an SM) of {WARPS} warps, tiles of 64 V3.2 records decoded into a two-stage bf16 "
          f"ring, {n_tiles} tiles a CTA; mean over CTAs")
    results = [_measure(cache, g, sms, card, r, n_tiles) for r in range(len(ROUTES))]
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"results": results}, f, indent=1)


def main(argv=None) -> None:
    probe_main(compile_check, run, argv)


if __name__ == "__main__":
    main()
