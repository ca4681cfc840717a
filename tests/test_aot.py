"""Every kernel variant compiles ahead of time for the GPUs we claim, on a machine with no GPU.

Triton's wheel carries ptxas and cuobjdump, so these run in CPU CI. Checks: the compile succeeds,
Hopper builds of the 64/128-row tiles use ``wgmma`` (the tensor-core path; a kernel that fell back
to ``mma.sync`` there would be several times slower), and no variant puts arrays in local memory.
Register spills (stack frame bytes) are recorded, not asserted: the portable kernel's epilogue spills
a few hundred to ~1700 bytes a thread on sm_90 once per request, which the GPU benchmarks account for.
"""

from __future__ import annotations

import functools

import pytest

from openmla._runtime import triton_available
from openmla.ops.decode_dense import smem_per_block

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not importable")


@functools.lru_cache(maxsize=None)
def reports(arch: int, select: str):
    from openmla.ops.aot import compile_all

    found = compile_all(arch, select)
    assert found and all(r.kernel != "*" for r in found), found
    return found


@pytest.mark.parametrize("select", ["bf16", "_plan_splitkv_kernel"])  # "bf16" includes the Gluon variants
def test_compiles_for_sm90a(select):
    for report in reports(90, select):
        assert report.ok, f"{report.kernel}[{report.variant}]: {report.error}"
        assert report.local_bytes == 0, f"{report.variant}: {report.local_bytes} bytes of local memory"
        if "bm64" in report.variant or "bm128" in report.variant or report.variant.startswith("gluon"):
            assert report.has_wgmma, f"{report.variant} does not use wgmma on sm_90a"
        assert report.shared_bytes <= smem_per_block(90), f"{report.variant}: {report.shared_bytes} B of shared memory"


def test_unchained_tiles_split_both_products_between_warpgroups():
    """The unchained tiles rely on Triton's layout pass not seeing through the softmax's branch: both products
    must get two warpgroups side by side (``4x2``). Were a Triton upgrade to follow the branch, the scores would
    again go to ``8x1`` (both warpgroups computing all of them): still correct, 1.5x the work; this says so."""
    found = [r for r in reports(90, "bf16") if "unchained" in r.variant]
    assert found
    for report in found:
        assert report.mma_warps == ["4x2"], f"{report.variant}: mma layouts {report.mma_warps}"


# Stack bytes a thread of each Gluon kernel may use on sm_90a (register spills: local memory, slower than
# registers). 0 where a kernel has none; the others are today's measured frames, so that growth fails here,
# with what is known about them. Keys: a text of the variant's name; the first key found applies.
_GLUON_STACK_BUDGET = (
    # The four-warpgroup form's output warpgroups convert each output quarter for 16-byte stores (_STORE_QUARTER,
    # _STORE_PARTIAL: shuffles, two layouts by whether the request was split) at a request's end; under the
    # 128-register launch cap that added 8-24 B of stack to every build of that form (0 -> 8-24 B where it had
    # none). Read in the sm_90a SASS of each build (2026-11-28): every local load and store sits outside the KV
    # tile loops (no loop with a wgmma and without global stores holds one): stored at entry or a request's start,
    # reloaded in its set-up and epilogue.
    ("box-allocs", 24),  # the four-warpgroup form with each box's ready barriers in an allocation of their own
    # (the launcher's box_allocs, on by default): 8 B at d=576 (16-24 B with the right output warpgroup a tile
    # behind, LAG), 8-16 B at d=512
    ("softmax-only async-arrive tma-k stage-ready", 32),  # the four-warpgroup form with TMA on one ready barrier a
    # stage: the 16 B below and the stores' 16, and the loader (56 registers) keeps two values around its TMA issue
    # in local memory, off the tensor cores' path
    ("gluon-ws sparse", 32),  # token-sparse lists in the four-warpgroup form: 32 B over 16-bit caches (24 before
    # the stores' layouts; 16 B before each tile's slots came to the softmax warpgroup through shared memory),
    # 24-32 B over the V3.2 FP8 cache (8-16 before). Read in the SASS of an FP8 build that had the slots in shared
    # memory too (40 B): stores at kernel entry and in the softmax warpgroup's per-request set-up, reloads there
    # and in its per-request epilogue, none inside the KV loop. The FP8 loader's registers were set for its decode
    # (at 56 it spilled 48 B)
    ("q e4m3 cache d576 causal softmax-only", 64),  # over a per-tensor FP8 cache, four-warpgroup form: bf16 q
    # 32 B, fp16 q and e4m3 q 64 B (16-48 B before the stores' layouts; two compiles whose sources differed only in
    # line numbers gave 24 and 48 B then, under the 128-register launch cap; the loader decodes each tile, an e4m3
    # q through registers too)
    ("softmax-only", 32),  # its four-warpgroup form by cp.async: 24-32 B (16 before the stores' layouts: three
    # values spilled at entry, reloaded only in each request's output store; outside the KV loop in its SASS)
    # the three-warpgroup form: its two output halves converted in [64, 64] chunks for 16-byte stores (_store_half)
    # took it from 0-16 B to 16-64 B. Read in the SASS of three builds (full and causal with TMA boxes, causal by
    # cp.async): the softmax and output warpgroups' local loads and stores sit in a request's set-up, its first
    # (peeled) tile and its epilogue, none in the tile loops; with TMA boxes the loader keeps one 64-bit value in
    # local memory around each tile's issue (one store and one load a tile)
    ("pv-first async-arrive tma-k box-ready", 64),
    ("pv-first loader-waits tma-k box-ready", 40),
    ("overlap async-arrive tma-k box-ready", 40),
    ("pv-first", 24),
    ("gluon-ws ", 0),  # the warp-specialized kernel otherwise: none in any partition
    ("gluon-fp8 ", 16),  # the e4m3-product kernel: 16 B since its output warpgroups' stores take the layouts
    # above (none before), outside its tile loops
    ("gluon-small-heads q ", 824),  # per-tensor FP8: ~50 spill instructions in the KV loop (the e4m3 decode), owed
    ("fp8-v32 cache rows<=32", 48),  # the small-head sparse kernel's 32-row build (255 registers, 2 programs an SM):
    # 16 B, four values reloaded at the top of each request; with a sink 48 B, reloads at the top of each request and
    # in its epilogue (its SASS: none in the tile loop)
    ("rows<=32 bn64 tma-k", 160),  # the same kernel with K tiles by TMA: 112-160 B, 16-48 B above its
    # cp.async twin in each config (where in the SASS: not yet read)
    ("rows<=32", 120),  # the 32-row small-head kernel: 72-120 B; its SASS has spill reloads between the
    # tile's products and the loop's branch, so likely in the KV loop: owed
    ("gluon-small-heads ", 0),
    ("gluon ", 32),  # the 8-warp 64-row kernel built for the combine kernel: 32 B
)


