"""One dense decode config's call, run a few times for a profiler attached from outside (Nsight Compute).

Usage (GPU): ``ncu --clock-control none -k regex:NAME --launch-skip 3 --launch-count 1 ...
python -m benchmarks.profile_target --config std_sq1_sk8192_h128 --provider openmla [--calls 5]``

``kernel_times`` runs under torch.profiler, which takes the same CUPTI hooks as ``ncu``; this driver only builds
the config's inputs (the benchmarks' seeds, so the inputs are the ones ``openmla bench`` times) and calls one
provider ``--calls`` times, so ``ncu --launch-skip`` can pick a launch after the warm-up (OpenMLA's first call
compiles and fills its schedule).
"""

from __future__ import annotations

import argparse


def main(argv=None) -> None:
    import torch

    from benchmarks.configs import config_sets, get_configs
    from benchmarks.runner import _flash_mla_call, _load_flash_mla, _openmla_call
    from openmla._harness import make_dense_decode_inputs, parse_dtype

    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="a dense decode config's name (e.g. std_sq1_sk8192_h128)")
    ap.add_argument("--provider", choices=("openmla", "flash_mla"), default="openmla")
    ap.add_argument("--calls", type=int, default=5)
    cli = ap.parse_args(argv)
    configs = {cfg.name: cfg for group in config_sets("dense_decode") for cfg in get_configs(group, None)}
    if cli.config not in configs:
        raise SystemExit(f"unknown config {cli.config!r}; dense decode configs: {', '.join(sorted(configs))}")
    cfg = configs[cli.config]
    inp = make_dense_decode_inputs(cfg.seqlens(), cfg.s_q, cfg.h_q, cfg.h_kv, cfg.d, cfg.dv, cfg.page_block_size,
                                   parse_dtype(cfg.dtype), cfg.causal, "cuda", cfg.seed)
    if cli.provider == "openmla":
        fn = _openmla_call(inp)
    else:
        flash_mla, missing = _load_flash_mla()
        if flash_mla is None:
            raise SystemExit(f"FlashMLA is not importable: {missing}")
        fn = _flash_mla_call(flash_mla, inp)
    for _ in range(cli.calls):
        fn()
    torch.cuda.synchronize()
    print(f"{cfg.name} {cli.provider}: {cli.calls} calls on {torch.cuda.get_device_name()}")


if __name__ == "__main__":
    main()
