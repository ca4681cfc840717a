"""Dense MLA decoding through the public API, against the fp32 reference (and FlashMLA on the GPU).

CPU tier: the Triton kernels under the interpreter on tiny fp16 shapes (triton 3.6's interpreter
computes ``tl.dot`` on two bf16 operands wrongly), with the split-KV path forced by a small SM count.
GPU tier (``-m gpu``): FlashMLA's dense-decode matrix with FlashMLA's tolerances, other page sizes,
FP16, zero-length corners, NaN-poisoned outputs, CUDA-graph capture, and FlashMLA itself on the same
inputs when the anchor is importable.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import (
    TOL,
    capture_cuda_graph,
    check_close,
    interpret_mode,
    make_dense_decode_inputs,
    misaligned_copy,
    poison_cuda_cache,
    record_launches,
    run_expecting_alignment_fallback,
)

import openmla
from openmla import reference

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
CAN_RUN_TRITON = HAS_CUDA or interpret_mode()

try:  # the FlashMLA anchor, for differential tests on the GPU
    import flash_mla as _flash_mla

    if not HAS_CUDA or torch.cuda.get_device_capability() != (9, 0):
        _flash_mla = None
except Exception:
    _flash_mla = None


def run_openmla(inputs: dict, api: str = "new", backend: str = "triton" if not HAS_CUDA else "auto"):
    q, k_cache, bt, lens = inputs["q"], inputs["k_cache"], inputs["block_table"], inputs["cache_seqlens"]
    b, s_q, h_q, _ = q.shape
    h_kv = k_cache.shape[2]
    if api == "new":
        meta, splits = openmla.get_mla_metadata()
    else:
        meta, splits = openmla.get_mla_metadata(lens, s_q * h_q // h_kv, h_kv)
    return openmla.flash_mla_with_kvcache(
        q, k_cache, bt, lens, inputs["head_dim_v"], meta, splits,
        softmax_scale=inputs["softmax_scale"], causal=inputs["causal"], backend=backend,
    )


def check_against_reference(inputs: dict, out: torch.Tensor, lse: torch.Tensor) -> None:
    ref_out, ref_lse = reference.dense_decode(**inputs)
    assert out.shape == ref_out.shape and out.dtype == inputs["q"].dtype
    assert lse.shape == ref_lse.shape and lse.dtype == torch.float32
    check_close("out", out, ref_out, TOL[("dense_decode", "out")])
    check_close("lse", lse, ref_lse, TOL[("dense_decode", "lse")])


# ------------------------------------------------------------------------------------------------
# CPU tier: Triton kernels under the interpreter, tiny fp16 shapes
# ------------------------------------------------------------------------------------------------

INTERP_CASES = [
    # b, s_q, s_k, h_q, h_kv, d, dv, page, varlen, causal, zero_frac
    (2, 1, 40, 4, 1, 576, 512, 16, True, False, 0.0),
    (3, 2, 70, 4, 2, 576, 512, 7, True, True, 0.0),
    (4, 3, 50, 3, 1, 512, 512, 64, True, True, 0.25),
    (2, 1, 130, 16, 1, 576, 512, 1, False, False, 0.0),
    (3, 4, 3, 6, 3, 64, 32, 3, False, True, 0.0),  # s_k < s_q: leading rows see nothing
    (5, 2, 90, 9, 3, 64, 32, 128, True, True, 0.4),
    (2, 2, 90, 12, 1, 576, 512, 16, True, True, 0.0),  # 24 rows: the tokens layout (KV tokens on M)
    (3, 1, 150, 32, 2, 64, 32, 5, True, False, 0.3),  # 16 rows per KV head, two KV heads
    (2, 1, 200, 40, 1, 64, 32, 32, True, False, 0.0),  # 64-row tiles
    (1, 2, 300, 70, 1, 64, 32, 64, False, True, 0.0),  # 128-row tiles, output sliced in two
]


@pytest.mark.skipif(not CAN_RUN_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize(
    "case", [pytest.param(c, id="b{}-sq{}-sk{}-h{}-hkv{}-d{}-dv{}-p{}-var{}-causal{}-zero{}".format(*c))
             for c in INTERP_CASES])
@pytest.mark.parametrize("sms", [132, 5])
@pytest.mark.parametrize("api", ["new", "old"])
def test_triton_matches_reference_tiny(case, sms, api, monkeypatch, generator):
    """Few SMs cut every request across pieces, so split partials are merged too (in the split kernel)."""
    b, s_q, s_k, h_q, h_kv, d, dv, page, varlen, causal, zero_frac = case
    monkeypatch.setenv("OPENMLA_NUM_SMS", str(sms))
    inputs = make_dense_decode_inputs(b, s_q, s_k, h_q, h_kv, d, dv, page, torch.float16, DEVICE, varlen=varlen,
                                      zero_len_frac=zero_frac, generator=generator, causal=causal)
    out, lse = run_openmla(inputs, api=api)
    check_against_reference(inputs, out, lse)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="the one-piece plan on a GPU")
@pytest.mark.parametrize("api", ["new", "old"])
def test_one_piece_plan_on_the_gpu(api, monkeypatch, generator):
    """With one SM counted (``OPENMLA_NUM_SMS=1``, as a batch whose row tiles outnumber half the SMs gets) the split
    plan has one piece: the plan kernel, specialized by Triton on ``num_parts == 1``, had failed to lower on sm_90.
    The whole call (plan, kernel, combine) must run and match the reference."""
    monkeypatch.setenv("OPENMLA_NUM_SMS", "1")
    inputs = make_dense_decode_inputs(3, 2, 300, 128, 1, 576, 512, 64, torch.bfloat16, "cuda", varlen=True,
                                      generator=generator, causal=True)
    out, lse = run_openmla(inputs, api=api)
    check_against_reference(inputs, out, lse)


def _kernel_backends() -> list[str]:
    from openmla._runtime import device_arch, gluon_available

    hopper = HAS_CUDA and gluon_available() and device_arch(torch.device("cuda")) == 90
    return ["triton", "gluon"] if hopper else ["triton"]


# the fused combine's handshake (atomics, L2 reads of other SMs' partials) is tested under the interpreter
# (CPU tier) and in the GPU tier (``-m gpu``) alike
HERE_AND_GPU = [pytest.param(DEVICE, id=DEVICE), pytest.param("cuda", marks=pytest.mark.gpu, id="gpu-tier")]


TMA_CASES = [
    # b, s_q, s_k, h_q, d, page, block_m, block_n, num_warps, num_stages, dv_tile, causal
    (2, 1, 150, 4, 576, 64, 16, 32, 4, 2, 512, False),  # the small-row tile, whole output
    (3, 2, 200, 8, 576, 32, 16, 32, 4, 3, 256, True),  # output sliced in two: both halves by TMA
    (2, 1, 130, 64, 512, 64, 64, 32, 4, 2, 256, True),  # no RoPE dims: no second descriptor
    (4, 2, 700, 64, 576, 128, 128, 32, 8, 2, 256, True),  # the compute-bound default's tile
]


@pytest.mark.skipif(not CAN_RUN_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("device", HERE_AND_GPU)
@pytest.mark.parametrize("case", TMA_CASES,
                         ids=lambda c: "b{}-sq{}-sk{}-h{}-d{}-p{}-bm{}-bn{}-w{}-s{}-dv{}-c{}".format(*c))
@pytest.mark.parametrize("form", ["plain", "page-ahead", "tail-box"])
def test_triton_whole_tiles_by_tma(device, case, form, generator):
    """The portable kernel's TMA path (``tma_k``): whole tiles as boxes of the cache, each piece's tail tile by
    masked loads (the slots past a length are NaN here: a box would bring them into P V), or as a box whose
    rows past the length are zeroed (``tail_tma``); with ``page_ahead`` each tile's page number read an
    iteration before (pages of 32 and 64 keys)."""
    from openmla.ops.decode_dense import DenseDecodeConfig, dense_decode_fwd, k_descriptors
    from openmla.ops.schedule import plan_splitkv

    if device == "cuda" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA needs sm_90 or newer")
    b, s_q, s_k, h_q, d, page, bm, bn, warps, stages, dv_tile, causal = case
    if device == "cpu" and bm > 16:
        pytest.skip("large tiles under the interpreter: covered by the smaller ones here, and on the GPU")
    inputs = make_dense_decode_inputs(b, s_q, s_k, h_q, 1, d, 512, page, torch.bfloat16 if device == "cuda"
                                      else torch.float16, device, varlen=True, generator=generator, causal=causal)
    cfg = DenseDecodeConfig(bm, bn, warps, stages, dv_tile, tma_k=True, page_ahead=form == "page-ahead",
                            tail_tma=form == "tail-box")
    arch = 90 if device == "cuda" else None
    assert all(x is not None for x in k_descriptors(inputs["k_cache"], cfg, 512, arch)[: 1 + (d > 512)])
    sched, splits = plan_splitkv(inputs["cache_seqlens"], 7)  # requests cut across pieces: interior tails too
    out, lse = dense_decode_fwd(inputs["q"], inputs["k_cache"], inputs["block_table"], inputs["cache_seqlens"], 512,
                                sched, splits, d ** -0.5, causal, config=cfg)
    check_against_reference(dict(inputs, softmax_scale=d ** -0.5), out, lse)


UNCHAINED_CASES = [
    # b, s_q, s_k, h_q, d, dv, page, block_n, tma_k, causal
    (3, 2, 150, 32, 64, 32, 16, 32, False, True),  # 64 rows from two query tokens, pointer loads
    (2, 1, 140, 48, 64, 32, 32, 32, True, False),  # rows past h_q masked; whole tiles and tails by TMA
    (4, 2, 700, 64, 576, 512, 64, 32, True, True),  # h_q=128's tile shape (two row tiles a token)
    (2, 1, 900, 128, 576, 512, 128, 64, True, False),
    (3, 1, 500, 64, 512, 512, 64, 32, False, False),  # no RoPE dims
]


@pytest.mark.skipif(not CAN_RUN_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("device", HERE_AND_GPU)
@pytest.mark.parametrize("case", UNCHAINED_CASES,
                         ids=lambda c: "b{}-sq{}-sk{}-h{}-d{}-dv{}-p{}-bn{}-tma{}-c{}".format(*c))
def test_triton_unchained_tile(device, case, generator):
    """The 64-row tile whose two warpgroups split the scores by keys and the output by dims (``unchained``):
    the softmax runs in a branch that is always taken, so a wrong branch or a lost rescale shows here."""
    from openmla.ops.decode_dense import DenseDecodeConfig, dense_decode_fwd
    from openmla.ops.schedule import plan_splitkv

    b, s_q, s_k, h_q, d, dv, page, bn, tma_k, causal = case
    if device == "cuda" and tma_k and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA needs sm_90 or newer")
    if device == "cpu" and d > 64:
        pytest.skip("MLA's dims under the interpreter take minutes: the GPU tier runs them")
    inputs = make_dense_decode_inputs(b, s_q, s_k, h_q, 1, d, dv, page, torch.bfloat16 if device == "cuda"
                                      else torch.float16, device, varlen=True, generator=generator, causal=causal)
    cfg = DenseDecodeConfig(64, bn, 8, 2, dv, tma_k=tma_k, unchained=True, tail_tma=tma_k)
    sched, splits = plan_splitkv(inputs["cache_seqlens"], 5)  # requests cut across pieces
    out, lse = dense_decode_fwd(inputs["q"], inputs["k_cache"], inputs["block_table"], inputs["cache_seqlens"], dv,
                                sched, splits, d ** -0.5, causal, config=cfg)
    check_against_reference(dict(inputs, softmax_scale=d ** -0.5), out, lse)


def test_unchained_tile_needs_the_whole_output():
    from openmla.ops.decode_dense import DenseDecodeConfig, dense_decode_fwd
    from openmla.ops.schedule import plan_splitkv

    inputs = make_dense_decode_inputs(1, 1, 40, 64, 1, 64, 32, 16, torch.float16, "cpu")
    sched, splits = plan_splitkv(inputs["cache_seqlens"], 1)
    with pytest.raises(ValueError, match="whole output"):
        dense_decode_fwd(inputs["q"], inputs["k_cache"], inputs["block_table"], inputs["cache_seqlens"], 32, sched,
                         splits, 0.125, False, config=DenseDecodeConfig(64, 32, 8, 2, 16, unchained=True))


def test_tile_choice_follows_the_pages_and_the_arch():
    """Which portable tile a call gets: the measured TMA tiles only where the cache's pages hold their boxes and
    the part has 227 KB of shared memory; the launcher asks the cache (``tma_tile_keys``)."""
    from openmla.ops.decode_dense import dense_decode_config, num_sm_parts_for, tma_tile_keys

    cache64 = torch.zeros(4, 64, 1, 576, dtype=torch.bfloat16)
    assert tma_tile_keys(cache64, 90) == 64 and tma_tile_keys(cache64, 80) == 0
    assert tma_tile_keys(torch.zeros(4, 32, 1, 576, dtype=torch.bfloat16), 90) == 32
    assert tma_tile_keys(torch.zeros(4, 16, 1, 576, dtype=torch.bfloat16), 90) == 0
    assert tma_tile_keys(torch.zeros(4, 64, 1, 576, dtype=torch.float8_e4m3fn), 90) == 64
    small = dense_decode_config(16, 576, 512, 90, tma_keys=32)
    assert (small.block_m, small.tma_k, small.page_ahead, small.tail_tma) == (16, True, True, False)
    for rows in (32, 64, 128, 256):
        tile = dense_decode_config(rows, 576, 512, 90, tma_keys=64)
        assert (tile.block_m, tile.block_n, tile.dv_tile, tile.unchained, tile.tail_tma) == (64, 64, 512, True, True)
    assert dense_decode_config(32, 576, 512, 90).layout == "tokens"  # pages without TMA tiles: 32 rows
    misaligned = dense_decode_config(32, 576, 512, 90, cache_aligned16=False)  # faulted on an H200: row-major
    assert misaligned.layout == "rows" and misaligned.block_m == 32
    sliced = dense_decode_config(128, 576, 512, 90, tma_keys=32)  # pages of 32 keys: the sliced 128-row tile
    assert (sliced.block_m, sliced.dv_tile, sliced.tma_k, sliced.unchained) == (128, 256, True, False)
    assert not dense_decode_config(128, 576, 512, 90, tma_keys=32, kv_fp8=True).tma_k  # not timed over codes
    assert dense_decode_config(128, 576, 512, 90, tma_keys=64, kv_fp8=True).unchained
    for arch in (80, 120):  # no 227 KB of shared memory: no TMA tile, whatever the cache
        assert not dense_decode_config(128, 576, 512, arch, tma_keys=64).tma_k
    # the plan counts the unchained tile's programs: one a 64-row tile, one per SM
    assert num_sm_parts_for(128, 1, 132, arch=90) == 66 and num_sm_parts_for(64, 1, 132, arch=90) == 132
    assert num_sm_parts_for(16, 1, 132, arch=90) == 264  # the 16-row tile runs two programs an SM


def test_tma_descriptors_only_where_the_cache_allows_them():
    from openmla.ops.decode_dense import DenseDecodeConfig, k_descriptors

    cfg = DenseDecodeConfig(16, 64, 4, 2, 512, tma_k=True)
    cache = torch.zeros(4, 64, 1, 576, dtype=torch.bfloat16)
    assert k_descriptors(cache, cfg, 512, 90)[0] is not None
    assert k_descriptors(cache, DenseDecodeConfig(16, 64, 4, 2, 512), 512, 90) == (None, None)  # not asked for
    assert k_descriptors(cache, cfg, 512, 80) == (None, None)  # no TMA before sm_90
    assert k_descriptors(torch.zeros(4, 32, 1, 576, dtype=torch.bfloat16), cfg, 512, 90) == (None, None)  # page
    assert k_descriptors(torch.zeros(4, 64, 2, 576, dtype=torch.bfloat16), cfg, 512, 90) == (None, None)  # h_kv
    codes = torch.zeros(4, 64, 1, 576, dtype=torch.uint8)  # a per-tensor FP8 cache's bytes: boxes of codes
    assert all(desc is not None for desc in k_descriptors(codes, cfg, 512, 90))
    assert k_descriptors(cache.float(), cfg, 512, 90) == (None, None)  # no fp32 caches
    assert k_descriptors(cache[::2], cfg, 512, 90) == (None, None)  # pages not back to back



@pytest.mark.skipif(not CAN_RUN_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("device", HERE_AND_GPU)
@pytest.mark.parametrize("backend", _kernel_backends())
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "combine-kernel"])
@pytest.mark.parametrize("h_q", [4, 40])
def test_split_partials_merged_in_kernel_or_by_the_combine_kernel(device, backend, fused, h_q, monkeypatch,
                                                                  generator):
    """Eager calls merge split partials in the split kernel, CUDA-graph captures with the combine kernel
    (``fuse_combine``); both give the reference's result on a plan that cuts requests into many pieces."""
    from openmla.api import _dense_launcher
    from openmla.metadata import plan_dense
    from openmla.ops.schedule import MAX_SPLITS

    monkeypatch.setenv("OPENMLA_NUM_SMS", "40")
    d, dv = (576, 512) if backend == "gluon" else (64, 32)  # the Gluon kernels take MLA's dims only
    inputs = make_dense_decode_inputs(2, 2, 1500, h_q, 1, d, dv, 16, torch.float16, device, varlen=True,
                                      generator=generator, causal=True)
    q, lens = inputs["q"], inputs["cache_seqlens"]
    sched, splits = plan_dense(lens, 2 * h_q, 1, backend)
    assert 4 <= int((splits[1:] - splits[:-1]).max()) <= MAX_SPLITS
    scale = inputs["softmax_scale"] or q.shape[-1] ** -0.5
    out, lse = _dense_launcher(backend)(q, inputs["k_cache"], inputs["block_table"], lens, dv, sched, splits, scale,
                                        True, fused_combine=fused)
    check_against_reference(inputs, out, lse)


