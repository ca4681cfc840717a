"""The ``openmla`` command line: ``doctor``, ``demo``, ``bench``, ``warmup``.

``openmla doctor`` says what this machine has and which backend serves each op, and why;
``openmla demo`` runs one DeepSeek-V3-shaped decode step and checks it against the reference;
``openmla bench`` runs ``benchmarks/runner.py`` (source checkouts only);
``openmla warmup`` compiles the kernels for the common shapes on this GPU.

Every command works on a machine with no GPU and says loudly what it could not do there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

#: Environment variables ``doctor`` always shows (set or not), besides every ``OPENMLA_*`` one.
KNOWN_ENV = (
    "OPENMLA_BACKEND",
    "OPENMLA_ARCH",
    "OPENMLA_NUM_SMS",
    "OPENMLA_CHECK_VALUES",
    "OPENMLA_REPLAY",
    "OPENMLA_FP8_SCORES",
    "TRITON_INTERPRET",
    "TRITON_CACHE_DIR",
    "CUDA_VISIBLE_DEVICES",
)


class CLIError(Exception):
    """A command cannot run as asked; the message says why and what to do instead."""


# --------------------------------------------------------------------------------------------- helpers


def parse_arch(text: str) -> int:
    """``"sm_90a"``, ``"sm90"``, ``"90"`` or ``"9.0"`` to ``90`` (an argparse ``type=``)."""
    t = text.strip().lower().removeprefix("sm_").removeprefix("sm").rstrip("af").replace(".", "")
    if not t.isdigit() or not 50 <= int(t) <= 200:
        raise argparse.ArgumentTypeError(f"{text!r} is not a GPU arch; write it as 'sm_90a', 'sm_80' or '90'")
    return int(t)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------- doctor


@dataclass
class Section:
    """One part of the ``doctor`` report: key/value rows, an optional table, notes, or the error it hit."""

    title: str
    rows: list[tuple[str, str]] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)
    table: list[list[object]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    failed: bool = False  # the section ran, and found a problem (e.g. a kernel that does not compile)

    def to_dict(self) -> dict:
        """JSON form of the section."""
        out: dict = {"title": self.title, "rows": dict(self.rows)}
        if self.headers:
            out["table"] = [dict(zip(self.headers, row)) for row in self.table]
        if self.notes:
            out["notes"] = self.notes
        if self.error:
            out["error"] = self.error
        return out

    def render(self) -> str:
        """Text form of the section."""
        from ._harness import format_table

        lines = [f"== {self.title}"]
        width = max((len(k) for k, _ in self.rows), default=0)
        lines += [f"  {k.ljust(width)} : {v}" for k, v in self.rows]
        if self.headers:
            lines += ["  " + line for line in format_table(self.headers, self.table).splitlines()]
        lines += [f"  note: {n}" for n in self.notes]
        if self.error:
            lines.append(f"  ERROR in this section: {self.error}")
        return "\n".join(lines)


def _run_section(title: str, fill: Callable[[Section], None], show_traceback: bool = False) -> Section:
    """Run one report section; an exception becomes the section's error instead of ending the report."""
    section = Section(title)
    try:
        fill(section)
    except Exception as exc:
        section.error = _error_text(exc)
        if show_traceback:
            traceback.print_exc()
    return section


def _fill_versions(s: Section) -> None:
    from ._harness import module_version, openmla_version

    s.rows += [
        ("openmla", openmla_version()),
        ("python", f"{sys.version.split()[0]} ({sys.executable})"),
        ("platform", platform.platform()),
        ("torch", module_version("torch")),
        ("triton", module_version("triton")),
    ]
    from ._runtime import triton_available

    if not triton_available():
        s.notes.append("triton is not importable here: the reference backend (PyTorch fp32) serves every op.")


