"""Time OpenMLA (and, with ``--compare flash_mla``, FlashMLA on the same tensors) on the benchmark configs.

Usage (from a source checkout, on a CUDA GPU)::

    python -m benchmarks.runner --configs standard --compare flash_mla --json benchmarks/results/h100.json
    python -m benchmarks.runner --op sparse_decode --configs all --compare flash_mla
    openmla bench --op all --configs all             # the same runner through the CLI, both ops
    python -m benchmarks.runner --op all --dry-run   # CPU: build each config at 1/64 scale, check, no timing

Ops (``--op``): ``dense_decode`` (default), ``sparse_decode`` (``flash_mla_with_kvcache(..., indices=...)``),
``all`` (both, each with its own configs of the named set; see ``benchmarks/configs.py``).

Per config: build the inputs on the GPU (FlashMLA's test data, NaN in unused cache slots), call OpenMLA
once (new API: ``sched, _ = openmla.get_mla_metadata()``, filled by that first call), check its output
against ``openmla.reference``, then time calls that reuse ``sched`` with ``triton.testing.do_bench``
(median, L2 flushed before each call). FlashMLA runs the same way on the same tensors. FLOP and byte
counts follow FlashMLA's models: dense decode over the batch's actual lengths, sparse decode over
``b * s_q * topk`` attended entries and the distinct cache records the index lists name. A config whose
check fails is still timed, but marked; its timing does not count. The exit code is 0 only if every
OpenMLA check passed.

Sparse decode against FlashMLA (``sgl-flash-mla``'s legacy SM90 kernels): it takes the V3.2 FP8 cache
only, bf16 q, h_q 64 or 128 and ``topk % 64 == 0``. Configs with fewer heads run FlashMLA on q
zero-padded to 64 heads, as callers do (the padding copy is made once, outside the timed call; the
check reads back the real heads); the record says so (``flash_mla_h_q``, ``flash_mla_q_padded``).
Where FlashMLA cannot run a config, ``flash_mla_error`` says why.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

from benchmarks.configs import OPS, DecodeConfig, SparseDecodeConfig, config_sets, get_configs

REPO_ROOT = Path(__file__).resolve().parent.parent
DRY_RUN_SCALE = 64


# --------------------------------------------------------------------------------------------- header


def _git_sha() -> tuple[str | None, bool]:
    """HEAD's sha and whether the work tree has uncommitted changes (``None`` outside a git checkout)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None, False
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return sha.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, False


def _flash_mla_version(module) -> str | None:
    from importlib import metadata

    for dist in ("sgl-flash-mla", "flash-mla", "flash_mla"):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return getattr(module, "__version__", None)


def _card(dry_run: bool) -> str:
    import torch

    if dry_run or not torch.cuda.is_available():
        return "CPU (dry run)"
    return torch.cuda.get_device_name()


def make_header(args: argparse.Namespace, flash_mla) -> dict:
    """Versions, card, git sha, date and the options of this run."""
    import torch

    from openmla._harness import module_version, openmla_version

    sha, dirty = _git_sha()
    return {
        "op": args.op,
        "ops": _ops(args),
        "configs": args.configs,
        "card": _card(args.dry_run),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": module_version("triton"),
        "openmla": openmla_version(),
        "flash_mla": _flash_mla_version(flash_mla) if flash_mla is not None else None,
        "git_sha": sha,
        "git_dirty": dirty,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "timing": "triton.testing.do_bench median, L2 flushed before each call; host configs: perf_counter loop",
        "warmup_ms": args.warmup_ms,
        "rep_ms": args.rep_ms,
        "dry_run": args.dry_run,
        "cuda_graph": bool(getattr(args, "cuda_graph", False)),
        "argv": sys.argv[1:],
    }


# ------------------------------------------------------------------------------------------ providers


