"""The benchmark runner on CPU: every config of both ops built small and checked (``--dry-run``), the
sparse-decode inputs it times, and its FlashMLA plumbing (padding, call, check) against a stand-in module.

On a machine without a GPU the dry run's OpenMLA calls run the Triton kernels in the interpreter
(``conftest`` sets ``TRITON_INTERPRET=1``), or the reference backend when that is off.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks import runner  # noqa: E402
from benchmarks.configs import config_sets, get_configs  # noqa: E402
from openmla import reference  # noqa: E402
from openmla._harness import make_sparse_decode_inputs, sparse_decode_flops_bytes  # noqa: E402
from openmla.kvcache import dequantize_v32  # noqa: E402


def test_dry_run_both_ops_every_config(tmp_path, capsys):
    """``--op all --configs all --dry-run``: every dense and sparse config builds, runs and passes its check."""
    path = tmp_path / "dry.json"
    rc = runner.main(["--op", "all", "--configs", "all", "--dry-run", "--compare", "flash_mla", "--json", str(path)])
    text = capsys.readouterr().out
    assert rc == 0, text
    data = json.loads(path.read_text())
    assert data["header"]["op"] == "all" and data["header"]["ops"] == ["dense_decode", "sparse_decode"]
    results = data["results"]
    by_op = {op: [r for r in results if r["op"] == op] for op in ("dense_decode", "sparse_decode")}
    assert len(by_op["dense_decode"]) == len(get_configs("all", op="dense_decode"))
    assert len(by_op["sparse_decode"]) == len(get_configs("all", op="sparse_decode"))
    for r in results:
        assert r["ok"] is True and r["error"] is None, r
        assert r["openmla_us"] is None  # a dry run times nothing
        assert r["flash_mla_error"]  # FlashMLA never runs in a dry run, and the record says why
    for r in by_op["sparse_decode"]:
        c = r["config"]
        for key in ("b", "s_q", "s_k", "h_q", "topk", "page_block_size", "kv_format", "dtype", "set"):
            assert key in c, key
        assert r["bytes_per_token"] == (656 if c["kv_format"] == "V32_FP8" else 2 * 576)
        assert r["n_att"] == c["b"] * c["s_q"] * c["topk"]
        assert 0 < r["n_unique_tokens"] <= r["n_valid_indices"] <= r["n_att"]
        assert r["flops"] > 0 and r["bytes"] > 0
    assert "sparse_std_b128" in text and "std_sq1_sk4096_h128" in text


def test_config_sets_comma_separated(tmp_path, capsys):
    """``--configs heads,standard``: both sets' configs in that order, each once (``all,standard`` adds nothing to
    ``all``); under ``--op all`` a set one op does not define is skipped for that op only, with a note; an unknown
    name is a usage error naming the sets."""
    from openmla.cli import build_parser

    path = tmp_path / "out.json"
    assert runner.main(["--op", "sparse_decode", "--configs", "heads,standard", "--dry-run", "--json", str(path)]) == 0
    names = [r["config"]["name"] for r in json.loads(path.read_text())["results"]]
    assert names == [c.name for c in get_configs("heads", op="sparse_decode") + get_configs("standard",
                                                                                            op="sparse_decode")]
    args = build_parser().parse_args(["bench", "--configs", " all, standard,all"])
    assert args.configs == "all,standard"
    assert [c.name for c in runner._all_cases(args)] == [c.name for c in get_configs("all")]
    args = build_parser().parse_args(["bench", "--op", "all", "--configs", "host,few_heads"])
    capsys.readouterr()
    cases = runner._all_cases(args)
    assert [c.name for c in cases] == [c.name for c in get_configs("host") + get_configs("few_heads",
                                                                                        op="sparse_decode")]
    assert "sparse_decode has no 'host' configs" in capsys.readouterr().out
    for bad in ("heads,nope", ",", "standard,,Heads"):
        with pytest.raises(SystemExit):
            runner.main(["--configs", bad, "--dry-run"])
        err = capsys.readouterr().err
        assert "choose from standard, small, ragged, medium, host, heads, few_heads, bf16, all" in err, err
    with pytest.raises(ValueError, match="dense_decode has no config set 'heads'"):
        runner._all_cases(build_parser().parse_args(["bench", "--configs", "standard,heads"]))


def test_dry_run_dense_fp8(tmp_path, capsys):
    """``--dtype fp8``: per-tensor FP8 inputs (the cache as e4m3 codes with a descale) pass their check;
    ``--dtype fp8`` with the sparse op is refused: exit 2 and a message saying why."""
    path = tmp_path / "fp8.json"
    rc = runner.main(["--configs", "standard", "--dtype", "fp8", "--dry-run", "--json", str(path)])
    assert rc == 0, capsys.readouterr().out
    results = json.loads(path.read_text())["results"]
    assert len(results) == len(get_configs("standard")) and all(r["ok"] is True for r in results), results
    assert all(r["config"]["dtype"] == "fp8" for r in results)
    capsys.readouterr()
    assert runner.main(["--op", "sparse_decode", "--dtype", "fp8", "--dry-run"]) == 2
    assert "applies to dense_decode only" in capsys.readouterr().err


def test_sparse_config_sets():
    """FlashMLA's published config, the head sweep, the 16-bit cache and the small matrix, as specified."""
    std = get_configs("standard", op="sparse_decode")
    assert sorted(c.b for c in std) == [64, 128]
    for c in std:
        assert (c.h_q, c.s_q, c.s_k, c.topk, c.page_block_size, c.kv_format, c.dtype) == (
            128, 2, 32768, 2048, 64, "V32_FP8", "bf16",
        )  # fmt: skip
        assert (c.d_qk, c.dv) == (576, 512)
    heads = get_configs("heads", op="sparse_decode")
    assert sorted(c.h_q for c in heads) == [16, 32, 64] and {c.b for c in heads} == {64}
    assert {c.kv_format for c in get_configs("bf16", op="sparse_decode")} == {"BF16"}
    small = get_configs("small", op="sparse_decode")
    assert {(c.topk, c.page_block_size) for c in small} == {(t, p) for t in (64, 576, 2048) for p in (2, 61, 64)}
    assert {(c.b, c.s_q) for c in small} == {(4, 1)}
    assert set(config_sets("sparse_decode")) == {"standard", "heads", "few_heads", "bf16", "small", "all"}
    with pytest.raises(ValueError, match="ragged"):
        get_configs("ragged", op="sparse_decode")
    # the dense sets are what they were
    assert len(get_configs("all")) == len(get_configs("all", op="dense_decode")) == 30
    medium = get_configs("medium")
    assert {c.b for c in medium} == {24, 32, 64} and all(c.h_q == 128 and c.s_q == 1 for c in medium)
    ragged32 = [c for c in medium if c.varlen]
    assert len(ragged32) == 1 and (min(ragged32[0].seqlens()), max(ragged32[0].seqlens())) == (64, 32768)