def _driver_version() -> str:
    """The NVIDIA driver version from ``nvidia-smi``, or why it is unknown."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({type(exc).__name__})"
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else "unknown (nvidia-smi failed)"


def _fill_gpu(s: Section) -> None:
    import torch

    s.rows.append(("torch built for CUDA", str(torch.version.cuda)))
    available = torch.cuda.is_available()
    s.rows.append(("CUDA available", str(available)))
    if not available:
        s.notes.append(
            "no CUDA GPU visible: calls on CPU tensors use the reference backend, or the Triton "
            "interpreter when TRITON_INTERPRET=1 is set before importing openmla."
        )
        return
    s.rows.append(("device count", str(torch.cuda.device_count())))
    s.rows.append(("driver", _driver_version()))
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        s.rows.append(
            (
                f"GPU {i}",
                f"{p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB",
            )
        )


def _fill_env(s: Section) -> None:
    names = list(KNOWN_ENV) + sorted(k for k in os.environ if k.startswith("OPENMLA_") and k not in KNOWN_ENV)
    s.rows += [(name, os.environ.get(name, "(unset)")) for name in names]
    from ._runtime import env_backend, interpret_mode

    s.rows.append(("backend forced", env_backend()))
    if interpret_mode():
        s.notes.append("TRITON_INTERPRET is on: Triton kernels run on CPU tensors in the interpreter (slow).")


def _fill_backends(s: Section) -> None:
    from . import dispatch

    device = "cuda" if _cuda_available() else "cpu"
    s.rows.append(("device", device))
    s.headers = ["op", "backend", "reason"]
    s.table = [[c.op, c.backend or "none", c.reason] for c in dispatch.backend_table(device)]


def _compile_arch(requested: int | None) -> tuple[int, bool]:
    """The arch to compile for and whether it is a dry compile (no GPU of that arch here)."""
    if requested is not None:
        if _cuda_available():
            import torch

            major, minor = torch.cuda.get_device_capability()
            return requested, requested != major * 10 + minor
        return requested, True
    if _cuda_available():
        import torch

        major, minor = torch.cuda.get_device_capability()
        return major * 10 + minor, False
    return 90, True


def _fill_compile(s: Section, requested: int | None) -> None:
    from ._runtime import triton_available

    if not triton_available():
        s.notes.append("skipped: triton is not importable, so no kernel can be compiled here.")
        return
    arch, dry = _compile_arch(requested)
    s.rows.append(("arch", f"sm_{arch}" + (" (dry compile: no GPU of this arch here, nothing runs)" if dry else "")))
    from .ops import aot

    start = time.perf_counter()
    reports = aot.compile_all(arch)
    s.rows.append(("time", f"{time.perf_counter() - start:.1f} s"))
    s.headers = ["kernel", "variant", "ok", "regs", "smem B", "spill B", "local B", "wgmma", "mma warps", "error"]
    s.table = [
        [
            r.kernel,
            r.variant,
            "ok" if r.ok else "FAIL",
            r.registers,
            r.shared_bytes,
            r.spill_bytes,
            r.local_bytes,
            "yes" if r.has_wgmma else "no",
            ",".join(r.mma_warps or []) or None,
            (r.error or "")[:120] or None,
        ]
        for r in reports
    ]
    failed = [f"{r.kernel}[{r.variant}]" for r in reports if not r.ok]
    spilled = [f"{r.kernel}[{r.variant}]" for r in reports if r.ok and (r.spill_bytes or 0) > 0]
    s.rows.append(("summary", f"{len(reports) - len(failed)}/{len(reports)} compiled"))
    if failed:
        s.failed = True
        s.notes.append("FAILED to compile: " + ", ".join(failed))
    if spilled:
        # a stack frame here is spills: every variant with one stores to local memory in its SASS (checked for
        # sm_90a); many are portable builds of rarely picked tiles, so the count leads
        s.notes.append(f"register spills (a stack frame; 'spill B') in {len(spilled)} of {len(reports)} variants: "
                       + ", ".join(spilled))
    unsound = [f"{r.kernel}[{r.variant}] ({r.early_uniform_reads[0]})" for r in reports if r.early_uniform_reads]
    if unsound:
        # a ptxas miscompile's trace (a wgmma descriptor built from a register never written): such a build
        # computes wrong results, so the check fails
        s.failed = True
        s.notes.append("uniform registers read before written (a miscompile; report it): " + ", ".join(unsound))
    if any(r.kernel == "_dense_decode_sm90_ws_kernel" for r in reports):
        from .ops.gluon import decode_dense_sm90_ws as ws

        s.notes.append(
            f"_dense_decode_sm90_ws_kernel is warp-specialized: 'regs' is its launch cap ({ws.MAXNREG} with three "
            f"warpgroups, {ws.SOLO_MAXNREG} in the softmax-only form with four); its partitions reallocate "
            f"(setmaxnreg) to {ws.WORKER_REGS[0]} (output warpgroup) and {ws.WORKER_REGS[1]} (loader) a thread, "
            f"or {ws.SOLO_WORKER_REGS[0]} (each output warpgroup) and {ws.SOLO_WORKER_REGS[1]} (loader), the "
            f"softmax warpgroup taking the rest of the 64K."
        )


def _bug_report(sections: list[Section]) -> str:
    """The short block a user pastes into a bug report: every key/value row and table row, one per line."""
    lines = []
    for s in sections:
        lines += [f"{s.title}.{k}: {v}" for k, v in s.rows]
        if s.headers and s.title != "compile check":
            lines += [f"{s.title}: " + " | ".join("-" if c is None else str(c) for c in row) for row in s.table]
        lines += [f"{s.title}.note: {n}" for n in s.notes]
        if s.error:
            lines.append(f"{s.title}.ERROR: {s.error}")
    return "\n".join(lines)


def cmd_doctor(args: argparse.Namespace) -> int:
    """Print what this machine has, what serves each op, and a compile check.

    Exit code 0 unless a section raised or a kernel failed to compile.
    """
    fills = [("versions", _fill_versions), ("gpu", _fill_gpu), ("environment", _fill_env), ("backends", _fill_backends)]
    if not args.no_compile:
        fills.append(("compile check", lambda s: _fill_compile(s, args.arch)))
    sections = [_run_section(title, fill, args.traceback) for title, fill in fills]
    if args.json:
        print(json.dumps({"sections": [s.to_dict() for s in sections]}, indent=2, default=str))
    else:
        print("\n\n".join(s.render() for s in sections))
        print("\npaste this into a bug report:\n```\n" + _bug_report(sections) + "\n```")
    return 1 if any(s.error or s.failed for s in sections) else 0


# ------------------------------------------------------------------------------------------------ demo


@dataclass
class DemoShape:
    """The shape of the demo's decode step."""

    b: int
    s_k: int
    h_q: int
    dtype_name: str
    device: str