def _load_flash_mla() -> tuple[object | None, str | None]:
    """The ``flash_mla`` module, or the reason it cannot be used."""
    try:
        import flash_mla
    except Exception as exc:
        return None, f"import flash_mla failed: {type(exc).__name__}: {exc}"
    return flash_mla, None


def _openmla_call(inp) -> Callable[[], tuple]:
    """A zero-argument OpenMLA call on ``inp`` that reuses one schedule (filled by its first call)."""
    import openmla

    sched, _ = openmla.get_mla_metadata()

    fp8 = {} if inp.descale_k is None else {"descale_q": inp.descale_q, "descale_k": inp.descale_k}

    def call():
        return openmla.flash_mla_with_kvcache(
            *inp.call_args(), sched, softmax_scale=inp.softmax_scale, causal=inp.causal, **fp8
        )

    call.sched = sched  # the schedule its calls plan and share (kernel_times reads its pieces)
    return call


def _openmla_old_form_call(inp) -> Callable[[], tuple]:
    """The same call with FlashMLA's old metadata form, as SGLang and older vLLM call it: the schedule's two tensors
    from ``get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv)``, planned once, passed to every call."""
    import openmla

    s_q, h_q, h_kv = inp.q.shape[1], inp.q.shape[2], inp.k_cache.shape[2]
    sched, splits = openmla.get_mla_metadata(inp.cache_seqlens, s_q * h_q // h_kv, h_kv,
                                             is_fp8_kvcache=inp.descale_k is not None)
    fp8 = {} if inp.descale_k is None else {"descale_q": inp.descale_q, "descale_k": inp.descale_k}

    def call():
        return openmla.flash_mla_with_kvcache(
            *inp.call_args(), sched, splits, softmax_scale=inp.softmax_scale, causal=inp.causal, **fp8
        )

    call.plan = sched, splits  # kernel_times reads its pieces
    return call


def _flash_mla_unsupported(cfg: DecodeConfig) -> str | None:
    """Why FlashMLA's dense decode cannot run ``cfg`` (``None`` when it can)."""
    if cfg.page_block_size != 64:
        return f"FlashMLA requires page_block_size 64 (config has {cfg.page_block_size})"
    if cfg.d != 576 or cfg.dv != 512:
        return f"FlashMLA's dense decode requires d=576, dv=512 (config has d={cfg.d}, dv={cfg.dv})"
    return None