@pytest.mark.skipif(not CAN_RUN_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("device", HERE_AND_GPU)
@pytest.mark.parametrize("col_chunks", [None, 1, 4, 8], ids=["chosen", "whole-rows", "column-chunks-4",
                                                         "column-chunks"])
@pytest.mark.parametrize("splits,s_q,h_q,d_v", [
    ((2, 70, 1, 9), 1, 16, 512),  # more splits than one LSE load takes, an unsplit request left alone
    ((3, 8), 2, 5, 64),  # rows past the heads, a split count that fills the unrolled loop
    ((4, 2, 5), 1, 16, 512),  # the most splits merged in one round trip (COMBINE_EAGER_SPLITS), one more; a row
    # that saw no key in any of its request's two splits
])
def test_combine_kernel_merges_partials(device, col_chunks, splits, s_q, h_q, d_v, generator):
    """The combine kernel against the merge written out in torch: any split count (up to four in one round trip,
    more merged online over several rounds), whole row tiles per program or their dims spread over programs (as
    chosen, or forced as ``openmla warmup`` does), splits in which a row saw no key (weight 0), rows that saw none
    anywhere (out 0, lse +inf), a row whose first keys or largest LSE come in a later round; requests with one
    split are not touched."""
    from openmla.ops import combine

    assert combine.COMBINE_EAGER_SPLITS == 4, "the split counts above straddle the one-round-trip bound"
    b = len(splits)
    offsets = torch.tensor([0] + list(itertools.accumulate(splits)), dtype=torch.int32, device=device)
    slots = int(offsets[-1])
    o_acc = torch.randn(slots, s_q, h_q, d_v, generator=generator).to(device)
    lse_acc = (torch.randn(slots, s_q, h_q, generator=generator) * 3).to(device)
    lse_acc[1, 0, :2] = float("-inf")  # rows that saw no key in one split of request 0
    lse_acc[splits[0]:splits[0] + splits[1], :, 1] = float("-inf")  # a row of request 1 that saw none at all
    # a row of request 1 that sees its first key past the first round of an online merge (16 splits a round at
    # most), and rows whose largest LSE comes last or in a round's last four lanes: the running shift moves from
    # -inf, and up; 2^200 overflows fp32, so a lane the shift missed would show
    lse_acc[splits[0]:splits[0] + min(splits[1], 17), :, 2] = float("-inf")
    lse_acc[splits[0] + splits[1] - 1, :, 3] = 200.0
    lse_acc[splits[0] + min(splits[1] - 1, 13), :, 4] = 200.0
    out = torch.full((b, s_q, h_q, d_v), 7.0, dtype=torch.float16, device=device)  # bf16 rounding alone nears the cos bound
    lse = torch.full((b, h_q, s_q), 7.0, dtype=torch.float32, device=device)
    combine.combine_splits(out, lse, o_acc, lse_acc, offsets, col_chunks=col_chunks)
    for i, n in enumerate(splits):
        if n == 1:
            assert (out[i] == 7.0).all() and (lse[i] == 7.0).all(), "a one-split request is the split kernel's"
            continue
        part = slice(int(offsets[i]), int(offsets[i + 1]))
        lse2 = torch.logsumexp(lse_acc[part].double() * torch.log(torch.tensor(2.0)), dim=0) / torch.log(
            torch.tensor(2.0))  # [s_q, h_q], base 2
        weight = torch.exp2(lse_acc[part].double() - lse2)  # [n, s_q, h_q]
        want = (weight[..., None] * o_acc[part].double()).sum(0).nan_to_num(0.0)
        want_lse = (lse2 * torch.log(torch.tensor(2.0))).where(lse2 > float("-inf"), float("inf"))
        check_close(f"out of request {i}", out[i], want.float(), TOL[("dense_decode", "out")])
        check_close(f"lse of request {i}", lse[i], want_lse.transpose(0, 1).float(), TOL[("dense_decode", "lse")])


def test_combine_kernel_width_follows_the_batch(monkeypatch):
    """Small batches spread a row tile's output dims over programs until there are four programs per SM (at most
    eight, chunks of at least 32 dims); large ones take chunks of at most 256 dims (two programs a 512-dim row
    tile); CPU tensors keep a row tile to a program."""
    from openmla.ops.combine import COMBINE_MAX_COL_CHUNKS, combine_col_chunks

    gpu = torch.device("cuda")  # its SM count from OPENMLA_NUM_SMS: no GPU needed
    monkeypatch.setenv("OPENMLA_NUM_SMS", "132")
    # row programs = requests x 8-row tiles: b=1 at h_q=128 is 16, b=16 is 256, b=128 is 2048
    assert [combine_col_chunks(rows, 512, gpu) for rows in (16, 64, 128, 256, 264, 528, 2048)] == [
        COMBINE_MAX_COL_CHUNKS, 8, 8, 4, 2, 2, 2]
    assert combine_col_chunks(2048, 256, gpu) == 1, "a 256-dim row tile is one program"
    assert combine_col_chunks(1, 64, gpu) == 2, "chunks of at least 32 dims"
    monkeypatch.setenv("OPENMLA_NUM_SMS", "16")
    assert combine_col_chunks(16, 512, gpu) == 4, "the count follows the card's SMs"
    assert combine_col_chunks(16, 512, torch.device("cpu")) == 1, "the interpreter: one program a row tile"
    from openmla._runtime import InvalidArgumentError
    from openmla.ops.combine import combine_splits

    out = torch.empty(1, 1, 8, 64)
    with pytest.raises(InvalidArgumentError, match="col_chunks=3"):
        combine_splits(out, torch.empty(1, 8, 1), torch.empty(2, 1, 8, 64), torch.empty(2, 1, 8),
                       torch.tensor([0, 2], dtype=torch.int32), col_chunks=3)


def test_combine_kernel_is_a_programmatic_dependent_on_sm90_only(monkeypatch):
    """The combine kernel launches with PDL (and waits on griddepcontrol) on cards of SM90 or later, by their own
    capability (OPENMLA_ARCH does not make an A100 run an SM90 instruction), never under the interpreter or on CPU
    tensors, and not when COMBINE_PDL is off; the launch carries the flag and the kernel the matching constexpr."""
    from openmla.ops import combine

    monkeypatch.setattr(combine, "interpret_mode", lambda: False)
    cuda = torch.device("cuda", 0)
    for capability, expected in (((9, 0), True), ((10, 0), True), ((8, 0), False), ((8, 9), False)):
        monkeypatch.setattr(combine, "_device_capability", lambda index, c=capability: c)
        assert combine.combine_pdl(cuda) is expected, capability
    monkeypatch.setenv("OPENMLA_ARCH", "sm_90")
    assert combine.combine_pdl(cuda) is False  # still the (8, 9) card
    assert combine.combine_pdl(torch.device("cpu")) is False
    monkeypatch.setattr(combine, "_device_capability", lambda index: (9, 0))
    monkeypatch.setattr(combine, "COMBINE_PDL", False)
    assert combine.combine_pdl(cuda) is False
    monkeypatch.setattr(combine, "COMBINE_PDL", True)
    launches = []
    monkeypatch.setattr(combine, "launch", lambda kernel, grid, *args, **kw: launches.append(kw))
    monkeypatch.setattr(combine, "combine_pdl", lambda device: True)
    out, lse = torch.empty(2, 1, 4, 512), torch.empty(2, 4, 1)
    combine.combine_splits(out, lse, torch.empty(6, 1, 4, 512), torch.empty(6, 1, 4), torch.zeros(3, dtype=torch.int32))
    monkeypatch.setattr(combine, "combine_pdl", lambda device: False)
    combine.combine_splits(out, lse, torch.empty(6, 1, 4, 512), torch.empty(6, 1, 4), torch.zeros(3, dtype=torch.int32))
    assert launches[0]["PDL"] is True and launches[0]["launch_pdl"] is True
    assert launches[1]["PDL"] is False and "launch_pdl" not in launches[1]


@pytest.mark.skipif(not CAN_RUN_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("device", HERE_AND_GPU)
@pytest.mark.parametrize("h_q, sms", [(4, 30), (40, 30)])  # 16-row tiles; 64-row tiles (2 per KV head)
def test_fused_combine_resets_its_counters(device, h_q, sms, monkeypatch, generator):
    """The last program of a split request merges its partials and puts its arrival counter back to 0, so
    the workspace a FlashMLASchedMeta shares across the layers of a step serves every layer."""
    monkeypatch.setenv("OPENMLA_NUM_SMS", str(sms))
    d, dv = (576, 512) if device == "cuda" else (64, 32)  # on a GPU, MLA's dims: Hopper's Gluon kernels serve them
    inputs = make_dense_decode_inputs(3, 2, 200, h_q, 1, d, dv, 16, torch.float16, device, varlen=True,
                                      generator=generator, causal=True)
    meta, _ = openmla.get_mla_metadata()
    for _layer in range(3):
        layer = dict(inputs, q=torch.randn(inputs["q"].shape, generator=generator).to(inputs["q"]))
        out, lse = openmla.flash_mla_with_kvcache(layer["q"], layer["k_cache"], layer["block_table"],
                                                  layer["cache_seqlens"], dv, meta, causal=True,
                                                  softmax_scale=layer["softmax_scale"])
        check_against_reference(layer, out, lse)
        assert int(meta.workspace[2].count_nonzero()) == 0, "an arrival counter was left set"
    assert int((meta.num_splits.diff() > 1).sum()) >= 2, "the plan should cut requests across pieces"


@pytest.mark.skipif(not CAN_RUN_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
def test_sched_meta_is_planned_once_and_reused(generator):
    inputs = make_dense_decode_inputs(2, 1, 50, 4, 1, 64, 32, 16, torch.float16, DEVICE, varlen=True,
                                      generator=generator)
    meta, none = openmla.get_mla_metadata()
    assert none is None and not meta.have_initialized
    args = (inputs["q"], inputs["k_cache"], inputs["block_table"], inputs["cache_seqlens"], 32, meta)
    out1, lse1 = openmla.flash_mla_with_kvcache(*args, backend="triton")
    assert meta.have_initialized and meta.tile_scheduler_metadata.shape[1] == 8
    planned = meta.tile_scheduler_metadata
    out2, lse2 = openmla.flash_mla_with_kvcache(*args, backend="triton")
    assert meta.tile_scheduler_metadata is planned
    assert torch.equal(out1, out2) and torch.equal(lse1, lse2)
    check_against_reference(inputs, out1, lse1)


def test_split_kernels_share_one_argument_list(generator):
    """The Triton and Gluon split kernels take the same arguments, built in one place (splitkv_args); the
    Triton kernel alone then takes the two per-tensor FP8 descale pointers and its two TMA descriptors (None
    without TMA), which its launcher appends."""
    import inspect

    from openmla._runtime import gluon_available
    from openmla.ops.decode_dense import _dense_decode_splitkv_kernel, splitkv_args

    inputs = make_dense_decode_inputs(2, 1, 10, 4, 1, 64, 32, 16, torch.float16, "cpu", generator=generator)
    q, k_cache = inputs["q"], inputs["k_cache"]
    scratch = torch.empty(1)
    out, lse = torch.empty(2, 1, 4, 32, dtype=q.dtype), torch.empty(2, 4, 1)
    args = splitkv_args(q, k_cache, inputs["block_table"], inputs["cache_seqlens"], scratch, scratch,
                        out, lse, (scratch, scratch, scratch), 1, 0.1)
    kernels = [_dense_decode_splitkv_kernel]
    if gluon_available():
        from openmla.ops.gluon.decode_dense_sm90 import _dense_decode_sm90_kernel

        kernels.append(_dense_decode_sm90_kernel)
    runtime_params = [[n for n in inspect.signature(k.fn).parameters if not n.isupper()] for k in kernels]
    triton_params = runtime_params[0]
    assert triton_params[len(args):] == ["descale_q_ptr", "descale_k_ptr", "k_desc_v", "k_desc_pe"]
    shared = triton_params[: len(args)]
    assert all(p == shared for p in runtime_params[1:])


def test_reference_backend_serves_cpu_calls(generator):
    inputs = make_dense_decode_inputs(2, 2, 30, 4, 2, 64, 32, 8, torch.float32, "cpu", varlen=True,
                                      generator=generator, causal=True)
    out, lse = run_openmla(inputs, backend="reference")
    ref_out, ref_lse = reference.dense_decode(**inputs)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
    assert openmla.explain(inputs["q"], inputs["k_cache"], backend="reference").backend == "reference"


# ------------------------------------------------------------------------------------------------
# GPU tier
# ------------------------------------------------------------------------------------------------

H_PAIRS = [(h_q, h_kv) for h_q in (1, 3, 9, 63, 64, 126, 128) for h_kv in (1, 2, 3, 8) if h_q % h_kv == 0]
MATRIX = [
    pytest.param(b, s_q, s_k, h_q, h_kv, varlen, causal, backend,
                 id=f"{backend}-b{b}-sq{s_q}-sk{s_k}-h{h_q}-hkv{h_kv}-var{int(varlen)}-causal{int(causal)}")
    for backend in ("auto", "triton")
    for b, s_q, s_k, (h_q, h_kv), varlen, causal in itertools.product(
        (1, 2, 6, 64), (1, 2, 4), (20, 140, 4096), H_PAIRS, (False, True), (False, True))
    # the whole matrix through the automatic choice (Gluon on Hopper), a quarter of it through Triton
    if backend == "auto" or (b in (1, 64) and s_k in (20, 4096))
]


def _flash_mla_run(inputs: dict):
    meta, _ = _flash_mla.get_mla_metadata()
    return _flash_mla.flash_mla_with_kvcache(
        inputs["q"], inputs["k_cache"], inputs["block_table"], inputs["cache_seqlens"], inputs["head_dim_v"], meta,
        softmax_scale=inputs["softmax_scale"], causal=inputs["causal"], use_legacy=True)


@pytest.mark.gpu
@pytest.mark.parametrize("b,s_q,s_k,h_q,h_kv,varlen,causal,backend", MATRIX)
def test_flashmla_dense_matrix(b, s_q, s_k, h_q, h_kv, varlen, causal, backend, generator):
    inputs = make_dense_decode_inputs(b, s_q, s_k, h_q, h_kv, 576, 512, 64, torch.bfloat16, "cuda",
                                      varlen=varlen, generator=generator, causal=causal)
    poison_cuda_cache(1 << 28)  # fresh outputs land on NaN-filled memory: every element must be written
    out, lse = run_openmla(inputs, backend=backend)
    torch.cuda.synchronize()
    check_against_reference(inputs, out, lse)
    if _flash_mla is not None:
        fm_out, fm_lse = _flash_mla_run(inputs)
        check_close("out vs FlashMLA", out, fm_out.float(), TOL[("dense_decode", "out")])
        check_close("lse vs FlashMLA", lse, fm_lse, TOL[("dense_decode", "lse")])


SM90_DIRECT = [
    pytest.param(b, s_q, s_k, h_q, h_kv, page, d, dtype, parts, id=f"b{b}-sq{s_q}-sk{s_k}-h{h_q}-hkv{h_kv}-p{page}-d{d}-"
                 f"{str(dtype)[6:]}-parts{parts}")
    for b, s_q, s_k, h_q, h_kv, page, d, dtype, parts in [
        (1, 1, 20, 64, 1, 64, 576, torch.bfloat16, 132),
        (2, 2, 140, 128, 1, 64, 576, torch.bfloat16, 132),
        (6, 4, 4096, 63, 3, 64, 576, torch.bfloat16, 7),  # 84 rows, 2 row tiles, requests cut into pieces
        (64, 1, 4096, 128, 1, 64, 576, torch.bfloat16, 66),
        (64, 2, 4096, 126, 2, 16, 576, torch.float16, 33),
        (6, 1, 700, 128, 1, 1, 512, torch.bfloat16, 5),
        (6, 2, 700, 64, 1, 61, 576, torch.float16, 11),
        (9, 1, 3000, 40, 1, 128, 576, torch.bfloat16, 3),  # one piece walks several requests
    ]
]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or torch.cuda.get_device_capability() != (9, 0), reason="needs an sm_90 GPU")
@pytest.mark.parametrize("layout", ["rows", "ws", "ws-overlap", "ws-loader-waits", "ws-softmax-only", "ws-tma",
                                    "ws-softmax-only-tma", "ws-tma-box", "ws-softmax-only-tma-box",
                                    "ws-softmax-only-tma-box-one-alloc", "ws-softmax-only-tma-box-p-whole",
                                    "ws-softmax-only-tma-box-lag", "ws-softmax-only-tma-box-lag-halves"])
@pytest.mark.parametrize("b,s_q,s_k,h_q,h_kv,page,d,dtype,parts", SM90_DIRECT)
def test_sm90_row_kernels_direct(layout, b, s_q, s_k, h_q, h_kv, page, d, dtype, parts, generator):
    """Each 64-row Hopper kernel, whatever the dispatcher would pick, on plans from one piece per request
    to pieces spanning several requests, with zero lengths, page sizes that do not divide 64, fp16."""
    from openmla.ops.gluon.decode_dense_sm90 import dense_decode_sm90_fwd
    from openmla.ops.gluon.decode_dense_sm90_ws import dense_decode_sm90_ws_fwd
    from openmla.ops.schedule import plan_splitkv

    inputs = make_dense_decode_inputs(b, s_q, s_k, h_q, h_kv, d, 512, page, dtype, "cuda", varlen=True,
                                      zero_len_frac=0.2, generator=generator, causal=True)
    q, lens = inputs["q"], inputs["cache_seqlens"]
    sched, splits = plan_splitkv(lens, parts)
    args = (q, inputs["k_cache"], inputs["block_table"], lens, 512, sched, splits, d ** -0.5, True)
    poison_cuda_cache(1 << 28)
    if layout == "rows":
        out, lse = dense_decode_sm90_fwd(*args, layout="rows", fused_combine=False)
    else:
        out, lse = dense_decode_sm90_ws_fwd(*args, overlap=layout == "ws-overlap",
                                            async_arrive=layout != "ws-loader-waits",
                                            softmax_only=layout.startswith("ws-softmax-only"),
                                            tma_k="-tma" in layout, box_ready="-box" in layout,
                                            box_allocs=not layout.endswith("-one-alloc"),
                                            p_halves=not layout.endswith("-p-whole"),
                                            lag="-lag" in layout, lag_halves=layout.endswith("-lag-halves"))
    torch.cuda.synchronize()
    check_against_reference(dict(inputs, softmax_scale=d ** -0.5), out, lse)


def test_sm90_lag_rule(monkeypatch, generator):
    """The right output warpgroup runs a tile behind (``LAG``) from ``LAG_MIN_ROWS`` query rows per KV head over whole
    TMA tiles of (576, 512) dims (s_q=2, h_q=128: 256 rows), not below (s_q=1: 128), not when asked off, and never
    without TMA tiles (pages of 16 keys); P is then handed over whole, and each value half comes as one box
    (``LAG_HALVES``) unless asked otherwise. Launches recorded on CPU tensors, not run."""
    from openmla._runtime import gluon_available

    if not gluon_available():
        pytest.skip("triton's Gluon is not importable here")
    from openmla.ops.gluon import decode_dense_sm90_ws as ws
    from openmla.ops.schedule import plan_splitkv

    launches = record_launches(monkeypatch, ws, "_dense_decode_sm90_ws_kernel")
    monkeypatch.setattr(ws, "combine_splits", lambda *args, **kw: None)
    cases = ((2, 64, None, None), (1, 64, None, None), (2, 64, False, None), (2, 16, None, None), (1, 64, True, None),
             (2, 64, None, False))
    for s_q, page, lag, lag_halves in cases:
        inputs = make_dense_decode_inputs(2, s_q, 300, 128, 1, 576, 512, page, torch.bfloat16, "cpu",
                                          generator=generator, causal=True)
        sched, splits = plan_splitkv(inputs["cache_seqlens"], 8)
        ws.dense_decode_sm90_ws_fwd(inputs["q"], inputs["k_cache"], inputs["block_table"], inputs["cache_seqlens"],
                                    512, sched, splits, 576 ** -0.5, True, softmax_only=True, lag=lag,
                                    lag_halves=lag_halves)
    assert ws.LAG_MIN_ROWS == 256
    assert [launch.kwargs["LAG"] for launch in launches] == [True, False, False, False, True, True]
    assert [launch.kwargs["LAG_HALVES"] for launch in launches] == [ws.LAG_HALVES, False, False, False, ws.LAG_HALVES,
                                                                    False]
    assert [launch.kwargs["k_half_desc"] is not None for launch in launches] == [
        launch.kwargs["LAG_HALVES"] for launch in launches]
    assert not any(launch.kwargs["LAG"] and launch.kwargs["P_HALVES"] for launch in launches)


SM90_SMALL_DIRECT = [
    pytest.param(b, s_q, s_k, h_q, h_kv, page, d, dtype, parts, id=f"b{b}-sq{s_q}-sk{s_k}-h{h_q}-hkv{h_kv}-p{page}-d{d}-"
                 f"{str(dtype)[6:]}-parts{parts}")
    for b, s_q, s_k, h_q, h_kv, page, d, dtype, parts in [
        (1, 1, 20, 16, 1, 64, 576, torch.bfloat16, 132),
        (4, 2, 700, 16, 1, 128, 576, torch.bfloat16, 9),  # 32 rows, requests cut into pieces
        (64, 1, 4096, 32, 1, 64, 576, torch.float16, 132),
        (6, 1, 3000, 16, 1, 64, 512, torch.bfloat16, 3),  # one piece walks several requests
        (6, 2, 700, 12, 1, 61, 576, torch.float16, 11),  # pages that split tiles: cp.async only
        (5, 1, 900, 32, 2, 64, 576, torch.bfloat16, 7),  # two KV heads: cp.async only
    ]
]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or torch.cuda.get_device_capability() != (9, 0), reason="needs an sm_90 GPU")
@pytest.mark.parametrize("tma_k", [True, False], ids=["tma-k", "cp-async"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "combine-kernel"])
@pytest.mark.parametrize("b,s_q,s_k,h_q,h_kv,page,d,dtype,parts", SM90_SMALL_DIRECT)
def test_sm90_small_heads_direct(tma_k, fused, b, s_q, s_k, h_q, h_kv, page, d, dtype, parts, generator):
    """The small-head Hopper kernel with K tiles by TMA (where the cache allows it) and by cp.async only, on
    plans from one piece per request to pieces spanning several, with zero lengths and NaN past them."""
    from openmla.ops.gluon.decode_dense_sm90_small_heads import dense_decode_sm90_small_heads_fwd
    from openmla.ops.schedule import plan_splitkv

    inputs = make_dense_decode_inputs(b, s_q, s_k, h_q, h_kv, d, 512, page, dtype, "cuda", varlen=True,
                                      zero_len_frac=0.2, generator=generator, causal=True)
    q, lens = inputs["q"], inputs["cache_seqlens"]
    sched, splits = plan_splitkv(lens, parts)
    poison_cuda_cache(1 << 28)
    out, lse = dense_decode_sm90_small_heads_fwd(q, inputs["k_cache"], inputs["block_table"], lens, 512, sched,
                                                 splits, d ** -0.5, True, fused_combine=fused, tma_k=tma_k)
    torch.cuda.synchronize()
    check_against_reference(dict(inputs, softmax_scale=d ** -0.5), out, lse)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "triton"])
