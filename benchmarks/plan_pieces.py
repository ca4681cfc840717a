"""The dense plan's longest piece per bench config, for each per-request charge: plan arithmetic on a CPU.

Usage: ``python -m benchmarks.plan_pieces [--configs standard,ragged,medium,small] [--overheads 5,2,1,0] [--sms 132]``

For every dense-decode config of the sets named this plans the batch as ``openmla.metadata.plan_dense`` does for the
warp-specialized Hopper kernel (the same lengths, pieces and plan as the bench's calls; ``--sms`` the card's SM
count) with ``DENSE_PLAN_OVERHEAD`` set to each value, and prints the longest piece's 64-key tiles and requests
(``tiles/requests``). On an H200 the kernel's programs take time by their tiles, not their requests
(``benchmarks/results/2026-11-28-h200-trace-programs.txt``), and the slowest program sets a call's end: the tiles of
the longest piece are what a charge predicts, before ``python -m benchmarks.kernel_times --plan-overhead N``
measures it. Nothing here is a measurement. Plans are not bounded at ``MAX_SPLITS`` pieces a request: the bench's
calls plan at their first call, which a step's later calls replay, so it leaves its merge to the combine kernel
and its plan unbounded (``fuse_combine``; only with ``OPENMLA_REPLAY=0`` would b <= 16 be bounded).
"""
from __future__ import annotations

import argparse
import os


def piece_work(sched: list, lens: list) -> list[tuple[int, int]]:
    """``(tiles, requests)`` of each piece of a plan (``sched`` rows: begin request, begin token, end request, end
    token, ...; ``lens`` the requests' lengths): 64-key tiles of each request's span in the piece, summed; an empty
    piece (begin past end) is ``(0, 0)``."""
    out = []
    for begin, begin_tok, last, end_tok, *_ in sched:
        tiles = sum(-(-((end_tok if r == last else lens[r]) - (begin_tok if r == begin else 0)) // 64)
                    for r in range(begin, last + 1))
        out.append((tiles, max(last - begin + 1, 0)))
    return out


def longest_piece(sched: list, lens: list) -> tuple[int, int]:
    """The plan's piece of most tiles, as ``(tiles, requests)`` (of those, the most requests)."""
    return max(piece_work(sched, lens))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="standard,ragged,medium,small")
    ap.add_argument("--overheads", default="5,2,1,0", help="values of DENSE_PLAN_OVERHEAD to plan with")
    ap.add_argument("--sms", type=int, default=132, help="the card's SM count (132: H100 SXM and H200)")
    args = ap.parse_args(argv)
    import torch

    import openmla.metadata as metadata
    from benchmarks.configs import get_configs

    try:
        overheads = [int(x) for x in args.overheads.split(",")]
    except ValueError:
        overheads = [-1]
    if min(overheads) < 0:
        raise SystemExit(f"--overheads: {args.overheads!r}; give whole numbers of blocks, 0 or more, comma-separated")
    print(f"longest piece of the dense plan, tiles/requests, per DENSE_PLAN_OVERHEAD ({args.sms} SMs, gluon pieces)")
    print(f"{'config':24s} {'b':>4s} {'rows':>5s} {'pieces':>6s}  " + "  ".join(f"{o:>9d}" for o in overheads))
    default, sms = metadata.DENSE_PLAN_OVERHEAD, os.environ.get("OPENMLA_NUM_SMS")
    os.environ["OPENMLA_NUM_SMS"] = str(args.sms)  # the pieces of a card with this many SMs
    try:
        for group in args.configs.split(","):
            for cfg in get_configs(group, None, "dense_decode"):
                if cfg.d != 576 or cfg.dv != 512:
                    continue
                lens = cfg.seqlens()
                cells, pieces = [], 0
                for overhead in overheads:
                    metadata.DENSE_PLAN_OVERHEAD = overhead
                    sched, _ = metadata.plan_dense(torch.tensor(lens, dtype=torch.int32), cfg.s_q * cfg.h_q // cfg.h_kv,
                                                   cfg.h_kv, backend="gluon", bounded=False)
                    pieces = sched.shape[0]
                    tiles, requests = longest_piece(sched.tolist(), lens)
                    cells.append(f"{tiles:5d}/{requests:<3d}")
                rows = cfg.s_q * cfg.h_q // cfg.h_kv
                print(f"{cfg.name:24s} {cfg.b:4d} {rows:5d} {pieces:6d}  " + "  ".join(cells))
    finally:
        metadata.DENSE_PLAN_OVERHEAD = default
        if sms is None:
            os.environ.pop("OPENMLA_NUM_SMS", None)
        else:
            os.environ["OPENMLA_NUM_SMS"] = sms


if __name__ == "__main__":
    main()
