"""Where the host time of a tiny decode call goes (GPU): the whole call per backend, FlashMLA's, and a bare launch.

Each backend is timed twice: as a serving loop's later layers run it (the call replays the launches an
earlier call with the same signature recorded, :mod:`openmla.replay`) and with ``OPENMLA_REPLAY=0`` (the
whole path on every call: validation, dispatch, Triton's launcher), in three interleaved rounds.

Usage: ``python -m benchmarks.host_overhead [--profile]`` — prints µs per call in a tight Python loop (b=1, s_k=256,
h_q=128, the metadata planned once and reused, as serving loops do), synchronised once at the end.
``--profile`` adds where the Python time of the default path goes (cProfile, 300 calls).

``--sparse``: the same for a small sparse decode (b=4, s_q=1, h_q=128, topk=64 and 2048, V3.2 FP8 cache; and
MTP, s_q=2, topk=64), OpenMLA's call (replayed and whole) against FlashMLA's, then calls with ``topk_length`` and
with an extra cache (each replayed and whole) and the portable launcher alone (no validation).

``--python-only`` (no GPU needed): the same call on CPU tensors through the Triton backend with every kernel
launch replaced by a no-op, so what is timed is OpenMLA's own Python (validation, dispatch, allocation,
argument packing), not Triton's launcher; for comparing host-path changes on any machine. Its figures are
not GPU-host figures. With ``--sparse``, the small sparse call (topk=64) instead of the dense one.
"""

from __future__ import annotations

import sys
import time

import torch


def loop_us(fn, calls=500, sync=True):
    fn()
    if sync:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    if sync:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def main():
    import openmla
    from openmla.ops.combine import combine_splits

    b, s_q, h_q, s_k, d, dv, page = 1, 1, 128, 256, 576, 512, 64
    q = (torch.randn(b, s_q, h_q, d, device="cuda") / 10).bfloat16()
    k_cache = (torch.randn(8, page, 1, d, device="cuda") / 10).bfloat16()
    block_table = torch.arange(8, dtype=torch.int32, device="cuda").view(1, 8)
    lens = torch.full((b,), s_k, dtype=torch.int32, device="cuda")
    import os

    calls = {}
    for backend in ("gluon", "triton"):
        meta, _ = openmla.get_mla_metadata()
        calls[f"openmla backend={backend}, replayed"] = lambda meta=meta, backend=backend: (
            openmla.flash_mla_with_kvcache(q, k_cache, block_table, lens, dv, meta, causal=True, backend=backend))
        # the whole path every call (validation, dispatch, Triton's launcher): what a replay skips
        calls[f"openmla backend={backend}, whole path (OPENMLA_REPLAY=0)"] = None
    try:
        import flash_mla

        fmeta, _ = flash_mla.get_mla_metadata()
        calls["FlashMLA (sgl-flash-mla, use_legacy=True)"] = lambda: flash_mla.flash_mla_with_kvcache(
            q, k_cache, block_table, lens, dv, fmeta, causal=True, use_legacy=True)
    except Exception as exc:
        calls[f"FlashMLA unavailable: {exc}"] = None
    # three interleaved rounds, best of each: the host's noise moves all of them alike
    times: dict = {name: [] for name in calls}
    for _ in range(3):
        for name, fn in calls.items():
            if "OPENMLA_REPLAY=0" in name:
                os.environ["OPENMLA_REPLAY"] = "0"
                backend = name.split("backend=")[1].split(",")[0]
                meta, _ = openmla.get_mla_metadata()
                times[name].append(loop_us(lambda: openmla.flash_mla_with_kvcache(
                    q, k_cache, block_table, lens, dv, meta, causal=True, backend=backend)))
                del os.environ["OPENMLA_REPLAY"]
            elif fn is not None:
                times[name].append(loop_us(fn))
    rows = [(name + "  [rounds: " + " / ".join(f"{t:.1f}" for t in ts) + "]", min(ts) if ts else float("nan"))
            for name, ts in times.items()]
    out = torch.empty(b, s_q, h_q, dv, dtype=torch.bfloat16, device="cuda")
    lse = torch.empty(b, h_q, s_q, dtype=torch.float32, device="cuda")
    o_acc = torch.empty(b + 4, s_q, h_q, dv, device="cuda")
    lse_acc = torch.empty(b + 4, s_q, h_q, device="cuda")
    splits = torch.zeros(b + 1, dtype=torch.int32, device="cuda")
    rows.append(("bare Triton launch (combine kernel, exits at once)",
                 loop_us(lambda: combine_splits(out, lse, o_acc, lse_acc, splits))))
    rows.append(("torch.empty x4", loop_us(lambda: [torch.empty(64, device="cuda") for _ in range(4)])))
    print(f"host time per call on {torch.cuda.get_device_name()} (b=1, s_k=256, h_q=128; best of 3 interleaved rounds):")
    for name, us in rows:
        print(f"  {us:8.1f} us  {name}")
    if "--profile" in sys.argv:  # where the Python time of the default path goes
        import cProfile
        import pstats

        meta, _ = openmla.get_mla_metadata()
        openmla.flash_mla_with_kvcache(q, k_cache, block_table, lens, dv, meta, causal=True)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(300):
            openmla.flash_mla_with_kvcache(q, k_cache, block_table, lens, dv, meta, causal=True)
        prof.disable()
        torch.cuda.synchronize()
        pstats.Stats(prof).strip_dirs().sort_stats("tottime").print_stats(18)


