"""CPU tier: the fp32 reference against a float64 brute force, its edge cases, and the test kit itself.

The reference (``openmla.reference``) is the spec every kernel is tested against, so it is itself
tested here against :func:`helpers.brute_force_dense_decode`, an independent loop, and against the
conventions of ``reference/flashmla-spec.md`` §3. The comparator and the input generator are tested
too: a check that cannot fail proves nothing.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import (
    BLOCK_TABLE_GARBAGE,
    TOL,
    Tol,
    brute_force_dense_decode,
    check_close,
    cos_diff,
    make_dense_decode_inputs,
    make_seqlens,
    poison_cuda_cache,
    poison_like,
)

from openmla import reference

# fp32 inputs: the reference does fp32 arithmetic, the brute force float64; they agree to fp32 rounding.
TOL_FP32_OUT = Tol(2e-6, 1e-5, 1e-10)
TOL_FP32_LSE = Tol(2e-6, 1e-6, None)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _small(b, s_q, s_k, h_q, h_kv, page, dtype=torch.float32, **kw) -> dict:
    """Tiny dense-decode inputs (d=64, dv=32) for the convention tests."""
    return make_dense_decode_inputs(b, s_q, s_k, h_q, h_kv, d=64, dv=32, page_block_size=page, dtype=dtype, **kw)


def _brute_vs_reference(inputs: dict, what: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Run both, compare with the right tolerances, return the reference's (out, lse)."""
    out, lse = reference.dense_decode(**inputs)
    out_bf, lse_bf = brute_force_dense_decode(**inputs)
    if out.dtype == torch.float32:
        tol_out, tol_lse = TOL_FP32_OUT, TOL_FP32_LSE
    else:  # both sides rounded to fp16/bf16 at the end: within an ulp, FlashMLA's tolerance covers it
        tol_out, tol_lse = TOL["dense_decode", "out"], TOL["dense_decode", "lse"]
    check_close(f"out{what}", out, out_bf.to(out.dtype), tol_out)
    check_close(f"lse{what}", lse, lse_bf.float(), tol_lse)
    return out, lse


# --------------------------------------------------------------------------------------------------
# Reference vs brute force
# --------------------------------------------------------------------------------------------------

# (b, s_q, s_k, h_q, h_kv, d, dv, page, dtype, varlen, zero_len_frac)
_BRUTE_CASES = [
    pytest.param(1, 1, 1, 1, 1, 64, 32, 1, "fp32", False, 0.0, id="b1-sq1-sk1-h1kv1-d64v32-p1-fp32"),
    pytest.param(1, 1, 5, 3, 1, 64, 32, 3, "fp32", False, 0.0, id="b1-sq1-sk5-h3kv1-d64v32-p3-fp32"),
    pytest.param(1, 2, 20, 4, 2, 64, 32, 16, "fp32", False, 0.0, id="b1-sq2-sk20-h4kv2-d64v32-p16-fp32"),
    pytest.param(3, 2, 5, 4, 2, 64, 32, 3, "fp32", False, 0.0, id="b3-sq2-sk5-h4kv2-d64v32-p3-fp32"),
    pytest.param(3, 4, 70, 6, 3, 64, 32, 16, "fp32", True, 0.0, id="b3-sq4-sk70-h6kv3-d64v32-p16-fp32-varlen"),
    pytest.param(1, 4, 1, 3, 1, 64, 32, 1, "fp32", False, 0.0, id="b1-sq4-sk1-h3kv1-d64v32-p1-fp32"),
    pytest.param(3, 2, 0, 4, 2, 64, 32, 64, "fp32", False, 0.0, id="b3-sq2-sk0-h4kv2-d64v32-p64-fp32"),
    pytest.param(3, 2, 70, 1, 1, 64, 32, 64, "fp16", True, 0.34, id="b3-sq2-sk70-h1kv1-d64v32-p64-fp16-varlen-zero"),
    pytest.param(1, 1, 70, 6, 3, 576, 512, 1, "fp32", False, 0.0, id="b1-sq1-sk70-h6kv3-d576v512-p1-fp32"),
    pytest.param(3, 1, 70, 3, 1, 576, 512, 64, "bf16", False, 0.0, id="b3-sq1-sk70-h3kv1-d576v512-p64-bf16"),
    pytest.param(1, 4, 20, 6, 3, 576, 512, 64, "fp16", False, 0.0, id="b1-sq4-sk20-h6kv3-d576v512-p64-fp16"),
    pytest.param(3, 4, 20, 1, 1, 576, 512, 3, "fp32", True, 0.34, id="b3-sq4-sk20-h1kv1-d576v512-p3-fp32-varlen-zero"),
    pytest.param(3, 2, 20, 4, 2, 512, 512, 16, "fp32", False, 0.0, id="b3-sq2-sk20-h4kv2-d512v512-p16-fp32"),
    pytest.param(3, 4, 5, 6, 3, 512, 512, 1, "bf16", False, 0.0, id="b3-sq4-sk5-h6kv3-d512v512-p1-bf16"),
    pytest.param(1, 2, 1, 3, 1, 512, 512, 3, "fp16", False, 0.0, id="b1-sq2-sk1-h3kv1-d512v512-p3-fp16"),
]


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("b, s_q, s_k, h_q, h_kv, d, dv, page, dtype, varlen, zero_len_frac", _BRUTE_CASES)
def test_reference_matches_brute_force(b, s_q, s_k, h_q, h_kv, d, dv, page, dtype, varlen, zero_len_frac, causal):
    kw = dict(varlen=varlen, zero_len_frac=zero_len_frac, causal=causal)
    inputs = make_dense_decode_inputs(
        b, s_q, s_k, h_q, h_kv, d=d, dv=dv, page_block_size=page, dtype=_DTYPES[dtype], **kw
    )
    out, lse = _brute_vs_reference(inputs)
    assert out.shape == (b, s_q, h_q, dv) and out.dtype == _DTYPES[dtype]
    assert lse.shape == (b, h_q, s_q) and lse.dtype == torch.float32
    assert not out.isnan().any() and not lse.isnan().any()