def _flash_mla_call(flash_mla, inp) -> Callable[[], tuple]:
    """The same call through FlashMLA (``use_legacy=True`` where the wheel has it: sgl-flash-mla's SM90 kernels)."""
    sched, _ = flash_mla.get_mla_metadata()
    extra = _legacy_kwargs(flash_mla)
    if inp.descale_k is not None:
        # sgl-flash-mla's dense FP8 kernel: the legacy scheduler's plan, computed once, set on the schedule
        _, s_q, h_q, _ = inp.q.shape
        h_kv = inp.k_cache.shape[2]
        sched.tile_scheduler_metadata, sched.num_splits = flash_mla.get_mla_decoding_metadata(
            inp.cache_seqlens, s_q * h_q // h_kv, h_kv, is_fp8_kvcache=True, **extra)
        extra = dict(extra, is_fp8_kvcache=True, descale_q=inp.descale_q, descale_k=inp.descale_k)

    def call():
        return flash_mla.flash_mla_with_kvcache(
            *inp.call_args(), sched, None, softmax_scale=inp.softmax_scale, causal=inp.causal, **extra
        )

    return call


def _legacy_kwargs(flash_mla) -> dict:
    """``use_legacy=True`` where the wheel has it (sgl-flash-mla: its SM90 kernels), else nothing."""
    if "use_legacy" in inspect.signature(flash_mla.flash_mla_with_kvcache).parameters:
        return {"use_legacy": True}
    return {}


def _openmla_sparse_call(inp) -> Callable[[], tuple]:
    """A zero-argument OpenMLA sparse-decode call on ``inp`` that reuses one schedule."""
    import openmla

    sched, _ = openmla.get_mla_metadata()

    def call():
        return openmla.flash_mla_with_kvcache(
            inp.q,
            inp.k_cache,
            None,
            None,
            inp.head_dim_v,
            sched,
            softmax_scale=inp.softmax_scale,
            causal=False,
            is_fp8_kvcache=inp.is_fp8,
            indices=inp.indices,
        )

    return call


#: The query head counts FlashMLA's sparse decode takes; fewer heads are zero-padded up to the next one.
FLASH_MLA_SPARSE_HEADS = (64, 128)


def _flash_mla_sparse_heads(h_q: int) -> int | None:
    """The head count FlashMLA runs ``h_q`` heads with (padded up), or ``None`` past 128."""
    return next((h for h in FLASH_MLA_SPARSE_HEADS if h >= h_q), None)


def _flash_mla_sparse_unsupported(cfg: SparseDecodeConfig) -> str | None:
    """Why FlashMLA's sparse decode cannot run ``cfg`` (``None`` when it can, padding heads if needed)."""
    if cfg.kv_format != "V32_FP8":
        return (
            f"FlashMLA has no sparse decode over a {cfg.kv_format} cache on SM90: its sparse path takes FP8 caches "
            "only (is_fp8_kvcache=True; the V3.2 656 B/token layout for d_qk=576)"
        )
    if cfg.dtype != "bf16":
        return f"FlashMLA's sparse FP8 decode takes bf16 q (config has {cfg.dtype})"
    if (cfg.d_qk, cfg.dv) != (576, 512):
        return f"FlashMLA's V3.2 sparse decode requires d_qk=576, dv=512 (config has {cfg.d_qk}, {cfg.dv})"
    if cfg.topk % 64:
        return f"FlashMLA's SM90 sparse decode requires topk % 64 == 0 (config has topk={cfg.topk})"
    if _flash_mla_sparse_heads(cfg.h_q) is None:
        return f"FlashMLA's sparse decode takes h_q 64 or 128 (config has h_q={cfg.h_q}, too many to pad)"
    return None


def _pad_heads(q, h: int):
    """``q`` [b, s_q, h_q, d] zero-padded to ``h`` heads (what callers do for FlashMLA today)."""
    import torch

    if q.shape[2] == h:
        return q
    padded = torch.zeros(*q.shape[:2], h, q.shape[3], dtype=q.dtype, device=q.device)
    padded[:, :, : q.shape[2]] = q
    return padded


def _flash_mla_sparse_call(flash_mla, inp, q) -> Callable[[], tuple]:
    """FlashMLA's sparse decode (sgl-flash-mla 1.0.0's signature) on ``q`` and ``inp``'s cache and indices."""
    sched, _ = flash_mla.get_mla_metadata()
    extra = _legacy_kwargs(flash_mla)

    def call():
        return flash_mla.flash_mla_with_kvcache(
            q,
            inp.k_cache,
            None,
            None,
            inp.head_dim_v,
            sched,
            softmax_scale=inp.softmax_scale,
            causal=False,
            is_fp8_kvcache=True,
            indices=inp.indices,
            **extra,
        )

    return call


# ------------------------------------------------------------------------------------------ one config


# what each provider's run fills in, for every op's record
_MEASURED_FIELDS = {
    f"{prefix}{field}": None
    for prefix in ("openmla_", "flash_mla_")
    for field in ("us", "tflops", "gbps")
} | {"ok": None, "max_abs_err": None, "error": None,
     "flash_mla_ok": None, "flash_mla_max_abs_err": None, "flash_mla_error": None}


def _empty_record(cfg: DecodeConfig, card: str, seqlens: list[int]) -> dict:
    return {
        "op": "dense_decode",
        "config": cfg.as_dict(),
        "card": card,
        "timing": "host_loop_us_per_call" if cfg.timing == "host" else "do_bench_median",
        "sum_s_k": sum(seqlens),
        **_MEASURED_FIELDS,
        "ratio": None,
    }


def _graphed(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` captured in a CUDA graph (after a warm-up on a side stream); returns the graph's replay."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _measure(fn: Callable[[], object], cfg: DecodeConfig, args: argparse.Namespace) -> float:
    """µs of one call: ``do_bench`` median (of graph replays with ``--cuda-graph``), or the host-loop mean
    for ``timing="host"`` configs."""
    from openmla._harness import device_median_us, host_loop_us

    if cfg.timing == "host":
        return host_loop_us(fn, args.host_calls)
    if getattr(args, "cuda_graph", False):
        fn = _graphed(fn)
    return device_median_us(fn, args.warmup_ms, args.rep_ms)


def _run_provider(
    prefix: str, make_call, check: Callable[[object, object], list], cfg, args, rec: dict, flops: float, nbytes: float
) -> None:
    """Run one provider: first call (fills the schedule), ``check(out, lse)``, then time. Fills ``rec``."""
    if getattr(args, "cuda_graph", False) and getattr(cfg, "timing", None) != "host":
        rec["timing"] = "do_bench_median_cuda_graph"
    try:
        call = make_call()
        out, lse = call()
        checks = check(out, lse)
        del out, lse
        ok_key, err_key = ("ok", "max_abs_err") if prefix == "openmla" else (f"{prefix}_ok", f"{prefix}_max_abs_err")
        rec[ok_key] = all(c.ok for c in checks)
        rec[err_key] = checks[0].max_abs_err
        if not rec[ok_key]:
            print(f"  {prefix}: CHECK FAILED: " + "; ".join(str(c) for c in checks if not c.ok), flush=True)
        if args.dry_run:
            return
        us = _measure(call, cfg, args)
        rec[f"{prefix}_us"] = us
        if cfg.timing != "host":
            rec[f"{prefix}_tflops"] = flops / us / 1e6
            rec[f"{prefix}_gbps"] = nbytes / us / 1e3
    except Exception as exc:  # one provider failing must not end the run
        rec["error" if prefix == "openmla" else f"{prefix}_error"] = f"{type(exc).__name__}: {exc}"
        print(f"  {prefix}: ERROR {type(exc).__name__}: {exc}", flush=True)


def run_config(cfg, args: argparse.Namespace, card: str, flash_mla, flash_mla_missing) -> dict:
    """Build ``cfg``'s inputs, check and time OpenMLA (and FlashMLA), and return the result record."""
    if isinstance(cfg, SparseDecodeConfig):
        return run_sparse_config(cfg, args, card, flash_mla, flash_mla_missing)
    return run_dense_config(cfg, args, card, flash_mla, flash_mla_missing)


def run_dense_config(cfg: DecodeConfig, args: argparse.Namespace, card: str, flash_mla, flash_mla_missing) -> dict:
    """One dense-decode config: build, check and time OpenMLA (and FlashMLA); the result record."""
    import torch

    from openmla import reference
    from openmla._harness import (
        FP8_DTYPES,
        check_decode,
        dense_decode_flops_bytes,
        make_dense_decode_inputs,
        parse_dtype,
        quantize_dense_fp8,
        runs_e4m3_scores,
    )

    device = "cpu" if args.dry_run else "cuda"
    seqlens = cfg.seqlens()
    rec = _empty_record(cfg, card, seqlens)
    dtype = parse_dtype(cfg.dtype)
    fp8 = cfg.dtype in FP8_DTYPES
    inp = make_dense_decode_inputs(
        seqlens, cfg.s_q, cfg.h_q, cfg.h_kv, cfg.d, cfg.dv, cfg.page_block_size,
        torch.bfloat16 if fp8 else dtype, cfg.causal, device, cfg.seed,
    )
    if fp8:
        # the interpreter truncates fp32 -> bf16 stores, so the bf16 output of an e4m3 q would miss
        # FlashMLA's tolerance on the CPU; dry runs there take an fp16 q (fp16 output) over the FP8 cache
        from openmla._runtime import interpret_mode

        inp = quantize_dense_fp8(inp, fp8_q=not (args.dry_run and interpret_mode()))
    flops, nbytes = dense_decode_flops_bytes(seqlens, cfg.s_q, cfg.h_q, cfg.h_kv, cfg.d, cfg.dv, dtype.itemsize)
    ref = reference.flash_mla_with_kvcache(*inp.call_args(), None, softmax_scale=inp.softmax_scale, causal=inp.causal,
                                           descale_q=inp.descale_q, descale_k=inp.descale_k)

    import openmla

    args_in = inp.call_args()
    rec["openmla_backend"] = openmla.explain(args_in[0], args_in[1], head_dim_v=cfg.dv).backend
    # an e4m3 q on Hopper: both libraries multiply on the e4m3 tensor cores, whose sums keep fewer bits than fp32,
    # so the LSE is checked with the tolerance written for that (openmla._harness.E4M3_SCORES_LSE_TOLERANCE)
    e4m3_scores = runs_e4m3_scores(rec["openmla_backend"], inp.q, inp.k_cache, cfg.dv, inp.descale_q, inp.descale_k)
    rec["lse_tolerance"] = "e4m3 products" if e4m3_scores else "dense decode"

    def check(out, lse):
        return check_decode(out, lse, *ref, e4m3_scores=e4m3_scores)

    _run_provider("openmla", lambda: _openmla_call(inp), check, cfg, args, rec, flops, nbytes)
    if args.compare == "flash_mla":
        reason = flash_mla_missing or _flash_mla_unsupported(cfg)
        if args.dry_run:
            reason = reason or "dry run: FlashMLA runs on CUDA GPUs only"
        if reason:
            rec["flash_mla_error"] = reason
        else:
            _run_provider("flash_mla", lambda: _flash_mla_call(flash_mla, inp), check, cfg, args, rec, flops, nbytes)
    if rec["openmla_us"] and rec["flash_mla_us"]:
        rec["ratio"] = rec["flash_mla_us"] / rec["openmla_us"]
    inp = ref = None  # the closures above hold these: drop the tensors before the next config
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rec


def sparse_check(ref: tuple, h_q: int) -> Callable[[object, object], list]:
    """``check(out, lse)`` against the reference's ``(out, lse)`` over the first ``h_q`` heads.

    A FlashMLA run on q padded with zero heads returns more heads than asked for; the real ones come first.
    """
    from openmla._harness import check_sparse_decode

    def check(out, lse):
        return check_sparse_decode(out[:, :, :h_q], lse[:, :h_q], *ref)

    return check


def run_flash_mla_sparse(flash_mla, inp, check, cfg: SparseDecodeConfig, args, rec: dict, flops, nbytes) -> None:
    """Check and time FlashMLA on ``inp`` (q zero-padded to the heads it takes); fills ``rec``'s flash_mla fields."""
    h_fm = _flash_mla_sparse_heads(cfg.h_q)
    rec["flash_mla_h_q"], rec["flash_mla_q_padded"] = h_fm, h_fm != cfg.h_q
    q_fm = _pad_heads(inp.q, h_fm)  # padded once, outside the timed call
    _run_provider(
        "flash_mla", lambda: _flash_mla_sparse_call(flash_mla, inp, q_fm), check, cfg, args, rec, flops, nbytes
    )


def _empty_sparse_record(cfg: SparseDecodeConfig, card: str, inp, flops: float, nbytes: float) -> dict:
    return {
        "op": "sparse_decode",
        "config": cfg.as_dict(),
        "card": card,
        "timing": "do_bench_median",
        "n_att": cfg.b * cfg.s_q * cfg.topk,
        "n_valid_indices": inp.n_valid,
        "n_unique_tokens": inp.n_unique_tokens,
        "bytes_per_token": inp.bytes_per_token,
        "cache_dtype": str(inp.k_cache.dtype).removeprefix("torch."),
        "flops": flops,
        "bytes": nbytes,
        **_MEASURED_FIELDS,
        "flash_mla_h_q": None,
        "flash_mla_q_padded": None,
        "ratio": None,
    }


def run_sparse_config(
    cfg: SparseDecodeConfig, args: argparse.Namespace, card: str, flash_mla, flash_mla_missing
) -> dict:
    """One sparse-decode config: build, check and time OpenMLA (and FlashMLA); the result record.

    Both providers are checked against ``openmla.reference.sparse_decode`` run on the same (quantized)
    cache. TFLOPS and GB/s count the config's own ``h_q`` heads for both, padded FlashMLA runs included.
    """
    import torch

    import openmla
    from openmla import reference
    from openmla._harness import make_sparse_decode_inputs, parse_dtype, sparse_decode_flops_bytes

    device = "cpu" if args.dry_run else "cuda"
    dtype = parse_dtype(cfg.dtype)
    inp = make_sparse_decode_inputs(
        cfg.b, cfg.s_q, cfg.h_q, cfg.s_k, cfg.topk, cfg.page_block_size, cfg.kv_format, cfg.d_qk, cfg.dv,
        dtype=dtype, device=device, seed=cfg.seed, invalid_frac=cfg.invalid_frac,
    )  # fmt: skip
    flops, nbytes = sparse_decode_flops_bytes(
        cfg.b, cfg.s_q, cfg.h_q, cfg.topk, cfg.d_qk, cfg.dv, inp.n_unique_tokens, inp.bytes_per_token, dtype.itemsize
    )
    rec = _empty_sparse_record(cfg, card, inp, flops, nbytes)
    ref = reference.sparse_decode(inp.q, inp.k_cache, inp.indices, inp.head_dim_v, inp.softmax_scale)
    rec["openmla_backend"] = openmla.explain(inp.q, inp.k_cache, head_dim_v=inp.head_dim_v, indices=inp.indices).backend
    check = sparse_check(ref, cfg.h_q)
    _run_provider("openmla", lambda: _openmla_sparse_call(inp), check, cfg, args, rec, flops, nbytes)
    if args.compare == "flash_mla":
        reason = flash_mla_missing or _flash_mla_sparse_unsupported(cfg)
        if args.dry_run:
            reason = reason or "dry run: FlashMLA runs on CUDA GPUs only"
        if reason:
            rec["flash_mla_error"] = reason
        else:
            run_flash_mla_sparse(flash_mla, inp, check, cfg, args, rec, flops, nbytes)
    if rec["openmla_us"] and rec["flash_mla_us"]:
        rec["ratio"] = rec["flash_mla_us"] / rec["openmla_us"]
    inp = ref = None  # the closures above hold these: drop the tensors before the next config
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rec


# ------------------------------------------------------------------------------------------------ report


def _fmt(value, spec: str) -> str | None:
    return None if value is None else format(value, spec)


def _check_cell(ok, err) -> str | None:
    if ok is None:
        return None
    return ("ok " if ok else "FAIL ") + format(err, ".1e")


def results_table(results: Sequence[dict]) -> str:
    """The compact tables printed at the end of every run: one per op."""
    dense = [r for r in results if r["op"] == "dense_decode"]
    sparse = [r for r in results if r["op"] == "sparse_decode"]
    tables = []
    if dense:
        tables.append(dense_results_table(dense))
    if sparse:
        tables.append(sparse_results_table(sparse))
    return "\n\n".join(tables)


def dense_results_table(results: Sequence[dict]) -> str:
    """The dense-decode table."""
    from openmla._harness import format_table

    headers = [
        "config",
        "b",
        "s_q",
        "mean s_k",
        "h_q",
        "dtype",
        "openmla us",
        "TFLOPS",
        "GB/s",
        "check",
        "flash_mla us",
        "TFLOPS",
        "check",
        "ratio",
    ]
    rows = []
    for r in results:
        c = r["config"]
        rows.append([
            c["name"], c["b"], c["s_q"], round(r["sum_s_k"] / c["b"]), c["h_q"], c["dtype"],
            _fmt(r["openmla_us"], ".1f") or ("ERROR" if r["error"] else None),
            _fmt(r["openmla_tflops"], ".1f"), _fmt(r["openmla_gbps"], ".0f"), _check_cell(r["ok"], r["max_abs_err"]),
            _fmt(r["flash_mla_us"], ".1f") or ("n/a" if r["flash_mla_error"] else None),
            _fmt(r["flash_mla_tflops"], ".1f"), _check_cell(r["flash_mla_ok"], r["flash_mla_max_abs_err"]),
            _fmt(r["ratio"], ".3f"),
        ])  # fmt: skip
    return format_table(headers, rows)


def sparse_results_table(results: Sequence[dict]) -> str:
    """The sparse-decode table (``fm h_q``: the heads FlashMLA ran, ``pad`` when q was zero-padded)."""
    from openmla._harness import format_table

    headers = [
        "config", "b", "s_q", "s_k", "h_q", "topk", "page", "kv", "dtype", "openmla us", "TFLOPS", "GB/s", "check",
        "flash_mla us", "TFLOPS", "check", "fm h_q", "ratio",
    ]  # fmt: skip
    rows = []
    for r in results:
        c = r["config"]
        fm_heads = None if r["flash_mla_h_q"] is None else f"{r['flash_mla_h_q']}" + (" pad" * r["flash_mla_q_padded"])
        rows.append([
            c["name"], c["b"], c["s_q"], c["s_k"], c["h_q"], c["topk"], c["page_block_size"], c["kv_format"],
            c["dtype"],
            _fmt(r["openmla_us"], ".1f") or ("ERROR" if r["error"] else None),
            _fmt(r["openmla_tflops"], ".1f"), _fmt(r["openmla_gbps"], ".0f"), _check_cell(r["ok"], r["max_abs_err"]),
            _fmt(r["flash_mla_us"], ".1f") or ("n/a" if r["flash_mla_error"] else None),
            _fmt(r["flash_mla_tflops"], ".1f"), _check_cell(r["flash_mla_ok"], r["flash_mla_max_abs_err"]),
            fm_heads, _fmt(r["ratio"], ".3f"),
        ])  # fmt: skip
    return format_table(headers, rows)


def _geomean_groups(results: Sequence[dict]) -> dict[str, list[float]]:
    """Ratios of configs where both providers passed, grouped: per op, and per set for sparse decode."""
    groups: dict[str, list[float]] = {}
    for r in results:
        if not (r["ratio"] and r["ok"] and r["flash_mla_ok"]):
            continue
        key = r["op"] if r["op"] == "dense_decode" else f"{r['op']} {r['config']['set']}"
        if r.get("flash_mla_q_padded"):
            key += " (FlashMLA on padded q)"
        groups.setdefault(key, []).append(r["ratio"])
    return groups


def _summary(results: Sequence[dict], card: str) -> str:
    """Card, the geometric-mean ratio over configs where both providers passed, and any failures."""
    lines = [f"card: {card}; ratio = flash_mla_us / openmla_us (> 1: OpenMLA is faster)"]
    for key, good in _geomean_groups(results).items():
        geomean = math.exp(sum(math.log(x) for x in good) / len(good))
        lines.append(f"geomean ratio over {len(good)} checked {key} configs: {geomean:.3f}")
    bad = [r["config"]["name"] for r in results if r["ok"] is not True]
    if bad:
        lines.append("OpenMLA FAILED (check or error; timings do not count): " + ", ".join(bad))
    reasons: dict[str, list[str]] = {}
    for r in results:
        if r["flash_mla_error"]:
            reasons.setdefault(r["flash_mla_error"], []).append(r["config"]["name"])
    for reason, names in reasons.items():
        where = "every config" if len(names) == len(results) else ", ".join(names)
        lines.append(f"flash_mla n/a on {where}: {reason}")
    return "\n".join(lines)


def _write_json(path: str, header: dict, results: list[dict]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"header": header, "results": results}, indent=2) + "\n")
    print(f"wrote {target}")


# --------------------------------------------------------------------------------------------------- run


def _ops(args: argparse.Namespace) -> list[str]:
    """The ops ``--op`` names (``all``: every op)."""
    return list(OPS) if args.op == "all" else [args.op]


def _cases(args: argparse.Namespace, op: str = "dense_decode") -> list:
    """``op``'s configs of the sets ``--configs`` names: dry runs shrink them 64x and, under the Triton interpreter,
    use fp16."""
    from openmla._runtime import InvalidArgumentError, interpret_mode

    if args.dtype == "fp8" and op != "dense_decode":
        raise InvalidArgumentError(
            f"--dtype fp8 (per-tensor e4m3 q and cache) applies to dense_decode only; {op}'s FP8 caches are a "
            "kv_format of its configs (V32_FP8): run it without --dtype"
        )
    by_name = {}  # each config once, in the order of the sets named (``all,standard`` repeats standard's)
    for name in _set_names(args, op):
        for c in get_configs(name, args.dtype, op):
            by_name.setdefault(c.name, c)
    cases = list(by_name.values())
    if not args.dry_run:
        return cases
    cases = [c.scaled_down(DRY_RUN_SCALE) for c in cases]
    if interpret_mode() and args.dtype in (None, "bf16"):
        import dataclasses

        print(f"{op} dry run under TRITON_INTERPRET=1: fp16 instead of bf16 (the interpreter's bf16 dot is wrong)")
        cases = [dataclasses.replace(c, dtype="fp16") for c in cases]
    return cases


def _set_names(args: argparse.Namespace, op: str) -> list[str]:
    """The sets of ``--configs`` (comma-separated) that ``op`` runs: all of them for one op (a set it does not
    define is an error there), those it defines under ``--op all`` (the others skipped with a note)."""
    names = args.configs.split(",")
    if args.op != "all":
        return names
    skipped = [name for name in names if name not in config_sets(op)]
    if skipped:
        print(f"bench: {op} has no {', '.join(map(repr, skipped))} configs ({', '.join(config_sets(op))}); skipped")
    return [name for name in names if name not in skipped]


def _all_cases(args: argparse.Namespace) -> list:
    """The configs of every op asked for, each config once (``--configs`` may name several sets)."""
    cases = []
    for op in _ops(args):
        cases += _cases(args, op)
    return cases


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args`` (see :func:`openmla.cli.add_bench_arguments`)."""
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("bench: no CUDA GPU visible. Timing needs one; `--dry-run` checks the plumbing on CPU.", file=sys.stderr)
        return 2
    try:
        cases = _all_cases(args)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    flash_mla, missing = _load_flash_mla() if args.compare == "flash_mla" else (None, None)
    if missing:
        print(f"bench: --compare flash_mla: {missing}; OpenMLA is timed alone.")
    header = make_header(args, flash_mla)
    print(
        f"bench: {len(cases)} {args.configs} configs of {args.op} on {header['card']}"
        + (" (DRY RUN: no timing)" * args.dry_run)
    )
    results = []
    for i, cfg in enumerate(cases, 1):
        print(f"[{i}/{len(cases)}] {cfg.name} {cfg.as_dict()}", flush=True)
        results.append(run_config(cfg, args, header["card"], flash_mla, missing))
    if args.json:
        _write_json(args.json, header, results)
    print()
    print(results_table(results))
    print(_summary(results, header["card"]))
    return 0 if results and all(r["ok"] is True for r in results) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.runner``: the same options as ``openmla bench``."""
    from openmla.cli import add_bench_arguments

    parser = argparse.ArgumentParser(prog="python -m benchmarks.runner", description=__doc__.splitlines()[0])
    add_bench_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