def test_flash_mla_sparse_support_reasons():
    """Where FlashMLA's SM90 sparse decode can run, with how many heads, and why not elsewhere."""
    by_name = {c.name: c for c in get_configs("all", op="sparse_decode")}
    assert runner._flash_mla_sparse_unsupported(by_name["sparse_std_b128"]) is None
    assert "FP8" in runner._flash_mla_sparse_unsupported(by_name["sparse_bf16_b64"])
    for h_q in (16, 32, 64):
        assert runner._flash_mla_sparse_unsupported(by_name[f"sparse_heads_h{h_q}"]) is None
        assert runner._flash_mla_sparse_heads(h_q) == 64
    assert runner._flash_mla_sparse_heads(100) == 128 and runner._flash_mla_sparse_heads(129) is None
    for name, c in by_name.items():
        if name.startswith("sparse_small"):
            assert runner._flash_mla_sparse_unsupported(c) is None  # topk 64, 576, 2048: all multiples of 64
    small = by_name["sparse_small_topk64_p2"].scaled_down(64)
    assert "topk % 64" in runner._flash_mla_sparse_unsupported(small)


@pytest.mark.parametrize("kv_format, page", [("V32_FP8", 61), ("BF16", 2)])
def test_sparse_inputs(kv_format, page):
    """Indices name distinct owned slots of their own request (or are exactly -1); no zeros; counts right."""
    b, s_q, h_q, s_k, topk = 3, 2, 16, 300, 128
    inp = make_sparse_decode_inputs(
        b, s_q, h_q, s_k, topk, page, kv_format, dtype=torch.bfloat16, device="cpu", seed=3, invalid_frac=0.1
    )
    num_blocks = b * math.ceil(s_k / page)
    if kv_format == "V32_FP8":
        assert inp.k_cache.dtype == torch.uint8 and tuple(inp.k_cache.shape) == (num_blocks, page, 1, 656)
        keys = dequantize_v32(inp.k_cache).float().view(-1, 576)
    else:
        assert inp.k_cache.dtype == torch.bfloat16 and tuple(inp.k_cache.shape) == (num_blocks, page, 1, 576)
        keys = inp.k_cache.float().view(-1, 576)
    idx = inp.indices
    assert idx.dtype == torch.int32 and tuple(idx.shape) == (b, s_q, topk) and idx.is_contiguous()
    assert bool((idx == -1).any()) and bool(((idx == -1) | ((idx >= 0) & (idx < num_blocks * page))).all())
    owned = ~torch.isnan(keys).any(-1)
    assert int(owned.sum()) == b * s_k  # every request owns s_k slots; the rest are NaN
    valid = idx[idx >= 0].long()
    assert bool(owned[valid].all())
    for row in idx.view(b * s_q, topk):
        row = row[row >= 0]
        assert row.unique().numel() == row.numel()
    # request i's slots lie on pages no other request uses
    pages = [set((idx[i][idx[i] >= 0] // page).tolist()) for i in range(b)]
    assert all(not (pages[i] & pages[j]) for i in range(b) for j in range(i + 1, b))
    assert inp.n_valid == valid.numel() and inp.n_unique_tokens == valid.unique().numel()
    assert float((inp.q != 0).float().mean()) > 0.99  # never timed on zeros
    flops, nbytes = sparse_decode_flops_bytes(b, s_q, h_q, topk, 576, 512, inp.n_unique_tokens, inp.bytes_per_token)
    assert flops == 2 * h_q * b * s_q * topk * (576 + 512)
    assert nbytes == 2 * b * s_q * h_q * (576 + 512) + inp.n_unique_tokens * inp.bytes_per_token


class _FakeFlashMLA:
    """Stands in for ``flash_mla``: records each call and answers with the reference on the q it gets."""

    def __init__(self):
        self.calls = []

    @staticmethod
    def _slots_or_minus_one(indices, k_cache) -> bool:
        """FlashMLA reads every entry but -1: each must be -1 or a slot of the cache."""
        num_slots = k_cache.shape[0] * k_cache.shape[1]
        return bool(((indices == -1) | ((indices >= 0) & (indices < num_slots))).all())

    def get_mla_metadata(self):
        return object(), None

    def flash_mla_with_kvcache(
        self,
        q,
        k_cache,
        block_table,
        cache_seqlens,
        head_dim_v,
        tile_scheduler_metadata,
        num_splits=None,
        softmax_scale=None,
        causal=False,
        is_fp8_kvcache=False,
        indices=None,
        use_legacy=False,
    ):
        self.calls.append(
            dict(
                h_q=q.shape[2],
                block_table=block_table,
                causal=causal,
                is_fp8=is_fp8_kvcache,
                use_legacy=use_legacy,
                invalid_is_minus_one=self._slots_or_minus_one(indices, k_cache),
            )
        )
        return reference.sparse_decode(q, k_cache, indices, head_dim_v, softmax_scale)


def test_flash_mla_sparse_plumbing_pads_heads():
    """h_q=16 reaches FlashMLA as 64 zero-padded heads (legacy kernels, FP8, no causal); the check reads 16."""
    cfg = next(c for c in get_configs("heads", op="sparse_decode") if c.h_q == 16).scaled_down(64)
    inp = make_sparse_decode_inputs(
        cfg.b, cfg.s_q, cfg.h_q, cfg.s_k, cfg.topk, cfg.page_block_size, cfg.kv_format, device="cpu"
    )
    ref = reference.sparse_decode(inp.q, inp.k_cache, inp.indices, inp.head_dim_v, inp.softmax_scale)
    fake, rec = _FakeFlashMLA(), {}
    args = argparse.Namespace(dry_run=True)
    runner.run_flash_mla_sparse(fake, inp, runner.sparse_check(ref, cfg.h_q), cfg, args, rec, 1.0, 1.0)
    assert rec.get("flash_mla_error") is None, rec
    assert rec["flash_mla_ok"] is True and rec["flash_mla_h_q"] == 64 and rec["flash_mla_q_padded"] is True
    assert fake.calls == [
        dict(h_q=64, block_table=None, causal=False, is_fp8=True, use_legacy=True, invalid_is_minus_one=True)
    ]


def test_trace_intervals_read_a_two_stage_timeline():
    """``benchmarks.trace_ws`` turns the trace build's stamps into per-tile intervals: a synthetic timeline with
    known gaps comes back as those gaps, and tiles the trace did not reach (zeros) or a request boundary (a
    negative gap) are left out."""
    from benchmarks.trace_ws import _intervals

    period = 1000
    # events 0..6 of tile k at k * period + offset: loader has the stage at +0, publishes at +300, softmax has K at
    # +400, scores done at +500, P at +700, output has P at +750, releases at +950
    # event 7 (codes landed) at +200, the softmax's math done at +600 (8), the P buffer free at +650 (9)
    offsets = (0, 300, 400, 500, 700, 750, 950, 200, 600, 650)
    piece = [[k * period + o for o in offsets] for k in range(10)]
    piece += [[0] * 10] * 3  # tiles the trace did not reach
    iv = _intervals([piece, piece])
    assert iv["period (1 -> next 1)"] == period
    assert iv["loader busy (0 -> 1)"] == 300
    assert iv["loader waits for a stage (last 1 -> 0)"] == period - 300
    assert iv["softmax waits for K (last 4 -> 2)"] == period - 300
    assert iv["K issued to its last box landed (1 -> 2)"] == 100
    assert iv["stage free to its scores issued (0 -> 2)"] == 400
    assert iv["score products (2 -> 3)"] == 100
    assert iv["softmax and hand-over (3 -> 4)"] == 200
    assert (iv["softmax math (3 -> 8)"], iv["waits for the P buffer (8 -> 9)"]) == (100, 50)
    assert iv["P written and published (9 -> 4)"] == 50
    assert iv["output waits for P (last 6 -> 5)"] == period - 200
    assert iv["output products (5 -> 6)"] == 200
    assert iv["stage with the consumers (1 -> 6)"] == 650
    assert iv["loader waits for its codes (0 -> 7)"] == 200
    assert iv["loader decodes and publishes (7 -> 1)"] == 100
    assert _intervals([[[0] * 10] * 5])["period (1 -> next 1)"] is None


def test_trace_programs_read_entries_and_ends_from_the_rows_after_the_pieces():
    """``benchmarks.trace_ws`` reads each program's globaltimer entry and end (ns, two slots a program in the rows
    after the pieces') as µs: spreads, first entry to last end, the median and longest program; programs that
    stamped nothing, or past the programs the rows hold, are left out, and a trace with none gives None."""
    from benchmarks.trace_ws import _program_spans, _programs

    pieces, tiles, events = 2, 2, 3  # a small buffer: rows of 2 x 3 slots, three programs a row
    trace = [[[0] * events for _ in range(tiles)] for _ in range(pieces + 2)]
    stamps = [(1_000, 21_000), (2_000, 24_000), (0, 0), (1_500, 20_500), (3_000, 9_000), (500, 99_000)]
    flat = [x for pair in stamps for x in pair]
    for i, x in enumerate(flat):
        trace[pieces + i // (tiles * events)][i // events % tiles][i % events] = x
    spans = _program_spans(trace, pieces, programs=5)  # the sixth program is past the rows' room: not read
    assert spans == [[0, 1_000, 21_000], [1, 2_000, 24_000], [3, 1_500, 20_500], [4, 3_000, 9_000]]
    assert _programs(spans) == {"programs": 4, "entry spread us": 2.0, "end spread us": 15.0,
                                "first entry to last end us": 23.0, "median program us": 19.5,
                                "longest program us": 22.0}
    assert _programs(_program_spans([[[0] * events] * tiles] * (pieces + 2), pieces, programs=6)) is None


def test_trace_program_time_by_piece_work():
    """``benchmarks.trace_ws`` groups program times by their piece's tiles and requests, read from the plan: a piece
    from a request's middle to another's, two programs a piece (row tiles), grouped and timed in µs."""
    from benchmarks.trace_ws import _by_piece_work

    lens = [200, 1000, 64]
    # piece 0: request 0 whole (4 tiles) and request 1's first 300 tokens (5 tiles); piece 1: the rest of request 1
    # (700 tokens: 11 tiles) and request 2 (1 tile); piece 2: the same work as piece 0
    sched = [[0, 0, 1, 300], [1, 300, 2, 64], [0, 0, 1, 300]]
    program_ns = [[0, 0, 9_000], [1, 0, 10_000], [2, 1_000, 13_000], [3, 1_000, 13_500], [4, 0, 11_000]]
    assert _by_piece_work(program_ns, sched, lens, 2) == {(9, 2): (3, 10.0, 11.0), (12, 2): (2, 12.25, 12.5)}


def test_trace_intervals_of_the_small_head_sparse_kernel():
    """The small-head sparse kernel's seven events, read as its own intervals: a synthetic lockstep timeline comes
    back as its gaps."""
    from benchmarks.trace_ws import SMALL_SPARSE_INTERVALS, _intervals

    period = 2000
    # step at +0, landed +300, decoded +800, scores +1000, P +1300, P V +1500, next codes issued +1900
    offsets = (0, 300, 800, 1000, 1300, 1500, 1900, 0, 0, 0)
    piece = [[k * period + o for o in offsets] for k in range(8)]
    iv = _intervals([piece], SMALL_SPARSE_INTERVALS)
    assert iv == {"period (0 -> next 0)": period, "codes issued to landed (last 6 -> 1)": period - 1900 + 300,
                  "decode in place (1 -> 2)": 500, "RoPE and scales issued, score products (2 -> 3)": 200,
                  "softmax and P published (3 -> 4)": 300, "value products (4 -> 5)": 200,
                  "next codes issued (5 -> 6)": 400}


def test_fp8_forms_ab_reads_its_forms():
    """The e4m3-product forms A/B parses ``;``-separated forms of known knobs (a ``/`` pair is a tuple) and refuses
    an unknown knob, naming the known ones."""
    from benchmarks.fp8_e4m3_forms_ab import parse_forms

    assert parse_forms("P_BUFS=1;P_BUFS=2,WORKER_REGS=176/48;") == [
        {"P_BUFS": 1}, {"P_BUFS": 2, "WORKER_REGS": (176, 48)}, {}]
    with pytest.raises(SystemExit, match="unknown knob 'LOADER_COLS'.*P_BUFS, STAGES, WORKER_REGS"):
        parse_forms("LOADER_COLS=64")


def test_profile_target_names_the_configs_it_knows():
    """The profiler driver refuses a config it does not know before touching a GPU, listing the dense decode configs
    (so an ``ncu`` command line with a typo fails at once, not after a profiler start-up)."""
    from benchmarks.profile_target import main

    with pytest.raises(SystemExit, match=r"unknown config 'std_sq1_sk8192_h127'.*std_sq1_sk8192_h128"):
        main(["--config", "std_sq1_sk8192_h127"])


def test_kernel_times_only_refuses_unknown_names():
    """``kernel_times --only`` with a name no selected config has stops before any GPU work, naming it and the
    known ones, instead of timing nothing."""
    from benchmarks.kernel_times import main

    with pytest.raises(SystemExit, match=r"--only names no config of --configs small: std_sq1_sk8192_h128; "
                                         r"known: .*small_b16_sk512"):
        main(["--configs", "small", "--only", "small_b1_sk512,std_sq1_sk8192_h128"])


def test_kernel_times_shapes_read_b_s_k_and_s_q():
    """``kernel_times --shapes`` entries: ``b:s_k`` a fixed-length s_q=1 call, ``b:s_k:s_q`` a causal MTP one (the
    three-warpgroup form's rows at h_q=128 from s_q=3); anything else stops with the entry named."""
    from benchmarks.kernel_times import _shape_config

    one, mtp = _shape_config("64:512"), _shape_config("32:2048:4")
    assert (one.name, one.b, one.s_k, one.s_q, one.h_q, one.causal, one.varlen) == ("b64_sk512", 64, 512, 1, 128,
                                                                                   False, False)
    assert (mtp.name, mtp.b, mtp.s_k, mtp.s_q, mtp.causal) == ("b32_sk2048_sq4", 32, 2048, 4, True)
    assert mtp.seqlens() == [2048] * 32
    for bad in ("64", "64:512:2:1", "64:0", "a:512"):
        with pytest.raises(SystemExit, match=f"--shapes: '{bad}' is not b:s_k or b:s_k:s_q"):
            _shape_config(bad)


def test_kernel_times_refuses_a_negative_charge_and_dense_options_with_sparse():
    """``kernel_times`` stops before any GPU work on a negative ``--plan-overhead`` and on dense-only options given
    with ``--sparse`` (which would otherwise be ignored), naming them; ``plan_pieces`` refuses a bad charge list."""
    from benchmarks.kernel_times import main
    from benchmarks.plan_pieces import main as plan_pieces

    with pytest.raises(SystemExit, match="--plan-overhead: -1 blocks"):
        main(["--plan-overhead", "-1"])
    with pytest.raises(SystemExit, match="--shapes, --plan-overhead: dense decoding only"):
        main(["--sparse", "--shapes", "64:512", "--plan-overhead", "0"])
    with pytest.raises(SystemExit, match="--old-form, --old-form-bounded: dense decoding only"):
        main(["--sparse", "--old-form", "--old-form-bounded"])
    for bad in ("5,-1", "5,x"):
        with pytest.raises(SystemExit, match=f"--overheads: '{bad}'"):
            plan_pieces(["--overheads", bad])


def test_tune_sparse_gluon_forms_in_order():
    """The sparse tuner's A/B options give the Gluon kernel's forms in the order asked, as launcher keywords; with
    none of them it times the tile configs instead (no forms)."""
    import argparse

    from benchmarks.tune_sparse_decode import _gluon_forms

    def forms(**kw):
        base = dict(gluon_output_decode=False, gluon_output_decode_order="0,1,1,0", gluon_loader_regs=None,
                    gluon_list_ahead=False, gluon_small_heads=False, gluon_small_heads_order="1,0,1,0")
        return _gluon_forms(argparse.Namespace(**{**base, **kw}))

    assert forms(gluon_output_decode=True) == [{"output_decode": d} for d in (0, 1, 1, 0)]
    assert forms(gluon_output_decode=True, gluon_output_decode_order="1,0") == [{"output_decode": 1},
                                                                              {"output_decode": 0}]
    assert forms(gluon_loader_regs="64,56,56,64") == [{"loader_regs": r} for r in (64, 56, 56, 64)]
    assert forms(gluon_list_ahead=True) == [{"list_ahead": a} for a in (False, True, False, True)]
    assert forms(gluon_small_heads=True) == [{"small_heads": s} for s in (True, False, True, False)]
    assert forms(gluon_small_heads=True, gluon_small_heads_order="0,1") == [{"small_heads": False},
                                                                          {"small_heads": True}]
    assert forms() == []


def test_fp8_pv_precision_emulation():
    """The P-rounding study's emulation: with P in fp16 (what the e4m3-product kernel multiplies by) it meets
    FlashMLA's output tolerance on a small FlashMLA-style input, and two e4m3 terms of 256 P round P to within
    2^-7 relative where e4m3 alone is off by up to 2^-4."""
    from benchmarks.fp8_pv_precision import emulate, rounded_p
    from openmla import reference
    from openmla._harness import OUT_TOLERANCE, check_close, make_dense_decode_inputs, quantize_dense_fp8

    p = torch.linspace(2**-6, 1, 4097)
    rel = {mode: float(((rounded_p(p, mode) - p).abs() / p).max()) for mode in ("e4m3", "two-terms", "fp16")}
    assert rel["fp16"] <= 2**-11 and rel["two-terms"] <= 2**-7 < rel["e4m3"] <= 2**-4
    inp = quantize_dense_fp8(make_dense_decode_inputs([70, 200], 2, 8, 1, 576, 512, 16, torch.bfloat16, True, "cpu",
                                                      seed=3), fp8_q=True)
    ref_out, _ = reference.flash_mla_with_kvcache(*inp.call_args(), None, softmax_scale=inp.softmax_scale,
                                                  causal=True, descale_q=inp.descale_q, descale_k=inp.descale_k)
    assert check_close("out", emulate(inp, "fp16"), ref_out, *OUT_TOLERANCE).ok


def test_register_operand_probe_compiles():
    """The probe of the sparse kernel's candidate form builds for sm_90a on a CPU, codes swizzled or not: every
    product reads A from registers (its HGMMAs: 16 score and 16 value slices a loop trip), the fragments come as
    byte and byte-pair loads, and nothing spills."""
    from openmla._runtime import gluon_available

    if not gluon_available():
        pytest.skip("triton's Gluon is not importable here")
    from benchmarks.probe_register_operands import compile_report

    for swizzle in (False, True):
        report = compile_report(swizzle)
        assert report["stack"] == 0, report
        assert report["HGMMA.64x64x16.F32.BF16"] == 16 + 16, report
        assert report["LDS.U16"] > 0 and report["LDS.U8"] > 0, report


def test_tma_landing_probe_compiles():
    """The TMA landing probe builds for sm_90a on a CPU: nine 64x64 box copies a tile (in the prologue's issue of
    each stage and the loop's), its spin, and with products the tile's 36 score and 32 value wgmma k-steps. Built
    in a child process without ``TRITON_INTERPRET`` (its jit helpers would otherwise be interpreter functions)."""
    import subprocess

    from openmla._runtime import gluon_available

    if not gluon_available():
        pytest.skip("triton's Gluon is not importable here")
    code = ("import json; from benchmarks.probe_tma_landing import build; "
            "print(json.dumps([build(*form).asm['ptx'] for form in ((2, 4, 1400, 0), (2, 4, 0, 2), (2, 4, 0, 1))]))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    spin, products, scores = json.loads(done.stdout.splitlines()[-1])
    chunks = 576 // 64
    assert spin.count("cp.async.bulk.tensor.2d") == chunks * 3, "two stages in the prologue, one refill in the loop"
    assert "%clock64" in spin and "wgmma.mma_async" not in spin
    assert products.count("wgmma.mma_async") == 4 * chunks + 4 * (chunks - 1)
    assert scores.count("wgmma.mma_async") == 4 * chunks


def test_record_gather_and_decode_probes_compile():
    """The record-gather and FP8-decode probes build for sm_90a on a CPU: the gather's 16-byte ``cp.async`` form
    issues a thread's 21 copies of a tile at each of its issue sites (two stages' prologue and the loop's refill),
    its bulk forms one or three ``cp.async.bulk`` a record, and the forms whose inline PTX addresses shared memory
    from offset 0 keep a single allocation of the size they address (a second one would move theirs). Built in a
    child process without ``TRITON_INTERPRET`` (their jit helpers would otherwise be interpreter functions)."""
    import subprocess

    from openmla._runtime import gluon_available

    if not gluon_available():
        pytest.skip("triton's Gluon is not importable here")
    code = ("import json; from benchmarks import probe_record_gather as g, probe_fp8_decode as d; "
            "ks = [g.build(*f) for f in (('cp.async', 4, 2), ('bulk', 4, 2), ('bulk3', 4, 1))] + "
            "[d.build(r) for r in range(len(d.ROUTES))]; "
            "print(json.dumps([[k.asm['ptx'], k.metadata.shared] for k in ks]))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (cp, _), (bulk, bulk_shared), (bulk3, _), *decode = json.loads(done.stdout.splitlines()[-1])
    assert cp.count("cp.async.cg.shared.global") == 21 * 3 and "cp.async.bulk" not in cp
    assert bulk.count("cp.async.bulk.shared::cluster.global") == 3 and bulk_shared == 2 * 42 * 1024
    assert bulk3.count("cp.async.bulk.shared::cluster.global") == 3 * 2
    routes = dict(zip(("smem", "registers", "registers-now", "decode-only", "bulk"), decode))
    assert routes["smem"][0].count("cp.async.cg.shared.global") == 8 * 3, "two stages' prologue and the loop's"
    assert routes["registers"][0].count("ld.global.v4") == 8 * 2, "the first tile's codes, then the next tile's"
    assert routes["bulk"][1] == 192 * 1024 and routes["bulk"][0].count("cp.async.bulk.shared::cluster.global") == 3


def test_plan_pieces_reads_the_longest_piece_and_restores_the_charge(capsys):
    """``benchmarks.plan_pieces`` counts each piece's tiles and requests from a plan's rows and prints, per bench
    config, the longest piece under each per-request charge; the module's charge and the SM count it planned for
    are back to what they were after."""
    import openmla.metadata
    from benchmarks.plan_pieces import longest_piece, main, piece_work

    lens = [200, 1000, 64]
    sched = [[0, 0, 1, 300, 0], [1, 300, 2, 64, 1], [3, 0, 2, 0, 0]]  # the last piece empty (begin past end)
    assert piece_work(sched, lens) == [(9, 2), (12, 2), (0, 0)]
    assert longest_piece(sched, lens) == (12, 2)
    before = openmla.metadata.DENSE_PLAN_OVERHEAD, os.environ.get("OPENMLA_NUM_SMS")
    main(["--configs", "small", "--overheads", "5,0"])
    assert (openmla.metadata.DENSE_PLAN_OVERHEAD, os.environ.get("OPENMLA_NUM_SMS")) == before
    out = capsys.readouterr().out.splitlines()
    b16 = next(line for line in out if line.startswith("small_b16_sk512 "))
    assert b16.split()[1:4] == ["16", "128", "66"] and b16.split()[4:] == ["4/1", "2/1"], b16


def test_kernel_times_knobs_set_what_they_name(monkeypatch):
    """Every A/B flag of ``kernel_times`` names a module attribute that exists (a renamed knob fails here, not on the
    GPU machine); the flags given set theirs, those left at their defaults set nothing, and the timing lines' label
    lists the given ones in order. A combine chunk count that is not a power of two stops the run."""
    import argparse
    import importlib

    from benchmarks.kernel_times import DENSE_KNOBS, SPARSE_KNOBS, set_knobs

    modules = {}
    for _, _, module, attribute, _ in DENSE_KNOBS + SPARSE_KNOBS:
        modules[module] = importlib.import_module(module)
        assert hasattr(modules[module], attribute), (module, attribute)
        monkeypatch.setattr(modules[module], attribute, getattr(modules[module], attribute))  # restored after
    ws = modules["openmla.ops.gluon.decode_dense_sm90_ws"]
    sparse = modules["openmla.ops.gluon.decode_sparse_sm90"]
    lag_before, overhead_before = ws.LAG_MIN_ROWS, sparse.PLAN_OVERHEAD
    given = dict(combine_chunks=4, masked_softmax=True, p_whole=False, plan_overhead=1, sparse_splits_cap=0)
    cli = argparse.Namespace(**{knob[0]: None for knob in DENSE_KNOBS + SPARSE_KNOBS})
    for dest, value in given.items():
        setattr(cli, dest, value)
    assert set_knobs(cli, DENSE_KNOBS) == " combine chunks 4 masked softmax True plan overhead 1"
    assert modules["openmla.ops.combine"].combine_col_chunks(2, 512, "cuda") == 4
    assert ws.INTERIOR_SOFTMAX is False and ws.LAG_MIN_ROWS == lag_before
    assert modules["openmla.metadata"].DENSE_PLAN_OVERHEAD == 1
    assert set_knobs(cli, SPARSE_KNOBS) == " splits cap 0"
    assert sparse.SPLITS_CAP is None and sparse.PLAN_OVERHEAD == overhead_before
    cli.combine_chunks = 3
    with pytest.raises(SystemExit, match="--combine-chunks: 3; give a power of two"):
        set_knobs(cli, DENSE_KNOBS)


def test_kernel_times_names_the_plan_its_calls_ran():
    """``kernel_times`` prints the pieces of the schedule OpenMLA's calls planned and the most pieces a request was
    cut into (so a record says whether small batches ran a plan bounded at MAX_SPLITS); nothing before planning."""
    import openmla
    from benchmarks.kernel_times import _plan_shape
    from openmla.metadata import plan_dense
    from openmla.ops.schedule import MAX_SPLITS

    class Call:  # what benchmarks.runner's calls carry: the new form's schedule object, or the old form's tensors
        sched = plan = None

    call = Call()
    call.sched, _ = openmla.get_mla_metadata()
    assert _plan_shape(call) is None and _plan_shape(None) is None
    lens = torch.tensor([64 * 400, 64], dtype=torch.int32)
    for bounded in (True, False):
        plan = plan_dense(lens, 128, 1, "gluon", bounded=bounded)
        call.sched.tile_scheduler_metadata, call.sched.num_splits = plan
        call.sched.have_initialized = True
        old_form = Call()
        old_form.plan = plan
        for shape in (_plan_shape(call), _plan_shape(old_form)):
            assert shape.startswith(f"pieces {plan[0].shape[0]}, splits a request at most "), shape
            assert (int(shape.rsplit(" ", 1)[1]) <= MAX_SPLITS) == bounded, shape


def test_old_form_bench_call_matches_the_new_form():
    """``benchmarks.runner``'s old-form call (SGLang's convention: the schedule's tensors from
    ``get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv)``) gives the new-form call's output on the same inputs
    (CPU: the Triton interpreter), and carries its plan for ``kernel_times``."""
    from benchmarks.runner import _openmla_call, _openmla_old_form_call
    from openmla._harness import make_dense_decode_inputs

    inp = make_dense_decode_inputs([70, 130], 1, 16, 1, 576, 512, 64, torch.bfloat16, False, "cpu", 3)
    old_form = _openmla_old_form_call(inp)
    out_old, lse_old = old_form()
    out_new, lse_new = _openmla_call(inp)()
    assert old_form.plan[1].shape == (3,)
    # bf16 outputs of two plans (different splits, merged in fp32) may round an ulp apart (0.0078 at 1.0)
    torch.testing.assert_close(out_old.float(), out_new.float(), atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(lse_old, lse_new, atol=1e-4, rtol=1e-4)
