"""The combine kernel launched as a programmatic dependent of the split kernel (PDL) or plainly, side by side.

Usage (GPU, SM90+): ``python -m benchmarks.combine_pdl_ab [--json PATH]``

Dense decode, the ``small`` and ``ragged`` configs of ``openmla bench`` (where split partials and the combine
kernel's launch weigh most), each timed with :data:`openmla.ops.combine.COMBINE_PDL` off and on, alternated
twice, eagerly (calls replayed after the first, as a serving loop's) and replayed from a CUDA graph; FlashMLA
once per config and mode on the same inputs for the ratio. Every call is checked against the reference.
"""

from __future__ import annotations

import argparse
import json


def main(argv=None) -> None:
    import torch

    from benchmarks.configs import get_configs
    from benchmarks.runner import _load_flash_mla, run_dense_config
    from openmla.ops import combine

    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    cli = ap.parse_args(argv)
    flash_mla, missing = _load_flash_mla()
    card = torch.cuda.get_device_name()
    results = []
    for cfg in get_configs("small", None, "dense_decode") + get_configs("ragged", None, "dense_decode"):
        for graph in (False, True):
            for i, pdl in enumerate((False, True, False, True)):
                args = argparse.Namespace(dry_run=False, compare="flash_mla" if i == 0 else None, cuda_graph=graph,
                                          warmup_ms=25, rep_ms=100, host_calls=200)
                combine.COMBINE_PDL = pdl
                try:
                    rec = run_dense_config(cfg, args, card, flash_mla, missing)
                finally:
                    combine.COMBINE_PDL = True
                rec.update(combine_pdl=pdl, cuda_graph=graph)
                results.append(rec)
                fm = rec.get("flash_mla_us")
                us = rec.get("openmla_us") or float("nan")
                print(f"{cfg.name} {'graph' if graph else 'eager'} pdl={pdl}: {us:8.1f} us"
                      + (f" (FlashMLA {fm:7.1f})" if fm else "") + f" ok={rec['ok']}", flush=True)
    if cli.json:
        with open(cli.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
