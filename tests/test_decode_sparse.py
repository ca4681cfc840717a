"""Token-sparse MLA decoding: the fp32 reference against a float64 brute force, and its conventions.

The reference (``openmla.reference.sparse_decode``) is what sparse kernels are tested against, so it is
itself tested here against :func:`helpers.brute_force_sparse_decode` (float64, entry by entry).
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import (
    Tol,
    brute_force_sparse_decode,
    check_close,
    dequantized,
    invalid_index_candidates,
    make_sparse_decode_inputs,
)

import openmla
from openmla import reference
from openmla.kvcache import dequantize_model1, model1_nominal_view, quantize_model1

TOL_FP32_OUT = Tol(2e-6, 1e-5, 1e-10)  # fp32 reference vs float64 brute force: fp32 rounding only
TOL_FP32_LSE = Tol(2e-6, 1e-6, None)


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