def test_gluon_kernels_stack_frames_within_their_budget():
    """Issue-level requirement for the Hopper kernels: no spills where none is known, and known ones do not
    grow (the budgets above say where they are)."""
    for report in reports(90, "gluon"):
        budget = next(b for key, b in _GLUON_STACK_BUDGET if key in report.variant)
        assert report.spill_bytes is not None, report.variant
        assert report.spill_bytes <= budget, (
            f"{report.variant}: {report.spill_bytes} B of stack a thread, budget {budget} B")


def test_small_head_sparse_builds_fit_their_programs_an_sm():
    """Each build of the small-head sparse kernel fits ``PROGRAMS_PER_SM`` programs on one SM of sm_90a: their shared
    memory (with the 1 KB a block the hardware reserves) within the SM's 228 KB, their registers (128 threads a
    program, allocated 8 a thread at a time) within its 64K. The split-KV plan counts that many programs an SM."""
    from openmla.ops.gluon.decode_sparse_sm90_small_heads import PROGRAMS_PER_SM, ROW_TILES

    found = reports(90, "small-heads sparse")
    assert sorted({int(r.variant.split("rows<=")[1].split()[0]) for r in found}) == sorted(ROW_TILES)
    for report in found:
        assert PROGRAMS_PER_SM * (report.shared_bytes + 1024) <= 228 * 1024, report
        assert PROGRAMS_PER_SM * 128 * -(-report.registers // 8) * 8 <= 65536, report


def test_uniform_reads_before_writes_flags_an_unwritten_register():
    """The SASS check reads operands as ``cuobjdump`` prints them: a uniform register read before the kernel's
    start writes it is named (with its address), one written first (a ``.64`` destination covering two) is not,
    and the scan ends at the first branch target."""
    from openmla.ops.aot import uniform_reads_before_writes

    def listing(*rows):
        return "\n".join(f"        /*{16 * i:04x}*/          {row} ;   /* 0x0 */" for i, row in enumerate(rows))

    assert uniform_reads_before_writes(listing("UMOV UR4, 0x1", "UIADD3.64 UR6, UR4, 0x2, URZ")) == [
        "0x10 UR5: UIADD3.64 UR6, UR4, 0x2, URZ"]
    assert uniform_reads_before_writes(listing(
        "ULDC.64 UR4, c[0x0][0x118]", "UIADD3 UR6, UP0, UR4, 0x40, URZ", "UIADD3.X UR7, UR5, 0x1, URZ, UP0, !UPT",
        "HGMMA.64x32x16.F32.BF16 R24, gdesc[UR4], R24")) == []
    assert uniform_reads_before_writes(listing(
        "UMOV UR4, 0x1", "@P0 BRA 0x30", "UMOV UR5, UR4", "UIADD3 UR6, UR9, 0x1, URZ")) == []


def test_subroutine_calls_counts_calls_that_return():
    """A ``CALL`` that returns into the kernel counts (a 64-bit division's); one followed by ``EXIT`` (a body that
    ``ptxas`` moved into a function called once) does not."""
    from openmla.ops.aot import subroutine_calls

    def listing(*rows):
        return "\n".join(f"        /*{16 * i:04x}*/          {row} ;   /* 0x0 */" for i, row in enumerate(rows))

    assert subroutine_calls(listing("MOV R4, 0x30", "CALL.REL.NOINC 0x40", "STG.E desc[UR4][R2.64], R5", "EXIT",
                                    "I2F.U64.RP R6, R8", "RET.REL.NODEC R4 0x0")) == 1
    assert subroutine_calls(listing("MOV R4, 0x30", "CALL.REL.NOINC 0x30", "EXIT", "ISETP.GT.AND P0, PT, R1, R2, PT",
                                    "RET.REL.NODEC R4 0x0")) == 0
    assert subroutine_calls(listing("IMAD.MOV.U32 R1, RZ, RZ, R2", "EXIT")) == 0


def test_gluon_builds_read_no_unwritten_uniform_register():
    """Every Gluon build computes its ``wgmma`` descriptors (and all else its start computes) from registers it has
    written. With Pᵀ at the start of the RoPE tile, ``ptxas`` built the small-head sparse kernel's 32-row form's later
    Pᵀ descriptors from a uniform register never written: wrong outputs on an H200, from a build that passed every
    other check here.

    Nor does any call a subroutine (compiled once for both checks): ``ptxas`` emits one for a 64-bit integer
    division, and around the call the kernel's registers are allocated anew. A 64-bit division in the small-head
    sparse kernel's epilogue (the lse's place in the call's [b, h_q, s_q]) cost that kernel ~3 % of its time on an
    H200; in 32 bits it is inlined."""
    found = reports(90, "gluon")
    assert any("small-heads sparse" in r.variant for r in found)
    for report in found:
        if report.error and report.error.startswith("not built"):
            continue
        assert report.early_uniform_reads == [], (report.variant, report.early_uniform_reads)
        assert report.subroutine_calls == 0, (report.variant, report.subroutine_calls)


@pytest.mark.parametrize("arch", [80, 120])
def test_compiles_for_ampere_and_consumer_blackwell(arch):
    found = [r for r in reports(arch, "d576 causal") if not r.variant.startswith("gluon")]
    assert len(found) >= 4
    for report in found:
        assert report.ok, f"{report.variant}: {report.error}"
        assert report.local_bytes == 0
        assert not report.has_wgmma  # wgmma exists only on sm_90a
        # a config over the arch's per-block limit would fail to launch there ("out of resources")
        assert report.shared_bytes <= smem_per_block(arch), f"{report.variant}: {report.shared_bytes} B"


# sm_120 decodes e4m3 with fp8 instructions: its smallest and largest tiles of those variants
_FP8_PICK = {80: "fp8 q ", 90: "fp8 q ", 120: "cache e4m3 causal rows<=16 |cache e4m3 causal rows<=128 "}


@pytest.mark.parametrize("arch", [80, 90, 120])
def test_dense_fp8_kernel_compiles(arch):
    """Dense decode over per-tensor FP8 caches: row tiles, q bf16/fp16/e4m3, within the arch's shared
    memory; sm_80 builds only the bit-move decoding (it has no fp8 instructions), Hopper uses wgmma."""
    found = reports(arch, _FP8_PICK[arch])
    # Hopper also builds the TMA tiles over codes (bf16 and e4m3 q, four row counts)
    assert len(found) == {80: 13, 90: 21, 120: 5}[arch], [r.variant for r in found]
    built = [r for r in found if not (r.error or "").startswith("not built")]
    assert len(built) == {80: 4, 90: 21, 120: 5}[arch], [r.variant for r in built]
    if arch == 80:
        assert all(" cache e4m3-bits " in r.variant for r in built)
    for report in built:
        assert report.ok and report.error is None, f"{report.variant}: {report.error}"
        assert report.local_bytes == 0, f"{report.variant}: {report.local_bytes} bytes of local memory"
        assert report.shared_bytes <= smem_per_block(arch), f"{report.variant}: {report.shared_bytes} B"
        # wgmma needs 64 rows on M: query rows (64/128-row tiles) or, in the tokens layout, 64 KV tokens
        big_tile = "bm64" in report.variant or "bm128" in report.variant or " tokens " in report.variant
        assert report.has_wgmma == (arch == 90 and big_tile), report.variant


# the smallest and largest head tiles of each cache kind the arch runs (Hopper builds them all above)
_SPARSE_PICK = "|".join(f"cache {kind} h<={h} d576 plain" for h in (16, 128) for kind in ("bf16", "{fp8}"))


@pytest.mark.parametrize("arch, select", [
    (90, "_sparse_decode_kernel[sparse fp16"),  # the bf16 and FP8 variants are in test_compiles_for_sm90a
    (80, _SPARSE_PICK.format(fp8="v32fp8-bits")),  # sm_80 has no fp8 instructions: e4m3 by bit moves
    (120, _SPARSE_PICK.format(fp8="v32fp8")),
])
def test_sparse_kernel_compiles(arch, select):
    """Sparse decode over 16-bit caches and the V3.2 FP8 cache compiles, with no local memory."""
    found = reports(arch, select)
    assert len(found) == (1 if arch == 90 else 4), [r.variant for r in found]
    for report in found:
        assert report.ok and report.error is None, f"{report.variant}: {report.error}"
        assert report.local_bytes == 0, f"{report.variant}: {report.local_bytes} bytes of local memory"
        assert not report.has_wgmma  # 16-row tiles, and no wgmma off sm_90a
        assert report.shared_bytes <= smem_per_block(arch), f"{report.variant}: {report.shared_bytes} B"


def test_native_fp8_variants_are_not_built_for_ampere():
    from openmla.ops.aot import _sparse_variants, compile_variant

    native = next(v for v in _sparse_variants() if "cache v32fp8 " in v.name)
    report = compile_variant(native, 80)
    assert report.ok and report.error.startswith("not built: needs sm_89+")


def test_a_variant_must_set_every_constexpr():
    """A variant that leaves one of its kernel's constexprs unset is refused, naming it: the build would take it as a
    runtime int and keep both sides of its branches, a kernel no launcher runs (its registers and stack figures then
    describe nothing real)."""
    import dataclasses

    from openmla.ops.aot import _signature, _variants

    served = next(v for v in _variants(90) if v.name.startswith("gluon-ws sparse"))
    _signature(served)  # every constexpr set: accepted
    partial = dataclasses.replace(served, constexprs={k: v for k, v in served.constexprs.items() if k != "INTERIOR"})
    with pytest.raises(ValueError, match=r"constexpr parameters \['INTERIOR'\]"):
        _signature(partial)


def test_gluon_kernels_hint_the_row_ints():
    """The Gluon kernels build once whatever the cache's size, the block table's width and the page size
    (:data:`GLUON_RUNTIME_INTS` unhinted) but keep Triton's hints on the heads, s_q, group and rows: unhinted too,
    those made the Hopper kernels 0.5-5 % slower on an H200 (``2026-11-28-h200-dense-unhinted-ints-ab.txt``). The AOT
    builds of Gluon variants take the same list, so the CPU tier compiles what the GPU runs."""
    from openmla.ops.aot import _signature, _variants
    from openmla.ops.decode_dense import GLUON_RUNTIME_INTS
    from openmla.ops.gluon import (
        decode_dense_fp8_sm90,
        decode_dense_sm90,
        decode_dense_sm90_small_heads,
        decode_dense_sm90_ws,
        decode_sparse_sm90_small_heads,
    )

    kernels = (decode_dense_fp8_sm90._dense_decode_fp8_sm90_kernel, decode_dense_sm90._dense_decode_sm90_kernel,
               decode_dense_sm90_small_heads._dense_decode_sm90_small_heads_kernel,
               decode_dense_sm90_ws._dense_decode_sm90_ws_kernel,
               decode_sparse_sm90_small_heads._sparse_v32_small_heads_kernel)
    for kernel in kernels:
        unhinted = set(kernel.do_not_specialize) - {"lse_s_q"}
        assert unhinted == set(GLUON_RUNTIME_INTS), (kernel.fn.__name__, sorted(unhinted))
    ws = next(v for v in _variants(90) if v.gluon and v.kernel is decode_dense_sm90_ws._dense_decode_sm90_ws_kernel)
    names = ws.kernel.arg_names
    _, attrs = _signature(ws)
    hinted = {names[i] for (i,), _ in attrs.items()}
    assert "stride_lb" not in hinted and "stride_bt" not in hinted, sorted(hinted)
    assert {"stride_qb", "stride_kb", "stride_ob"} <= hinted, sorted(hinted)