@pytest.mark.parametrize("h_q,h_kv", H_PAIRS)
@pytest.mark.parametrize("causal", [False, True])
def test_zero_length_corner(h_q, h_kv, causal, backend, generator):
    """FlashMLA's corner case: b=128, s_q=2, s_k=4096 varlen with some lengths 0."""
    inputs = make_dense_decode_inputs(128, 2, 4096, h_q, h_kv, 576, 512, 64, torch.bfloat16, "cuda", varlen=True,
                                      zero_len_frac=0.3, generator=generator, causal=causal)
    out, lse = run_openmla(inputs, api="old", backend=backend)
    check_against_reference(inputs, out, lse)
    zero = inputs["cache_seqlens"] == 0
    assert torch.all(out[zero] == 0) and torch.all(torch.isposinf(lse[zero]))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "triton"])
@pytest.mark.parametrize("page", [1, 16, 64, 128, 61])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("h_q,h_kv,s_q", [(128, 1, 1), (16, 1, 2), (64, 8, 4), (126, 3, 1)])
@pytest.mark.parametrize("d", [576, 512])
def test_page_sizes_and_dtypes(page, dtype, h_q, h_kv, s_q, d, backend, generator):
    inputs = make_dense_decode_inputs(6, s_q, 700, h_q, h_kv, d, 512, page, dtype, "cuda", varlen=True,
                                      zero_len_frac=0.2, generator=generator, causal=True)
    out, lse = run_openmla(inputs, backend=backend)
    check_against_reference(inputs, out, lse)


