"""Time OpenMLA (and, with ``--compare flash_mla``, FlashMLA on the same tensors) on the benchmark configs.

Usage (from a source checkout, on a CUDA GPU)::

    python -m benchmarks.runner --configs standard --compare flash_mla --json benchmarks/results/h100.json
    openmla bench --configs all                      # the same runner through the CLI
    python -m benchmarks.runner --dry-run            # CPU: build each config at 1/64 scale, check, no timing

Per config: build the inputs on the GPU (FlashMLA's test data, NaN in unused cache slots), call OpenMLA
once (new API: ``sched, _ = openmla.get_mla_metadata()``, filled by that first call), check its output
against ``openmla.reference``, then time calls that reuse ``sched`` with ``triton.testing.do_bench``
(median, L2 flushed before each call). FlashMLA runs the same way on the same tensors. FLOP and byte
counts follow FlashMLA's dense-decode model over the batch's actual lengths. A config whose check fails
is still timed, but marked; its timing does not count. The exit code is 0 only if every OpenMLA check passed.
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

from benchmarks.configs import DecodeConfig, get_configs

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

    def call():
        return openmla.flash_mla_with_kvcache(
            *inp.call_args(), sched, softmax_scale=inp.softmax_scale, causal=inp.causal
        )

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
    extra = {}
    if "use_legacy" in inspect.signature(flash_mla.flash_mla_with_kvcache).parameters:
        extra["use_legacy"] = True

    def call():
        return flash_mla.flash_mla_with_kvcache(
            *inp.call_args(), sched, None, softmax_scale=inp.softmax_scale, causal=inp.causal, **extra
        )

    return call


# ------------------------------------------------------------------------------------------ one config


def _empty_record(cfg: DecodeConfig, card: str, seqlens: list[int]) -> dict:
    return {
        "op": "dense_decode",
        "config": cfg.as_dict(),
        "card": card,
        "timing": "host_loop_us_per_call" if cfg.timing == "host" else "do_bench_median",
        "sum_s_k": sum(seqlens),
        "openmla_us": None,
        "openmla_tflops": None,
        "openmla_gbps": None,
        "ok": None,
        "max_abs_err": None,
        "error": None,
        "flash_mla_us": None,
        "flash_mla_tflops": None,
        "flash_mla_gbps": None,
        "flash_mla_ok": None,
        "flash_mla_max_abs_err": None,
        "flash_mla_error": None,
        "ratio": None,
    }


def _measure(fn: Callable[[], object], cfg: DecodeConfig, args: argparse.Namespace) -> float:
    """µs of one call: ``do_bench`` median, or the host-loop mean for ``timing="host"`` configs."""
    from openmla._harness import device_median_us, host_loop_us

    if cfg.timing == "host":
        return host_loop_us(fn, args.host_calls)
    return device_median_us(fn, args.warmup_ms, args.rep_ms)


def _run_provider(prefix: str, make_call, inp, ref, cfg, args, rec: dict, flops: float, nbytes: float) -> None:
    """Run one provider: first call (fills the schedule), check against the reference, then time. Fills ``rec``."""
    from openmla._harness import check_decode

    try:
        call = make_call(inp)
        out, lse = call()
        checks = check_decode(out, lse, *ref)
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


def run_config(cfg: DecodeConfig, args: argparse.Namespace, card: str, flash_mla, flash_mla_missing) -> dict:
    """Build ``cfg``'s inputs, check and time OpenMLA (and FlashMLA), and return the result record."""
    import torch

    from openmla import reference
    from openmla._harness import dense_decode_flops_bytes, make_dense_decode_inputs, parse_dtype

    device = "cpu" if args.dry_run else "cuda"
    seqlens = cfg.seqlens()
    rec = _empty_record(cfg, card, seqlens)
    dtype = parse_dtype(cfg.dtype)
    inp = make_dense_decode_inputs(
        seqlens, cfg.s_q, cfg.h_q, cfg.h_kv, cfg.d, cfg.dv, cfg.page_block_size, dtype, cfg.causal, device, cfg.seed
    )
    flops, nbytes = dense_decode_flops_bytes(seqlens, cfg.s_q, cfg.h_q, cfg.h_kv, cfg.d, cfg.dv, dtype.itemsize)
    ref = reference.flash_mla_with_kvcache(*inp.call_args(), None, softmax_scale=inp.softmax_scale, causal=inp.causal)

    import openmla

    args_in = inp.call_args()
    rec["openmla_backend"] = openmla.explain(args_in[0], args_in[1], head_dim_v=cfg.dv).backend
    _run_provider("openmla", _openmla_call, inp, ref, cfg, args, rec, flops, nbytes)
    if args.compare == "flash_mla":
        reason = flash_mla_missing or _flash_mla_unsupported(cfg)
        if args.dry_run:
            reason = reason or "dry run: FlashMLA runs on CUDA GPUs only"
        if reason:
            rec["flash_mla_error"] = reason
        else:
            _run_provider("flash_mla", lambda i: _flash_mla_call(flash_mla, i), inp, ref, cfg, args, rec, flops, nbytes)
    if rec["openmla_us"] and rec["flash_mla_us"]:
        rec["ratio"] = rec["flash_mla_us"] / rec["openmla_us"]
    del inp, ref
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
    """The compact table printed at the end of every run."""
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