@pytest.mark.parametrize("scale", [0.3, 576**-0.55, 2.0], ids=["0.3", "d^-0.55", "2.0"])
def test_explicit_softmax_scale_matches_brute_force(scale):
    inputs = _small(2, 2, 9, 4, 2, 4, softmax_scale=scale, causal=True)
    _brute_vs_reference(inputs)


def test_twin_matches_dense_decode():
    """``flash_mla_with_kvcache`` serves dense decoding exactly as ``dense_decode`` does."""
    inputs = _small(3, 2, 20, 4, 2, 16, dtype=torch.float16, varlen=True, zero_len_frac=0.34, causal=True)
    out, lse = reference.dense_decode(**inputs)
    out_t, lse_t = reference.flash_mla_with_kvcache(**inputs, tile_scheduler_metadata=None, num_splits=None)
    assert torch.equal(out, out_t) and torch.equal(lse, lse_t)
    # FlashMLA's positional order: (q, k_cache, block_table, cache_seqlens, head_dim_v, meta, num_splits, scale, causal)
    args = [inputs[k] for k in ("q", "k_cache", "block_table", "cache_seqlens", "head_dim_v")]
    out_p, lse_p = reference.flash_mla_with_kvcache(*args, None, None, None, True)
    assert torch.equal(out, out_p) and torch.equal(lse, lse_p)


# --------------------------------------------------------------------------------------------------
# Conventions (spec §3)
# --------------------------------------------------------------------------------------------------


def test_hand_computed_gather_and_causal():
    """Uniform scores (q = 0): out is the mean of the visible values, lse = log(count).

    Page size 1 and a scrambled block table, each physical page holding the constant ``page + 1``,
    check that tokens are fetched through the table; causal rows see a growing prefix.
    """
    b, s_q, h_q, h_kv, d, dv = 1, 3, 2, 1, 8, 4
    k_cache = torch.arange(1, 6, dtype=torch.float32)[:, None, None, None].expand(5, 1, h_kv, d).contiguous()
    block_table = torch.tensor([[3, 0, 4, 1]], dtype=torch.int32)  # tokens: 4, 1, 5, 2
    q = torch.zeros(b, s_q, h_q, d)
    seqlens = torch.tensor([4], dtype=torch.int32)
    for fn in (reference.dense_decode, brute_force_dense_decode):
        out, lse = fn(q, k_cache, block_table, seqlens, dv, None, False)
        assert torch.allclose(out.double(), torch.full((b, s_q, h_q, dv), 3.0, dtype=torch.float64))
        assert torch.allclose(lse.double(), torch.full((b, h_q, s_q), math.log(4), dtype=torch.float64))
        out, lse = fn(q, k_cache, block_table, seqlens, dv, None, True)
        # row i sees tokens j <= 4 - 3 + i: {4, 1}, {4, 1, 5}, {4, 1, 5, 2}
        means = torch.tensor([2.5, 10 / 3, 3.0], dtype=torch.float64)
        counts = torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64)
        assert torch.allclose(out.double(), means[None, :, None, None].expand(b, s_q, h_q, dv))
        assert torch.allclose(lse.double(), counts.log()[None, None, :].expand(b, h_q, s_q))