@pytest.mark.gpu
@pytest.mark.parametrize("which", ["q", "k_cache"])
@pytest.mark.parametrize("how", ["base", "stride"])
@pytest.mark.parametrize("h_q, s_q", [(128, 1), (16, 2)])
def test_misaligned_tensors_run_correctly(which, how, h_q, s_q, monkeypatch, generator):
    """q or the cache as a view that is not 16-byte aligned (base one element off, or rows padded by one element):
    the call warns (on Hopper, where it keeps the Gluon kernels away) and matches the reference, instead of
    failing to compile a kernel built for aligned rows."""
    inputs = make_dense_decode_inputs(5, s_q, 900, h_q, 1, 576, 512, 64, torch.bfloat16, "cuda", varlen=True,
                                      generator=generator, causal=True)
    inputs[which] = misaligned_copy(inputs[which], how)
    out, lse = run_expecting_alignment_fallback(lambda: run_openmla(inputs), monkeypatch)
    assert openmla.explain(inputs["q"], inputs["k_cache"], head_dim_v=512).backend == "triton"
    check_against_reference(inputs, out, lse)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_cuda_graph_capture_and_replay(backend, generator):
    """A whole decode step, planning included, is captured once and replayed on new lengths."""
    b, s_q, h_q = 8, 2, 128
    inputs = make_dense_decode_inputs(b, s_q, 1000, h_q, 1, 576, 512, 64, torch.bfloat16, "cuda", varlen=True,
                                      generator=generator, causal=True)
    q, k_cache, bt, lens = inputs["q"], inputs["k_cache"], inputs["block_table"], inputs["cache_seqlens"]
    static_lens = lens.clone()

    def step():
        meta, _ = openmla.get_mla_metadata()
        return openmla.flash_mla_with_kvcache(q, k_cache, bt, static_lens, 512, meta, causal=True, backend=backend)

    graph, (g_out, g_lse) = capture_cuda_graph(step)
    for trial in range(3):
        # any length up to each sequence's own: the block table has no pages past that
        new_lens = (torch.rand(b, generator=generator) * (lens.cpu() + 1)).floor().to(torch.int32)
        static_lens.copy_(new_lens.cuda())
        graph.replay()
        torch.cuda.synchronize()
        case = dict(inputs, cache_seqlens=static_lens.clone())
        check_against_reference(case, g_out, g_lse)


