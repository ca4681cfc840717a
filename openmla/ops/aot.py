"""Ahead-of-time compiles of every kernel variant for a given arch, with no GPU needed.

Used by the CPU test tier (each variant must compile for sm_80, sm_90a and sm_120 with no local
memory) and by ``openmla doctor`` (registers, shared memory, spills and ``wgmma`` per kernel).
Triton's wheel ships ``ptxas`` and ``cuobjdump``, so this runs on any Linux machine with Triton.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile

from .._runtime import interpret_mode, triton_available
from .decode_dense import GLUON_RUNTIME_INTS, SPLITKV_RUNTIME_INTS

# pointer and stride arguments are 16-divisible in every real launch; tell the compiler, as the JIT does
_DIVISIBLE_PREFIXES = ("stride_",)


@dataclasses.dataclass
class KernelReport:
    """One compiled variant: what compiled, and the resources it uses."""

    kernel: str
    variant: str
    arch: int
    ok: bool
    error: str | None = None
    registers: int | None = None
    shared_bytes: int | None = None
    spill_bytes: int | None = None
    local_bytes: int | None = None
    has_wgmma: bool = False
    #: the warps of each tensor-core layout in the TTGIR (``warpsPerCTA`` of every ``nvidia_mma`` encoding),
    #: e.g. ``["4x2"]``: where a product's warps went (Triton kernels; Gluon kernels set their own)
    mma_warps: list | None = None
    #: uniform registers the kernel's start reads before writing them (:func:`uniform_reads_before_writes`; Gluon
    #: builds only, None otherwise): a ``ptxas`` miscompile's trace, empty in a sound build
    early_uniform_reads: list | None = None
    #: subroutine calls in the kernel's SASS that return into it (:func:`subroutine_calls`; Gluon builds only, None
    #: otherwise): ``ptxas`` emits one for a 64-bit integer division, and registers are allocated anew around it (one
    #: in the small-head sparse kernel's epilogue cost that kernel ~3 % of its time on an H200)
    subroutine_calls: int | None = None


@dataclasses.dataclass(frozen=True)
class Variant:
    """A kernel, its argument types and the constexprs that make one compiled variant."""

    kernel: object
    pointer_types: dict
    float_args: tuple
    constexprs: dict
    num_warps: int
    num_stages: int
    name: str
    gluon: bool = False  # a Gluon kernel: compiles for sm_90a only
    runtime_ints: tuple | None = None  # the kernel's do_not_specialize ints (no divisibility hint); None: its family's
    min_arch: int = 0  # built for this arch and newer only (fp8 instructions need sm_89)
    maxnreg: int | None = None  # a register cap at launch (warp-specialized kernels reallocate under it)


def _dense_kernel_and_consts(cfg) -> tuple[object, dict]:
    """The dense split-KV kernel a config launches (by its layout) and that layout's tile constexprs."""
    from .decode_dense import _dense_decode_splitkv_kernel

    if cfg.layout == "tokens":
        from .decode_dense_small_heads import _dense_decode_tokens_kernel

        return _dense_decode_tokens_kernel, dict(R=cfg.block_m, BLOCK_N=cfg.block_n)
    # the whole-tile TMA path takes its two descriptors as arguments; without it they are None (constexprs)
    tma = dict(TMA_K=True) if cfg.tma_k else dict(k_desc_v=None, k_desc_pe=None, TMA_K=False)
    return _dense_decode_splitkv_kernel, dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, DV_TILE=cfg.dv_tile,
                                              UNCHAIN=cfg.unchained, PAGE_AHEAD=cfg.page_ahead,
                                              TAIL_TMA=cfg.tail_tma, **tma)