def sparse(profile: bool) -> None:
    """Host time of a small sparse decode call: OpenMLA, FlashMLA (when it imports), OpenMLA's kernel launch."""
    import os

    import openmla
    from benchmarks.runner import _flash_mla_sparse_call, _openmla_sparse_call
    from openmla._harness import make_sparse_decode_inputs

    rows = []
    for s_q, topk in ((1, 64), (1, 2048), (2, 64)):
        inp = make_sparse_decode_inputs(4, s_q, 128, 4096, topk, 64)
        what = f"s_q={s_q} topk={topk}"
        rows.append((f"openmla sparse {what}, replayed", loop_us(_openmla_sparse_call(inp))))
        os.environ["OPENMLA_REPLAY"] = "0"  # the whole path on every call
        rows.append((f"openmla sparse {what}, whole path (OPENMLA_REPLAY=0)", loop_us(_openmla_sparse_call(inp))))
        del os.environ["OPENMLA_REPLAY"]
        try:
            import flash_mla

            rows.append((f"FlashMLA sparse {what}", loop_us(_flash_mla_sparse_call(flash_mla, inp, inp.q))))
        except Exception as exc:
            rows.append((f"FlashMLA unavailable: {exc}", float("nan")))
    # with topk_length: the Hopper launcher plans each call's lists by launches, which a replay repeats
    inp = make_sparse_decode_inputs(4, 1, 128, 4096, 64, 64)
    lengths = torch.full((4,), 48, dtype=torch.int32, device=inp.q.device)
    sched, _ = openmla.get_mla_metadata()

    decode = openmla.flash_mla_with_kvcache

    def with_lengths():
        return decode(inp.q, inp.k_cache, None, None, inp.head_dim_v, sched, softmax_scale=inp.softmax_scale,
                      is_fp8_kvcache=inp.is_fp8, indices=inp.indices, topk_length=lengths)

    rows.append(("openmla sparse topk=64 with topk_length, replayed", loop_us(with_lengths)))
    os.environ["OPENMLA_REPLAY"] = "0"
    rows.append(("openmla sparse topk=64 with topk_length, whole path (OPENMLA_REPLAY=0)", loop_us(with_lengths)))
    del os.environ["OPENMLA_REPLAY"]
    # with an extra cache (a second list over a second V3.2 cache, as V3.2's callers append a window)
    extra = make_sparse_decode_inputs(4, 1, 128, 1024, 64, 64, seed=1)
    sched_extra, _ = openmla.get_mla_metadata()  # a schedule is planned for one configuration

    def with_extra():
        return decode(inp.q, inp.k_cache, None, None, inp.head_dim_v, sched_extra, softmax_scale=inp.softmax_scale,
                      is_fp8_kvcache=inp.is_fp8, indices=inp.indices, extra_k_cache=extra.k_cache,
                      extra_indices_in_kvcache=extra.indices)

    rows.append(("openmla sparse topk=64 with an extra cache (topk 64), replayed", loop_us(with_extra)))
    os.environ["OPENMLA_REPLAY"] = "0"
    rows.append(("openmla sparse topk=64 with an extra cache, whole path (OPENMLA_REPLAY=0)", loop_us(with_extra)))
    del os.environ["OPENMLA_REPLAY"]
    from openmla.ops.decode_sparse import sparse_decode_fwd

    rows.append(("sparse_decode_fwd alone, topk=64 (no validation)", loop_us(lambda: sparse_decode_fwd(
        inp.q, inp.k_cache, inp.indices, inp.head_dim_v, inp.softmax_scale, is_fp8=True))))
    print(f"host time per call on {torch.cuda.get_device_name()} (sparse: b=4, h_q=128, V3.2 FP8):")
    for name, us in rows:
        print(f"  {us:8.1f} us  {name}")
    if profile:
        import cProfile
        import pstats

        call = _openmla_sparse_call(inp)
        call()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(300):
            call()
        prof.disable()
        torch.cuda.synchronize()
        pstats.Stats(prof).strip_dirs().sort_stats("tottime").print_stats(22)
    del openmla


