"""A compile probe for the sparse kernel's next form (``docs/perf-notes.md``, the Gluon sparse item): e4m3 codes
decoded from shared memory straight into wgmma's A-operand registers, with no bf16 copy in shared memory.

``Sᵀ [64 keys, 64 rows] += K [64 keys, 16 dims] Qᵀ [16 dims, 64 rows]`` over a 256-dim value half (K from registers,
each key's scale applied there) and ``Oᵀ [64 dims, 64 rows] += Vᵀ [64 dims, 16 keys] Pᵀ [16 keys, 64 rows]`` with
Vᵀ loaded from the same codes in the other role. Usage (any machine, no GPU): ``python -m
benchmarks.probe_register_operands``; prints the sm_90a build's resource line and instruction counts (which
shared-memory loads the fragments take, and that the products read A from registers). Nothing is run.

What it showed (triton 3.6): 99 registers, no stack; K's fragments come as two-byte loads (``LDS.U16``, four a
16-dim slice), Vᵀ's as single bytes (``LDS.U8``, eight a 16-key slice), and every product is an HGMMA with A in
registers. In this unpadded [64, 256]-byte code array a warp's eight rows are 256 bytes apart, on the same banks:
the real form needs a padded or swizzled row stride for the codes."""
from __future__ import annotations

import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma, warpgroup_mma_wait


@gluon.jit
def probe(codes_ptr, scale_ptr, q_ptr, p_ptr, s_out, o_out, ITERS: gl.constexpr):
    W: gl.constexpr = 4
    S_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[W, 1], instr_shape=[16, 64, 16])
    A_S: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=S_L, k_width=2)
    O_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[W, 1], instr_shape=[16, 64, 16])
    A_O: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=O_L, k_width=2)
    BL: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [W, 1], [1, 0])
    CODES: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0])
    NV: gl.constexpr = gl.NVMMASharedLayout.get_default_for([64, 64], gl.bfloat16)
    codes = gl.allocate_shared_memory(gl.uint8, [64, 256], CODES)
    qt = gl.allocate_shared_memory(gl.bfloat16, [256, 64], gl.NVMMASharedLayout.get_default_for([256, 64], gl.bfloat16))
    pt = gl.allocate_shared_memory(gl.bfloat16, [64, 64], NV)
    r = gl.arange(0, 64, layout=gl.SliceLayout(1, BL))
    c = gl.arange(0, 16, layout=gl.SliceLayout(0, BL))
    for j in gl.static_range(16):
        codes.slice(16 * j, 16, dim=1).store(gl.load(codes_ptr + r[:, None] * 256 + 16 * j + c[None, :]))
    QL: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [W, 1], [1, 0])
    rq = gl.arange(0, 256, layout=gl.SliceLayout(1, QL))
    cq = gl.arange(0, 64, layout=gl.SliceLayout(0, QL))
    qt.store(gl.load(q_ptr + rq[:, None] * 64 + cq[None, :]))
    rp = gl.arange(0, 64, layout=gl.SliceLayout(1, QL))
    pt.store(gl.load(p_ptr + rp[:, None] * 64 + cq[None, :]))
    fence_async_shared()
    gl.thread_barrier()
    sc_k = gl.load(scale_ptr + gl.arange(0, 64, layout=gl.SliceLayout(1, A_S)))  # a scale per key (row of K)
    s = gl.zeros([64, 64], gl.float32, layout=S_L)
    o = gl.zeros([64, 64], gl.float32, layout=O_L)
    for it in range(ITERS):
        # S^T = K Q^T: K's 16-dim slices as A from registers
        for k in gl.static_range(16):
            kc = codes.slice(16 * k, 16, dim=1).load(A_S)  # [64 keys, 16 dims] codes
            ka = (kc.to(gl.float8e4nv, bitcast=True).to(gl.float32) * sc_k[:, None]).to(gl.bfloat16)
            s = warpgroup_mma(ka, qt.slice(16 * k, 16, dim=0), s, is_async=True)
            s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))
        # O^T = V^T P^T for the first 64 value dims (one m64 tile): V^T [64 dims, 64 keys] from the same codes
        for k in gl.static_range(4):
            vt = codes.slice(16 * k, 16, dim=0).permute((1, 0)).slice(0, 64, dim=0).load(A_O)  # [64 dims, 16 keys]
            va = vt.to(gl.float8e4nv, bitcast=True).to(gl.float32).to(gl.bfloat16)
            o = warpgroup_mma(va, pt.slice(16 * k, 16, dim=0), o, is_async=True)
            o = warpgroup_mma_wait(num_outstanding=1, deps=(o,))
    s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
    o = warpgroup_mma_wait(num_outstanding=0, deps=(o,))
    ro = gl.arange(0, 64, layout=gl.SliceLayout(1, S_L))
    co = gl.arange(0, 64, layout=gl.SliceLayout(0, S_L))
    gl.store(s_out + ro[:, None] * 64 + co[None, :], s)
    gl.store(o_out + ro[:, None] * 64 + co[None, :], o)


def main() -> None:
    sig = {"codes_ptr": "*u8", "scale_ptr": "*fp32", "q_ptr": "*bf16", "p_ptr": "*bf16", "s_out": "*fp32",
           "o_out": "*fp32", "ITERS": "constexpr"}
    src = GluonASTSource(fn=probe, signature=sig, constexprs={"ITERS": 4}, attrs={})
    c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    cuobj = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(c.asm["cubin"])
        f.flush()
        sass = subprocess.run([cuobj, "-sass", f.name], capture_output=True, text=True).stdout
        res = subprocess.run([cuobj, "-res-usage", f.name], capture_output=True, text=True).stdout
    print(res.strip().splitlines()[-1].strip())
    ops = {}
    for line in sass.splitlines():
        m = re.search(r"\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_]+(\.[A-Za-z0-9_]+)*)", line)
        if m:
            op = m.group(2)
            ops[op] = ops.get(op, 0) + 1
    for op in ("LDS.U8", "LDS.U16", "HGMMA.64x64x16.F32.BF16", "F2FP.F16.E4M3.UNPACK_B", "F2FP.BF16.F32.PACK_AB"):
        print(f"{op:28s} {ops.get(op, 0)}")


if __name__ == "__main__":
    main()