def test_hand_computed_softmax():
    """Two keys with scores 0 and log(3): weights 1/4 and 3/4, lse = log(4)."""
    dv = 2
    q = torch.tensor([[[[1.0, 0.0, 0.0, 0.0]]]])  # [1, 1, 1, 4]
    k_cache = torch.tensor([[[[0.0, 10.0, 0.0, 0.0]]], [[[math.log(3), 2.0, 0.0, 0.0]]]])  # [2 pages, 1, 1, 4]
    table = torch.tensor([[0, 1]], dtype=torch.int32)
    seqlens = torch.tensor([2], dtype=torch.int32)
    for fn in (reference.dense_decode, brute_force_dense_decode):
        out, lse = fn(q, k_cache, table, seqlens, dv, 1.0, False)
        expected = torch.tensor([0.25 * 0 + 0.75 * math.log(3), 0.25 * 10 + 0.75 * 2], dtype=torch.float64)
        assert torch.allclose(out.double().flatten(), expected, atol=1e-6)
        assert abs(float(lse.flatten()[0]) - math.log(4)) < 1e-6
    assert reference.dense_decode(q, k_cache, table, seqlens, dv)[0].shape == (1, 1, 1, dv)


def test_zero_length_rows_give_zero_and_inf():
    lens = torch.tensor([0, 7, 0, 3], dtype=torch.int32)
    inputs = _small(4, 2, 7, 4, 2, 3, cache_seqlens=lens, causal=True)
    out, lse = reference.dense_decode(**inputs)
    for i in (0, 2):
        assert torch.equal(out[i], torch.zeros_like(out[i])), f"batch {i} (length 0) must give out = 0"
        assert torch.isposinf(lse[i]).all(), f"batch {i} (length 0) must give lse = +inf"
    for i in (1, 3):
        assert torch.isfinite(lse[i]).all() and out[i].abs().sum() > 0
        # the same sequence alone gives the same rows: empty neighbours do not disturb it
        alone = {
            **inputs,
            "q": inputs["q"][i : i + 1],
            "block_table": inputs["block_table"][i : i + 1],
            "cache_seqlens": lens[i : i + 1],
        }
        out_i, lse_i = reference.dense_decode(**alone)
        assert torch.equal(out_i[0], out[i]) and torch.equal(lse_i[0], lse[i])


def test_causal_with_fewer_keys_than_queries_masks_leading_rows():
    """Row ``i`` sees ``j <= s_k - s_q + i``: with ``s_k < s_q`` the first ``s_q - s_k`` rows see nothing."""
    s_q = 4
    lens = torch.tensor([2, 0, 4, 3, 1], dtype=torch.int32)
    inputs = _small(5, s_q, 4, 3, 1, 2, cache_seqlens=lens, causal=True)
    out, lse = _brute_vs_reference(inputs)
    for bi, s_k in enumerate(lens.tolist()):
        for i in range(s_q):
            visible = max(0, min(s_k, s_k - s_q + i + 1))
            if visible == 0:
                assert torch.equal(out[bi, i], torch.zeros_like(out[bi, i])), (bi, i)
                assert torch.isposinf(lse[bi, :, i]).all(), (bi, i)
            else:
                assert torch.isfinite(lse[bi, :, i]).all(), (bi, i)
                # lse over `visible` keys with small scores is close to log(visible)
                assert (lse[bi, :, i] - math.log(visible)).abs().max() < 0.1, (bi, i)
    # without causal only the empty sequence is empty
    out_nc, lse_nc = reference.dense_decode(**{**inputs, "causal": False})
    assert torch.isposinf(lse_nc[1]).all()
    assert torch.isfinite(lse_nc[[0, 2, 3, 4]]).all()


