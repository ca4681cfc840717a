"""Token-sparse MLA decoding: the reference against a brute force, the Triton kernel against the reference.

CPU tier: the fp32 reference against :func:`helpers.brute_force_sparse_decode` (float64, entry by entry)
and its conventions; the Triton kernel under the interpreter on tiny shapes, over fp16 caches and the
V3.2 FP8 cache (fp16 q: triton 3.6's interpreter computes ``tl.dot`` of two bf16 operands wrongly),
against the reference run on the *dequantized* cache, so only the kernel's own error is measured.
GPU tier (``-m gpu``): FlashMLA's sparse-decode matrix and corner cases against the reference, and
against FlashMLA itself (``sgl-flash-mla``, legacy SM90 kernels) where it is importable.

Tolerances are FlashMLA's (``TOL[("sparse_decode", ...)]``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
from helpers import (
    TOL,
    Tol,
    brute_force_sparse_decode,
    check_close,
    dequantized,
    interpret_mode,
    invalid_index_candidates,
    make_sparse_decode_inputs,
    poison_cuda_cache,
    record_launches,
)

import openmla
from openmla import reference
from openmla.kvcache import dequantize_model1, model1_nominal_view, quantize_model1

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
CAN_RUN_TRITON = HAS_CUDA or interpret_mode()

TOL_FP32_OUT = Tol(2e-6, 1e-5, 1e-10)  # fp32 reference vs float64 brute force: fp32 rounding only
TOL_FP32_LSE = Tol(2e-6, 1e-6, None)
TOL_OUT = TOL[("sparse_decode", "out")]
TOL_LSE = TOL[("sparse_decode", "lse")]

try:  # the FlashMLA anchor, for differential tests on the GPU (its legacy kernels serve SM90)
    import flash_mla as _flash_mla

    if not HAS_CUDA or torch.cuda.get_device_capability() != (9, 0):
        _flash_mla = None
except Exception:
    _flash_mla = None


def check_against_reference(inputs: dict, out: torch.Tensor, lse: torch.Tensor, what: str = "") -> None:
    """The kernel's (out, lse) against the reference on the same inputs, FP8 caches read back first."""
    ref_out, ref_lse = reference.sparse_decode(**dequantized(inputs))
    q = inputs["q"]
    assert out.shape == ref_out.shape and out.dtype == q.dtype, (out.shape, out.dtype)
    assert lse.shape == ref_lse.shape and lse.dtype == torch.float32
    check_close(f"out{what}", out, ref_out, TOL_OUT)
    check_close(f"lse{what}", lse, ref_lse, TOL_LSE)


def _sync() -> None:
    if HAS_CUDA:
        torch.cuda.synchronize()


def run_api(inputs: dict, backend: str = "auto", meta=None):
    """``flash_mla_with_kvcache`` as a FlashMLA v3 caller writes it (no block table, no lengths)."""
    return openmla.flash_mla_with_kvcache(
        inputs["q"], inputs["k_cache"], None, None, inputs["head_dim_v"], meta,
        softmax_scale=inputs["softmax_scale"], indices=inputs["indices"], attn_sink=inputs["attn_sink"],
        extra_k_cache=inputs["extra_k_cache"], extra_indices_in_kvcache=inputs["extra_indices_in_kvcache"],
        topk_length=inputs["topk_length"], extra_topk_length=inputs["extra_topk_length"], backend=backend,
    )


# --------------------------------------------------------------------------------------------------
# CPU tier: the reference against a float64 brute force, and its conventions
# --------------------------------------------------------------------------------------------------

# (b, s_q, h_q, s_k, topk, page, d_qk, d_v, fp8, options)
_BRUTE_CASES = [
    pytest.param(1, 1, 1, 1, 1, 1, 64, 32, False, {}, id="one-token"),
    pytest.param(2, 3, 3, 20, 7, 2, 64, 32, False, dict(invalid_frac=0.3), id="invalid-values"),
    pytest.param(3, 2, 4, 30, 9, 61, 64, 64, False, dict(topk_length=True, sink=True), id="len-sink-dv=d"),
    pytest.param(3, 2, 3, 20, 7, 3, 64, 32, False,
                 dict(topk_length=True, extra=(9, 5, 2), extra_topk_length=True, invalid_frac=0.2), id="extra"),
    pytest.param(2, 1, 2, 5, 12, 2, 64, 32, False, dict(all_invalid_rows=1), id="topk-past-length"),
    pytest.param(3, 2, 3, 40, 6, 5, 576, 512, True,
                 dict(invalid_frac=0.2, sink=True, topk_length=True, extra=(7, 4, 3), pad_blocks=True), id="v32-fp8"),
]


@pytest.mark.parametrize("b, s_q, h_q, s_k, topk, page, d_qk, d_v, fp8, options", _BRUTE_CASES)
def test_reference_matches_brute_force(b, s_q, h_q, s_k, topk, page, d_qk, d_v, fp8, options, generator):
    inputs = make_sparse_decode_inputs(b, s_q, h_q, s_k, topk, page, d_qk, d_v, torch.float32, fp8=fp8,
                                       generator=generator, softmax_scale=d_qk**-0.55, **options)
    out, lse = reference.sparse_decode(**inputs)  # FP8 caches read by the reference itself
    assert out.dtype == torch.float32 and out.shape == (b, s_q, h_q, d_v) and lse.shape == (b, h_q, s_q)
    bf_out, bf_lse = brute_force_sparse_decode(**dequantized(inputs))
    check_close("out", out, bf_out.float(), TOL_FP32_OUT)
    check_close("lse", lse, bf_lse.float(), TOL_FP32_LSE)


def test_reference_reads_model1_caches(generator):
    """The reference also serves the MODEL1 (V4) FP8 layout: block-split pages read through the nominal view."""
    inputs = make_sparse_decode_inputs(2, 2, 3, 30, 6, 5, 512, 512, torch.float32, generator=generator,
                                       invalid_frac=0.2, extra=(9, 4, 3))
    for key in ("k_cache", "extra_k_cache"):
        kv = inputs[key]
        inputs[key] = model1_nominal_view(quantize_model1(kv), kv.shape[1])
    out, lse = reference.sparse_decode(**inputs)
    plain = dict(inputs, k_cache=dequantize_model1(inputs["k_cache"]),
                 extra_k_cache=dequantize_model1(inputs["extra_k_cache"]))
    bf_out, bf_lse = brute_force_sparse_decode(**plain)
    check_close("out", out, bf_out.float(), TOL_FP32_OUT)
    check_close("lse", lse, bf_lse.float(), TOL_FP32_LSE)


def test_reference_entry_point_routes_indices_to_sparse(generator):
    inputs = make_sparse_decode_inputs(2, 2, 3, 20, 5, 3, 64, 32, torch.float32, generator=generator, sink=True,
                                       topk_length=True, extra=(9, 3, 2))
    args = dict(inputs, block_table=None, cache_seqlens=None)
    out, lse = reference.flash_mla_with_kvcache(**args)
    ref_out, ref_lse = reference.sparse_decode(**inputs)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
    with pytest.raises(openmla.InvalidArgumentError, match="causal: got True"):
        reference.flash_mla_with_kvcache(**args, causal=True)
    with pytest.raises(openmla.InvalidArgumentError, match="attn_sink, .*: given without indices"):
        reference.flash_mla_with_kvcache(**dict(args, indices=None))


def _tiny(generator, **kw) -> dict:
    args = dict(b=2, s_q=2, h_q=3, s_k=20, topk=6, page_block_size=4, d_qk=64, d_v=32, dtype=torch.float32,
                generator=generator)
    args.update(kw)
    return make_sparse_decode_inputs(**args)


def test_invalid_rows_give_zero_out_and_inf_lse(generator):
    inputs = _tiny(generator, topk_length=True, b=3, sink=True)
    num_slots = inputs["k_cache"].shape[0] * inputs["k_cache"].shape[1]
    inputs["topk_length"][2] = 6
    inputs["indices"][2, 1] = torch.tensor(invalid_index_candidates(num_slots) + (-7,), dtype=torch.int32)
    out, lse = reference.sparse_decode(**inputs)
    assert inputs["topk_length"][0] == 0  # request 0 attends to nothing
    assert torch.all(out[0] == 0) and torch.all(torch.isposinf(lse[0]))
    assert torch.all(out[2, 1] == 0) and torch.all(torch.isposinf(lse[2, :, 1]))
    assert torch.isfinite(lse[2, :, 0]).all()


def test_sink_scales_out_and_leaves_lse(generator):
    inputs = _tiny(generator, h_q=4)
    base_out, base_lse = reference.sparse_decode(**inputs)
    sink = torch.tensor([0.5, math.inf, -math.inf, -3.0])
    out, lse = reference.sparse_decode(**dict(inputs, attn_sink=sink))
    assert torch.equal(lse, base_lse)
    factor = 1 / (1 + torch.exp(sink[None, None, :] - base_lse.transpose(1, 2)))  # [b, s_q, h_q]
    torch.testing.assert_close(out, base_out * factor[..., None], rtol=1e-6, atol=1e-7)
    assert torch.all(out[:, :, 1] == 0) and torch.equal(out[:, :, 2], base_out[:, :, 2])


