"""GPU time per kernel of a dense decode call, OpenMLA's beside FlashMLA's, on the same inputs (torch.profiler).

Usage (GPU): ``python -m benchmarks.kernel_times [--configs small,ragged] [--calls 50] [--json PATH]
[--openmla-only] [--combine-chunks N] [--cuda-graph]``

``openmla bench`` times a whole call; for small batches that mixes the split kernel, the combine kernel and the
gaps between launches. Here each provider's call runs ``--calls`` times (after a warm-up, so OpenMLA's calls
replay) under :mod:`torch.profiler`, and every kernel it launched is listed with its mean GPU time per call and
its launches per call, so one can tell which kernel a gap is in; the span from the first kernel's start to the
last one's end, per call, adds the GPU's idle time between them (launch gaps). Kernel names are the profiler's (Triton's
kernel function names; FlashMLA's CUDA kernel names, shortened). ``--combine-chunks N`` has the combine kernel
spread each row tile's output dims over ``N`` programs whatever :func:`openmla.ops.combine.combine_col_chunks`
would pick (for comparing its choices in one process).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def kernel_times(fn, calls: int) -> tuple[dict[str, tuple[float, float]], float]:
    """``{kernel name: (mean µs per call, launches per call)}`` of ``fn``'s GPU kernels over ``calls`` calls, and
    the µs per call from the first kernel's start to the last one's end (the calls run back to back, so this is
    the kernels plus the GPU's idle time between them)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    total, count = defaultdict(float), defaultdict(int)
    first, last = float("inf"), 0.0
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA and ev.device_time > 0:
            name = ev.name.split("(")[0][:60]
            total[name] += ev.device_time
            count[name] += 1
            first, last = min(first, ev.time_range.start), max(last, ev.time_range.end)
    span = (last - first) / calls if last > first else float("nan")
    return {name: (total[name] / calls, count[name] / calls) for name in total}, span


def main(argv=None) -> None:
    import torch

    from benchmarks.configs import get_configs
    from benchmarks.runner import _flash_mla_call, _graphed, _load_flash_mla, _openmla_call
    from openmla._harness import make_dense_decode_inputs, parse_dtype

    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="small,ragged")
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--json")
    ap.add_argument("--openmla-only", action="store_true", help="time OpenMLA's calls only")
    ap.add_argument("--combine-chunks", type=int, default=None,
                    help="programs sharing a row tile's output dims in the combine kernel (a power of two)")
    ap.add_argument("--cuda-graph", action="store_true", help="time replays of each call captured in a CUDA graph")
    cli = ap.parse_args(argv)
    if cli.combine_chunks:
        from openmla.ops import combine

        combine.combine_col_chunks = lambda row_programs, d_v, device: cli.combine_chunks
    flash_mla, missing = _load_flash_mla()
    card = torch.cuda.get_device_name()
    print(f"GPU time per call by kernel on {card} (mean of {cli.calls} calls)")
    results = []
    for group in cli.configs.split(","):
        for cfg in get_configs(group, None, "dense_decode"):
            inp = make_dense_decode_inputs(cfg.seqlens(), cfg.s_q, cfg.h_q, cfg.h_kv, cfg.d, cfg.dv,
                                           cfg.page_block_size, parse_dtype(cfg.dtype), cfg.causal, "cuda", cfg.seed)
            providers = [("openmla", _openmla_call(inp))]
            if flash_mla is not None and not cli.openmla_only:
                providers.append(("flash_mla", _flash_mla_call(flash_mla, inp)))
            elif not cli.openmla_only:
                print(f"  FlashMLA not timed: {missing}")
            for provider, fn in providers:
                if cli.cuda_graph:
                    fn = _graphed(fn)
                times, span = kernel_times(fn, cli.calls)
                busy = sum(us for us, _ in times.values())
                print(f"{cfg.name} {provider}: {busy:7.1f} us of kernels a call, {span:7.1f} us first start to last end"
                      + (f" (combine chunks {cli.combine_chunks})" if cli.combine_chunks else ""))
                for name, (us, n) in sorted(times.items(), key=lambda kv: -kv[1][0]):
                    print(f"    {us:7.1f} us  x{n:.0f}  {name}")
                results.append(dict(config=cfg.name, provider=provider, card=card, kernel_us=busy, span_us=span,
                                    cuda_graph=cli.cuda_graph,
                                    combine_chunks=cli.combine_chunks,
                                    kernels={k: dict(us=v[0], launches=v[1]) for k, v in times.items()}))
            torch.cuda.empty_cache()
    if cli.json:
        with open(cli.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