def _demo_shape(args: argparse.Namespace) -> DemoShape:
    """DeepSeek-V3 decode at serving scale on a GPU; a tiny fp16 step on CPU (the interpreter's bf16 dot is wrong)."""
    device = args.device or ("cuda" if _cuda_available() else "cpu")
    if device == "cuda" and not _cuda_available():
        raise CLIError("--device cuda was asked for, but no CUDA GPU is visible; use --device cpu.")
    on_gpu = device == "cuda"
    return DemoShape(
        b=args.b or (32 if on_gpu else 2),
        s_k=args.s_k or (4096 if on_gpu else 100),
        h_q=args.h_q or (128 if on_gpu else 16),
        dtype_name=args.dtype or ("bf16" if on_gpu else "fp16"),
        device=device,
    )


def _serving_backend(device: str) -> str:
    """The backend that serves dense decode on ``device``, with the dispatcher's reason."""
    try:
        from . import dispatch

        for choice in dispatch.backend_table(device):
            if choice.op == "dense_decode":
                return f"{choice.backend} ({choice.reason})"
    except Exception as exc:
        return f"unknown ({_error_text(exc)})"
    return "unknown (dispatch lists no dense_decode row)"


def _announce_backend(shape: DemoShape, backend: str) -> None:
    print(f"backend: {backend}")
    if shape.device == "cpu":
        from ._runtime import interpret_mode

        if interpret_mode():
            print("!! CPU run: the Triton kernels execute in Triton's CPU INTERPRETER (slow; timings mean nothing).")
        else:
            print("!! CPU run: the REFERENCE backend (PyTorch fp32) serves this call; NO TRITON KERNEL RUNS, so the")
            print("!! check below compares the reference with itself. Set TRITON_INTERPRET=1 to run the Triton")
            print("!! kernels in the interpreter, or run on a CUDA GPU.")