def test_extra_list_is_appended_without_dedup(generator):
    """Main list + extra list over the same cache equals one list holding both (duplicates counted twice)."""
    inputs = _tiny(generator)
    both = torch.cat([inputs["indices"], inputs["indices"][..., :4]], dim=-1)
    out1, lse1 = reference.sparse_decode(**dict(inputs, indices=both))
    out2, lse2 = reference.sparse_decode(**dict(inputs, extra_k_cache=inputs["k_cache"],
                                                extra_indices_in_kvcache=inputs["indices"][..., :4]))
    torch.testing.assert_close(out1, out2, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(lse1, lse2, rtol=1e-6, atol=1e-6)
    single, _ = reference.sparse_decode(**inputs)
    assert not torch.allclose(single, out1)  # the duplicates do count


def test_nan_in_valid_slots_propagates_and_in_invalid_slots_does_not(generator):
    inputs = _tiny(generator, b=1, s_q=1)
    idx = inputs["indices"][0, 0]
    cache = inputs["k_cache"]
    page = cache.shape[1]
    used = int(idx[idx >= 0][0])
    num_slots = cache.shape[0] * page
    unused = next(s for s in range(num_slots) if s not in set(idx.tolist()))
    cache[unused // page, unused % page] = float("nan")
    out, lse = reference.sparse_decode(**inputs)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    cache[used // page, used % page] = float("nan")
    out, _ = reference.sparse_decode(**inputs)
    assert torch.isnan(out).all()


# --------------------------------------------------------------------------------------------------
# CPU tier: the Triton kernel under the interpreter (tiny fp16 shapes)
# --------------------------------------------------------------------------------------------------

# (b, s_q, h_q, s_k, topk, page, d_qk, d_v, options); options add out-of-range indices, whole invalid rows,
# topk_length (with zeros), sinks with +-inf, an extra cache, padded pages
_KERNEL_CASES = [
    (2, 1, 1, 10, 1, 1, {}),
    (3, 3, 3, 30, 7, 2, dict(invalid_frac=0.3, all_invalid_rows=2, topk_length=True, sink=True)),
    (2, 1, 16, 90, 64, 61, dict(invalid_frac=0.1, sink=True, pad_blocks=True)),
    (3, 3, 20, 80, 70, 2, dict(invalid_frac=0.2, topk_length=True, sink=True, extra=(40, 7, 61),
                               extra_topk_length=True)),
    (2, 3, 16, 50, 7, 61, dict(extra=(30, 64, 1), all_invalid_rows=1)),
    (3, 1, 3, 200, 70, 1, dict(topk_length=True, sink=True, invalid_frac=0.05)),
    (2, 1, 20, 12, 64, 2, dict(all_invalid_rows=1, sink=True)),  # lists longer than the requests: -1 tails
    (2, 3, 1, 70, 70, 61, dict(sink=True, extra=(9, 1, 2), topk_length=True)),
]


KERNEL_PARAMS = [
    pytest.param(*case, id="b{}-sq{}-h{}-sk{}-topk{}-p{}-".format(*case[:6]) + ("-".join(case[6]) or "plain"))
    for case in _KERNEL_CASES
]


def _run_kernel(inputs: dict, fp8: bool, **kw):
    from openmla.ops.decode_sparse import sparse_decode_fwd

    args = {k: v for k, v in inputs.items() if k != "softmax_scale"}
    scale = inputs["softmax_scale"] or inputs["q"].shape[-1] ** -0.5
    return sparse_decode_fwd(**args, softmax_scale=scale, is_fp8=fp8, **kw)


@pytest.mark.skipif(not CAN_RUN_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("b, s_q, h_q, s_k, topk, page, options", KERNEL_PARAMS)
@pytest.mark.parametrize("splits", [1, 3])
def test_triton_fp16_cache_matches_reference_tiny(b, s_q, h_q, s_k, topk, page, options, splits, generator):
    d_qk, d_v = (576, 512) if h_q == 20 else (64, 32)
    inputs = make_sparse_decode_inputs(b, s_q, h_q, s_k, topk, page, d_qk, d_v, torch.float16, DEVICE,
                                       generator=generator, softmax_scale=d_qk**-0.55, **options)
    out, lse = _run_kernel(inputs, False, num_splits=splits)
    check_against_reference(inputs, out, lse)


def _v32_tile(h_q: int, feed: str):
    """The default V3.2 tile for ``h_q`` on an sm_90 part, fed by the pipeliner (``"pipelined"``, or
    ``"idx-ahead"`` with the list read a tile ahead) or by register prefetch (``"reg-prefetch"``); or the
    unchained 64-row tile (``"unchained"``)."""
    from openmla.ops.decode_sparse import sparse_decode_config

    cfg = sparse_decode_config(h_q, 512, 90, is_fp8=True)
    if feed == "unchained":  # the 64-row tile on two warpgroups, scores split by keys (rows past h_q masked)
        return dataclasses.replace(cfg, block_m=64, block_n=32, num_warps=8, num_stages=4, reg_prefetch=False,
                                   idx_ahead=True, unchained=True)
    if feed in ("pipelined", "idx-ahead"):
        return dataclasses.replace(cfg, reg_prefetch=False, num_stages=3, idx_ahead=feed == "idx-ahead")
    return dataclasses.replace(cfg, reg_prefetch=True, idx_ahead=False, num_stages=1)


@pytest.mark.skipif(not CAN_RUN_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("b, s_q, h_q, s_k, topk, page, options", KERNEL_PARAMS)
@pytest.mark.parametrize("splits", [1, 2])
@pytest.mark.parametrize("feed", ["pipelined", "idx-ahead", "reg-prefetch", "unchained"])
def test_triton_v32_fp8_cache_matches_reference_tiny(b, s_q, h_q, s_k, topk, page, options, splits, feed,
                                                     generator):
    """The V3.2 cache built from fp16 keys by ``quantize_v32``; the reference reads it back (dequantized).
    Both ways of feeding the products: the next tile's records by Triton's pipeliner or in registers."""
    inputs = make_sparse_decode_inputs(b, s_q, h_q, s_k, topk, page, 576, 512, torch.float16, DEVICE, fp8=True,
                                       generator=generator, softmax_scale=576**-0.55, **options)
    # e4m3 by fp8 instructions or by integer bit moves (the sm_80 path): both must read the same values
    out, lse = _run_kernel(inputs, True, num_splits=splits, fp8_native=splits == 1,
                           config=_v32_tile(h_q, feed))
    check_against_reference(inputs, out, lse)


def test_register_prefetch_needs_the_whole_v32_output():
    """The register-prefetch form holds the 512 output dims as four scale tiles: other shapes are refused."""
    from openmla.ops.decode_sparse import SparseDecodeConfig

    q = torch.zeros(1, 1, 16, 576, dtype=torch.bfloat16)
    idx = torch.zeros(1, 1, 8, dtype=torch.int32)
    sliced = SparseDecodeConfig(64, 32, 4, 1, 256, reg_prefetch=True)
    with pytest.raises(ValueError, match="reg_prefetch"):
        _run_kernel(dict(q=q, k_cache=torch.zeros(2, 4, 1, 656, dtype=torch.uint8), indices=idx, head_dim_v=512,
                         softmax_scale=None), True, config=sliced)
    with pytest.raises(ValueError, match="reg_prefetch"):
        _run_kernel(dict(q=q, k_cache=torch.zeros(2, 4, 1, 576, dtype=torch.bfloat16), indices=idx, head_dim_v=512,
                         softmax_scale=None), False, config=SparseDecodeConfig(64, 32, 4, 1, 512, reg_prefetch=True))


@pytest.mark.skipif(not CAN_RUN_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("fp8", [False, True], ids=["fp16-cache", "v32-fp8-cache"])
def test_triton_128_heads_slice_the_output(fp8, generator):
    """More than 64 heads: 128-row tiles with the output's 512 dims in two programs, split and unsplit."""
    inputs = make_sparse_decode_inputs(2, 1, 70, 40, 33, 3, 576, 512, torch.float16, DEVICE, fp8=fp8,
                                       generator=generator, invalid_frac=0.2, sink=True, topk_length=True)
    for splits in (1, 2):
        out, lse = _run_kernel(inputs, fp8, num_splits=splits)
        check_against_reference(inputs, out, lse, f" ({splits} splits)")


@pytest.mark.skipif(not CAN_RUN_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("fp8, reg_prefetch", [(False, False), (True, False), (True, True)],
                         ids=["fp16-cache", "v32-fp8-cache", "v32-fp8-cache-reg-prefetch"])
def test_triton_never_reads_invalid_slots(fp8, reg_prefetch, generator):
    """The cache sits between NaN pages; every invalid value is in the lists. A load of any of them would
    bring NaN (or, far out, a fault) into the output."""
    d_qk, d_v = (576, 512) if fp8 else (64, 32)
    inputs = make_sparse_decode_inputs(2, 3, 5, 40, 16, 3, d_qk, d_v, torch.float16, DEVICE, fp8=fp8,
                                       generator=generator, extra=(20, 8, 2))
    for key, idx_key in (("k_cache", "indices"), ("extra_k_cache", "extra_indices_in_kvcache")):
        cache = inputs[key]
        guarded = torch.full((cache.shape[0] + 2, *cache.shape[1:]), float("nan"), dtype=torch.float16, device=DEVICE)
        if fp8:
            guarded = guarded.view(torch.uint8)[..., : cache.shape[-1]].contiguous().fill_(0xFF)  # NaN codes, scales
        guarded[1:-1] = cache
        inputs[key] = guarded[1:-1]
        num_slots = cache.shape[0] * cache.shape[1]
        bad = torch.tensor(invalid_index_candidates(num_slots) + (-2, num_slots + 1), dtype=torch.int32)
        idx = inputs[idx_key]
        idx[:, :, : bad.numel()] = bad.to(DEVICE)  # every invalid value in every list
    out, lse = _run_kernel(inputs, fp8, num_splits=1, config=_v32_tile(5, "reg-prefetch" if reg_prefetch else "pipelined") if fp8 else None)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    check_against_reference(inputs, out, lse)


@pytest.mark.skipif(not CAN_RUN_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("fp8", [False, True], ids=["fp16-cache", "v32-fp8-cache"])
def test_api_serves_sparse_through_triton(fp8, monkeypatch, generator):
    """Through flash_mla_with_kvcache: a few SMs force splits, so the combine applies the sink."""
    monkeypatch.setenv("OPENMLA_NUM_SMS", "4")
    d_qk, d_v = (576, 512) if fp8 else (64, 32)
    inputs = make_sparse_decode_inputs(2, 2, 5, 300, 130, 7, d_qk, d_v, torch.float16, DEVICE, fp8=fp8,
                                       generator=generator, invalid_frac=0.1, sink=True, topk_length=True,
                                       extra=(50, 20, 3), pad_blocks=True)
    backend = "triton" if not HAS_CUDA else "auto"
    meta, _ = openmla.get_mla_metadata()
    out, lse = run_api(inputs, backend=backend, meta=meta)
    check_against_reference(inputs, out, lse)
    again = run_api(inputs, backend=backend, meta=meta)  # the step's next layer reuses the object
    assert torch.equal(out, again[0]) and torch.equal(lse, again[1])
    assert openmla.explain(inputs["q"], inputs["k_cache"], indices=inputs["indices"],
                           head_dim_v=d_v).backend == "triton"


@pytest.mark.skipif(not CAN_RUN_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
def test_gluon_sparse_token_lengths_clamp_and_repeat():
    """The Hopper launcher's per-token list lengths (one launch, so replays repeat it): ``topk_length`` clamped
    to [0, topk] and repeated for each of a request's ``s_q`` query tokens."""
    from openmla.ops.gluon.decode_sparse_sm90 import token_lengths

    lengths = torch.tensor([5, -3, 100, 0, 64], dtype=torch.int32, device=DEVICE)
    got = token_lengths(lengths, 3, 64)
    assert got.dtype == torch.int32
    assert got.tolist() == lengths.clamp(0, 64).repeat_interleave(3).tolist()


@pytest.mark.skipif(not CAN_RUN_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("splits, s_q, h_q", [((2, 1, 3, 1, 2, 2), 2, 5), ((1, 4, 2), 3, 16), ((2, 3), 1, 7)])
def test_combine_writes_token_lse_by_heads(splits, s_q, h_q, generator):
    """The sparse launchers' merge: each of the ``b * s_q`` query tokens a request of one token (``out`` [b * s_q, 1,
    h_q, d_v]) and the lse FlashMLA's [b, h_q, s_q] (``lse_s_q=s_q``): a split token's merged lse lands at
    ``[t // s_q, :, t % s_q]``, its output in its own row, and unsplit tokens' entries are left to the split kernel."""
    from openmla.ops.combine import combine_splits

    tokens, d_v = len(splits), 64
    b = tokens // s_q
    offsets = torch.tensor([0] + list(itertools.accumulate(splits)), dtype=torch.int32, device=DEVICE)
    slots = int(offsets[-1])
    o_acc = torch.randn(slots, 1, h_q, d_v, generator=generator).to(DEVICE)
    lse_acc = (torch.randn(slots, 1, h_q, generator=generator) * 3).to(DEVICE)
    # fp16: bf16 rounding of these unit-scale outputs alone nears the cos bound (as in the dense combine test)
    out = torch.full((b, s_q, h_q, d_v), 7.0, dtype=torch.float16, device=DEVICE)
    lse = torch.full((b, h_q, s_q), 7.0, dtype=torch.float32, device=DEVICE)
    combine_splits(out.view(tokens, 1, h_q, d_v), lse, o_acc, lse_acc, offsets, lse_s_q=s_q)
    for t, n in enumerate(splits):
        i, j = divmod(t, s_q)
        if n == 1:
            assert (out[i, j] == 7.0).all() and (lse[i, :, j] == 7.0).all(), f"token {t} is the split kernel's"
            continue
        part = slice(int(offsets[t]), int(offsets[t + 1]))
        lse2 = torch.logsumexp(lse_acc[part, 0].double() * math.log(2.0), dim=0) / math.log(2.0)  # [h_q], base 2
        want = (torch.exp2(lse_acc[part, 0].double() - lse2)[..., None] * o_acc[part, 0].double()).sum(0)
        check_close(f"out of token {t}", out[i, j], want.float(), TOL[("sparse_decode", "out")])
        check_close(f"lse of token {t}", lse[i, :, j], (lse2 * math.log(2.0)).float(), TOL[("sparse_decode", "lse")])


def test_split_offsets_are_made_once_per_shape():
    """The combine's split offsets depend on (b, splits) only: one tensor per shape, reused (so a replay may pass
    it on), the oldest dropped past the cap."""
    from openmla.ops import decode_sparse

    first = decode_sparse._split_offsets(torch.device("cpu"), 3, 4)
    assert first.tolist() == [0, 4, 8, 12] and first.dtype == torch.int32
    assert decode_sparse._split_offsets(torch.device("cpu"), 3, 4) is first
    assert decode_sparse._split_offsets(torch.device("cpu"), 3, 2).tolist() == [0, 2, 4, 6]
    for n in range(decode_sparse._SPLIT_OFFSETS.limit + 1):
        decode_sparse._split_offsets(torch.device("cpu"), 1, n + 5)
    assert len(decode_sparse._SPLIT_OFFSETS.entries) <= decode_sparse._SPLIT_OFFSETS.limit


def test_gluon_sparse_reuses_the_plan_of_fixed_length_lists():
    """Lists with no topk_length are planned once per (device, tokens, topk, parts) and the plan reused: the
    same as a fresh plan of those lengths."""
    from openmla.ops.gluon import decode_sparse_sm90 as gluon_sparse
    from openmla.ops.schedule import plan_segments_torch

    cpu = torch.device("cpu")
    first = gluon_sparse._fixed_length_plan(cpu, 6, 130, 4, 5)
    assert gluon_sparse._fixed_length_plan(cpu, 6, 130, 4, 5) is first
    assert gluon_sparse._fixed_length_plan(cpu, 6, 130, 5, 5) is not first
    assert gluon_sparse._fixed_length_plan(cpu, 6, 130, 4, 1) is not first
    lens, sched, splits = first
    expected = torch.full((6,), 130, dtype=torch.int32)
    ref_sched, ref_splits = plan_segments_torch(expected, 4)  # with an overhead: the segment plan
    assert torch.equal(lens, expected)
    assert torch.equal(sched, ref_sched.to(sched.dtype)) and torch.equal(splits, ref_splits.to(splits.dtype))
    assert gluon_sparse._fixed_length_plan(cpu, 6, 130, 4, 5, None) is not first  # the cap is in the key


def test_gluon_sparse_plans_cut_lists_without_a_cap(monkeypatch, generator):
    """Sparse plans cap the pieces a list at SPLITS_CAP, None by default (the combine kernel merges any number): one
    list of 32 tiles over 264 pieces goes to 32 pieces of one tile, not the dense kernels' 11 pieces of 3; the launcher
    plans and merges with the cap it read (launches recorded on CPU tensors, not run)."""
    from openmla.ops.gluon import decode_sparse_sm90 as gluon_sparse
    from openmla.ops.gluon import decode_sparse_sm90_small_heads as sparse_small
    from openmla.ops.schedule import MAX_SPLITS, split_counts

    assert gluon_sparse.SPLITS_CAP is None
    one = torch.full((1,), 2048, dtype=torch.int32)
    assert split_counts(one, 264, None, overhead=0).tolist() == [32]
    assert split_counts(one, 264, MAX_SPLITS, overhead=0).tolist() == [11]
    assert sparse_small.piece_tiles(1, 2048, 264, None) == 1 and sparse_small.piece_tiles(1, 2048, 264, 16) == 3
    assert sparse_small.piece_tiles(128, 2048, 264, None) == sparse_small.piece_tiles(128, 2048, 264, 16) == 16

    record_launches(monkeypatch, sparse_small, "_sparse_v32_small_heads_kernel")
    merged = []
    monkeypatch.setattr(gluon_sparse, "combine_splits", lambda out, lse, o_acc, lse_acc, splits, **kw: merged.append(
        splits.diff().tolist()))
    for cap, pieces in ((None, [32]), (MAX_SPLITS, [11])):
        monkeypatch.setattr(gluon_sparse, "SPLITS_CAP", cap)
        inputs = make_sparse_decode_inputs(1, 1, 16, 4096, 2048, 64, 576, 512, torch.bfloat16, "cpu", fp8=True,
                                           generator=generator)
        gluon_sparse.sparse_decode_sm90_fwd(inputs["q"], inputs["k_cache"], inputs["indices"], 512, 0.1, is_fp8=True)
        assert merged[-1] == pieces


def test_gluon_sparse_launcher_decoder_choice(monkeypatch, generator):
    """Over the V3.2 cache the launcher's ``output_decode`` picks the decoder (the loader, 0, or the output
    warpgroups, 1) with the registers measured for it; any other value, or the L2 prefetch (a form of the loader
    decoding) beside the output decode, is a typed error. Launches recorded on CPU tensors, not run."""
    from openmla.ops.gluon import decode_dense_sm90_ws as ws
    from openmla.ops.gluon import decode_sparse_sm90 as gluon_sparse

    launches = record_launches(monkeypatch, ws, "_dense_decode_sm90_ws_kernel")
    monkeypatch.setattr(gluon_sparse, "combine_splits", lambda *args, **kw: None)
    inputs = make_sparse_decode_inputs(1, 1, 64, 300, 64, 64, 576, 512, torch.bfloat16, "cpu", fp8=True,
                                       generator=generator)

    def call(**kw):
        return gluon_sparse.sparse_decode_sm90_fwd(inputs["q"], inputs["k_cache"], inputs["indices"], 512, 0.1,
                                                   is_fp8=True, **kw)

    call(output_decode=0)
    call(output_decode=1)
    call(output_decode=0, prefetch_l2=True)
    (loader, output, prefetch) = (launch.kwargs for launch in launches)
    assert loader["OUTPUT_DECODE"] == 0 and not loader["PREFETCH_L2"]
    assert (loader["OUTPUT_REGS"], loader["LOADER_REGS"]) == ws.SPARSE_FP8_WORKER_REGS
    assert output["OUTPUT_DECODE"] == 1 and not output["PREFETCH_L2"]
    assert (output["OUTPUT_REGS"], output["LOADER_REGS"]) == ws.SPARSE_FP8_OUTPUT_DECODE_REGS
    assert prefetch["OUTPUT_DECODE"] == 0 and prefetch["PREFETCH_L2"]
    with pytest.raises(openmla.InvalidArgumentError, match="output_decode: 0 .* or 1 .*got 2"):
        call(output_decode=2)
    with pytest.raises(openmla.InvalidArgumentError, match="prefetch_l2 .*output_decode=0"):
        call(output_decode=1, prefetch_l2=True)
    assert len(launches) == 3


def test_gluon_sparse_small_heads_launcher(monkeypatch, generator):
    """Over the V3.2 cache a bf16 q with at most 16 heads goes to the small-head sparse kernel
    (one program a piece, two pieces an SM, R = 16, the sink to the kernel and the merge); more heads, an fp16 q, a
    16-bit cache, the switch off or any of the warp-specialized kernel's options keep that kernel; 17-32 heads go to
    its 32-row build (one RoPE stage) when forced, with ``ROWS32_MIN_PIECE_TILES`` 0, or for long pieces (not these 4
    lists); forcing the small-head kernel
    where it cannot serve, or beside those options, is a typed error. Launches recorded on CPU tensors, not run."""
    from openmla.ops.gluon import decode_dense_sm90_ws as ws
    from openmla.ops.gluon import decode_sparse_sm90 as gluon_sparse
    from openmla.ops.gluon import decode_sparse_sm90_small_heads as sparse_small

    small_launches = record_launches(monkeypatch, sparse_small, "_sparse_v32_small_heads_kernel")
    ws_launches = record_launches(monkeypatch, ws, "_dense_decode_sm90_ws_kernel")
    merges = []
    monkeypatch.setattr(gluon_sparse, "combine_splits", lambda *args, **kw: merges.append((args, kw)))

    def call(h_q, fp8=True, dtype=torch.bfloat16, sink=False, **kw):
        inputs = make_sparse_decode_inputs(2, 2, h_q, 300, 130, 61, 576, 512, dtype, "cpu", fp8=fp8,
                                           generator=generator, sink=sink)
        return gluon_sparse.sparse_decode_sm90_fwd(inputs["q"], inputs["k_cache"], inputs["indices"], 512, 0.1,
                                                   is_fp8=fp8, attn_sink=inputs["attn_sink"], **kw), inputs

    for h_q in (16, 5):
        (out, lse), inputs = call(h_q, sink=h_q == 5)
        assert out.shape == (2, 2, h_q, 512) and lse.shape == (2, h_q, 2)
        grid, args, kwargs = small_launches[-1]
        assert grid == (1, 2 * 132)  # CPU tensors plan for 132 SMs, two programs each
        assert kwargs["R"] == 16 and kwargs["HAS_SINK"] == (h_q == 5) and args[-3] is inputs["attn_sink"]
        assert not kwargs["TRACE"] and args[-2] is None
        assert args[1].dtype == torch.uint8 and args[1].data_ptr() == inputs["k_cache"].data_ptr()
        # the kernel and the merge write the returned lse as it lies: [b, h_q, s_q], no launch re-lays it out
        assert args[7] is lse and args[-1] == 2
        assert merges[-1][0][1] is lse and merges[-1][1]["lse_s_q"] == 2
        assert merges[-1][1]["attn_sink"] is inputs["attn_sink"]  # split rows get the sink in the merge
    assert len(small_launches) == 2 and not ws_launches
    call(32)
    call(16, fp8=False)
    call(16, output_decode=1)
    call(16, list_ahead=True)
    call(16, small_heads=False)
    monkeypatch.setattr(gluon_sparse, "SMALL_HEADS", False)
    call(16)
    assert len(small_launches) == 2 and len(ws_launches) == 6
    call(16, small_heads=True)  # forced past the switch
    assert len(small_launches) == 3
    assert small_launches[-1][2]["R"] == 16 and small_launches[-1][2]["PE_STAGES"] == 2
    for h_q in (17, 32):
        call(h_q, small_heads=True)
        assert small_launches[-1][2]["R"] == 32 and small_launches[-1][2]["PE_STAGES"] == 1
        assert small_launches[-1][0] == (1, 2 * 132)
    monkeypatch.setattr(gluon_sparse, "SMALL_HEADS", True)
    monkeypatch.setattr(gluon_sparse, "ROWS32_MIN_PIECE_TILES", 0)
    call(32)
    assert len(small_launches) == 6 and small_launches[-1][2]["R"] == 32 and len(ws_launches) == 6
    monkeypatch.setattr(gluon_sparse, "ROWS32_MIN_PIECE_TILES", 25)
    (out, lse), _ = call(32)  # 4 lists: short pieces, so the warp-specialized kernel
    assert len(small_launches) == 6 and len(ws_launches) == 7
    assert ws_launches[-1][1][7] is lse and ws_launches[-1][2]["lse_s_q"] == 2
    with pytest.raises(openmla.InvalidArgumentError, match="small_heads=True: .*at most 32 heads.*h_q=33"):
        call(33, small_heads=True)
    with pytest.raises(openmla.InvalidArgumentError, match="small_heads=True: .*torch.float16"):
        call(16, dtype=torch.float16, small_heads=True)
    with pytest.raises(openmla.InvalidArgumentError, match="small_heads=True with loader_regs"):
        call(16, small_heads=True, loader_regs=64)


def test_gluon_sparse_skips_the_merge_when_no_list_is_split(monkeypatch, generator):
    """Fixed-length lists that the plan keeps whole (each in one piece: the split kernel writes every output) run
    no merge launch, in both Hopper kernels; longer lists, or lists with ``topk_length`` (planned on the device), do.
    The host's answer is the plan's own: each list's pieces in :func:`plan_splitkv_torch` with no overhead, in
    :func:`plan_segments_torch` with one (up to SEGMENT_PLAN_MAX_LISTS lists; h_q=128's 128 lists of 2048 over 66
    pieces come whole, where the even cut splits 56 of them)."""
    from openmla.ops.gluon import decode_sparse_sm90 as gluon_sparse
    from openmla.ops.schedule import plan_segments_torch, plan_splitkv_torch, split_counts

    for tokens, topk, parts, overhead in ((4, 64, 264, 0), (4, 2048, 264, 0), (128, 2048, 132, 0), (3, 1000, 2, 0),
                                          (4, 64, 264, 5), (4, 2048, 264, 5), (128, 2048, 66, 5), (3, 1000, 2, 5),
                                          (1025, 64, 66, 5)):
        lens = torch.full((tokens,), topk, dtype=torch.int32)
        segments = overhead > 0 and tokens <= gluon_sparse.SEGMENT_PLAN_MAX_LISTS
        _, cumulative = (plan_segments_torch if segments else plan_splitkv_torch)(lens, parts, overhead=overhead)
        if not segments:
            assert torch.equal(split_counts(lens, parts, overhead=overhead),
                               (cumulative[1:] - cumulative[:-1]).to(torch.int64))
        assert gluon_sparse.fixed_lists_unsplit(tokens, topk, parts, overhead) == bool((cumulative.diff() <= 1).all())
    assert gluon_sparse.fixed_lists_unsplit(4, 64, 264) and not gluon_sparse.fixed_lists_unsplit(4, 2048, 264)
    assert gluon_sparse.fixed_lists_unsplit(128, 2048, 66, 5) and not bool(
        (split_counts(torch.full((128,), 2048, dtype=torch.int32), 66, None, overhead=5) <= 1).all())

    merges = []
    monkeypatch.setattr(gluon_sparse, "combine_splits", lambda *args, **kw: merges.append(kw))
    from openmla.ops.gluon import decode_dense_sm90_ws as ws
    from openmla.ops.gluon import decode_sparse_sm90_small_heads as sparse_small

    record_launches(monkeypatch, ws, "_dense_decode_sm90_ws_kernel")
    record_launches(monkeypatch, sparse_small, "_sparse_v32_small_heads_kernel")
    for h_q in (128, 16):
        for topk, lengths, merged in ((64, False, False), (64, True, True), (2048, False, True)):
            inputs = make_sparse_decode_inputs(4, 1, h_q, 4096, topk, 64, 576, 512, torch.bfloat16, "cpu", fp8=True,
                                               generator=generator, topk_length=lengths)
            before = len(merges)
            gluon_sparse.sparse_decode_sm90_fwd(inputs["q"], inputs["k_cache"], inputs["indices"], 512, 0.1,
                                                inputs["topk_length"], is_fp8=True)
            assert len(merges) - before == int(merged), (h_q, topk, lengths)


def test_gluon_sparse_plan_overhead_by_row_tiles(monkeypatch, generator):
    """Fixed-length lists are planned with no per-list overhead at one row tile (so 128 lists over 132 or 264 pieces
    come whole or in equal halves, with no merge) and with the dense kernels' at two; lists with ``topk_length``
    keep the dense kernels'; ``PLAN_OVERHEAD`` overrides both. The launchers plan with it (recorded on CPU)."""
    from openmla.ops.gluon import decode_dense_sm90_ws as ws
    from openmla.ops.gluon import decode_sparse_sm90 as gluon_sparse
    from openmla.ops.gluon import decode_sparse_sm90_small_heads as sparse_small
    from openmla.ops.schedule import FIXED_OVERHEAD, split_counts

    assert gluon_sparse.plan_overhead(1, True) == 0 and gluon_sparse.plan_overhead(2, True) == FIXED_OVERHEAD
    assert gluon_sparse.plan_overhead(1, False) == gluon_sparse.plan_overhead(2, False) == FIXED_OVERHEAD
    lens = torch.full((128,), 2048, dtype=torch.int32)
    assert split_counts(lens, 132, overhead=0).max() == 1 and split_counts(lens, 132).max() == 2
    assert split_counts(lens, 264, overhead=0).tolist() == [2] * 128
    monkeypatch.setattr(gluon_sparse, "PLAN_OVERHEAD", 3)
    assert gluon_sparse.plan_overhead(1, True) == gluon_sparse.plan_overhead(2, False) == 3
    monkeypatch.setattr(gluon_sparse, "PLAN_OVERHEAD", None)

    planned = []
    for name in ("plan_splitkv", "plan_segments"):
        real_plan = getattr(gluon_sparse, name)
        monkeypatch.setattr(gluon_sparse, name, lambda lens, parts, max_splits, overhead, real_plan=real_plan,
                            name=name: (planned.append((name, lens.shape[0], parts, overhead)),
                                        real_plan(lens, parts, max_splits, overhead=overhead))[1])
    monkeypatch.setattr(gluon_sparse, "combine_splits", lambda *args, **kw: None)
    record_launches(monkeypatch, ws, "_dense_decode_sm90_ws_kernel")
    record_launches(monkeypatch, sparse_small, "_sparse_v32_small_heads_kernel")
    gluon_sparse._FIXED_PLANS.entries.clear()
    for h_q, lengths in ((16, False), (64, False), (128, False), (64, True)):
        inputs = make_sparse_decode_inputs(3, 1, h_q, 4096, 640, 64, 576, 512, torch.bfloat16, "cpu", fp8=True,
                                           generator=generator, topk_length=lengths)
        gluon_sparse.sparse_decode_sm90_fwd(inputs["q"], inputs["k_cache"], inputs["indices"], 512, 0.1,
                                            inputs["topk_length"], is_fp8=True)
    assert planned == [("plan_splitkv", 3, 264, 0), ("plan_splitkv", 3, 132, 0), ("plan_segments", 3, 66, FIXED_OVERHEAD),
                       ("plan_splitkv", 3, 132, FIXED_OVERHEAD)]


def test_small_head_sparse_32_row_build_by_piece_length(monkeypatch):
    """17-32 heads go to the small-head kernel's 32-row build only where the plan's pieces (two programs an SM) walk
    at least ROWS32_MIN_PIECE_TILES tiles (H200: faster from 31 tiles, slower at 16, a tie at 24); up to 16 heads
    always; never without the switch, with an fp16 q or past 32 heads; no shape known, no."""
    from openmla.ops.gluon import decode_sparse_sm90 as gluon_sparse

    assert gluon_sparse.ROWS32_MIN_PIECE_TILES == 25

    def served(h_q, tokens, dtype=torch.bfloat16, topk=2048):
        return gluon_sparse.small_heads_for(h_q, True, dtype, tokens, topk, 132)

    assert [served(32, t) for t in (8, 32, 128, 192, 256, 512)] == [False] * 4 + [True] * 2
    assert served(17, 256) and not served(33, 256) and not served(32, 256, torch.float16)
    # topk=1500: 24 blocks a list, 24 * 256 / 264 -> pieces of 24 tiles
    assert served(32, 400, topk=1300) and not served(32, 256, topk=1500)
    assert served(16, 1) and served(16, 256) and not gluon_sparse.small_heads_for(32, True, torch.bfloat16)
    assert gluon_sparse.small_heads_for_some_shapes(32, True, torch.bfloat16)
    assert not gluon_sparse.small_heads_for_some_shapes(16, True, torch.bfloat16)
    monkeypatch.setattr(gluon_sparse, "ROWS32_MIN_PIECE_TILES", 0)  # always, with or without a shape
    assert served(32, 8) and gluon_sparse.small_heads_for(32, True, torch.bfloat16) and not served(33, 8)
    assert not gluon_sparse.small_heads_for_some_shapes(32, True, torch.bfloat16)
    monkeypatch.setattr(gluon_sparse, "ROWS32_MIN_PIECE_TILES", 10**9)  # never
    assert not served(32, 4096) and served(16, 4096)
    monkeypatch.setattr(gluon_sparse, "SMALL_HEADS", False)
    assert not served(32, 512) and not served(16, 1)


def test_small_head_sparse_pieces():
    """Two programs an SM unless that cuts pieces under MIN_PIECE_TILES tiles where one an SM cuts longer ones
    (16 lists of 2048 on 132 SMs: 3 tiles against 4); lists capped by the splits a list may have get the same
    pieces either way and keep two an SM."""
    from openmla.ops.gluon.decode_sparse_sm90_small_heads import MIN_PIECE_TILES, pieces_for

    assert MIN_PIECE_TILES == 4
    assert pieces_for(16, 2048, 132, 16) == 132
    assert [pieces_for(t, 2048, 132, 16) for t in (1, 4, 8, 32, 128, 256)] == [264] * 6
    assert pieces_for(16, 2048, 100, 16) == 100  # 512 tiles: 3 a piece over 200 pieces, 6 over 100


def test_sparse_choice_names_the_small_head_kernel(monkeypatch):
    """The sparse dispatcher's reason names the Hopper kernel that serves the call: the small-head kernel at most 16
    heads over the V3.2 cache with a bf16 q, the warp-specialized kernel for more heads, an fp16 q or a 16-bit
    cache, and for every call with the small-head switch off (the GPU is named by OPENMLA_ARCH here)."""
    from openmla.dispatch import choose_sparse_decode
    from openmla.ops.gluon import decode_sparse_sm90 as gluon_sparse

    if not openmla._runtime.gluon_available():
        pytest.skip("Triton's Gluon dialect does not import here")
    monkeypatch.setenv("OPENMLA_ARCH", "sm_90a")
    cuda = torch.device("cuda")

    def reason(dtype, fmt, h_q):
        choice = choose_sparse_decode(cuda, dtype, (576, 512), fmt, h_q=h_q)
        assert choice.backend == "gluon"
        return choice.reason

    assert "small-head sparse kernel" in reason(torch.bfloat16, "V32_FP8", 16)
    assert "8 heads on N" in reason(torch.bfloat16, "V32_FP8", 8)
    for dtype, fmt, h_q in ((torch.bfloat16, "V32_FP8", 32), (torch.float16, "V32_FP8", 16),
                            (torch.bfloat16, None, 16), (torch.bfloat16, "V32_FP8", None)):
        assert "warp-specialized kernel" in reason(dtype, fmt, h_q)
        assert ("32-row build" in reason(dtype, fmt, h_q)) == (h_q == 32)
    monkeypatch.setattr(gluon_sparse, "SMALL_HEADS", False)
    monkeypatch.setenv("OPENMLA_ARCH", "sm_90")  # another cache key: the switch is read when a choice is made
    assert "warp-specialized kernel" in reason(torch.bfloat16, "V32_FP8", 16)


@pytest.mark.parametrize("fp8, lengths_given", [(True, True), (False, False)], ids=["v32fp8-lengths", "bf16"])
def test_gluon_sparse_launcher_arguments(fp8, lengths_given, monkeypatch, generator):
    """The Gluon sparse launcher on CPU tensors with its launches recorded, not run: one query token a request
    (its list in place of the block table), an FP8 cache handed over as bytes with the FP8 loader's
    registers, lengths clamped and repeated per query token (or the fixed-length plan reused), the merge
    asked for with the plan's split counts, an attention sink handed to both, and outputs in FlashMLA's
    shapes."""
    from openmla.ops.gluon import decode_dense_sm90_ws as ws
    from openmla.ops.gluon import decode_sparse_sm90 as gluon_sparse

    launches, merges = record_launches(monkeypatch, ws, "_dense_decode_sm90_ws_kernel"), []
    monkeypatch.setattr(gluon_sparse, "combine_splits", lambda *args, **kw: merges.append((args, kw)))
    b, s_q, h_q, topk = 2, 3, 128, 130
    inputs = make_sparse_decode_inputs(b, s_q, h_q, 300, topk, 7, 576, 512, torch.bfloat16, "cpu", fp8=fp8,
                                       generator=generator, topk_length=lengths_given)
    lengths = inputs["topk_length"]
    sink = torch.randn(h_q, generator=generator) if fp8 else None  # with a sink over the FP8 cache, without over BF16
    for _ in range(2):
        out, lse = gluon_sparse.sparse_decode_sm90_fwd(inputs["q"], inputs["k_cache"], inputs["indices"], 512,
                                                       576**-0.5, lengths, is_fp8=fp8, attn_sink=sink)
    assert out.shape == (b, s_q, h_q, 512) and out.dtype == torch.bfloat16
    assert lse.shape == (b, h_q, s_q) and lse.dtype == torch.float32
    assert len(launches) == 2 and len(merges) == 2
    (grid, args, kwargs), (_, args_again, _) = launches
    parts = 132 // 2  # CPU tensors plan for 132 SMs; two 64-row tiles per query token
    assert grid == (2, parts)
    q_tok, cache, lists, lens, sched, splits = args[:6]
    assert q_tok.shape == (b * s_q, 1, h_q, 576) and lists.shape == (b * s_q, topk)
    assert torch.equal(lists, inputs["indices"].reshape(b * s_q, topk))
    expected_lens = (lengths.clamp(0, topk).repeat_interleave(s_q) if lengths_given
                     else torch.full((b * s_q,), topk, dtype=torch.int32))
    assert torch.equal(lens, expected_lens) and sched.shape == (parts, 8) and splits.shape == (b * s_q + 1,)
    merge_args, merge_kw = merges[0]
    assert merge_args[4] is splits and merge_kw["attn_sink"] is sink  # split rows get the sink in the merge
    o_accum, lse_accum, counters = args[8:11]  # one slot per list and per piece; no counters: no fused merge
    assert o_accum.shape == (b * s_q + parts, 1, h_q, 512) and lse_accum.shape == (b * s_q + parts, 1, h_q)
    assert counters.numel() == 1 and merge_args[2] is o_accum and merge_args[3] is lse_accum
    assert (args_again[3] is lens) != lengths_given  # the fixed-length plan is reused, lengths are not
    assert cache.data_ptr() == inputs["k_cache"].data_ptr()
    assert cache.dtype == (torch.uint8 if fp8 else torch.bfloat16)
    # over the V3.2 cache the output warpgroups decode by default, with registers of their own
    output_decode = ws.SPARSE_FP8_OUTPUT_DECODE if fp8 else 0
    assert kwargs["OUTPUT_DECODE"] == output_decode
    regs = (ws.SPARSE_FP8_OUTPUT_DECODE_REGS if output_decode else ws.SPARSE_FP8_WORKER_REGS) if fp8 else \
        ws.SOLO_WORKER_REGS
    assert (kwargs["OUTPUT_REGS"], kwargs["LOADER_REGS"]) == regs
    assert kwargs["SPARSE"] and kwargs["SOFTMAX_ONLY"] and not kwargs["CAUSAL"] and not kwargs["TMA_K"]
    assert kwargs["KV_FP8"] == fp8
    assert kwargs["PREFETCH_L2"] == (fp8 and not output_decode and ws.SPARSE_FP8_PREFETCH_L2)
    # ..., k_desc, sink, descale_k, descale_q, trace: no TMA descriptor, no per-tensor descales, no trace
    assert kwargs["D_V"] == 512 and kwargs["D_PE"] == 64 and args[-5] is None and args[-3:] == (None, None, None)
    assert not kwargs["TRACE"]
    assert not kwargs["KV_E4M3"] and not kwargs["Q_E4M3"]
    assert kwargs["LIST_AHEAD"] == (ws.SPARSE_FP8_LIST_AHEAD if fp8 else ws.LIST_AHEAD)
    assert args[-4] is sink and kwargs["HAS_SINK"] == (sink is not None)  # unsplit rows get it in the kernel


def test_split_count_fills_the_sms_and_keeps_splits_long():
    from openmla.ops.decode_sparse import MIN_TOKENS_PER_SPLIT, num_splits_for

    assert num_splits_for(programs=512, list_len=2048, sm_count=132) == 1
    assert num_splits_for(programs=8, list_len=2048, sm_count=132) == 16  # 128 programs: one wave
    assert num_splits_for(programs=8, list_len=64, sm_count=132) == 1
    assert num_splits_for(programs=1, list_len=3 * MIN_TOKENS_PER_SPLIT + 1, sm_count=132) == 4
    # 128 programs: a second split pays only where two programs run at once on an SM (measured, H200)
    assert num_splits_for(programs=128, list_len=2048, sm_count=132, per_sm=2) == 2
    assert num_splits_for(programs=128, list_len=2048, sm_count=132, per_sm=1) == 1


# --------------------------------------------------------------------------------------------------
# GPU tier
# --------------------------------------------------------------------------------------------------

# FlashMLA's sparse-decode (s_k, topk, page_block_size) list
FLASHMLA_SK_TOPK_PAGE = [(512, 64, 2), (512, 64, 64), (512, 64, 69), (1024, 576, 2), (1024, 576, 61),
                         (2046, 2048, 2), (2046, 2048, 64), (2046, 2048, 576)]
GPU_MATRIX = [
    pytest.param(fp8, h_q, s_q, b, s_k, topk, page,
                 id=f"{'v32fp8' if fp8 else 'bf16'}-h{h_q}-sq{s_q}-b{b}-sk{s_k}-topk{topk}-p{page}")
    for fp8 in (True, False)
    for h_q in (64, 128, 16, 32)
    for s_q in (1, 3)
    for b in (4, 74)
    for s_k, topk, page in FLASHMLA_SK_TOPK_PAGE
]


@pytest.mark.gpu
@pytest.mark.parametrize("fp8, h_q, s_q, b, s_k, topk, page", GPU_MATRIX)
def test_flashmla_sparse_matrix(fp8, h_q, s_q, b, s_k, topk, page, generator):
    """FlashMLA's matrix (sm_scale d^-0.55, sinks with +-inf, -1-padded lists), plus out-of-range indices and,
    for b=4, topk_length. On Hopper the Gluon kernel serves it, sinks included (asserted)."""
    inputs = make_sparse_decode_inputs(b, s_q, h_q, s_k, topk, page, 576, 512, torch.bfloat16, DEVICE, fp8=fp8,
                                       generator=generator, invalid_frac=0.05, sink=True, topk_length=b == 4,
                                       pad_blocks=True, softmax_scale=576**-0.55)
    poison_cuda_cache(1 << 28)  # fresh outputs land on NaN-filled memory: every element must be written
    out, lse = run_api(inputs)
    _sync()
    check_against_reference(inputs, out, lse)
    if torch.cuda.get_device_capability()[0] == 9:
        assert openmla.explain(inputs["q"], inputs["k_cache"], indices=inputs["indices"], head_dim_v=512,
                               attn_sink=inputs["attn_sink"]).backend == "gluon"


@pytest.mark.gpu
@pytest.mark.parametrize("fp8, h_q, s_q, b, s_k, topk, page", GPU_MATRIX)
def test_sparse_matrix_without_extras(fp8, h_q, s_q, b, s_k, topk, page, generator):
    """The same matrix with no sink and no extra cache: on Hopper these calls take the Gluon kernel (the
    dispatcher is asserted), elsewhere the Triton kernel; out-of-range indices, -1 padding and, for b=4,
    topk_length (zeros included) as above."""
    inputs = make_sparse_decode_inputs(b, s_q, h_q, s_k, topk, page, 576, 512, torch.bfloat16, DEVICE, fp8=fp8,
                                       generator=generator, invalid_frac=0.05, topk_length=b == 4, pad_blocks=True,
                                       softmax_scale=576**-0.55)
    poison_cuda_cache(1 << 28)
    out, lse = run_api(inputs)
    _sync()
    check_against_reference(inputs, out, lse)
    if torch.cuda.get_device_capability()[0] == 9:
        assert openmla.explain(inputs["q"], inputs["k_cache"], indices=inputs["indices"],
                               head_dim_v=512).backend == "gluon"


@pytest.mark.gpu
@pytest.mark.parametrize("which, how", [("q", "stride"), ("q", "base"), ("k_cache", "base")])
@pytest.mark.parametrize("fp8", [True, False], ids=["v32fp8", "bf16"])
def test_sparse_misaligned_tensors_run_correctly(which, how, fp8, monkeypatch, generator):
    """q or the cache as a view that is not 16-byte aligned: on Hopper the call warns and runs the Triton kernel
    (the Gluon kernel copies 16 bytes at a time and is compiled for aligned rows), and matches the reference. A
    V3.2 cache is moved by 4 bytes (its fp32 scales need that much; 1 byte is a typed error, below)."""
    from helpers import misaligned_copy, run_expecting_alignment_fallback

    inputs = make_sparse_decode_inputs(4, 2, 64, 700, 128, 64, 576, 512, torch.bfloat16, DEVICE, fp8=fp8,
                                       generator=generator, invalid_frac=0.05, softmax_scale=576**-0.55)
    inputs[which] = misaligned_copy(inputs[which], how, elements=4 if fp8 and which == "k_cache" else 1)
    out, lse = run_expecting_alignment_fallback(lambda: run_api(inputs), monkeypatch)
    check_against_reference(inputs, out, lse)


@pytest.mark.gpu
@pytest.mark.parametrize("fp8", [True, False], ids=["v32fp8", "bf16"])
@pytest.mark.parametrize("h_q", [128, 64, 20, 1])
@pytest.mark.parametrize("s_k, topk, page", [(512, 64, 61), (650, 576, 53)])
def test_flashmla_sparse_corners(fp8, h_q, s_k, topk, page, generator):
    """FlashMLA's corner cases: s_q=3, whole invalid rows, zero topk_length, sinks; plus an extra cache."""
    inputs = make_sparse_decode_inputs(74, 3, h_q, s_k, topk, page, 576, 512, torch.bfloat16, DEVICE, fp8=fp8,
                                       generator=generator, invalid_frac=0.1, all_invalid_rows=20, topk_length=True,
                                       sink=True, extra=(300, 100, 2), extra_topk_length=True)
    out, lse = run_api(inputs)
    check_against_reference(inputs, out, lse)
    empty = (inputs["topk_length"] == 0) & (inputs["extra_topk_length"] == 0)
    assert torch.all(out[empty] == 0) and torch.all(torch.isposinf(lse[empty]))


@pytest.mark.gpu
@pytest.mark.parametrize("sink, lengths_given", [(True, True), (False, True), (False, False)],
                         ids=["sink", "no-sink", "no-sink-no-lengths"])  # the Gluon kernel on Hopper, sink or not
@pytest.mark.parametrize("fp8", [True, False], ids=["v32fp8", "bf16"])
def test_sparse_cuda_graph_capture_and_replay(fp8, sink, lengths_given, generator):
    """A sparse decode step is captured once and replayed on new index lists (and lengths, where given);
    without lengths the Gluon launcher's cache of fixed-length plans is emptied first, so the plan is made
    inside the capture (and must not be kept for later calls)."""
    inputs = make_sparse_decode_inputs(8, 2, 128, 2000, 512, 64, 576, 512, torch.bfloat16, DEVICE, fp8=fp8,
                                       generator=generator, sink=sink, topk_length=lengths_given)
    indices = inputs["indices"].clone()
    lengths = inputs["topk_length"].clone() if lengths_given else None

    def step():
        meta, _ = openmla.get_mla_metadata()
        return run_api(dict(inputs, indices=indices, topk_length=lengths), meta=meta)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # compile outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    if not lengths_given:
        from openmla.ops.gluon import decode_sparse_sm90

        decode_sparse_sm90._FIXED_PLANS.entries.clear()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_out, g_lse = step()
    if not lengths_given:
        assert not decode_sparse_sm90._FIXED_PLANS.entries, "a plan made inside a capture was kept"
    original = inputs["indices"]
    for _ in range(3):
        # new lists over the same cache: the old entries shuffled, some dropped; new lengths
        perm = torch.randperm(original.shape[-1], generator=generator).to(DEVICE)
        drop = torch.rand(original.shape, generator=generator).to(DEVICE) < 0.3
        indices.copy_(torch.where(drop, -1, original[..., perm]))
        if lengths is not None:
            lengths.copy_(torch.randint(0, original.shape[-1] + 1, lengths.shape, generator=generator,
                                        dtype=torch.int32))
        graph.replay()
        _sync()
        check_against_reference(dict(inputs, indices=indices.clone(),
                                     topk_length=None if lengths is None else lengths.clone()), g_out, g_lse)


def _flash_mla_sparse(inputs: dict):
    meta, _ = _flash_mla.get_mla_metadata()
    return _flash_mla.flash_mla_with_kvcache(
        inputs["q"], inputs["k_cache"], None, None, inputs["head_dim_v"], meta,
        softmax_scale=inputs["softmax_scale"], is_fp8_kvcache=True, indices=inputs["indices"],
        attn_sink=inputs["attn_sink"], use_legacy=True,
    )


@pytest.mark.gpu
@pytest.mark.skipif(_flash_mla is None, reason="FlashMLA anchor (sgl-flash-mla) not importable on an SM90 GPU")
@pytest.mark.parametrize("h_q", [64, 128])
@pytest.mark.parametrize("s_q", [1, 3])
@pytest.mark.parametrize("b", [4, 74])
@pytest.mark.parametrize("s_k, topk, page", [c for c in FLASHMLA_SK_TOPK_PAGE if c[1] % 64 == 0])
@pytest.mark.parametrize("sink", [True, False], ids=["sink", "no-sink"])  # the Gluon kernel on Hopper either way
def test_equal_to_flashmla_v32(h_q, s_q, b, s_k, topk, page, sink, generator):
    """Same V3.2 cache, same lists (invalid entries exactly -1: FlashMLA reads any other value), same sinks."""
    inputs = make_sparse_decode_inputs(b, s_q, h_q, s_k, topk, page, 576, 512, torch.bfloat16, DEVICE, fp8=True,
                                       generator=generator, sink=sink, pad_blocks=True, softmax_scale=576**-0.55)
    out, lse = run_api(inputs)
    fm_out, fm_lse = _flash_mla_sparse(inputs)
    check_close("out vs FlashMLA", out, fm_out.float(), TOL_OUT)
    check_close("lse vs FlashMLA", lse, fm_lse, TOL_LSE)


def _on_hopper() -> bool:
    return HAS_CUDA and torch.cuda.get_device_capability()[0] == 9 and openmla._runtime.gluon_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _on_hopper(), reason="the Gluon sparse kernel runs on SM90 only")
@pytest.mark.parametrize("list_ahead", [False, True], ids=["list-in-step", "list-ahead"])
@pytest.mark.parametrize("fp8", [True, False], ids=["v32fp8", "bf16"])
@pytest.mark.parametrize("b, s_q, h_q, s_k, topk, page, lengths, parts", [
    (4, 3, 128, 2046, 2048, 64, True, None),  # full and partial tiles, zero lengths among the lists
    (74, 1, 64, 1024, 576, 61, False, None),
    (3, 2, 16, 650, 130, 53, True, 3),  # few pieces: each walks several lists
    (5, 1, 32, 300, 64, 2, False, 2),
], ids=["h128-sq3", "h64-p61", "h16-few-pieces", "h32-p2-one-tile"])
def test_gluon_sparse_kernel_direct(list_ahead, fp8, b, s_q, h_q, s_k, topk, page, lengths, parts, generator):
    """The Gluon kernel over V3.2 FP8 and BF16 caches called directly, its loader reading each tile's list
    entries with the tile or a tile ahead, with pieces that each walk several lists (the API plans one a SM),
    against the reference: invalid and out-of-range slots, NaN in unused cache rows, poisoned outputs."""
    from openmla.ops.gluon.decode_sparse_sm90 import sparse_decode_sm90_fwd

    inputs = make_sparse_decode_inputs(b, s_q, h_q, s_k, topk, page, 576, 512, torch.bfloat16, DEVICE, fp8=fp8,
                                       generator=generator, invalid_frac=0.1, topk_length=lengths, pad_blocks=True,
                                       softmax_scale=576**-0.55)
    poison_cuda_cache(1 << 28)
    out, lse = sparse_decode_sm90_fwd(inputs["q"], inputs["k_cache"], inputs["indices"], 512, inputs["softmax_scale"],
                                      inputs["topk_length"], num_sm_parts=parts, is_fp8=fp8, list_ahead=list_ahead)
    _sync()
    check_against_reference(inputs, out, lse)


@pytest.mark.gpu
@pytest.mark.skipif(not _on_hopper(), reason="the Gluon sparse kernel runs on SM90 only")
@pytest.mark.parametrize("output_decode", [0, 1], ids=["loader-decodes", "output-decodes"])
@pytest.mark.parametrize("sink", [False, True], ids=["no-sink", "sink"])
@pytest.mark.parametrize("b, s_q, h_q, s_k, topk, page, lengths, parts", [
    (4, 3, 128, 2046, 2048, 64, True, None),  # full and partial tiles, zero lengths among the lists
    (74, 1, 64, 1024, 576, 61, False, None),
    (3, 2, 16, 650, 130, 53, True, 3),  # few pieces: each walks several lists, decoding across their boundaries
    (5, 1, 32, 300, 64, 2, False, 2),  # one tile a list
    (2, 1, 128, 40000, 4096, 64, False, 1),  # one piece walking 128 tiles: every barrier phase many times over
], ids=["h128-sq3", "h64-p61", "h16-few-pieces", "h32-p2-one-tile", "h128-one-piece"])
def test_gluon_sparse_output_decode(output_decode, sink, b, s_q, h_q, s_k, topk, page, lengths, parts, generator):
    """The Gluon kernel over the V3.2 FP8 cache with each decoder: the loader (one tile in flight) or the output
    warpgroups (the default; the loader only gathering, two tiles in flight), against the reference: invalid and out-of-range slots, NaN in unused cache
    rows, poisoned outputs, with and without an attention sink."""
    from openmla.ops.gluon.decode_sparse_sm90 import sparse_decode_sm90_fwd

    inputs = make_sparse_decode_inputs(b, s_q, h_q, s_k, topk, page, 576, 512, torch.bfloat16, DEVICE, fp8=True,
                                       generator=generator, invalid_frac=0.1, topk_length=lengths, pad_blocks=True,
                                       softmax_scale=576**-0.55, sink=sink)
    poison_cuda_cache(1 << 28)
    out, lse = sparse_decode_sm90_fwd(inputs["q"], inputs["k_cache"], inputs["indices"], 512, inputs["softmax_scale"],
                                      inputs["topk_length"], num_sm_parts=parts, is_fp8=True,
                                      attn_sink=inputs["attn_sink"], output_decode=output_decode)
    _sync()
    check_against_reference(inputs, out, lse)


@pytest.mark.gpu
@pytest.mark.skipif(not _on_hopper(), reason="the Gluon sparse kernel runs on SM90 only")
@pytest.mark.parametrize("sink", [False, True], ids=["no-sink", "sink"])
@pytest.mark.parametrize("b, s_q, h_q, s_k, topk, page, lengths, parts", [
    (4, 3, 16, 2046, 2048, 64, True, None),  # full and partial tiles, zero lengths among the lists
    (74, 1, 16, 1024, 576, 61, False, None),
    (3, 2, 16, 650, 130, 53, True, 3),  # few pieces: each walks several lists
    (5, 1, 16, 300, 64, 2, False, 2),  # one tile a list: no next tile's copies issued
    (6, 2, 12, 5000, 1000, 69, True, None),  # 12 heads in the 16-row tile, odd page size and topk
    (2, 1, 8, 40000, 4096, 64, False, 1),  # one piece walking 128 tiles: both rings many times over
    (1, 1, 1, 700, 200, 7, False, 1),  # one head
    # the 32-row build (one RoPE and scale stage, Pᵀ over the RoPE tile)
    (4, 3, 32, 2046, 2048, 64, True, None),
    (3, 2, 32, 650, 130, 53, True, 3),
    (5, 1, 17, 300, 64, 2, False, 2),  # 17 heads: the fewest the 32-row build serves; one tile a list
    (6, 2, 24, 5000, 1000, 69, True, None),
    (2, 1, 32, 40000, 4096, 64, False, 1),  # one piece walking 128 tiles
], ids=["h16-sq3", "h16-p61", "h16-few-pieces", "h16-p2-one-tile", "h12-p69", "h8-one-piece", "h1-p7",
        "h32-sq3", "h32-few-pieces", "h17-p2-one-tile", "h24-p69", "h32-one-piece"])
def test_gluon_sparse_small_heads(sink, b, s_q, h_q, s_k, topk, page, lengths, parts, generator):
    """The small-head sparse kernel over the V3.2 FP8 cache (keys on the 64-row side, at most 32 heads on N in its
    16- and 32-row builds, codes decoded in place in the 16-bit tile), against the reference: invalid and
    out-of-range slots, NaN in unused cache rows, poisoned outputs, with and without an attention sink; and against
    the warp-specialized kernel on the same inputs."""
    from openmla.ops.gluon.decode_sparse_sm90 import sparse_decode_sm90_fwd

    inputs = make_sparse_decode_inputs(b, s_q, h_q, s_k, topk, page, 576, 512, torch.bfloat16, DEVICE, fp8=True,
                                       generator=generator, invalid_frac=0.1, topk_length=lengths, pad_blocks=True,
                                       softmax_scale=576**-0.55, sink=sink)
    poison_cuda_cache(1 << 28)
    args = (inputs["q"], inputs["k_cache"], inputs["indices"], 512, inputs["softmax_scale"], inputs["topk_length"])
    out, lse = sparse_decode_sm90_fwd(*args, num_sm_parts=parts, is_fp8=True, attn_sink=inputs["attn_sink"],
                                      small_heads=True)
    _sync()
    check_against_reference(inputs, out, lse)
    ws_out, ws_lse = sparse_decode_sm90_fwd(*args, num_sm_parts=parts, is_fp8=True, attn_sink=inputs["attn_sink"],
                                            small_heads=False)
    check_close("out vs the warp-specialized kernel", out.float(), ws_out.float(), TOL_OUT)
    check_close("lse vs the warp-specialized kernel", lse, ws_lse, TOL_LSE)


@pytest.mark.gpu
def test_shape_cache_serves_other_streams_and_captures():
    """A shape-keyed tensor made once (its stream synchronized) serves calls on other streams and CUDA-graph
    captures as it is; one first asked for inside a capture is made there and not kept."""
    from openmla.ops.launch import ShapeCache

    cache, made, cuda = ShapeCache(), [], torch.device("cuda", torch.cuda.current_device())

    def make():
        made.append(1)
        return torch.arange(4, device=cuda) * len(made)

    first = cache.get(cuda, ("a",), make)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        assert cache.get(cuda, ("a",), make) is first
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        assert cache.get(cuda, ("a",), make) is first
        fresh = cache.get(cuda, ("b",), make)  # made in the capture: written on replay only
    assert len(made) == 2 and list(cache.entries) == [(cuda, "a")]
    graph.replay()
    torch.cuda.synchronize()
    assert fresh.tolist() == [0, 2, 4, 6] and first.tolist() == [0, 1, 2, 3]


@pytest.mark.gpu
@pytest.mark.skipif(not _on_hopper(), reason="the Gluon sparse kernel runs on SM90 only")
def test_gluon_sparse_small_heads_trace_build(generator):
    """The small-head kernel's trace build stamps its seven events of each tile in order in the traced pieces, and
    computes what the plain build does."""
    from openmla.ops.gluon.decode_dense_sm90_ws import trace_buffer
    from openmla.ops.gluon.decode_sparse_sm90 import sparse_decode_sm90_fwd

    inputs = make_sparse_decode_inputs(8, 2, 16, 4096, 1024, 64, 576, 512, torch.bfloat16, DEVICE, fp8=True,
                                       generator=generator, invalid_frac=0.1, softmax_scale=576**-0.55)
    args = (inputs["q"], inputs["k_cache"], inputs["indices"], 512, inputs["softmax_scale"])
    buf = trace_buffer(DEVICE)
    out, lse = sparse_decode_sm90_fwd(*args, is_fp8=True, small_heads=True, trace=buf)
    _sync()
    check_against_reference(inputs, out, lse)
    plain_out, plain_lse = sparse_decode_sm90_fwd(*args, is_fp8=True, small_heads=True)
    assert torch.equal(out, plain_out) and torch.equal(lse, plain_lse)
    stamped = [tile[:7] for piece in buf.tolist() for tile in piece if all(t > 0 for t in tile[:7])]
    assert stamped and all(tile == sorted(tile) for tile in stamped)