def _variants(arch: int = 90) -> list[Variant]:
    from .combine import COMBINE_EAGER_SPLITS, _decode_combine_kernel
    from .decode_dense import TMA_TILE_KEYS, dense_decode_config
    from .schedule import FIXED_OVERHEAD, MAX_SPLITS, SCHED_BLOCK, _plan_segments_kernel, _plan_splitkv_kernel

    out = []
    for dtype in ("bf16", "fp16"):
        ptrs = {
            "q_ptr": f"*{dtype}", "k_ptr": f"*{dtype}", "block_table_ptr": "*i32", "seqlens_ptr": "*i32",
            "sched_ptr": "*i32", "num_splits_ptr": "*i32", "out_ptr": f"*{dtype}", "lse_ptr": "*fp32",
            "o_acc_ptr": "*fp32", "lse_acc_ptr": "*fp32", "counters_ptr": "*i32", "descale_q_ptr": "*fp32",
            "descale_k_ptr": "*fp32",
        }
        for rows in (16, 32, 64, 128):
            for d_qk in (576, 512):
                for causal in (False, True):
                    cfg = dense_decode_config(rows, d_qk, 512, arch)
                    kernel, tile = _dense_kernel_and_consts(cfg)
                    common = dict(CAUSAL=causal, FUSED_COMBINE=True, D_V=512, D_PE=d_qk - 512, Q_FP8=False,
                                  KV_FP8=False, FP8_NATIVE=True)
                    consts = dict(common, **tile)
                    name = f"{dtype} rows<={rows} d{d_qk} {'causal' if causal else 'full'} {cfg.layout} " \
                           f"bm{cfg.block_m} bn{cfg.block_n} dv{cfg.dv_tile} w{cfg.num_warps} s{cfg.num_stages}"
                    out.append(Variant(kernel, ptrs, ("scale_log2",), consts, cfg.num_warps, cfg.num_stages, name))
                    tma_cfgs = {dense_decode_config(rows, d_qk, 512, arch, tma_keys=n) for n in TMA_TILE_KEYS}
                    for tma_cfg in sorted((c for c in tma_cfgs if c.tma_k), key=lambda c: c.block_n):
                        # what a cache TMA can read gets (sm_90 and newer), by the tiles its pages hold
                        kernel, tile = _dense_kernel_and_consts(tma_cfg)
                        descs = {"k_desc_v": f"tensordesc<{dtype}[{tma_cfg.block_n}, {tma_cfg.dv_tile}]>"}
                        if d_qk > 512:
                            descs["k_desc_pe"] = f"tensordesc<{dtype}[{tma_cfg.block_n}, {d_qk - 512}]>"
                        else:
                            tile = dict(tile, k_desc_pe=None)
                        out.append(Variant(kernel, dict(ptrs, **descs), ("scale_log2",), dict(common, **tile),
                                           tma_cfg.num_warps, tma_cfg.num_stages,
                                           f"{dtype} rows<={rows} d{d_qk} {'causal' if causal else 'full'} rows tma "
                                           f"bm{tma_cfg.block_m} bn{tma_cfg.block_n} dv{tma_cfg.dv_tile} "
                                           f"w{tma_cfg.num_warps} s{tma_cfg.num_stages}"
                                           f"{' unchained' if tma_cfg.unchained else ''}"
                                           f"{' page-ahead' if tma_cfg.page_ahead else ''}", min_arch=90))
        combine_ptrs = {"out_ptr": f"*{dtype}", "lse_ptr": "*fp32", "o_acc_ptr": "*fp32", "lse_acc_ptr": "*fp32",
                        "num_splits_ptr": "*i32", "sink_ptr": "*fp32"}
        # launched as the split kernel's programmatic dependent on SM90+ (griddepcontrol), plainly before
        for pdl, min_arch in ((False, 0), (True, 90)):
            tag = " pdl" if pdl else ""
            # a row tile's dims in two programs (larger batches: COMBINE_MAX_CHUNK_DIMS), four (b=16: four programs
            # an SM) or eight, 64 to a program (a single request)
            for col_chunk in (256, 128, 64):
                consts = dict(BLOCK_R=8, D_V=512, PDL=pdl, COL_CHUNK=col_chunk, EAGER_SPLITS=COMBINE_EAGER_SPLITS)
                cols = f" cols{col_chunk}"
                out.append(Variant(_decode_combine_kernel, combine_ptrs, (), dict(consts, HAS_SINK=False), 4, 2,
                                   f"{dtype} d_v512{cols}{tag}", min_arch=min_arch))
                out.append(Variant(_decode_combine_kernel, combine_ptrs, (), dict(consts, HAS_SINK=True), 4, 2,
                                   f"{dtype} d_v512{cols} sink{tag}", min_arch=min_arch))
    # what CUDA-graph captures launch: the partials merged by the combine kernel, not in the split kernel
    for v in list(out):
        if v.name.startswith("bf16 rows<=") and "d576 causal" in v.name and v.kernel is not _decode_combine_kernel:
            out.append(dataclasses.replace(v, constexprs=dict(v.constexprs, FUSED_COMBINE=False),
                                           name=v.name + " combine-kernel"))
    out.extend(_dense_fp8_variants(arch))
    out.extend(_sparse_variants(arch))
    from .._runtime import gluon_available

    if gluon_available():
        from .gluon import decode_dense_sm90_small_heads as small
        from .gluon.decode_dense_sm90 import BLOCK_M, BLOCK_N, NUM_WARPS, _dense_decode_sm90_kernel

        for dtype in ("bf16", "fp16"):
            ptrs = {
                "q_ptr": f"*{dtype}", "k_ptr": f"*{dtype}", "block_table_ptr": "*i32", "seqlens_ptr": "*i32",
                "sched_ptr": "*i32", "num_splits_ptr": "*i32", "out_ptr": f"*{dtype}", "lse_ptr": "*fp32",
                "o_acc_ptr": "*fp32", "lse_acc_ptr": "*fp32", "counters_ptr": "*i32",
            }
            small_ptrs = dict(ptrs, descale_q_ptr="*fp32", descale_k_ptr="*fp32")
            for d_qk in (576, 512):
                for causal in (False, True):
                    consts = dict(CAUSAL=causal, FUSED_COMBINE=True, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, D_V=512,
                                  D_PE=d_qk - 512)
                    name = f"gluon {dtype} d{d_qk} {'causal' if causal else 'full'} bm{BLOCK_M} bn{BLOCK_N}"
                    out.append(Variant(_dense_decode_sm90_kernel, ptrs, ("scale_log2",), consts, NUM_WARPS, 1,
                                       name, gluon=True))
                    for r in (16, 32):
                        for tma_k in (True, False):  # caches TMA can read, and the others
                            consts = dict(CAUSAL=causal, FUSED_COMBINE=True, R=r, BLOCK_N=small.BLOCK_N, D_V=512,
                                          D_PE=d_qk - 512, P_SMEM=small.p_smem_layout(r), WGS=small.warpgroups_for(r),
                                          Q_FP8=False, KV_FP8=False, TMA_K=tma_k)
                            v_ptrs = dict(small_ptrs)
                            if tma_k:
                                v_ptrs["k_desc"] = _tma_desc_type(dtype)
                            else:
                                consts["k_desc"] = None
                            name = f"gluon-small-heads {dtype} d{d_qk} {'causal' if causal else 'full'} " \
                                   f"rows<={r} bn{small.BLOCK_N}" + (" tma-k" if tma_k else "")
                            out.append(Variant(small._dense_decode_sm90_small_heads_kernel, v_ptrs, ("scale_log2",),
                                               consts, 4 * small.warpgroups_for(r), 1, name, gluon=True))
                    out.extend(_ws_variants(dtype, ptrs, d_qk, causal))
            # CUDA-graph captures: the partials merged by the combine kernel
            for v in [v for v in out if v.gluon and "FUSED_COMBINE" in v.constexprs and v.name.startswith("gluon") and f" {dtype} d576 causal" in v.name]:
                out.append(dataclasses.replace(v, constexprs=dict(v.constexprs, FUSED_COMBINE=False),
                                               name=v.name + " combine-kernel"))
    if gluon_available():
        # per-tensor FP8 through the small-head kernel: q bf16 or e4m3 (bytes), cache bytes, causal, d 576
        for q_dtype in ("bf16", "e4m3"):
            ptrs = {
                "q_ptr": "*u8" if q_dtype == "e4m3" else "*bf16", "k_ptr": "*u8", "block_table_ptr": "*i32",
                "seqlens_ptr": "*i32", "sched_ptr": "*i32", "num_splits_ptr": "*i32", "out_ptr": "*bf16",
                "lse_ptr": "*fp32", "o_acc_ptr": "*fp32", "lse_acc_ptr": "*fp32", "counters_ptr": "*i32",
                "descale_q_ptr": "*fp32", "descale_k_ptr": "*fp32",
            }
            for r in (16, 32):
                consts = dict(CAUSAL=True, FUSED_COMBINE=True, R=r, BLOCK_N=small.BLOCK_N, D_V=512, D_PE=64, P_SMEM=small.p_smem_layout(r),
                              WGS=small.warpgroups_for(r), Q_FP8=q_dtype == "e4m3", KV_FP8=True, TMA_K=False,
                              k_desc=None)
                name = f"gluon-small-heads q {q_dtype} cache e4m3 d576 causal rows<={r} bn{small.BLOCK_N}"
                out.append(Variant(small._dense_decode_sm90_small_heads_kernel, ptrs, ("scale_log2",), consts,
                                   4 * small.warpgroups_for(r), 1, name, gluon=True))
    from ..kvcache.write import _write_model1_kernel, _write_rows_kernel, _write_v32_kernel

    write_ints = ("stride_kv", "stride_cb", "stride_cp", "num_slots", "page_block_size")
    for kv_dtype in ("bf16", "fp32"):
        out.append(Variant(_write_v32_kernel, {"kv_ptr": f"*{kv_dtype}", "slot_ptr": "*i64", "cache_ptr": "*u8"}, (),
                           dict(NOPE=512, TILE=128, ROPE=64), 4, 2, f"kv {kv_dtype} -> V3.2 FP8",
                           runtime_ints=write_ints))
    model1_ints = ("stride_kv", "stride_page", "num_slots", "page_block_size")
    out.append(Variant(_write_model1_kernel, {"kv_ptr": "*bf16", "slot_ptr": "*i64", "page_ptr": "*u8"}, (),
                       dict(NOPE=448, TILE=64, ROPE=64), 4, 2, "kv bf16 -> MODEL1 FP8", runtime_ints=model1_ints))
    for cache, quant in (("bf16", False), ("u8", True)):
        out.append(Variant(_write_rows_kernel, {"kv_ptr": "*fp32", "slot_ptr": "*i64", "cache_ptr": f"*{cache}",
                                                "scale_ptr": "*fp32"}, (),
                           dict(D=576, BLOCK_D=1024, QUANT=quant), 4, 2,
                           f"kv fp32 -> {'per-tensor FP8' if quant else 'bf16'} cache", runtime_ints=write_ints))
    from ..metadata import DENSE_PLAN_OVERHEAD

    # the dense plan's per-request overhead, the sparse plans' (FIXED_OVERHEAD), and none (sparse plans of
    # fixed-length lists at one row tile)
    for overhead in sorted({FIXED_OVERHEAD, DENSE_PLAN_OVERHEAD, 0}, reverse=True):
        out.append(Variant(
            _plan_splitkv_kernel, {"seqlens_ptr": "*i32", "sched_ptr": "*i32", "num_splits_ptr": "*i32"}, (),
            dict(BLOCK_P=256, CHUNK=32, SCHED=SCHED_BLOCK, OVERHEAD=overhead, MAX_SPLITS=MAX_SPLITS), 4, 2,
            "256 parts" + ("" if overhead == FIXED_OVERHEAD else f" overhead {overhead}")))
    # the per-piece-overhead plan: dense batches of up to 64 requests (SEGMENT_PLAN_MAX_BATCH) over up to 512 pieces,
    # and up to 1024 sparse lists over h_q=128's pieces
    for block_b, block_p, overhead in ((64, 512, DENSE_PLAN_OVERHEAD), (1024, 128, FIXED_OVERHEAD)):
        out.append(Variant(
            _plan_segments_kernel, {"seqlens_ptr": "*i32", "sched_ptr": "*i32", "num_splits_ptr": "*i32"}, (),
            dict(BLOCK_B=block_b, BLOCK_P=block_p, SCHED=SCHED_BLOCK, OVERHEAD=overhead, MAX_SPLITS=MAX_SPLITS),
            4, 2, f"{block_b} requests {block_p} parts"
            + ("" if overhead == FIXED_OVERHEAD else f" overhead {overhead}")))
    return out