def _time_demo(fn: Callable[[], object], device: str) -> float:
    """Median µs of one call on a GPU (do_bench); on CPU the wall time of one call."""
    from ._harness import device_median_us

    if device == "cuda":
        return device_median_us(fn, warmup_ms=25, rep_ms=100)
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e6


def cmd_demo(args: argparse.Namespace) -> int:
    """One DeepSeek-V3-shaped decode step, checked against the reference and timed; 0 only if the check passed."""
    import openmla
    from openmla import reference

    from ._harness import check_decode, dense_decode_flops_bytes, make_dense_decode_inputs, parse_dtype, varlen_seqlens
    from ._runtime import OpenMLAError

    shape = _demo_shape(args)
    s_q, h_kv, d, dv = 1, 1, 576, 512
    seqlens = varlen_seqlens(shape.b, shape.s_k, s_q, seed=args.seed)
    dtype = parse_dtype(shape.dtype_name)
    print(
        f"demo: DeepSeek-V3 dense decode, b={shape.b} s_q={s_q} mean s_k={sum(seqlens) / len(seqlens):.0f} "
        f"h_q={shape.h_q} h_kv={h_kv} d={d} dv={dv} page_block_size=64 {shape.dtype_name} on {shape.device}"
    )
    _announce_backend(shape, _serving_backend(shape.device))
    inp = make_dense_decode_inputs(seqlens, s_q, shape.h_q, h_kv, d, dv, 64, dtype, True, shape.device, args.seed)

    sched, _ = openmla.get_mla_metadata()

    def call():
        return openmla.flash_mla_with_kvcache(*inp.call_args(), sched, softmax_scale=inp.softmax_scale, causal=True)

    try:
        out, lse = call()
    except OpenMLAError as exc:
        print(f"demo: FAILED: {type(exc).__name__}: {exc}")
        return 1
    except Exception:
        traceback.print_exc()
        print("demo: FAILED (the call raised; see above)")
        return 1
    ref_out, ref_lse = reference.flash_mla_with_kvcache(
        *inp.call_args(), None, softmax_scale=inp.softmax_scale, causal=True
    )
    checks = check_decode(out, lse, ref_out, ref_lse)
    for c in checks:
        print(f"check {c}")
    us = _time_demo(call, shape.device)
    flops, nbytes = dense_decode_flops_bytes(seqlens, s_q, shape.h_q, h_kv, d, dv, dtype.itemsize)
    if shape.device == "cuda":
        import torch

        print(
            f"time: {us:.1f} us (median, do_bench) | {flops / us / 1e6:.1f} TFLOPS | {nbytes / us / 1e3:.0f} GB/s "
            f"| {torch.cuda.get_device_name()}"
        )
    else:
        print(f"time: {us / 1e3:.1f} ms for one call on CPU (not a performance figure)")
    passed = all(c.ok for c in checks)
    print("demo: PASSED" if passed else "demo: FAILED (output differs from the reference)")
    return 0 if passed else 1


# ----------------------------------------------------------------------------------------------- bench


#: ``openmla bench --configs`` names (benchmarks/configs.py; which op defines which: the option's help)
BENCH_CONFIG_SETS = ("standard", "small", "ragged", "medium", "host", "heads", "few_heads", "bf16", "all")