def _summary(results: Sequence[dict], card: str) -> str:
    """Card, the geometric-mean ratio over configs where both providers passed, and any failures."""
    lines = [f"card: {card}; ratio = flash_mla_us / openmla_us (> 1: OpenMLA is faster)"]
    good = [r["ratio"] for r in results if r["ratio"] and r["ok"] and r["flash_mla_ok"]]
    if good:
        geomean = math.exp(sum(math.log(x) for x in good) / len(good))
        lines.append(f"geomean ratio over {len(good)} checked configs: {geomean:.3f}")
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


def _cases(args: argparse.Namespace) -> list[DecodeConfig]:
    """The configs to run: dry runs shrink them 64x and, under the Triton interpreter, use fp16."""
    from openmla._runtime import interpret_mode

    cases = get_configs(args.configs, args.dtype)
    if not args.dry_run:
        return cases
    cases = [c.scaled_down(DRY_RUN_SCALE) for c in cases]
    if interpret_mode() and args.dtype is None:
        import dataclasses

        print("dry run under TRITON_INTERPRET=1: fp16 instead of bf16 (the interpreter's bf16 dot is wrong)")
        cases = [dataclasses.replace(c, dtype="fp16") for c in cases]
    return cases


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args`` (see :func:`openmla.cli.add_bench_arguments`)."""
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("bench: no CUDA GPU visible. Timing needs one; `--dry-run` checks the plumbing on CPU.", file=sys.stderr)
        return 2
    flash_mla, missing = _load_flash_mla() if args.compare == "flash_mla" else (None, None)
    if missing:
        print(f"bench: --compare flash_mla: {missing}; OpenMLA is timed alone.")
    header = make_header(args, flash_mla)
    cases = _cases(args)
    print(f"bench: {len(cases)} {args.configs} configs on {header['card']}" + (" (DRY RUN: no timing)" * args.dry_run))
    results = []
    for i, cfg in enumerate(cases, 1):
        print(f"[{i}/{len(cases)}] {cfg.name} {cfg.as_dict()}", flush=True)
        results.append(run_config(cfg, args, header["card"], flash_mla, missing))
    if args.json:
        _write_json(args.json, header, results)
    print()
    print(results_table(results))
    print(_summary(results, header["card"]))
    return 0 if all(r["ok"] is True for r in results) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.runner``: the same options as ``openmla bench``."""
    from openmla.cli import add_bench_arguments

    parser = argparse.ArgumentParser(prog="python -m benchmarks.runner", description=__doc__.splitlines()[0])
    add_bench_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
