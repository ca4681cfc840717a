"""A probe of the sparse kernel's candidate form (``docs/perf-notes.md``, the Gluon sparse item): e4m3 codes decoded
from shared memory straight into wgmma's A-operand registers, with no bf16 copy of them in shared memory.

Each CTA (one warpgroup) takes a value half of a 64-key tile of codes: partial scores ``Sᵀ [64 keys, 64 rows] += K
Qᵀ`` over its 256 dims (16 slices of 16 dims, K in registers with each key's scale applied there) and ``Oᵀ += Vᵀ Pᵀ``
for four 64-dim tiles (four 16-key slices each, Vᵀ loaded from the same codes in the other role); two CTAs an SM,
as the form would run its two warpgroups. Nothing is checked against a reference: it is a build and throughput probe.

Usage: ``python -m benchmarks.probe_register_operands --compile`` (any machine: the sm_90a build's registers, stack
and the loads and products it lowers to, codes unswizzled and swizzled) or ``python -m
benchmarks.probe_register_operands`` (sm_90 GPU: SM cycles a tile-half per CTA, from the cycle counter around the
loop). Findings (triton 3.6): ``2026-11-28-h200-register-operands-probe.txt`` and the notes."""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma, warpgroup_mma_wait

#: what :func:`compile_report` counts in the SASS
COUNTED = ("LDS.U8", "LDS.U16", "HGMMA.64x64x16.F32.BF16", "F2FP.F16.E4M3.UNPACK_B", "F2FP.BF16.F32.PACK_AB")


@gluon.jit
def _tile_halves(codes_ptr, q_ptr, p_ptr, cycles_ptr, out_ptr, ITERS: gl.constexpr, SWIZZLE: gl.constexpr):
    W: gl.constexpr = 4
    ACC: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[W, 1], instr_shape=[16, 64, 16])
    A: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=ACC, k_width=2)
    BL: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [W, 1], [1, 0])
    if SWIZZLE:  # 4-byte units of a row XOR the row's index mod 8: a warp's eight rows on eight bank groups
        CODES: gl.constexpr = gl.SwizzledSharedLayout(4, 1, 8, order=[1, 0])
    else:  # rows 256 B apart: a warp's eight rows on the same banks
        CODES: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0])
    codes = gl.allocate_shared_memory(gl.uint8, [2, 64, 256], CODES)  # two tiles, so no load is loop-invariant
    qt = gl.allocate_shared_memory(gl.bfloat16, [256, 64],
                                   gl.NVMMASharedLayout.get_default_for([256, 64], gl.bfloat16))
    pt = gl.allocate_shared_memory(gl.bfloat16, [64, 64], gl.NVMMASharedLayout.get_default_for([64, 64], gl.bfloat16))
    r = gl.arange(0, 64, layout=gl.SliceLayout(1, BL))
    c = gl.arange(0, 16, layout=gl.SliceLayout(0, BL))
    for t in gl.static_range(2):
        for j in gl.static_range(16):
            codes.index(t).slice(16 * j, 16, dim=1).store(gl.load(codes_ptr + (t * 64 + r[:, None]) * 256 + 16 * j
                                                                  + c[None, :]))
    QL: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [W, 1], [1, 0])
    rq = gl.arange(0, 256, layout=gl.SliceLayout(1, QL))
    cq = gl.arange(0, 64, layout=gl.SliceLayout(0, QL))
    qt.store(gl.load(q_ptr + rq[:, None] * 64 + cq[None, :]))
    rp = gl.arange(0, 64, layout=gl.SliceLayout(1, QL))
    pt.store(gl.load(p_ptr + rp[:, None] * 64 + cq[None, :]))
    fence_async_shared()
    gl.thread_barrier()
    sc = gl.full([64], 0.5, gl.float32, layout=gl.SliceLayout(1, A))
    o0 = gl.zeros([64, 64], gl.float32, layout=ACC)
    o1 = gl.zeros([64, 64], gl.float32, layout=ACC)
    o2 = gl.zeros([64, 64], gl.float32, layout=ACC)
    o3 = gl.zeros([64, 64], gl.float32, layout=ACC)
    s_sum = gl.zeros([64, 64], gl.float32, layout=ACC)
    one = gl.full([1], 0, gl.int32, layout=gl.BlockedLayout([1], [32], [W], [0]))
    t0 = gl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [one], dtype=gl.int64, is_pure=False, pack=1)
    for it in range(ITERS):
        cod = codes.index(it % 2)
        s = gl.zeros([64, 64], gl.float32, layout=ACC)
        for k in gl.static_range(16):  # Sᵀ = K Qᵀ over the half's 256 dims
            kc = cod.slice(16 * k, 16, dim=1).load(A)
            ka = (kc.to(gl.float8e4nv, bitcast=True).to(gl.float32) * sc[:, None]).to(gl.bfloat16)
            s = warpgroup_mma(ka, qt.slice(16 * k, 16, dim=0), s, is_async=True)
            s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))
        for k in gl.static_range(4):  # Oᵀ = Vᵀ Pᵀ: four 64-dim tiles x four 16-key slices
            vt = cod.slice(16 * k, 16, dim=0).permute((1, 0))
            v0 = vt.slice(0, 64, dim=0).load(A).to(gl.float8e4nv, bitcast=True).to(gl.float32).to(gl.bfloat16)
            o0 = warpgroup_mma(v0, pt.slice(16 * k, 16, dim=0), o0, is_async=True)
            v1 = vt.slice(64, 64, dim=0).load(A).to(gl.float8e4nv, bitcast=True).to(gl.float32).to(gl.bfloat16)
            o1 = warpgroup_mma(v1, pt.slice(16 * k, 16, dim=0), o1, is_async=True)
            v2 = vt.slice(128, 64, dim=0).load(A).to(gl.float8e4nv, bitcast=True).to(gl.float32).to(gl.bfloat16)
            o2 = warpgroup_mma(v2, pt.slice(16 * k, 16, dim=0), o2, is_async=True)
            v3 = vt.slice(192, 64, dim=0).load(A).to(gl.float8e4nv, bitcast=True).to(gl.float32).to(gl.bfloat16)
            o3 = warpgroup_mma(v3, pt.slice(16 * k, 16, dim=0), o3, is_async=True)
            o0, o1, o2, o3 = warpgroup_mma_wait(num_outstanding=0, deps=(o0, o1, o2, o3))
        s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
        s_sum += s
    t1 = gl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [one], dtype=gl.int64, is_pure=False, pack=1)
    gl.store(cycles_ptr + gl.program_id(0) + one, t1 - t0)
    ro = gl.arange(0, 64, layout=gl.SliceLayout(1, ACC))
    co = gl.arange(0, 64, layout=gl.SliceLayout(0, ACC))
    gl.store(out_ptr + gl.program_id(0) * 4096 + ro[:, None] * 64 + co[None, :], s_sum + o0 + o1 + o2 + o3)