def _bench_config_sets(text: str) -> str:
    """``--configs``: one set name or several separated by commas (``heads,standard``), each checked; the names
    joined by commas, in the order given, each once."""
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in BENCH_CONFIG_SETS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"{text!r}: {'no set named' if not names else 'unknown set ' + ', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(BENCH_CONFIG_SETS)}, or several of them separated by commas (heads,standard)")
    return ",".join(names)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``openmla bench`` and ``python -m benchmarks.runner`` (one definition for both)."""
    parser.add_argument(
        "--op",
        choices=["dense_decode", "sparse_decode", "all"],
        default="dense_decode",
        help="op to time: dense_decode (default), sparse_decode (indices=...), or all (both, each on its own "
        "configs of the named set)",
    )
    parser.add_argument(
        "--compare",
        choices=["flash_mla"],
        default=None,
        help="also run FlashMLA (the anchor) on the same inputs and report flash_mla_us / openmla_us",
    )
    parser.add_argument("--json", metavar="PATH", default=None, help="write {header, results} here")
    parser.add_argument(
        "--configs",
        type=_bench_config_sets,
        default="standard",
        metavar="SET[,SET...]",
        help="which configuration set or sets, comma-separated (benchmarks/configs.py); dense_decode: standard, "
        "small, ragged, medium, host; sparse_decode: standard, heads, few_heads, bf16, small; all: every set of the op",
    )
    parser.add_argument(
        "--dtype",
        choices=["bf16", "fp16", "fp8"],
        default=None,
        help="override every config's dtype; fp8 (dense_decode only): q and cache per-tensor e4m3 with descales, "
        "against FlashMLA's dense FP8 kernel",
    )
    parser.add_argument(
        "--cuda-graph",
        action="store_true",
        help="time each provider's call captured in a CUDA graph (replays: the GPU time without Python's "
        "launch cost, as serving engines run decode steps); host-timed configs stay eager",
    )
    parser.add_argument("--warmup-ms", type=float, default=25.0, help="do_bench warm-up time per config (ms)")
    parser.add_argument("--rep-ms", type=float, default=100.0, help="do_bench measuring time per config (ms)")
    parser.add_argument("--host-calls", type=int, default=500, help="calls in the host-overhead loop")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="build every config's inputs on CPU at 1/64 scale (b, lengths, topk) and check them; no timing",
    )


def _import_bench_runner():
    """``benchmarks.runner`` from the source checkout this package lives in, else from ``sys.path``."""
    root = Path(__file__).resolve().parent.parent
    if (root / "benchmarks" / "runner.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        from benchmarks import runner
    except ImportError as exc:
        raise CLIError(
            f"the benchmarks are not part of the installed package ({_error_text(exc)}); "
            "run from a source checkout: git clone the repo, `pip install -e .`, then `openmla bench`."
        ) from None
    return runner


def cmd_bench(args: argparse.Namespace) -> int:
    """Run ``benchmarks.runner`` with these options."""
    return _import_bench_runner().run(args)


# ---------------------------------------------------------------------------------------------- warmup


def _warm_combine(dtype, dtype_name: str) -> None:
    """Compile the split-KV combine kernel at each width it picks by batch size (two programs a row tile's 512
    output dims for large batches, up to :data:`~openmla.ops.combine.COMBINE_MAX_COL_CHUNKS` programs for a single
    request), which the tiny calls above do not all reach: their first calls merge inside the split kernel."""
    import torch

    from .ops.combine import COMBINE_MAX_CHUNK_DIMS, COMBINE_MAX_COL_CHUNKS, combine_splits

    start = time.perf_counter()
    b, s_q, h_q, d_v = 1, 1, 128, 512
    out = torch.empty(b, s_q, h_q, d_v, dtype=dtype, device="cuda")
    lse = torch.empty(b, h_q, s_q, dtype=torch.float32, device="cuda")
    o_accum = torch.zeros(2, s_q, h_q, d_v, dtype=torch.float32, device="cuda")
    lse_accum = torch.zeros(2, s_q, h_q, dtype=torch.float32, device="cuda")
    num_splits = torch.tensor([0, 2], dtype=torch.int32, device="cuda")
    chunks = d_v // COMBINE_MAX_CHUNK_DIMS
    while chunks <= COMBINE_MAX_COL_CHUNKS:
        combine_splits(out, lse, o_accum, lse_accum, num_splits, col_chunks=chunks)
        chunks *= 2
    torch.cuda.synchronize()
    print(f"  {dtype_name} combine kernel widths: {time.perf_counter() - start:6.2f} s")


def _warm_plans(h_qs: list[int], s_qs: list[int]) -> None:
    """Compile the closed-form split-KV plan kernel, which batches of more than
    :data:`~openmla.ops.schedule.SEGMENT_PLAN_MAX_BATCH` requests use (the tiny calls above plan with the per-request
    loop): one build per piece count (each row count per KV head) and per batch size divisible by 16 or not."""
    import torch

    from .metadata import plan_dense
    from .ops.schedule import SEGMENT_PLAN_MAX_BATCH

    start = time.perf_counter()
    for b in (SEGMENT_PLAN_MAX_BATCH + 1, 128):
        seqlens = torch.full((b,), 4096, dtype=torch.int32, device="cuda")
        for rows in sorted({s_q * h_q for h_q in h_qs for s_q in s_qs}):
            plan_dense(seqlens, rows, 1)
    torch.cuda.synchronize()
    print(f"  split-KV plans of {SEGMENT_PLAN_MAX_BATCH + 1}+ requests: {time.perf_counter() - start:6.2f} s")


def cmd_warmup(args: argparse.Namespace) -> int:
    """Compile the kernels for the common shapes by running one tiny call of each; print the time taken."""
    if not _cuda_available():
        print(
            "warmup: no CUDA GPU visible, nothing to compile (the reference backend and the Triton interpreter "
            "need no compilation)."
        )
        return 0
    import torch

    import openmla

    from ._harness import make_dense_decode_inputs, parse_dtype

    total = time.perf_counter()
    for dtype_name in args.dtype:
        for h_q in args.h_q:
            for s_q in args.s_q:
                inp = make_dense_decode_inputs(
                    [args.s_k, max(s_q, args.s_k // 3)],
                    s_q,
                    h_q,
                    1,
                    576,
                    512,
                    args.page_block_size,
                    parse_dtype(dtype_name),
                    True,
                    "cuda",
                )
                start = time.perf_counter()
                sched, _ = openmla.get_mla_metadata()
                openmla.flash_mla_with_kvcache(*inp.call_args(), sched, softmax_scale=inp.softmax_scale, causal=True)
                torch.cuda.synchronize()
                print(f"  {dtype_name} h_q={h_q:<4} s_q={s_q}: {time.perf_counter() - start:6.2f} s")
        _warm_combine(parse_dtype(dtype_name), dtype_name)
    _warm_plans(args.h_q, args.s_q)
    print(f"warmup: done in {time.perf_counter() - total:.1f} s on {torch.cuda.get_device_name()}")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def _dtype_list(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [n for n in names if n not in ("bf16", "fp16")]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list of bf16, fp16")
    return names


# ------------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    """The ``openmla`` argument parser."""
    parser = argparse.ArgumentParser(prog="openmla", description="OpenMLA: DeepSeek MLA attention kernels in Triton.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("doctor", help="versions, GPU, env knobs, which backend serves each op, compile check")
    p.add_argument("--arch", type=parse_arch, default=None, help="compile for this arch (sm_80, sm_90a, 120, ...)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-compile", action="store_true", help="skip the compile check")
    p.add_argument("--traceback", action="store_true", help="print the traceback of a section that fails")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("demo", help="one DeepSeek-V3-shaped decode step, checked against the reference and timed")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda if visible, else cpu")
    p.add_argument("--b", type=int, default=None, help="batch size (default 32 on GPU, 2 on CPU)")
    p.add_argument("--s-k", type=int, default=None, help="mean KV length (default 4096 on GPU, 100 on CPU)")
    p.add_argument("--h-q", type=int, default=None, help="query heads (default 128 on GPU, 16 on CPU)")
    p.add_argument("--dtype", choices=["bf16", "fp16"], default=None, help="default bf16 on GPU, fp16 on CPU")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="time the ops on the standard configs (source checkout; see benchmarks/)")
    add_bench_arguments(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("warmup", help="compile the kernels for the common shapes on this GPU")
    p.add_argument("--h-q", type=_int_list, default=[16, 32, 64, 128], help="comma-separated (default 16,32,64,128)")
    p.add_argument("--s-q", type=_int_list, default=[1, 2], help="comma-separated (default 1,2)")
    p.add_argument("--dtype", type=_dtype_list, default=["bf16"], help="comma-separated: bf16,fp16 (default bf16)")
    p.add_argument("--s-k", type=int, default=4096, help="KV length of the warm-up call (long enough to split)")
    p.add_argument("--page-block-size", type=int, default=64)
    p.set_defaults(func=cmd_warmup)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``openmla`` console script and of ``python -m openmla``."""
    from ._runtime import OpenMLAError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"openmla {args.command}: {exc}", file=sys.stderr)
        return 2
    except OpenMLAError as exc:
        print(f"openmla {args.command}: {_error_text(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