def _dense_fp8_variants(arch: int = 90) -> list[Variant]:
    """The dense split-KV kernel over a per-tensor FP8 cache (d 576, causal: the mask is a superset of the
    unmasked code), for each row-tile size.

    Names start with ``fp8``. Cache ``e4m3`` is decoded with fp8 instructions (sm_89+), ``e4m3-bits`` with
    integer bit moves (any arch; what sm_80/86 run: their smallest and largest tiles, 16 and 64 rows). q is
    bf16, fp16 or e4m3 (output bf16). On 227 KB parts, also the TMA tiles a cache with pages of 64 keys gets
    (``tma``: boxes of codes decoded in registers).
    """
    from .decode_dense import TMA_TILE_KEYS, dense_decode_config

    out = []
    every, ampere = (16, 32, 64, 128), (16, 64)
    for q_dtype, cache, row_counts in (("bf16", "e4m3", every), ("e4m3", "e4m3", every), ("fp16", "e4m3", (16,)),
                                       ("bf16", "e4m3-bits", ampere), ("e4m3", "e4m3-bits", ampere)):
        q_fp8, native = q_dtype == "e4m3", cache == "e4m3"
        out_dtype = "bf16" if q_fp8 else q_dtype
        ptrs = {
            "q_ptr": "*u8" if q_fp8 else f"*{q_dtype}", "k_ptr": "*u8", "block_table_ptr": "*i32",
            "seqlens_ptr": "*i32", "sched_ptr": "*i32", "num_splits_ptr": "*i32", "out_ptr": f"*{out_dtype}",
            "lse_ptr": "*fp32", "o_acc_ptr": "*fp32", "lse_acc_ptr": "*fp32", "counters_ptr": "*i32",
            "descale_q_ptr": "*fp32", "descale_k_ptr": "*fp32",
        }
        for rows in row_counts:
            cfg = dense_decode_config(rows, 576, 512, arch)
            kernel, tile = _dense_kernel_and_consts(cfg)
            consts = dict(CAUSAL=True, FUSED_COMBINE=True, **tile, D_V=512, D_PE=64, Q_FP8=q_fp8, KV_FP8=True,
                          FP8_NATIVE=native)
            name = (f"fp8 q {q_dtype} cache {cache} causal rows<={rows} d576 {cfg.layout} "
                    f"bm{cfg.block_m} bn{cfg.block_n} dv{cfg.dv_tile} w{cfg.num_warps} s{cfg.num_stages}")
            out.append(Variant(kernel, ptrs, ("scale_log2",), consts, cfg.num_warps, cfg.num_stages, name,
                               min_arch=89 if native else 0))
            tma_cfg = dense_decode_config(rows, 576, 512, arch, tma_keys=TMA_TILE_KEYS[0], kv_fp8=True)
            if native and q_dtype != "fp16" and tma_cfg.tma_k:  # boxes of codes (sm_90 and newer, 227 KB parts)
                kernel, tile = _dense_kernel_and_consts(tma_cfg)
                descs = {"k_desc_v": f"tensordesc<u8[{tma_cfg.block_n}, 512]>",
                         "k_desc_pe": f"tensordesc<u8[{tma_cfg.block_n}, 64]>"}
                consts = dict(CAUSAL=True, FUSED_COMBINE=True, **tile, D_V=512, D_PE=64, Q_FP8=q_fp8, KV_FP8=True,
                              FP8_NATIVE=True)
                name = (f"fp8 q {q_dtype} cache {cache} causal rows<={rows} d576 rows tma bm{tma_cfg.block_m} "
                        f"bn{tma_cfg.block_n} dv{tma_cfg.dv_tile} w{tma_cfg.num_warps} s{tma_cfg.num_stages}"
                        f"{' unchained' if tma_cfg.unchained else ''}{' page-ahead' if tma_cfg.page_ahead else ''}")
                out.append(Variant(kernel, dict(ptrs, **descs), ("scale_log2",), consts, tma_cfg.num_warps,
                                   tma_cfg.num_stages, name, min_arch=90))
    return out


