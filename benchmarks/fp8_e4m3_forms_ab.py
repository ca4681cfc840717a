"""Forms of the e4m3-product kernel side by side: its module defaults (:data:`KNOBS`) set per form, each called
through ``flash_mla_with_kvcache``. Forms measured this way and removed since are in ``docs/perf-notes.md`` (item
21) and ``benchmarks/results/2026-11-27-h200-dense-fp8-e4m3-forms-ab.txt``.

Usage (GPU, SM90): ``python -m benchmarks.fp8_e4m3_forms_ab [--configs standard,small]
[--forms "STAGES=2;STAGES=3"] [--rounds 3] [--json PATH]``

Dense decode over a per-tensor FP8 cache with an e4m3 q (``openmla bench --dtype fp8``'s inputs, built once a
config). Each form (``;``-separated; ``,`` joins settings of one form; an empty form is the defaults;
``WORKER_REGS=176/48`` sets a tuple) is checked against the fp32 reference (the e4m3 products' LSE tolerance),
then replayed from a CUDA graph captured for it and timed (``do_bench`` median) while the call's schedule is alive
(a graph reads the schedule's tensors on every replay: a first version of this script kept the graphs but let their
schedules go, and a later replay hit an illegal address); rounds alternate the forms' order (reversed every other
round). FlashMLA's FP8 kernel is timed once a config on the same inputs for the ratio.
"""

from __future__ import annotations

import argparse
import json

KNOBS = ("P_BUFS", "STAGES", "WORKER_REGS")


def parse_forms(text: str) -> list[dict]:
    """``"P_BUFS=1;P_BUFS=2,WORKER_REGS=176/48"`` -> ``[{"P_BUFS": 1}, {"P_BUFS": 2, "WORKER_REGS": (176, 48)}]``;
    an unknown knob ends the run, naming the known ones."""
    forms = []
    for form in text.split(";"):
        settings = {}
        for item in filter(None, (x.strip() for x in form.split(","))):
            name, _, value = item.partition("=")
            if name not in KNOBS:
                raise SystemExit(f"unknown knob {name!r} in --forms; known: {', '.join(KNOBS)}")
            # WORKER_REGS=176/48: the output warpgroups' and the loader's registers (the softmax warpgroup keeps the rest)
            settings[name] = tuple(int(v) for v in value.split("/")) if "/" in value else int(value)
        forms.append(settings)
    return forms


def main(argv=None) -> None:
    import torch

    from benchmarks.configs import get_configs
    from benchmarks.runner import _flash_mla_call, _graphed, _load_flash_mla, _openmla_call
    from openmla import reference
    from openmla._harness import check_decode, device_median_us, make_dense_decode_inputs, quantize_dense_fp8
    from openmla.ops.gluon import decode_dense_fp8_sm90 as fp8

    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="standard,small")
    ap.add_argument("--forms", default="P_BUFS=1;P_BUFS=2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    cli = ap.parse_args(argv)
    forms = parse_forms(cli.forms)
    names = [",".join(f"{k}={v}" for k, v in f.items()) or "defaults" for f in forms]
    flash_mla, missing = _load_flash_mla()
    if flash_mla is None:
        print(f"FlashMLA not timed: {missing}")
    card = torch.cuda.get_device_name()
    defaults = {k: getattr(fp8, k) for k in KNOBS}

    def run(form, inp, ref, timed):
        """Check the form's call, then (``timed``) its graph replay's median µs; module defaults restored."""
        try:
            for k, v in form.items():
                setattr(fp8, k, v)
            call = _openmla_call(inp)
            out, lse = call()
            torch.cuda.synchronize()
            bad = [str(x) for x in check_decode(out, lse, *ref, e4m3_scores=True) if not x.ok]
            return bad, (device_median_us(_graphed(call), 25, 200) if timed else None)
        finally:
            for k, v in defaults.items():
                setattr(fp8, k, v)

    results = []
    for cfg in [c for name in cli.configs.split(",") for c in get_configs(name, "fp8", "dense_decode")]:
        inp = quantize_dense_fp8(make_dense_decode_inputs(cfg.seqlens(), cfg.s_q, cfg.h_q, cfg.h_kv, cfg.d, cfg.dv,
                                                          cfg.page_block_size, torch.bfloat16, cfg.causal, "cuda",
                                                          cfg.seed), fp8_q=True)
        ref = reference.flash_mla_with_kvcache(*inp.call_args(), None, softmax_scale=inp.softmax_scale,
                                               causal=inp.causal, descale_q=inp.descale_q, descale_k=inp.descale_k)
        failed = {}
        for name, form in zip(names, forms):
            bad, _ = run(form, inp, ref, False)
            if bad:
                failed[name] = bad
                print(f"  {cfg.name} {name}: CHECK FAILED: " + "; ".join(bad), flush=True)
        times = {name: [] for name in names}
        for r in range(cli.rounds):
            order = list(zip(names, forms))
            for name, form in (order if r % 2 == 0 else order[::-1]):
                if name not in failed:
                    times[name].append(run(form, inp, ref, True)[1])
        fm_us = None
        if flash_mla is not None and cfg.page_block_size == 64:
            fm_us = device_median_us(_graphed(_flash_mla_call(flash_mla, inp)), 25, 200)
        results.append(dict(card=card, config=cfg.name, b=cfg.b, s_q=cfg.s_q, h_q=cfg.h_q, s_k=cfg.s_k,
                            failed=failed, us=times, flash_mla_us=fm_us))
        line = "  ".join(f"{n}: " + "/".join(f"{t:.1f}" for t in ts) for n, ts in times.items())
        print(f"{cfg.name}: {line}" + (f"  FlashMLA {fm_us:.1f}" if fm_us else "") + f" us ({card})", flush=True)
        inp = ref = None
        torch.cuda.empty_cache()
    if cli.json:
        with open(cli.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