@pytest.mark.gpu
@pytest.mark.skipif(_flash_mla is None, reason="FlashMLA anchor (sgl-flash-mla) not importable on an SM90 GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_equal_to_flashmla_standard_shapes(dtype, backend, generator):
    for b, s_q, s_k, h_q in [(128, 1, 4096, 128), (128, 2, 4096, 128), (128, 1, 8192, 16), (32, 1, 8192, 64)]:
        inputs = make_dense_decode_inputs(b, s_q, s_k, h_q, 1, 576, 512, 64, dtype, "cuda", varlen=True,
                                          generator=generator, causal=True, softmax_scale=192**-0.5)
        out, lse = run_openmla(inputs, backend=backend)
        fm_out, fm_lse = _flash_mla_run(inputs)
        check_close("out vs FlashMLA", out, fm_out.float(), TOL[("dense_decode", "out")])
        check_close("lse vs FlashMLA", lse, fm_lse, TOL[("dense_decode", "lse")])


def test_sm90_ws_launcher_interior_softmax_choice(monkeypatch, generator):
    """The warp-specialized launcher asks for the softmax that skips the mask on whole tiles (``INTERIOR``) only in
    the four-warpgroup form with a positive scale over 16-bit keys and no causal mask: its max is taken over
    unscaled scores, which a negative scale would turn into a min, FP8 codes carry descales the host cannot see,
    and the kernel builds it without the causal mask. Launches recorded on CPU tensors, not run."""
    from openmla._runtime import gluon_available

    if not gluon_available():
        pytest.skip("triton's Gluon is not importable here")
    from openmla.ops.gluon import decode_dense_sm90_ws as ws
    from openmla.ops.schedule import plan_splitkv

    launches = record_launches(monkeypatch, ws, "_dense_decode_sm90_ws_kernel")
    monkeypatch.setattr(ws, "combine_splits", lambda *args, **kw: None)
    inputs = make_dense_decode_inputs(2, 1, 300, 128, 1, 576, 512, 64, torch.bfloat16, "cpu", generator=generator)
    sched, splits = plan_splitkv(inputs["cache_seqlens"], 8)
    args = (inputs["q"], inputs["k_cache"], inputs["block_table"], inputs["cache_seqlens"], 512, sched, splits)
    ws.dense_decode_sm90_ws_fwd(*args, 0.1, False, softmax_only=True)
    ws.dense_decode_sm90_ws_fwd(*args, -0.1, False, softmax_only=True)
    ws.dense_decode_sm90_ws_fwd(*args, 0.1, False, softmax_only=False)
    ws.dense_decode_sm90_ws_fwd(*args, 0.1, False, softmax_only=True, interior_softmax=False)
    codes = inputs["k_cache"].to(torch.float8_e4m3fn)
    ws.dense_decode_sm90_ws_fwd(inputs["q"], codes, *args[2:], 0.1, False, softmax_only=True,
                                descale_k=torch.ones(1))
    mtp = make_dense_decode_inputs(2, 2, 300, 64, 1, 576, 512, 64, torch.bfloat16, "cpu", generator=generator)
    ws.dense_decode_sm90_ws_fwd(mtp["q"], mtp["k_cache"], mtp["block_table"], mtp["cache_seqlens"], 512, sched, splits,
                                0.1, True, softmax_only=True)  # causal MTP: built with the mask
    ws.dense_decode_sm90_ws_fwd(mtp["q"], mtp["k_cache"], mtp["block_table"], mtp["cache_seqlens"], 512, sched, splits,
                                0.1, False, softmax_only=True)
    assert [launch.kwargs["INTERIOR"] for launch in launches] == [ws.INTERIOR_SOFTMAX, False, False, False, False,
                                                                  False, ws.INTERIOR_SOFTMAX]
    assert [launch.kwargs["CAUSAL"] for launch in launches[-2:]] == [True, False]
    # P in halves only where the interior softmax runs, and not when asked for P whole
    assert [launch.kwargs["P_HALVES"] for launch in launches] == [
        ws.INTERIOR_SOFTMAX and ws.P_HALVES, False, False, False, False, False, ws.INTERIOR_SOFTMAX and ws.P_HALVES]
    launches.clear()
    ws.dense_decode_sm90_ws_fwd(*args, 0.1, False, softmax_only=True, interior_softmax=True, p_halves=False)
    ws.dense_decode_sm90_ws_fwd(*args, 0.1, False, softmax_only=True, interior_softmax=True, p_halves=True)
    assert [launch.kwargs["P_HALVES"] for launch in launches] == [False, True]