def _sparse_variants(arch: int = 90) -> list[Variant]:
    """The sparse-decode kernel over 16-bit caches and the V3.2 FP8 cache, for each head-tile size."""
    from .decode_sparse import SPARSE_RUNTIME_INTS, _sparse_decode_kernel, sparse_decode_config

    out = []
    # (q dtype, cache, d_qk, head counts, those also built with every option on); cache "fp8" is the V3.2
    # layout read with fp8 instructions (sm_89+), "fp8-bits" the same read with integer bit moves (any arch)
    families = [
        ("bf16", "bf16", 576, (16, 32, 64, 128), (128,)),
        ("bf16", "bf16", 512, (64,), ()),
        ("fp16", "fp16", 576, (16,), ()),
        ("bf16", "fp8", 576, (16, 32, 64, 128), (128,)),
        ("bf16", "fp8-bits", 576, (16, 128), ()),
    ]
    for q_dtype, cache, d_qk, heads, featured in families:
        is_fp8 = cache.startswith("fp8")
        k_type = "*u8" if is_fp8 else f"*{cache}"
        ptrs = {
            "q_ptr": f"*{q_dtype}", "k_ptr": k_type, "idx_ptr": "*i32", "extra_k_ptr": k_type, "extra_idx_ptr": "*i32",
            "topk_len_ptr": "*i32", "extra_topk_len_ptr": "*i32", "sink_ptr": "*fp32", "out_ptr": f"*{q_dtype}",
            "lse_ptr": "*fp32", "o_acc_ptr": "*fp32", "lse_acc_ptr": "*fp32",
        }
        for h_q in heads:
            default = sparse_decode_config(h_q, 512, arch, is_fp8=is_fp8)
            tiles = [default]
            if is_fp8 and arch == 90:
                # the tile's other forms, kept compilable for tuning beside the default
                forms = [dict(reg_prefetch=True, idx_ahead=False, num_stages=1),
                         dict(reg_prefetch=False, idx_ahead=True, num_stages=3)]
                tiles += [c for c in (dataclasses.replace(default, **f) for f in forms) if c != default]
            for cfg, options in [(c, o) for c in tiles for o in ((False, True) if h_q in featured else (False,))]:
                consts = dict(IS_FP8=is_fp8, FP8_NATIVE=cache == "fp8", HAS_EXTRA=options, HAS_TOPK_LEN=options,
                              HAS_EXTRA_TOPK_LEN=options, HAS_SINK=options, BLOCK_M=cfg.block_m,
                              BLOCK_N=cfg.block_n, D_V=512, D_PE=d_qk - 512, DV_TILE=cfg.dv_tile,
                              REG_PREFETCH=cfg.reg_prefetch, IDX_AHEAD=cfg.idx_ahead, UNCHAIN=cfg.unchained)
                kind = {"fp8": "v32fp8", "fp8-bits": "v32fp8-bits"}.get(cache, cache)
                name = (f"sparse {q_dtype} cache {kind} h<={h_q} d{d_qk} "
                        f"{'extra+len+sink' if options else 'plain'} bm{cfg.block_m} bn{cfg.block_n} "
                        f"dv{cfg.dv_tile} w{cfg.num_warps} s{cfg.num_stages}"
                        f"{' reg-prefetch' if cfg.reg_prefetch else ''}"
                        f"{' idx-ahead' if cfg.idx_ahead else ''}{' unchained' if cfg.unchained else ''}")
                out.append(Variant(_sparse_decode_kernel, ptrs, ("scale_log2",), consts, cfg.num_warps,
                                   cfg.num_stages, name, runtime_ints=SPARSE_RUNTIME_INTS,
                                   min_arch=89 if cache == "fp8" else 0))
    return out