def test_causal_row_equals_truncated_noncausal_row():
    """Causal row ``i`` of an ``s_q``-token query is a 1-token query over the first ``s_k - s_q + i + 1`` keys."""
    s_q = 4
    inputs = _small(3, s_q, 20, 4, 2, 16, varlen=True, causal=True)
    out, lse = reference.dense_decode(**inputs)
    lens = inputs["cache_seqlens"]
    for i in range(s_q):
        one = {**inputs, "q": inputs["q"][:, i : i + 1], "cache_seqlens": lens - (s_q - 1 - i), "causal": False}
        out_i, lse_i = reference.dense_decode(**one)
        torch.testing.assert_close(out_i[:, 0], out[:, i], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(lse_i[:, :, 0], lse[:, :, i], rtol=1e-6, atol=1e-7)


def test_causal_is_ignored_for_single_token_queries():
    inputs = _small(3, 1, 20, 4, 2, 3, varlen=True, zero_len_frac=0.34)
    out_f, lse_f = reference.dense_decode(**{**inputs, "causal": False})
    out_t, lse_t = reference.dense_decode(**{**inputs, "causal": True})
    assert torch.equal(out_f, out_t) and torch.equal(lse_f, lse_t)


@pytest.mark.parametrize("page", [1, 3, 16, 64], ids=lambda p: f"p{p}")
@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_unused_cache_slots_never_reach_output(page, causal):
    """NaN (the generator's filler), +inf or huge values past the length change nothing, bit for bit."""
    inputs = _small(3, 2, 20, 4, 2, page, dtype=torch.bfloat16, varlen=True, zero_len_frac=0.34, causal=causal)
    unused = inputs["k_cache"].isnan()
    assert unused.any(), "the generator must leave NaN past the lengths for this test to mean anything"
    out, lse = reference.dense_decode(**inputs)
    assert not out.isnan().any() and not lse.isnan().any() and not torch.isneginf(lse).any()
    for filler in (float("inf"), -1e30, 0.0):
        k_cache = inputs["k_cache"].masked_fill(unused, filler)
        out2, lse2 = reference.dense_decode(**{**inputs, "k_cache": k_cache})
        assert torch.equal(out, out2) and torch.equal(lse, lse2), f"filler {filler} changed the result"


@pytest.mark.parametrize("page", [1, 3, 64], ids=lambda p: f"p{p}")
def test_block_table_entries_past_the_length_are_never_read(page):
    """Point every entry past a sequence's last page at a NaN page (in range, also as -1): nothing changes."""
    inputs = _small(3, 2, 20, 3, 1, page, varlen=True, zero_len_frac=0.34, causal=True)
    table = inputs["block_table"]
    garbage = table == BLOCK_TABLE_GARBAGE
    assert garbage.any()
    out, lse = reference.dense_decode(**inputs)
    k_cache = inputs["k_cache"]
    nan_page = torch.full_like(k_cache[:1], float("nan"))
    k_cache = torch.cat([k_cache, nan_page])  # its index is num_blocks, which -1 also reaches
    for filler in (k_cache.shape[0] - 1, -1, 0):
        table2 = table.masked_fill(garbage, filler)
        out2, lse2 = reference.dense_decode(**{**inputs, "k_cache": k_cache, "block_table": table2})
        assert torch.equal(out, out2) and torch.equal(lse, lse2), f"block-table filler {filler} was read"


def test_default_softmax_scale_is_d_to_the_minus_half():
    inputs = make_dense_decode_inputs(2, 2, 9, 4, 2, d=576, dv=512, page_block_size=64, dtype=torch.float32)
    out, lse = reference.dense_decode(**inputs)
    out_e, lse_e = reference.dense_decode(**{**inputs, "softmax_scale": 576**-0.5})
    assert torch.equal(out, out_e) and torch.equal(lse, lse_e)
    out_v, _ = reference.dense_decode(**{**inputs, "softmax_scale": 512**-0.5})  # not dv, not 192
    assert not torch.equal(out, out_v)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_output_dtype_and_shapes(dtype):
    b, s_q, h_q, dv = 3, 2, 6, 32
    inputs = make_dense_decode_inputs(
        b, s_q, 5, h_q, 3, d=64, dv=dv, page_block_size=3, dtype=_DTYPES[dtype], zero_len_frac=0.34
    )
    out, lse = reference.dense_decode(**inputs)
    assert out.dtype == _DTYPES[dtype] and out.shape == (b, s_q, h_q, dv) and out.is_contiguous()
    assert lse.dtype == torch.float32 and lse.shape == (b, h_q, s_q)
    assert out.device == inputs["q"].device and lse.device == inputs["q"].device


# --------------------------------------------------------------------------------------------------
# The comparator
# --------------------------------------------------------------------------------------------------

_T = Tol(1e-3, 1e-2, 1e-6)


def test_check_close_passes_on_equal_inputs_with_specials():
    x = torch.randn(4, 5, dtype=torch.float64)
    x[0, 0], x[1, 1], x[2, 2] = math.inf, -math.inf, math.nan
    check_close("equal", x, x.clone(), _T)
    check_close("zeros", torch.zeros(3), torch.zeros(3), _T)
    check_close("empty", torch.zeros(0, 4), torch.zeros(0, 4), _T)


def test_check_close_fails_on_nan_mismatch():
    a, r = torch.ones(8), torch.ones(8)
    a[3] = math.nan
    with pytest.raises(AssertionError, match=r"nanfield: NaN positions differ at 1 of 8"):
        check_close("nanfield", a, r, Tol(1e9, 1e9, None))
    with pytest.raises(AssertionError, match="NaN"):
        check_close("nanfield", r, a, Tol(1e9, 1e9, None))


@pytest.mark.parametrize(
    "ans_val, ref_val",
    [(math.inf, 1.0), (1.0, -math.inf), (math.inf, -math.inf)],
    ids=["inf-vs-finite", "finite-vs-neginf", "inf-vs-neginf"],
)
def test_check_close_fails_on_inf_position_mismatch(ans_val, ref_val):
    a, r = torch.ones(2, 3), torch.ones(2, 3)
    a[1, 2], r[1, 2] = ans_val, ref_val
    with pytest.raises(AssertionError, match=r"inf positions differ .*\(1, 2\)"):
        check_close("lse", a, r, Tol(1e9, 1e9, None))


def test_check_close_fails_on_too_large_error_and_reports_worst():
    r = torch.linspace(0.5, 1.0, 100)
    a = r.clone()
    a[17] += 0.1  # abs err 0.1 > 1e-3 and rel err > 1e-2
    a[42] += 0.05
    with pytest.raises(AssertionError) as info:
        check_close("out", a, r, Tol(1e-3, 1e-2, None))
    msg = str(info.value)
    assert "out: 2 of 100 elements" in msg and "max abs err 1.000e-01" in msg
    assert msg.index("(17,)") < msg.index("(42,)"), "worst element first"


def test_check_close_element_passes_on_abs_or_rel():
    r = torch.tensor([1000.0, 1e-4])
    a = torch.tensor([1001.0, 1e-4 + 5e-4])  # [0]: rel 1e-3 ok, abs 1 bad; [1]: abs 5e-4 ok, rel ~5 bad
    check_close("either", a, r, Tol(1e-3, 1e-2, None))
    with pytest.raises(AssertionError, match="1 of 2"):
        check_close("abs-only", a, r, Tol(1e-3, 1e-4, None))
    with pytest.raises(AssertionError, match="1 of 2"):
        check_close("rel-only", a, r, Tol(1e-5, 1e-2, None))


def test_check_close_bounds_are_strict():
    a, r = torch.tensor([0.5]), torch.tensor([0.25])  # abs err exactly 0.25
    with pytest.raises(AssertionError):
        check_close("strict", a, r, Tol(0.25, 0.5, None))
    check_close("strict", a, r, Tol(0.2500001, 0.5, None))


def test_check_close_fails_on_cos_diff():
    r = torch.randn(1000, dtype=torch.float64)
    a = r + 1e-3 * torch.randn(1000, dtype=torch.float64)  # elementwise fine under abs 1e-2
    cd = cos_diff(a, r)
    assert 0 < cd < 1e-5
    check_close("cos", a, r, Tol(1e-2, 0.0, 1e-5))
    with pytest.raises(AssertionError, match="cos_diff"):
        check_close("cos", a, r, Tol(1e-2, 0.0, cd / 2))
    # no cosine check when the reference is (almost) all zero
    assert cos_diff(torch.ones(4), torch.zeros(4)) == 0.0
    check_close("cos0", torch.full((4,), 1e-5), torch.zeros(4), Tol(1e-4, 0.0, 1e-9))


def test_check_close_shape_and_dtype_rules():
    with pytest.raises(AssertionError, match="shape mismatch"):
        check_close("s", torch.zeros(2, 3), torch.zeros(3, 2), _T)
    with pytest.raises(AssertionError, match="dtype mismatch"):
        check_close("d", torch.zeros(3, dtype=torch.float32), torch.zeros(3, dtype=torch.float64), _T)
    with pytest.raises(AssertionError, match="dtype mismatch"):  # the reference side is the precise one
        check_close("d", torch.zeros(3, dtype=torch.float32), torch.zeros(3, dtype=torch.bfloat16), _T)
    # a bf16/fp16 answer against an fp32 reference is allowed, compared as ans.double() vs ref.double()
    r = torch.tensor([1.0 + 2**-10, 3.0])
    check_close("bf16", r.bfloat16(), r, TOL["dense_decode", "out"])
    check_close("fp16", r.half(), r, TOL["dense_decode", "out"])
    with pytest.raises(AssertionError):  # 1 + 2^-10 rounds to 1 in bf16: error 2^-10 fails a tight tolerance
        check_close("bf16", r.bfloat16(), r, Tol(1e-6, 1e-6, None))


def test_tolerance_table():
    assert TOL["dense_decode", "out"] == Tol(8e-4, 2.01 / 128, 5e-6)
    assert TOL["dense_decode", "lse"] == Tol(1e-6, 8.01 / 65536, None)
    assert TOL["sparse_decode", "out"] == Tol(1e-3, 2.01 / 128, 5e-6)
    assert TOL["sparse_prefill", "out"] == Tol(8e-4, 3.01 / 128, 7e-6)
    assert TOL["sparse_prefill", "max_logits"] == TOL["sparse_prefill", "lse"] == Tol(1e-6, 2.01 / 65536, None)


# --------------------------------------------------------------------------------------------------
# The input generator and poisoning
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", [1, 3, 64], ids=lambda p: f"p{p}")
def test_generator_layout(page):
    b, s_q, s_k, h_q, h_kv, d = 5, 2, 40, 4, 2, 16
    inputs = make_dense_decode_inputs(
        b, s_q, s_k, h_q, h_kv, d=d, dv=8, page_block_size=page, dtype=torch.float16, varlen=True, zero_len_frac=0.2
    )
    q, k_cache, table, lens = inputs["q"], inputs["k_cache"], inputs["block_table"], inputs["cache_seqlens"]
    assert q.shape == (b, s_q, h_q, d) and q.dtype == torch.float16 and q.abs().max() <= 1
    assert table.dtype == torch.int32 and lens.dtype == torch.int32 and lens.shape == (b,)
    max_blocks = table.shape[1]
    assert max_blocks % 4 == 0 and max_blocks * page >= int(lens.max())
    assert k_cache.shape == (b * max_blocks, page, h_kv, d)
    assert (lens == 0).sum() == 1  # ceil(0.2 * 5)
    assert ((lens == 0) | (lens >= s_q)).all() and (lens <= 2 * s_k).all()

    seen = []
    for bi, n in enumerate(lens.tolist()):
        used = -(-n // page)
        assert (table[bi, used:] == BLOCK_TABLE_GARBAGE).all()
        pages = table[bi, :used].tolist()
        seen += pages
        for j, p in enumerate(pages):  # slots before the length are data, after it NaN
            slots_nan = k_cache[p].isnan().all(dim=(-1, -2))
            valid = min(page, n - j * page)
            assert not k_cache[p, :valid].isnan().any() and slots_nan[valid:].all()
    assert len(set(seen)) == len(seen), "a physical page is used twice"
    unused_pages = sorted(set(range(k_cache.shape[0])) - set(seen))
    assert k_cache[unused_pages].isnan().all()


def test_generator_is_deterministic_and_fixed_lengths():
    kw = dict(b=3, s_q=2, s_k=20, h_q=4, h_kv=2, d=16, dv=8, page_block_size=3, varlen=True, zero_len_frac=0.34)
    x = make_dense_decode_inputs(**kw, generator=torch.Generator().manual_seed(1))
    y = make_dense_decode_inputs(**kw, generator=torch.Generator().manual_seed(1))
    for key in ("q", "k_cache", "block_table", "cache_seqlens"):
        assert torch.equal(x[key].float().nan_to_num(7.0), y[key].float().nan_to_num(7.0)), key
    assert torch.equal(make_seqlens(4, 2, 9), torch.full((4,), 9, dtype=torch.int32))
    assert make_seqlens(6, 2, 9, zero_len_frac=0.5).eq(0).sum() == 3


def test_poisoning_helpers():
    for t in (torch.zeros(3), torch.zeros(2, dtype=torch.bfloat16)):
        p = poison_like(t)
        assert p.shape == t.shape and p.dtype == t.dtype and p.isnan().all()
    assert (poison_like(torch.zeros(2, dtype=torch.int32)) == 2**31 - 1).all()
    poison_cuda_cache(1 << 20, device="cpu")  # a no-op off CUDA; must not raise