def compile_report(swizzle: bool, iters: int = 2000) -> dict:
    """Build :func:`_tile_halves` for sm_90a (no GPU needed): its resource line (``"res"``), registers, stack
    bytes, and the count of each of :data:`COUNTED` in its SASS."""
    sig = {"codes_ptr": "*u8", "q_ptr": "*bf16", "p_ptr": "*bf16", "cycles_ptr": "*i64", "out_ptr": "*fp32",
           "ITERS": "constexpr", "SWIZZLE": "constexpr"}
    src = GluonASTSource(fn=_tile_halves, signature=sig, constexprs={"ITERS": iters, "SWIZZLE": swizzle}, attrs={})
    c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    cuobj = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(c.asm["cubin"])
        f.flush()
        sass = subprocess.run([cuobj, "-sass", f.name], capture_output=True, text=True).stdout
        res = subprocess.run([cuobj, "-res-usage", f.name], capture_output=True, text=True).stdout.strip()
    line = res.splitlines()[-1].strip()
    ops = {}
    for text in sass.splitlines():
        m = re.search(r"\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_]+(\.[A-Za-z0-9_]+)*)", text)
        if m:
            ops[m.group(2)] = ops.get(m.group(2), 0) + 1
    return dict(res=line, registers=int(re.search(r"REG:(\d+)", line).group(1)),
                stack=int(re.search(r"STACK:(\d+)", line).group(1)), **{op: ops.get(op, 0) for op in COUNTED})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--compile", action="store_true", help="only build for sm_90a and report (no GPU)")
    args = ap.parse_args(argv)
    if args.compile:
        for swizzle in (False, True):
            print(f"codes {'swizzled' if swizzle else 'unswizzled'}: {compile_report(swizzle)}")
        return
    dev = "cuda"
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    g = torch.Generator(device="cpu").manual_seed(0)
    codes = torch.randint(0, 120, (128, 256), generator=g, dtype=torch.uint8).to(dev)
    q = torch.randn(256, 64, generator=g).to(torch.bfloat16).to(dev)
    p = torch.rand(64, 64, generator=g).to(torch.bfloat16).to(dev)
    iters = 2000
    print(torch.cuda.get_device_name())
    for swizzle in (False, True):
        grid = 2 * sms  # two warpgroups' worth an SM, as the form would run them
        cycles = torch.zeros(grid, dtype=torch.int64, device=dev)
        out = torch.empty(grid, 4096, dtype=torch.float32, device=dev)
        for _ in range(2):  # the first call compiles
            _tile_halves[(grid,)](codes, q, p, cycles, out, ITERS=iters, SWIZZLE=swizzle, num_warps=4)
            torch.cuda.synchronize()
        per = cycles.double() / iters
        print(f"codes {'swizzled' if swizzle else 'unswizzled'}: {per.median().item():7.0f} cycles a tile-half per CTA "
              f"(min {per.min().item():.0f}, max {per.max().item():.0f}; {grid} CTAs, {iters} tiles each)")


if __name__ == "__main__":
    main()