def _ws_variants(dtype: str, ptrs: dict, d_qk: int, causal: bool) -> list[Variant]:
    """The warp-specialized Hopper kernel for one dtype, d and mask: its default schedule, and for bf16
    d=576 causal the two alternatives its launcher takes (``overlap``, the loader waiting for its copies)."""
    from .gluon import decode_dense_sm90_ws as ws

    # both warpgroup splits (the launcher picks by rows), each with K by TMA and by cp.async only (caches
    # TMA cannot read); for bf16 d=576 causal also the measured-slower schedules the launcher still takes
    # (overlap, async_arrive, softmax_only, tma_k, box_ready, box_allocs)
    default = (ws.OVERLAP, ws.ASYNC_ARRIVE)
    schedules = [default + (solo, tma_k, ws.BOX_READY and tma_k, ws.BOX_ALLOCS and tma_k and solo)
                 for solo in (False, True) for tma_k in (True, False)]
    if dtype == "bf16" and d_qk == 576 and causal:
        schedules += [(not ws.OVERLAP, ws.ASYNC_ARRIVE, False, ws.TMA_K, ws.BOX_READY, False),
                      (ws.OVERLAP, not ws.ASYNC_ARRIVE, False, ws.TMA_K, ws.BOX_READY, False)]
        # TMA tiles on one ready barrier a stage, for both warpgroup splits
        schedules += [default + (solo, True, not ws.BOX_READY, False) for solo in (False, True)]
        # the four-warpgroup form with all boxes' ready barriers in one allocation (the launcher's box_allocs off)
        schedules += [default + (True, True, True, not ws.BOX_ALLOCS)]
    # P in halves where the launcher takes it (the four-warpgroup form's interior softmax, no causal mask)
    schedules = [s + (ws.P_HALVES and ws.INTERIOR_SOFTMAX and s[2] and not causal, False) for s in schedules]
    if dtype == "bf16" and d_qk == 576 and not causal and ws.INTERIOR_SOFTMAX:  # and the launcher's other p_halves
        schedules += [default + (True, True, ws.BOX_READY, ws.BOX_ALLOCS, not ws.P_HALVES, False)]
    schedules = [s + (False,) for s in schedules]
    if d_qk == 576 and ws.BOX_READY and ws.BOX_ALLOCS:  # from LAG_MIN_ROWS rows: the right output warpgroup a tile behind
        schedules += [default + (True, True, True, True, False, True, ws.LAG_HALVES)]
        if dtype == "bf16":  # with the launcher's other lag_halves (a value half a TMA box)
            schedules += [default + (True, True, True, True, False, True, not ws.LAG_HALVES)]
    out = []
    for overlap, async_arrive, softmax_only, tma_k, box_ready, box_allocs, p_halves, lag, lag_halves in schedules:
        regs = ws.SOLO_WORKER_REGS if softmax_only else ws.WORKER_REGS
        consts = dict(CAUSAL=causal, OVERLAP=overlap, SOFTMAX_ONLY=softmax_only, TMA_K=tma_k,
                      ASYNC_ARRIVE=async_arrive, BLOCK_M=ws.BLOCK_M, BLOCK_N=ws.BLOCK_N, D_V=512, D_PE=d_qk - 512,
                      SOFTMAX_WARPS=ws.NUM_WARPS, OUTPUT_WARPS=ws.WORKER_WARPS[0], LOADER_WARPS=ws.WORKER_WARPS[1],
                      OUTPUT_REGS=regs[0], LOADER_REGS=regs[1], K_BOXES=d_qk // 64 if box_ready else 1, SPARSE=False,
                      KV_FP8=False, PREFETCH_L2=False, HAS_SINK=False, sink_ptr=None, KV_E4M3=False,
                      descale_k_ptr=None, Q_E4M3=False, descale_q_ptr=None, LIST_AHEAD=False, TRACE=False,
                      trace_ptr=None, BOX_ALLOCS=box_allocs, OUTPUT_DECODE=0,
                      INTERIOR=ws.INTERIOR_SOFTMAX and softmax_only and not causal,
                      P_HALVES=p_halves, LAG=lag, LAG_HALVES=lag_halves)
        v_ptrs = dict(ptrs)
        if lag_halves:
            v_ptrs["k_half_desc"] = _tma_desc_type(dtype, [4, 64, 64])
        else:
            consts["k_half_desc"] = None
        if tma_k:
            v_ptrs["k_desc"] = _tma_desc_type(dtype)
        else:
            consts["k_desc"] = None
        name = (f"gluon-ws {dtype} d{d_qk} {'causal' if causal else 'full'} "
                + ("softmax-only" if softmax_only else "overlap" if overlap else "pv-first")
                + f" {'async-arrive' if async_arrive else 'loader-waits'}" + (" tma-k" if tma_k else "")
                + (" box-ready" if box_ready else " stage-ready" if tma_k else "")
                + (" box-allocs" if box_allocs else "") + (" p-halves" if p_halves else "")
                + (" lag" if lag else "") + (" lag-halves" if lag_halves else ""))
        out.append(Variant(ws._dense_decode_sm90_ws_kernel, v_ptrs, ("scale_log2",), consts, ws.NUM_WARPS, 1, name,
                           gluon=True, maxnreg=ws.SOLO_MAXNREG if softmax_only else ws.MAXNREG))
    if d_qk == 576 and causal:  # per-tensor FP8 caches (dense_decode_sm90_ws_fwd's descale_k), both warpgroup splits
        for softmax_only, q_e4m3 in ((False, False), (True, False), (False, True), (True, True)):
            if q_e4m3 and dtype != "bf16":
                continue  # an e4m3 q's output is bf16 whatever the call's q type: one variant
            q_ptrs = dict(q_ptr="*u8", descale_q_ptr="*fp32") if q_e4m3 else {}
            regs = ws.E4M3_WORKER_REGS if softmax_only else ws.WORKER_REGS
            consts = dict(CAUSAL=causal, OVERLAP=ws.OVERLAP, SOFTMAX_ONLY=softmax_only, TMA_K=False,
                          ASYNC_ARRIVE=ws.ASYNC_ARRIVE, BLOCK_M=ws.BLOCK_M, BLOCK_N=ws.BLOCK_N, D_V=512, D_PE=64,
                          SOFTMAX_WARPS=ws.NUM_WARPS, OUTPUT_WARPS=ws.WORKER_WARPS[0], LOADER_WARPS=ws.WORKER_WARPS[1],
                          OUTPUT_REGS=regs[0], LOADER_REGS=regs[1], K_BOXES=1, SPARSE=False, KV_FP8=False,
                          PREFETCH_L2=False, HAS_SINK=False, sink_ptr=None, KV_E4M3=True, k_desc=None,
                          Q_E4M3=q_e4m3, LIST_AHEAD=ws.LIST_AHEAD, TRACE=False, trace_ptr=None, BOX_ALLOCS=False,
                          OUTPUT_DECODE=0, INTERIOR=False, P_HALVES=False, LAG=False, LAG_HALVES=False,
                          k_half_desc=None)
            if not q_e4m3:
                consts["descale_q_ptr"] = None
            out.append(Variant(ws._dense_decode_sm90_ws_kernel,
                               dict(ptrs, k_ptr="*u8", descale_k_ptr="*fp32", **q_ptrs), ("scale_log2",), consts,
                               ws.NUM_WARPS, 1,
                               f"gluon-ws {'e4m3' if q_e4m3 else dtype} q e4m3 cache d576 "
                               f"{'causal' if causal else 'full'} " + ("softmax-only" if softmax_only else "pv-first"),
                               gluon=True,
                               maxnreg=ws.SOLO_MAXNREG if softmax_only else ws.MAXNREG))
    if d_qk == 576 and causal and dtype == "bf16":  # e4m3 q and cache: the e4m3-product kernel (output bf16)
        from .gluon import decode_dense_fp8_sm90 as fp8

        consts = dict(CAUSAL=True, BLOCK_M=fp8.BLOCK_M, BLOCK_N=fp8.BLOCK_N, D_V=fp8.D_V, D_PE=fp8.D_QK - fp8.D_V,
                      STAGES=fp8.STAGES, SOFTMAX_WARPS=fp8.NUM_WARPS, OUTPUT_WARPS=fp8.WORKER_WARPS[0],
                      LOADER_WARPS=fp8.WORKER_WARPS[1], OUTPUT_REGS=fp8.WORKER_REGS[0],
                      LOADER_REGS=fp8.WORKER_REGS[1], P_BUFS=fp8.P_BUFS, TRACE=False,
                      trace_ptr=None)
        # the padded 64-row output products, and the transposed ones with N = 16 and 32 rows
        for rows_n in (0, 16, 32):
            p_bufs = fp8.TRANSPOSED_P_BUFS if rows_n else fp8.P_BUFS
            out.append(Variant(fp8._dense_decode_fp8_sm90_kernel,
                               dict(ptrs, q_ptr="*fp8e4nv", k_ptr="*fp8e4nv", descale_q_ptr="*fp32",
                                    descale_k_ptr="*fp32"), ("scale_log2",),
                               dict(consts, ROWS_N=rows_n, P_BUFS=p_bufs), fp8.NUM_WARPS, 1,
                               "gluon-fp8 e4m3 q e4m3 cache d576 causal e4m3-products"
                               + (f" transposed rows<={rows_n}" if rows_n else ""), gluon=True, maxnreg=fp8.MAXNREG))
    if not causal:  # token-sparse decoding over 16-bit and V3.2 FP8 caches (:mod:`.gluon.decode_sparse_sm90`)
        regs = ws.SOLO_WORKER_REGS
        consts = dict(CAUSAL=False, OVERLAP=False, SOFTMAX_ONLY=True, TMA_K=False, ASYNC_ARRIVE=True,
                      BLOCK_M=ws.BLOCK_M, BLOCK_N=ws.BLOCK_N, D_V=512, D_PE=d_qk - 512, SOFTMAX_WARPS=ws.NUM_WARPS,
                      OUTPUT_WARPS=ws.WORKER_WARPS[0], LOADER_WARPS=ws.WORKER_WARPS[1], OUTPUT_REGS=regs[0],
                      LOADER_REGS=regs[1], K_BOXES=1, SPARSE=True, KV_FP8=False, PREFETCH_L2=False, k_desc=None,
                      HAS_SINK=False, sink_ptr=None, KV_E4M3=False, descale_k_ptr=None, Q_E4M3=False,
                      descale_q_ptr=None, LIST_AHEAD=ws.LIST_AHEAD, TRACE=False, trace_ptr=None, BOX_ALLOCS=False,
                      OUTPUT_DECODE=0, INTERIOR=False, P_HALVES=False, LAG=False, LAG_HALVES=False,
                      k_half_desc=None)
        # with an attention sink: one more pointer, read in the last round of each request
        sink = (dict(HAS_SINK=True), {"sink_ptr": "*fp32"}, " sink")
        for extra_consts, extra_ptrs, tag in (({}, {}, ""), sink):
            with_sink = dict(consts, **extra_consts)
            if extra_ptrs:
                with_sink.pop("sink_ptr")
            out.append(Variant(ws._dense_decode_sm90_ws_kernel, dict(ptrs, **extra_ptrs), ("scale_log2",), with_sink,
                               ws.NUM_WARPS, 1, f"gluon-ws sparse {dtype} d{d_qk} softmax-only async-arrive{tag}",
                               gluon=True, maxnreg=ws.SOLO_MAXNREG))
            if d_qk == 576:  # the V3.2 FP8 cache: 656-byte records dequantized to q's dtype
                # (prefetch, output_decode): the loader decoding (with and without the L2 prefetch), and the
                # output warpgroups decoding
                forms = ((True, 0), (False, 0), (False, 1)) if not tag else ((False, 0), (False, 1))
                for prefetch, output_decode in forms:
                    regs = ws.SPARSE_FP8_OUTPUT_DECODE_REGS if output_decode else ws.SPARSE_FP8_WORKER_REGS
                    out.append(Variant(ws._dense_decode_sm90_ws_kernel, dict(ptrs, k_ptr="*u8", **extra_ptrs),
                                       ("scale_log2",),
                                       with_sink | dict(KV_FP8=True, PREFETCH_L2=prefetch, OUTPUT_REGS=regs[0],
                                                        LOADER_REGS=regs[1], OUTPUT_DECODE=output_decode,
                                                        LIST_AHEAD=ws.SPARSE_FP8_LIST_AHEAD and not prefetch),
                                       ws.NUM_WARPS, 1,
                                       f"gluon-ws sparse {dtype} q fp8-v32 cache softmax-only"
                                       + (" prefetch-l2" if prefetch else "")
                                       + (" output-decode" if output_decode else "") + tag,
                                       gluon=True,
                                       maxnreg=ws.SOLO_MAXNREG))
        if dtype == "bf16" and d_qk == 576:  # at most 16 heads over V3.2 records: the small-head sparse kernel
            from .gluon import decode_dense_sm90_small_heads as small
            from .gluon import decode_sparse_sm90_small_heads as sparse_small

            for r in sparse_small.ROW_TILES:
                for sink in (False, True):
                    consts = dict(R=r, BLOCK_N=sparse_small.BLOCK_N, D_V=512, D_PE=64, P_SMEM=small.p_smem_layout(r),
                                  HAS_SINK=sink, TRACE=False, trace_ptr=None, PE_STAGES=sparse_small.pe_stages(r),
                                  P_OVER_PE=sparse_small.p_over_pe(r))
                    v_ptrs = dict(ptrs, k_ptr="*u8")
                    if sink:
                        v_ptrs["sink_ptr"] = "*fp32"
                    else:
                        consts["sink_ptr"] = None
                    out.append(Variant(sparse_small._sparse_v32_small_heads_kernel, v_ptrs, ("scale_log2",), consts,
                                       4, 1, f"gluon-small-heads sparse bf16 q fp8-v32 cache rows<={r}"
                                       + (" sink" if sink else ""), gluon=True))
    return out