def python_only(profile: bool, sparse_call: bool = False) -> None:
    """OpenMLA's Python per call on this machine, kernel launches stubbed out (see the module docstring)."""
    import os

    os.environ["TRITON_INTERPRET"] = "1"  # before openmla is imported: the Triton backend serves CPU tensors
    import torch

    import openmla
    from openmla.ops import combine, decode_dense, decode_sparse

    class _NoLaunch:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    decode_dense._dense_decode_splitkv_kernel = _NoLaunch()
    decode_sparse._sparse_decode_kernel = _NoLaunch()
    combine._decode_combine_kernel = _NoLaunch()
    if sparse_call:
        from openmla._harness import make_sparse_decode_inputs

        inp = make_sparse_decode_inputs(4, 1, 128, 4096, 64, 64, dtype=torch.float16, device="cpu")
        sched, _ = openmla.get_mla_metadata()
        what = "sparse, b=4, s_q=1, h_q=128, topk=64, V3.2 FP8"

        def call():
            return openmla.flash_mla_with_kvcache(inp.q, inp.k_cache, None, None, inp.head_dim_v, sched,
                                                  softmax_scale=inp.softmax_scale, is_fp8_kvcache=True,
                                                  indices=inp.indices, backend="triton")
    else:
        b, s_q, h_q, s_k, d, dv, page = 1, 1, 128, 256, 576, 512, 64
        q = torch.randn(b, s_q, h_q, d).half()
        k_cache = torch.randn(8, page, 1, d).half()
        block_table = torch.arange(8, dtype=torch.int32).view(1, 8)
        lens = torch.full((b,), s_k, dtype=torch.int32)
        meta, _ = openmla.get_mla_metadata()
        what = "b=1, s_k=256, h_q=128"

        def call():
            return openmla.flash_mla_with_kvcache(q, k_cache, block_table, lens, dv, meta, causal=True,
                                                  backend="triton")

    call()
    best = min(loop_us(call, 3000, sync=False) for _ in range(5))
    print(f"OpenMLA's Python per call, launches stubbed (CPU, {what}): {best:.1f} us (best of 5 loops)")
    if profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        for _ in range(3000):
            call()
        prof.disable()
        pstats.Stats(prof).strip_dirs().sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    if "--python-only" in sys.argv:
        python_only("--profile" in sys.argv, sparse_call="--sparse" in sys.argv)
        sys.exit(0)
    if "--sparse" in sys.argv:
        sparse("--profile" in sys.argv)
        sys.exit(0)
    main()