def _tma_desc_type(dtype: str, box: list[int] | None = None) -> str:
    """Triton's signature text of the warp-specialized kernel's K descriptor (64x64 boxes, or ``box``, 128-byte
    swizzle)."""
    box = box or [64, 64]
    return (f"tensordesc<{dtype}{box},NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, "
            f"rank={len(box)}, transposed=False, fp4_padded=False, cga_layout=[])>")


def _signature(v: Variant):
    params = inspect.signature(v.kernel.fn).parameters
    names = list(params)
    # a constexpr left out would be compiled as a runtime int, both sides of its branches kept: not the launcher's build
    # (read from the annotations: under TRITON_INTERPRET the kernel object has no parsed parameter list)
    unset = [n for n, p in params.items() if "constexpr" in str(p.annotation) and n not in v.constexprs]
    if unset:
        raise ValueError(f"variant {v.name!r}: constexpr parameters {unset} of {v.kernel.fn.__name__} have no value")
    sig, attrs = {}, {}
    unhinted = v.runtime_ints
    if unhinted is None:  # the family's: the Gluon kernels keep more hints than the Triton ones (GLUON_RUNTIME_INTS)
        unhinted = GLUON_RUNTIME_INTS if v.gluon else SPLITKV_RUNTIME_INTS
    for i, n in enumerate(names):
        if n in v.constexprs:
            sig[n] = "constexpr"
        elif n in v.pointer_types:
            sig[n] = v.pointer_types[n]
            if not sig[n].startswith("tensordesc"):
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif n in v.float_args:
            sig[n] = "fp32"
        else:
            sig[n] = "i32"
            if n.startswith(_DIVISIBLE_PREFIXES) and n not in unhinted:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs


def _resource_usage(cubin: bytes) -> dict:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    found = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text))
    return {k: int(v) for k, v in found.items()}


def uniform_reads_before_writes(sass: str) -> list[str]:
    """Uniform registers a kernel's straight-line start reads before anything in it writes them, as
    ``"0x670 UR12: UIADD3 UR12, UP0, UR12, 0x40, URZ"`` (``sass``: ``cuobjdump -sass`` of one kernel). The scan
    stops at the first branch target or unconditional branch. A guard against one ``ptxas`` miscompile (Triton
    3.6): a ``wgmma`` descriptor computed from a register never written (the small-head sparse kernel's 32-row
    build with Pᵀ at the start of the RoPE tile). A heuristic: it knows the operand forms of the instructions
    such a start uses (a destination first, ``.64`` and ``.WIDE`` destinations and sources two registers wide, an
    ``HGMMA`` descriptor four); every sm_90a Gluon build here reads none (and the miscompiled build two)."""
    rows = re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*?)\s*;", sass)
    targets = {int(t, 16) for _, text in rows for t in re.findall(r"BRA[^;]*?0x([0-9a-f]+)", text)}
    written, found = set(), []
    no_dest = ("HGMMA", "ST", "BAR", "WARPGROUP", "LDGSTS", "ISETP", "UISETP", "FENCE", "SYNCS", "NOP", "MEMBAR")
    for addr, text in rows:
        at = int(addr, 16)
        if at in targets and at:
            break
        predicated = re.match(r"@!?U?P\w+\s+", text)
        body = text[predicated.end():] if predicated else text
        opcode, _, rest = body.partition(" ")
        if opcode.startswith(("BRA", "EXIT", "RET")):
            if predicated:
                continue
            break
        operands = [o.strip() for o in rest.split(",")] if rest else []
        wide = ".64" in opcode or ".WIDE" in opcode
        dests, sources = ([], operands) if opcode.startswith(no_dest) else (operands[:1], operands[1:])
        if opcode.startswith("UIADD3") and sources and re.fullmatch(r"!?UP\w+", sources[0]):
            sources = sources[1:]  # the carry-out predicate
        for src in sources:
            for reg in re.findall(r"\bUR(\d+)\b", src):
                n = int(reg)
                span = 4 if "gdesc" in src else 2 if wide and "[" not in src else 1
                found += [f"{hex(at)} UR{k}: {text}" for k in range(n, n + span) if k not in written]
        for dst in dests:
            for reg in re.findall(r"\bUR(\d+)\b", dst):
                written.update(range(int(reg), int(reg) + (2 if wide else 1)))
    return found


def subroutine_calls(sass: str) -> int:
    """``CALL`` instructions in a kernel's SASS (``cuobjdump -sass``) that return into it: those not followed by
    ``EXIT`` (``ptxas`` also moves some kernels' bodies into a function called once, then exits: not counted)."""
    rows = re.findall(r"/\*[0-9a-f]{4,}\*/\s+([^;]*?)\s*;", sass)
    return sum(1 for i, text in enumerate(rows) if "CALL." in text and (i + 1 == len(rows) or rows[i + 1] != "EXIT"))


def compile_sass(v: Variant, arch: int) -> str:
    """``cuobjdump -sass`` of one variant built for ``arch``."""
    return _sass(_compile(v, arch).asm["cubin"])


def _sass(cubin: bytes) -> str:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout


def _compile(v: Variant, arch: int):
    import triton
    from triton.backends.compiler import GPUTarget

    sig, attrs = _signature(v)
    if v.gluon:
        from triton.experimental.gluon._runtime import GluonASTSource as source
    else:
        source = triton.compiler.ASTSource
    src = source(fn=v.kernel, signature=sig, constexprs=v.constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": v.num_warps, "num_stages": v.num_stages,
                                   **({"maxnreg": v.maxnreg} if v.maxnreg else {})})


def compile_variant(v: Variant, arch: int) -> KernelReport:
    """Compile one variant for ``arch`` (80, 90, 100, 120...) and read its resource usage."""
    kernel_name = v.kernel.fn.__name__
    try:
        if v.gluon and arch != 90:
            return KernelReport(kernel=kernel_name, variant=v.name, arch=arch, ok=True,
                                error="not built: Gluon kernels here are written for sm_90a")
        if not v.gluon and arch < v.min_arch:
            return KernelReport(kernel=kernel_name, variant=v.name, arch=arch, ok=True,
                                error=f"not built: needs sm_{v.min_arch}+ (another variant serves sm_{arch})")
        compiled = _compile(v, arch)
        usage = _resource_usage(compiled.asm["cubin"])
        report = KernelReport(
            kernel=kernel_name, variant=v.name, arch=arch, ok=True, registers=usage.get("REG"),
            shared_bytes=compiled.metadata.shared, spill_bytes=usage.get("STACK"), local_bytes=usage.get("LOCAL"),
            has_wgmma="wgmma.mma_async" in compiled.asm["ptx"],
            mma_warps=sorted({"x".join(w.split(", ")) for w in re.findall(
                r"nvidia_mma<\{[^}]*warpsPerCTA = \[([0-9, ]+)\]", compiled.asm.get("ttgir", ""))}),
        )
        if v.gluon:
            sass = _sass(compiled.asm["cubin"])
            report = dataclasses.replace(report, early_uniform_reads=uniform_reads_before_writes(sass),
                                         subroutine_calls=subroutine_calls(sass))
        return report
    except Exception as exc:  # a report, not a crash: doctor prints every variant
        return KernelReport(kernel=kernel_name, variant=v.name, arch=arch, ok=False,
                            error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")


def compile_all(arch: int, select: str | None = None, shard: tuple[int, int] = (0, 1)) -> list[KernelReport]:
    """Compile every kernel variant OpenMLA can launch for ``arch``; one report each.

    ``select``: keep variants whose ``kernel[variant]`` name contains this text (or one of several
    texts separated by ``|``). ``shard`` ``(k, n)``: only every ``n``-th of them from the ``k``-th. Under
    ``TRITON_INTERPRET=1`` the kernels in this process are interpreter wrappers that cannot be
    compiled, so the compiles run in child processes with the interpreter off, one per CPU core (at most
    four), each a shard: compiling is CPU-bound, and a cold cache makes it the longest part of the CPU tests.
    """
    if not triton_available():
        return [KernelReport(kernel="*", variant="*", arch=arch, ok=False, error="triton is not importable")]
    if interpret_mode():
        env = dict(os.environ, TRITON_INTERPRET="0")
        jobs = max(1, min(os.cpu_count() or 1, 4))
        cmds = [[sys.executable, "-m", "openmla.ops.aot", "--arch", str(arch), "--shard", f"{k}/{jobs}"]
                + (["--select", select] if select else []) for k in range(jobs)]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for cmd in cmds]
        shards = []
        for proc in procs:
            out, err = proc.communicate()
            if proc.returncode != 0:
                return [KernelReport(kernel="*", variant="*", arch=arch, ok=False,
                                     error=f"compile subprocess failed: {err.strip()[-500:]}")]
            shards.append([KernelReport(**r) for r in json.loads(out)])
        # shard k holds variants k, k + jobs, ...: interleave them back into the variants' order
        return [shards[i % jobs][i // jobs] for i in range(sum(len(sh) for sh in shards))]
    wanted = None if select is None else select.split("|")
    chosen = [v for v in _variants(arch)
              if wanted is None or any(w in f"{v.kernel.fn.__name__}[{v.name}]" for w in wanted)]
    k, n = shard
    return [compile_variant(v, arch) for v in chosen[k::n]]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="compile OpenMLA's kernels for an arch and print JSON reports")
    parser.add_argument("--arch", type=int, required=True)
    parser.add_argument("--select")
    parser.add_argument("--shard", default="0/1", help="k/n: compile only every n-th variant from the k-th")
    ns = parser.parse_args()
    k, n = (int(x) for x in ns.shard.split("/"))
    print(json.dumps([dataclasses.asdict(r) for r in compile_all(ns.arch, ns.select, (k, n))]))
