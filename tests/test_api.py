"""The public API's contract: FlashMLA-compatible names and metadata forms, typed errors, dispatch."""

from __future__ import annotations

import inspect
import os

import pytest
import torch
from helpers import make_dense_decode_inputs, make_sparse_decode_inputs, quantize_dense_decode_inputs

import openmla
from openmla import FlashMLASchedMeta, InvalidArgumentError, SchedMetaMismatchError, UnsupportedError
from openmla._runtime import gluon_available
from openmla.ops.schedule import (
    MAX_SPLITS,
    SEGMENT_PLAN_MAX_BATCH,
    plan_segments,
    plan_segments_torch,
    plan_splitkv,
    plan_splitkv_torch,
)


def tiny_inputs(generator, **kw):
    args = dict(b=2, s_q=1, s_k=40, h_q=4, h_kv=1, d=64, dv=32, page_block_size=16, dtype=torch.float16,
                device="cpu", varlen=True, generator=generator)
    args.update(kw)
    return make_dense_decode_inputs(**args)


def call(inputs, **overrides):
    kw = dict(q=inputs["q"], k_cache=inputs["k_cache"], block_table=inputs["block_table"],
              cache_seqlens=inputs["cache_seqlens"], head_dim_v=inputs["head_dim_v"], tile_scheduler_metadata=None)
    kw.update(overrides)
    return openmla.flash_mla_with_kvcache(**kw)


def test_flashmla_names_and_defaults_match():
    """``import openmla as flash_mla`` must take the same arguments, in the same order, with the same defaults."""
    params = list(inspect.signature(openmla.flash_mla_with_kvcache).parameters.values())
    names = [p.name for p in params]
    assert names[:16] == [
        "q", "k_cache", "block_table", "cache_seqlens", "head_dim_v", "tile_scheduler_metadata", "num_splits",
        "softmax_scale", "causal", "is_fp8_kvcache", "indices", "attn_sink", "extra_k_cache",
        "extra_indices_in_kvcache", "topk_length", "extra_topk_length",
    ]
    defaults = {p.name: p.default for p in params}
    assert defaults["causal"] is False and defaults["softmax_scale"] is None and defaults["num_splits"] is None
    assert all(p.kind == p.KEYWORD_ONLY for p in params[16:])
    for name in ("get_mla_metadata", "flash_mla_with_kvcache", "FlashMLASchedMeta"):
        assert hasattr(openmla, name)


def test_new_metadata_form_ignores_arguments():
    meta, none = openmla.get_mla_metadata()
    assert isinstance(meta, FlashMLASchedMeta) and none is None and not meta.have_initialized
    meta2, _ = openmla.get_mla_metadata(num_heads_k=1)  # FlashMLA v3 ignores whatever it is given
    assert isinstance(meta2, FlashMLASchedMeta)


def test_old_metadata_form_shapes_and_v1_keyword():
    lens = torch.tensor([5, 0, 300, 4096], dtype=torch.int32)
    sched, splits = openmla.get_mla_metadata(lens, 128, 1)
    assert sched.dtype == torch.int32 and sched.shape[1] == 8 and 1 <= sched.shape[0] <= 132
    assert splits.dtype == torch.int32 and splits.shape == (5,)
    sched_v1, splits_v1 = openmla.get_mla_metadata(lens, num_heads_per_head_k=128, num_heads_k=1)
    assert torch.equal(sched, sched_v1) and torch.equal(splits, splits_v1)
    with pytest.raises(InvalidArgumentError, match="int32"):
        openmla.get_mla_metadata(lens.long(), 128, 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the plan kernel on a GPU")
@pytest.mark.parametrize("parts", [1, 2, 3, 17, 132, 264])
@pytest.mark.parametrize("overhead", [5, 1, 0])
def test_split_plan_kernel_on_the_gpu_equals_the_torch_plan(parts, overhead, generator):
    """The plan kernel compiled and run on the GPU for every piece count, one included (Triton specializes an int
    argument equal to 1 as a constant; with num_parts=1 the kernel failed to lower on sm_90), against the torch
    twin's plan of the same lengths, with the dense kernels' per-request overhead and smaller ones."""
    lens = torch.randint(0, 5000, (37,), generator=generator, dtype=torch.int32)
    lens[::7] = 0
    sched, splits = plan_splitkv(lens.cuda(), parts, overhead=overhead)
    sched_t, splits_t = plan_splitkv_torch(lens, parts, overhead=overhead)
    assert torch.equal(sched.cpu(), sched_t) and torch.equal(splits.cpu(), splits_t)
    small = lens[:SEGMENT_PLAN_MAX_BATCH]
    for max_splits in (MAX_SPLITS, None):
        sched, splits = plan_segments(small.cuda(), parts, max_splits, overhead)
        sched_t, splits_t = plan_segments_torch(small, parts, max_splits, overhead)
        assert torch.equal(sched.cpu(), sched_t) and torch.equal(splits.cpu(), splits_t)


@pytest.mark.parametrize("parts", [1, 3, 17, 132, 264])
@pytest.mark.parametrize("batch", ["ragged", "one long"])
@pytest.mark.parametrize("overhead", [5, 1, 0])
def test_split_plan_covers_every_token_once(parts, batch, overhead, generator):
    if batch == "ragged":
        lens = torch.randint(0, 5000, (37,), generator=generator, dtype=torch.int32)
        lens[::7] = 0
    else:  # b=1 over many SMs: the cap on pieces per request decides the payload
        lens = torch.tensor([int(torch.randint(3000, 40000, (1,), generator=generator))], dtype=torch.int32)
    sched, splits = plan_splitkv(lens, parts, overhead=overhead)
    sched_t, splits_t = plan_splitkv_torch(lens, parts, overhead=overhead)
    assert torch.equal(sched, sched_t) and torch.equal(splits, splits_t)
    check_plan_covers_every_token_once(sched, splits, lens)
    # every piece has at most one payload of work: the plan is balanced
    assert int(splits[-1]) <= len(lens) + parts
    # the last program of a request merges all its partials: never more than MAX_SPLITS of them
    assert int((splits[1:] - splits[:-1]).max()) <= MAX_SPLITS
    if batch == "one long" and parts >= MAX_SPLITS:
        # the payload is rounded up from the capped count, so most of the cap, not all of it: at the dense kernels'
        # overhead of 5 units this draw gives 16 of 16, at 1 unit 14
        floor = MAX_SPLITS - 1 if overhead == 5 else MAX_SPLITS - 2
        assert int(splits[-1]) >= floor, "the cap should still spread a long request over most of its pieces"


def check_plan_covers_every_token_once(sched: torch.Tensor, splits: torch.Tensor, lens: torch.Tensor) -> list:
    """Each token of each request in exactly one piece, each request's pieces counted in ``splits`` and numbered
    0, 1, ... in piece order; returns each piece's 64-token blocks."""
    cover = [torch.zeros(max(int(n), 1), dtype=torch.int32) for n in lens]
    owners = [0] * len(lens)
    blocks = []
    for p in range(sched.shape[0]):
        begin, begin_tok, end, end_tok, begin_split = sched[p, :5].tolist()
        blocks.append(0)
        for i in range(begin, end + 1):
            lo = begin_tok if i == begin else 0
            hi = min(end_tok if i == end else int(lens[i]), int(lens[i]))
            cover[i][lo:hi] += 1
            split = begin_split if i == begin else 0
            assert split == owners[i], f"request {i}: piece {p} holds split {split}, expected {owners[i]}"
            owners[i] += 1
            blocks[-1] += max(-(-(hi - lo) // 64), 1 if int(lens[i]) == 0 else 0)
    for i, n in enumerate(lens.tolist()):
        assert torch.all(cover[i][:n] == 1), f"request {i}: tokens covered {cover[i][:n].unique().tolist()} times"
        assert owners[i] == int(splits[i + 1] - splits[i]) >= 1
    return blocks


def _segment_batch(kind: str, generator) -> torch.Tensor:
    if kind == "ragged":
        lens = torch.randint(0, 5000, (13,), generator=generator, dtype=torch.int32)
        lens[::5] = 0
        return lens
    if kind == "one long":
        return torch.tensor([int(torch.randint(3000, 40000, (1,), generator=generator))], dtype=torch.int32)
    if kind == "uniform":
        return torch.full((16,), 8192, dtype=torch.int32)
    return torch.tensor([1, 64, 65, 128, 0, 129], dtype=torch.int32)  # block edges


@pytest.mark.parametrize("parts", [1, 3, 17, 66, 264])
@pytest.mark.parametrize("kind", ["ragged", "one long", "uniform", "edges"])
@pytest.mark.parametrize("max_splits", [MAX_SPLITS, None, 2])
@pytest.mark.parametrize("overhead", [5, 0])
def test_segment_plan_covers_every_token_once(parts, kind, max_splits, overhead, generator):
    """The per-piece-overhead plan (the kernel, under the interpreter without a GPU) equals its host twin, covers
    every token once, keeps each piece to ``width`` blocks and each request to ``max_splits`` pieces, and uses no
    more pieces than it has."""
    lens = _segment_batch(kind, generator)
    sched, splits = plan_segments(lens, parts, max_splits, overhead)
    sched_t, splits_t = plan_segments_torch(lens, parts, max_splits, overhead)
    assert torch.equal(sched.cpu(), sched_t) and torch.equal(splits.cpu(), splits_t)
    blocks = check_plan_covers_every_token_once(sched_t, splits_t, lens)
    nblk = [max(-(-int(n) // 64), 1) for n in lens]
    cap = max_splits or 1 << 30
    width = max(-(-(sum(nblk) + overhead * len(nblk)) // parts), -(-max(nblk) // (cap - 1)), 1)
    assert max(blocks) <= width, f"a piece holds {max(blocks)} blocks, more than {width}"
    assert int((splits_t[1:] - splits_t[:-1]).max()) <= cap


def test_segment_plan_leaves_no_one_block_tail():
    """Why small batches take the per-piece-overhead plan: 16 requests of 8192 tokens over 66 pieces (h_q=128 on a
    132-SM card) come out as four pieces a request of at most 33 blocks, where the even cut of the unit line gives
    five, the fifth one block beside the next request's start; and plan_dense picks it up to
    SEGMENT_PLAN_MAX_BATCH requests."""
    lens = torch.full((16,), 8192, dtype=torch.int32)
    sched, splits = plan_segments_torch(lens, 66, None)
    assert (splits[1:] - splits[:-1]).tolist() == [4] * 16
    assert max(check_plan_covers_every_token_once(sched, splits, lens)) == 33
    even_sched, even_splits = plan_splitkv_torch(lens, 66, None)
    assert (even_splits[1:] - even_splits[:-1]).tolist() == [5] * 16
    check_plan_covers_every_token_once(even_sched, even_splits, lens)
    # piece 4: request 0's last block (tokens 8128..8191), then request 1's first 27 blocks
    assert even_sched[4, :5].tolist() == [0, 8128, 1, 27 * 64, 4]
    from openmla.metadata import plan_dense

    small = torch.full((SEGMENT_PLAN_MAX_BATCH,), 3000, dtype=torch.int32)
    for batch, twin in ((small, plan_segments_torch), (torch.cat([small, small[:1]]), plan_splitkv_torch)):
        got = plan_dense(batch, 128, 1, backend="gluon", bounded=False)
        want = twin(batch, 66, None)
        assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])


@pytest.mark.parametrize("overhead", [0, 1, 5])
def test_dense_plan_charges_requests_what_dense_plan_overhead_says(overhead, monkeypatch):
    """plan_dense reads DENSE_PLAN_OVERHEAD at each call (the A/B knob of ``kernel_times --plan-overhead``) and hands
    it to both plans: a ragged batch above SEGMENT_PLAN_MAX_BATCH comes out as plan_splitkv_torch's cut with that
    overhead, a small one as plan_segments_torch's, each covering every token once."""
    import openmla.metadata
    from openmla.metadata import plan_dense

    monkeypatch.setenv("OPENMLA_NUM_SMS", "132")
    monkeypatch.setattr(openmla.metadata, "DENSE_PLAN_OVERHEAD", overhead)
    g = torch.Generator().manual_seed(0)
    ragged = torch.normal(8192.0, 4096.0, (SEGMENT_PLAN_MAX_BATCH + 64,), generator=g).round().clamp(1, 16384).int()
    for lens, twin in ((ragged, plan_splitkv_torch), (ragged[:SEGMENT_PLAN_MAX_BATCH], plan_segments_torch)):
        sched, splits = plan_dense(lens, 128, 1, backend="gluon", bounded=False)
        want = twin(lens, 66, None, overhead)
        assert torch.equal(sched.cpu(), want[0]) and torch.equal(splits.cpu(), want[1])
        check_plan_covers_every_token_once(sched.cpu(), splits.cpu(), lens)
    # the overhead moves the cuts: with none, the big batch's pieces hold equal blocks (to the block a cut
    # request's two pieces share), the last one the remainder
    blocks = check_plan_covers_every_token_once(*plan_dense(ragged, 128, 1, backend="gluon", bounded=False), ragged)
    spread = max(blocks[:-1]) - min(blocks[:-1])
    assert spread <= 1 if overhead == 0 else spread > 1, blocks
    assert blocks[-1] <= max(blocks[:-1])


def test_reused_sched_meta_with_other_shape_raises(generator):
    inputs = tiny_inputs(generator)
    meta, _ = openmla.get_mla_metadata()
    call(inputs, tile_scheduler_metadata=meta, backend="reference")
    other = tiny_inputs(generator, b=3)
    with pytest.raises(SchedMetaMismatchError, match="b: planned for 2, this call has 3"):
        call(other, tile_scheduler_metadata=meta, backend="reference")
    with pytest.raises(SchedMetaMismatchError, match="causal"):
        call(inputs, tile_scheduler_metadata=meta, causal=True, backend="reference")


def test_num_splits_with_sched_meta_raises(generator):
    inputs = tiny_inputs(generator)
    meta, _ = openmla.get_mla_metadata()
    with pytest.raises(InvalidArgumentError, match="num_splits must be None"):
        call(inputs, tile_scheduler_metadata=meta, num_splits=torch.zeros(3, dtype=torch.int32))


def test_old_metadata_tensor_without_num_splits_raises(generator):
    inputs = tiny_inputs(generator)
    sched, _ = openmla.get_mla_metadata(inputs["cache_seqlens"], 4, 1)
    with pytest.raises(InvalidArgumentError, match="num_splits is None"):
        call(inputs, tile_scheduler_metadata=sched)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda x: x.update(q=x["q"].float()), "k_cache: got dtype torch.float16; expected torch.float32"),
        (lambda x: x.update(q=x["q"][0]), "q: got shape"),
        (lambda x: x.update(k_cache=x["k_cache"].to(torch.bfloat16)), "k_cache: got dtype torch.bfloat16"),
        (lambda x: x.update(k_cache=x["k_cache"][..., :48]), "k_cache: got head dim 48"),
        (lambda x: x.update(q=x["q"].transpose(-1, -2).contiguous().transpose(-1, -2)), "contiguous last dimension"),
        (lambda x: x.update(block_table=x["block_table"].long()), "block_table: got dtype torch.int64"),
        (lambda x: x.update(cache_seqlens=x["cache_seqlens"].long()), "cache_seqlens: got dtype torch.int64"),
        (lambda x: x.update(cache_seqlens=x["cache_seqlens"][:1]), r"cache_seqlens: got shape \(1,\)"),
        (lambda x: x.update(block_table=x["block_table"][:1]), "block_table: got shape"),
        (lambda x: x.update(k_cache=x["k_cache"].expand(-1, -1, 3, -1)), "h_kv=3"),
        (lambda x: x.update(head_dim_v=100), "head_dim_v: got 100"),
        (lambda x: x.update(block_table=None), "needs block_table and cache_seqlens"),
    ],
    ids=["q-dtype-vs-cache", "q-dims", "cache-dtype", "cache-head-dim", "q-strides", "table-int64",
         "seqlens-int64", "seqlens-shape", "table-rows", "h_q-not-divisible", "head-dim-v", "no-table"],
)
def test_bad_input_raises_typed_error_naming_the_argument(mutate, match, generator):
    inputs = tiny_inputs(generator, h_q=4)
    mutate(inputs)
    with pytest.raises(InvalidArgumentError, match=match):
        call(inputs)


def test_seqlens_past_block_table_raise_when_planning(generator):
    inputs = tiny_inputs(generator)
    covered = inputs["block_table"].shape[1] * inputs["k_cache"].shape[1]
    inputs["cache_seqlens"][0] = covered + 1
    with pytest.raises(InvalidArgumentError, match=f"cache_seqlens\\[0\\] = {covered + 1}.*covers {covered} tokens"):
        call(inputs, backend="triton" if openmla._runtime.interpret_mode() else "reference")


def test_page_outside_cache_raises_when_planning(generator):
    if not openmla._runtime.interpret_mode():
        pytest.skip("value checks run on the Triton path; the interpreter is off")
    inputs = tiny_inputs(generator)
    inputs["block_table"][1, 0] = 10_000
    with pytest.raises(InvalidArgumentError, match=r"block_table\[1, 0\] = 10000"):
        call(inputs, backend="triton")


@pytest.mark.parametrize(
    "arg", ["attn_sink", "topk_length", "extra_k_cache", "extra_indices_in_kvcache", "extra_topk_length"]
)
def test_sparse_only_arguments_without_indices_are_refused_not_ignored(arg, generator):
    inputs = tiny_inputs(generator)
    with pytest.raises(InvalidArgumentError, match=f"{arg}: got a tensor with indices=None"):
        call(inputs, **{arg: torch.zeros(1)})


def test_descales_are_keyword_only_after_kv_format():
    """Where the SGLang fork puts them among its extra arguments: ..., kv_format, descale_q, descale_k."""
    params = inspect.signature(openmla.flash_mla_with_kvcache).parameters
    names = list(params)
    assert names.index("kv_format") + 1 == names.index("descale_q") == names.index("descale_k") - 1
    assert params["descale_q"].default is None and params["descale_k"].default is None


def fp8_tiny_inputs(generator, q_dtype=torch.float16, **kw):
    args = dict(b=2, s_q=1, s_k=40, h_q=4, h_kv=1, d=64, dv=32, page_block_size=16, dtype=torch.float32,
                device="cpu", varlen=True, generator=generator)
    args.update(kw)
    return quantize_dense_decode_inputs(make_dense_decode_inputs(**args), q_dtype)


def fp8_call(inputs, **overrides):
    kw = dict(is_fp8_kvcache=True, descale_q=inputs["descale_q"], descale_k=inputs["descale_k"], backend="reference")
    kw.update(overrides)
    return call(inputs, **kw)


@pytest.mark.parametrize(
    "q_dtype, mutate, overrides, match",
    [
        (torch.float16, None, dict(descale_k=None),
         r"descale_k: got None; expected a float32 \[1\] tensor on q's device"),
        (torch.float16, None, dict(descale_k=torch.ones(1, dtype=torch.float16)),
         r"descale_k: got dtype torch.float16, shape \(1,\); expected a float32 \[1\]"),
        (torch.float16, None, dict(descale_k=torch.ones(2)), r"descale_k: got dtype torch.float32, shape \(2,\)"),
        (torch.float16, None, dict(descale_k=0.5), "descale_k: got float"),
        (torch.float16, None, dict(descale_k=torch.ones(1, device="meta")), "descale_k: got a tensor on meta"),
        (torch.float8_e4m3fn, None, dict(descale_q=None), r"descale_q: got None; expected a float32 \[1\]"),
        (torch.float16, None, dict(descale_q=torch.ones(1)),
         "descale_q: got a tensor with a torch.float16 q; expected None"),
        (torch.float16, lambda x: x.update(k_cache=x["k_cache"].float().half()), {},
         "k_cache: got dtype torch.float16; expected torch.uint8 or torch.int8 or torch.float8_e4m3fn"),
        (torch.float16, lambda x: x.update(k_cache=x["k_cache"][..., :48]), {}, "k_cache: got head dim 48"),
        (torch.float16, None, dict(is_fp8_kvcache=False),
         "is_fp8_kvcache: got False with a torch.float8_e4m3fn k_cache"),
        (torch.float8_e4m3fn, lambda x: x.update(q=x["q"].view(torch.uint8)), {}, "q: got dtype torch.uint8"),
        (torch.float16, lambda x: x.update(k_cache=x["k_cache"].float().half()),
         dict(is_fp8_kvcache=None, descale_q=None), "descale_k: got a tensor with a torch.float16 k_cache"),
    ],
    ids=["no-descale-k", "descale-k-fp16", "descale-k-shape", "descale-k-float", "descale-k-device",
         "no-descale-q", "descale-q-with-fp16-q", "cache-fp16", "cache-head-dim", "flag-false", "q-bytes",
         "descale-with-16bit-cache"],
)
def test_bad_fp8_dense_input_raises_typed_error(q_dtype, mutate, overrides, match, generator):
    inputs = fp8_tiny_inputs(generator, q_dtype)
    if mutate is not None:
        mutate(inputs)
    with pytest.raises(InvalidArgumentError, match=match):
        fp8_call(inputs, **overrides)


def test_fp8_dense_call_forms(generator):
    """The flag may be left to the cache's dtype; uint8 bytes are the same cache; descales with indices are refused."""
    inputs = fp8_tiny_inputs(generator, torch.float8_e4m3fn)
    out, lse = fp8_call(inputs)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    inferred = fp8_call(inputs, is_fp8_kvcache=None)
    as_bytes = fp8_call(dict(inputs, k_cache=inputs["k_cache"].view(torch.uint8)))
    for other in (inferred, as_bytes):
        assert torch.equal(out, other[0]) and torch.equal(lse, other[1])
    with pytest.raises(UnsupportedError, match="backend='gluon' cannot serve dense_fp8_decode"):
        fp8_call(inputs, backend="gluon")
    sparse = sparse_inputs(generator)
    with pytest.raises(InvalidArgumentError, match="descale_k: got a tensor with indices"):
        sparse_call(sparse, descale_k=torch.ones(1), backend="reference")


def test_old_metadata_for_dense_fp8(generator):
    """``get_mla_metadata(..., is_fp8_kvcache=True)`` and the fork's ``get_mla_decoding_metadata`` plan dense FP8."""
    inputs = fp8_tiny_inputs(generator, torch.float8_e4m3fn)
    lens = inputs["cache_seqlens"]
    sched, splits = openmla.get_mla_metadata(lens, 4, 1, is_fp8_kvcache=True)
    sched_sgl, splits_sgl = openmla.get_mla_decoding_metadata(lens, 4, 1, is_fp8_kvcache=True, use_legacy=True)
    assert torch.equal(sched, sched_sgl) and torch.equal(splits, splits_sgl)
    assert sched.shape[1] == 8 and splits.shape == (3,)
    out, lse = fp8_call(inputs, tile_scheduler_metadata=sched, num_splits=splits)
    ref_out, ref_lse = openmla.reference.dense_decode(**inputs)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)


def sparse_inputs(generator, **kw):
    args = dict(b=2, s_q=2, h_q=3, s_k=20, topk=5, page_block_size=4, d_qk=64, d_v=32, dtype=torch.float16,
                generator=generator)
    args.update(kw)
    return make_sparse_decode_inputs(**args)


def sparse_call(inputs, **overrides):
    kw = dict(inputs, block_table=None, cache_seqlens=None, tile_scheduler_metadata=None)
    kw.update(overrides)
    return openmla.flash_mla_with_kvcache(**kw)


def _v32_inputs(generator, **kw):
    return sparse_inputs(generator, d_qk=576, d_v=512, fp8=True, **kw)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda x: x.update(indices=x["indices"].long()), "indices: got dtype torch.int64; expected torch.int32"),
        (lambda x: x.update(indices=x["indices"][0]), r"indices: got shape \(2, 5\) \(2 dims\); expected 3 dims"),
        (lambda x: x.update(indices=x["indices"][:1]),
         r"indices: got shape \(1, 2, 5\); expected \[b=2, s_q=2, topk\]"),
        (lambda x: x.update(indices=x["indices"][:, :, :0]), r"expected \[b=2, s_q=2, topk\] with topk >= 1"),
        (lambda x: x.update(attn_sink=torch.zeros(3, dtype=torch.float16)), "attn_sink: got dtype torch.float16"),
        (lambda x: x.update(attn_sink=torch.zeros(4)), r"attn_sink: got shape \(4,\).*\[h_q=3\]"),
        (lambda x: x.update(topk_length=torch.zeros(2, dtype=torch.int64)), "topk_length: got dtype torch.int64"),
        (lambda x: x.update(topk_length=torch.zeros(3, dtype=torch.int32)), r"topk_length: got shape \(3,\)"),
        (lambda x: x.update(topk_length=torch.tensor([6, 0], dtype=torch.int32)),
         r"topk_length\[0\]: got 6; expected a length in \[0, 5\]"),
        (lambda x: x.update(topk_length=torch.tensor([1, -1], dtype=torch.int32)), r"topk_length\[1\]: got -1"),
        (lambda x: x.update(causal=True), "causal: got True with indices; expected False"),
        (lambda x: x.update(is_fp8_kvcache=True), "is_fp8_kvcache: got True with a torch.float16 k_cache"),
        (lambda x: x.update(k_cache=x["k_cache"].expand(-1, -1, 2, -1)), "k_cache: got h_kv=2"),
        (lambda x: x.update(k_cache=x["k_cache"].float()), "k_cache: got dtype torch.float32; expected torch.float16"),
        (lambda x: x.update(head_dim_v=100), "head_dim_v: got 100"),
        (lambda x: x.update(extra_indices_in_kvcache=x["indices"]),
         "extra_k_cache: got None while extra_indices_in_kvcache is given"),
        (lambda x: x.update(extra_k_cache=x["k_cache"]),
         "extra_indices_in_kvcache: got None while extra_k_cache is given"),
        (lambda x: x.update(extra_topk_length=torch.zeros(2, dtype=torch.int32)),
         "extra_topk_length: got a tensor without extra_k_cache"),
        (lambda x: x.update(extra_k_cache=x["k_cache"].to(torch.bfloat16), extra_indices_in_kvcache=x["indices"]),
         "extra_k_cache: got dtype torch.bfloat16"),
        (lambda x: x.update(extra_k_cache=x["k_cache"], extra_indices_in_kvcache=x["indices"][:, :1]),
         r"extra_indices_in_kvcache: got shape \(2, 1, 5\)"),
        (lambda x: x.update(extra_k_cache=x["k_cache"], extra_indices_in_kvcache=x["indices"],
                            extra_topk_length=torch.tensor([0, 9], dtype=torch.int32)),
         r"extra_topk_length\[1\]: got 9; expected a length in \[0, 5\]"),
    ],
    ids=["indices-int64", "indices-dims", "indices-batch", "topk-0", "sink-dtype", "sink-shape", "len-int64",
         "len-shape", "len-above-topk", "len-negative", "causal", "fp8-flag-vs-dtype", "h_kv-2", "cache-dtype",
         "head-dim-v", "extra-indices-alone", "extra-cache-alone", "extra-len-alone", "extra-cache-dtype",
         "extra-indices-shape", "extra-len-above"],
)
def test_bad_sparse_input_raises_typed_error_naming_the_argument(mutate, match, generator):
    inputs = sparse_inputs(generator)
    mutate(inputs)
    with pytest.raises(InvalidArgumentError, match=match):
        sparse_call(inputs, backend="reference")


def test_bad_fp8_sparse_caches(generator):
    inputs = _v32_inputs(generator)
    cache = inputs["k_cache"]
    with pytest.raises(InvalidArgumentError, match="no known KV cache layout has .d_qk=576, bytes_per_token=600"):
        sparse_call(dict(inputs, k_cache=cache[..., :600]))
    with pytest.raises(InvalidArgumentError, match="head_dim_v: got 256; expected 512"):
        sparse_call(dict(inputs, head_dim_v=256))
    with pytest.raises(InvalidArgumentError, match="is_fp8_kvcache: got False with a torch.uint8 k_cache"):
        sparse_call(inputs, is_fp8_kvcache=False)
    with pytest.raises(UnsupportedError, match="per-tensor FP8 cache"):
        sparse_call(dict(inputs, k_cache=cache[..., :576]))
    wide = torch.zeros(*cache.shape[:3], 660, dtype=torch.uint8)[..., :656]  # token records 660 bytes apart
    wide.copy_(cache)
    with pytest.raises(InvalidArgumentError, match=r"stride\(1\) == 656"):
        sparse_call(dict(inputs, k_cache=wide))
    as_fp8 = sparse_call(dict(inputs, k_cache=cache.view(torch.float8_e4m3fn)), is_fp8_kvcache=True,
                         backend="reference")
    as_int8 = sparse_call(dict(inputs, k_cache=cache.view(torch.int8)), backend="reference")
    assert torch.equal(as_fp8[0], as_int8[0]) and torch.equal(as_fp8[1], as_int8[1])


def test_sparse_reference_backend_is_the_reference(generator):
    inputs = sparse_inputs(generator, topk_length=True, sink=True, extra=(9, 3, 2), invalid_frac=0.3)
    out, lse = sparse_call(inputs, backend="reference")
    ref_out, ref_lse = openmla.reference.sparse_decode(**inputs)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
    assert out.shape == (2, 2, 3, 32) and lse.shape == (2, 3, 2) and lse.dtype == torch.float32


@pytest.mark.skipif(not gluon_available(), reason="Triton's Gluon dialect does not import here")
def test_sparse_gluon_kernel_serves_16_bit_and_v32_caches_without_extra_cache(monkeypatch):
    """On Hopper the Gluon sparse kernel takes bf16/fp16 caches with MLA's dims and the V3.2 FP8 layout when
    its records are 16-byte aligned, with or without an attention sink; MODEL1, unaligned FP8 caches and extra
    caches go to the Triton kernel or the reference (the GPU is named by OPENMLA_ARCH here)."""
    from openmla.dispatch import _sparse_gluon_reason_against, choose_sparse_decode

    monkeypatch.setenv("OPENMLA_ARCH", "sm_90a")
    cuda = torch.device("cuda")
    for dtype in (torch.bfloat16, torch.float16):
        for dims in ((576, 512), (512, 512)):
            assert _sparse_gluon_reason_against(cuda, dtype, dims, None, False) is None
        assert _sparse_gluon_reason_against(cuda, dtype, (576, 512), "V32_FP8", False) is None
    assert "not MODEL1_FP8" in _sparse_gluon_reason_against(cuda, torch.bfloat16, (512, 512), "MODEL1_FP8", False)
    assert "16 bytes" in _sparse_gluon_reason_against(cuda, torch.bfloat16, (576, 512), "V32_FP8", False,
                                                      aligned16=False)
    assert "(576, 512), got (512, 512)" in _sparse_gluon_reason_against(cuda, torch.bfloat16, (512, 512), "V32_FP8",
                                                                         False)
    assert "extra_k_cache" in _sparse_gluon_reason_against(cuda, torch.bfloat16, (576, 512), "V32_FP8", True)
    choice = choose_sparse_decode(cuda, torch.bfloat16, (576, 512), "V32_FP8")
    assert choice.backend == "gluon" and "V3.2 FP8" in choice.reason
    with pytest.raises(UnsupportedError, match="backend='gluon' cannot serve sparse_decode: q's or the cache's base"):
        choose_sparse_decode(cuda, torch.bfloat16, (576, 512), "V32_FP8", "gluon", aligned16=False)
    if openmla._runtime.triton_available():
        # automatic choice: Triton serves an unaligned cache, and the caller is told why it is the slower kernel
        with pytest.warns(openmla.OpenMLAFallbackWarning, match="multiples of 16 bytes"):
            choice = choose_sparse_decode(cuda, torch.float16, (576, 512), "V32_FP8", aligned16=False)
        assert choice.backend == "triton" and "16 bytes" in choice.reason
    assert "extra_k_cache" in _sparse_gluon_reason_against(cuda, torch.bfloat16, (576, 512), None, True)
    assert "(576, 512) or (512, 512)" in _sparse_gluon_reason_against(cuda, torch.bfloat16, (64, 32), None, False)
    assert "bf16 or fp16" in _sparse_gluon_reason_against(cuda, torch.float32, (576, 512), None, False)
    monkeypatch.setenv("OPENMLA_ARCH", "sm_80")
    assert "Hopper" in _sparse_gluon_reason_against(cuda, torch.bfloat16, (576, 512), None, False)


def test_alignment_rule_for_the_gluon_kernels():
    """The Gluon kernels copy 16 bytes at a time and are compiled for aligned rows: q and a cache whose base
    address or any stride (in bytes; size-1 dims included, the kernels take those strides too) is not a multiple
    of 16 are reported as such (the dispatchers then keep the call on Triton)."""
    from helpers import misaligned_copy

    from openmla._runtime import aligned16 as _aligned16

    storage = torch.zeros(3 * 64 * 656 + 64, dtype=torch.uint8)
    assert _aligned16(storage[: 3 * 64 * 656].view(3, 64, 1, 656))  # V3.2 records: 656 = 41 x 16 bytes
    padded = storage.as_strided((3, 64, 1, 656), (64 * 656 + 4, 656, 656, 1))  # 4 bytes between pages
    assert not _aligned16(padded)
    assert not _aligned16(storage.as_strided((1, 64, 1, 656), (64 * 656 + 4, 656, 656, 1)))  # one page, odd stride
    assert not _aligned16(storage[4: 4 + 3 * 64 * 656].view(3, 64, 1, 656))  # base 4 bytes off
    q = torch.zeros(2, 1, 16, 576, dtype=torch.bfloat16)
    cache = torch.zeros(4, 64, 1, 576, dtype=torch.bfloat16)
    assert _aligned16(q, cache) and _aligned16(q.to(torch.float8_e4m3fn), cache.to(torch.float8_e4m3fn))
    for how in ("base", "stride"):
        assert not _aligned16(misaligned_copy(q, how), cache)
        assert not _aligned16(q, misaligned_copy(cache, how))
    assert _aligned16(torch.zeros(2, 1, 16, 584, dtype=torch.bfloat16)[..., :576])  # 584 x 2 bytes: 73 x 16


def test_dense_dispatch_keeps_misaligned_calls_off_the_gluon_kernels(monkeypatch):
    """On Hopper a dense call whose q or cache is not 16-byte aligned goes to the Triton kernel, with a warning
    saying why and how to fix it (bf16 and FP8 caches alike); forcing the Gluon backend raises, naming the rule.
    Decided without a GPU (the GPU is named by OPENMLA_ARCH); the GPU tiers run such calls."""
    from openmla.dispatch import choose_dense_decode

    monkeypatch.setenv("OPENMLA_ARCH", "sm_90a")
    cuda = torch.device("cuda")
    if not (gluon_available() and openmla._runtime.triton_available()):
        pytest.skip("the choice between the Gluon and Triton kernels needs both to import")
    for kv_fp8, dtype in ((False, torch.bfloat16), (True, torch.bfloat16), (True, torch.float8_e4m3fn)):
        assert choose_dense_decode(cuda, dtype, (576, 512), kv_fp8=kv_fp8).backend == "gluon"
        with pytest.warns(openmla.OpenMLAFallbackWarning, match="multiples of 16 bytes"):
            choice = choose_dense_decode(cuda, dtype, (576, 512), kv_fp8=kv_fp8, aligned16=False)
        assert choice.backend == "triton" and "not a multiple of 16" in choice.reason, choice
        with pytest.raises(UnsupportedError, match="backend='gluon' cannot serve.*not a multiple of 16"):
            choose_dense_decode(cuda, dtype, (576, 512), "gluon", kv_fp8=kv_fp8, aligned16=False)
    monkeypatch.setenv("OPENMLA_ARCH", "sm_80")  # not Hopper: Triton for its own reason, no alignment warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose_dense_decode(cuda, torch.bfloat16, (576, 512), aligned16=False).backend == "triton"


def test_sparse_dispatch(generator, monkeypatch):
    inputs = sparse_inputs(generator)
    q, cache = inputs["q"], inputs["k_cache"]
    expected = "triton" if openmla._runtime.interpret_mode() else "reference"
    assert openmla.explain(q, cache, indices=inputs["indices"], head_dim_v=32).backend == expected
    with pytest.raises(UnsupportedError, match="backend='gluon' cannot serve sparse_decode"):
        sparse_call(inputs, backend="gluon")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(UnsupportedError, match="backend='triton' cannot serve sparse_decode.*TRITON_INTERPRET=1"):
        sparse_call(inputs, backend="triton")
    assert openmla.explain(q, cache, indices=inputs["indices"], head_dim_v=32).backend == "reference"
    v32 = _v32_inputs(generator)
    choice = openmla.explain(v32["q"], v32["k_cache"], indices=v32["indices"])
    assert choice.op == "sparse_decode" and choice.backend == "reference"


def test_sparse_sched_meta_records_the_sparse_configuration(generator):
    inputs = sparse_inputs(generator)
    meta, _ = openmla.get_mla_metadata()
    sparse_call(inputs, tile_scheduler_metadata=meta, backend="reference")
    assert meta.have_initialized and meta.config.topk == 5 and meta.config.h_k == 1
    sparse_call(inputs, tile_scheduler_metadata=meta, backend="reference")  # the step's next layer
    with pytest.raises(SchedMetaMismatchError, match="topk: planned for 5, this call has 3"):
        sparse_call(dict(inputs, indices=inputs["indices"][..., :3]), tile_scheduler_metadata=meta)
    dense_meta, _ = openmla.get_mla_metadata()
    call(tiny_inputs(generator, h_q=3), tile_scheduler_metadata=dense_meta, backend="reference")
    with pytest.raises(SchedMetaMismatchError):
        sparse_call(inputs, tile_scheduler_metadata=dense_meta)
    with pytest.raises(InvalidArgumentError, match="num_splits must be None"):
        sparse_call(inputs, tile_scheduler_metadata=meta, num_splits=torch.zeros(3, dtype=torch.int32))


def test_old_metadata_with_topk_is_accepted_by_sparse_calls(generator):
    """FlashMLA v2 sparse callers plan with ``topk=`` and pass the tensor pair; the sparse path ignores it."""
    inputs = sparse_inputs(generator)
    lens = torch.full((2,), 20, dtype=torch.int32)
    sched, splits = openmla.get_mla_metadata(lens, 2 * 3, 1, 3, False, 5)
    out, lse = sparse_call(inputs, tile_scheduler_metadata=sched, num_splits=splits, backend="reference")
    ref_out, ref_lse = openmla.reference.sparse_decode(**inputs)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)


def test_forced_backends(generator, monkeypatch):
    inputs = tiny_inputs(generator)
    with pytest.raises(UnsupportedError, match="backend='gluon' cannot serve dense_decode"):
        call(inputs, backend="gluon")
    with pytest.raises(UnsupportedError, match="not a backend"):
        call(inputs, backend="cuda")
    monkeypatch.setenv("OPENMLA_BACKEND", "nonsense")
    with pytest.raises(InvalidArgumentError, match="OPENMLA_BACKEND='nonsense'"):
        call(inputs)
    monkeypatch.setenv("OPENMLA_BACKEND", "reference")
    assert openmla.explain(inputs["q"], inputs["k_cache"]).backend == "reference"


def test_forced_triton_on_cpu_without_interpreter_names_the_fix(generator, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    inputs = tiny_inputs(generator)
    with pytest.raises(UnsupportedError, match="TRITON_INTERPRET=1"):
        call(inputs, backend="triton")
    assert openmla.explain(inputs["q"], inputs["k_cache"]).backend == "reference"


def test_backend_table_lists_every_op():
    rows = openmla.dispatch.backend_table("cpu")
    ops = {r.op: r for r in rows}
    assert {"dense_decode", "dense_fp8_decode", "sparse_decode", "sparse_bf16_decode", "sparse_prefill"} <= set(ops)
    assert all(r.reason for r in rows)
    assert ops["dense_fp8_decode"].backend == ops["dense_decode"].backend != "none"


def test_old_form_plans_are_unbounded_while_calls_replay(monkeypatch):
    """Old-form plans (SGLang's, vLLM's) of small batches are cut at MAX_SPLITS pieces a request only where their
    calls may fuse the merge: with replays on (the default) the calls leave it to the combine kernel, as new-form
    calls do, so b=1 at 25k keys gets every piece; with OPENMLA_REPLAY=0 the bound is back. A call handed an
    unbounded plan does not fuse even where it otherwise would (replays turned off after planning)."""
    import openmla
    import openmla.api
    from openmla.metadata import UNBOUNDED_OLD_FORM
    from openmla.ops.combine import FUSED_MAX_BATCH

    monkeypatch.setenv("OPENMLA_NUM_SMS", "132")
    monkeypatch.delenv("OPENMLA_REPLAY", raising=False)
    monkeypatch.delenv("OPENMLA_CHECK_VALUES", raising=False)
    lens = torch.tensor([64 * 400], dtype=torch.int32)
    sched, splits = openmla.get_mla_metadata(lens, 16, 1)
    assert int(splits[1] - splits[0]) > MAX_SPLITS and splits in UNBOUNDED_OLD_FORM
    big = torch.full((FUSED_MAX_BATCH + 1,), 64 * 400, dtype=torch.int32)
    assert openmla.get_mla_metadata(big, 16, 1)[1] not in UNBOUNDED_OLD_FORM, "only plans a call could fuse"
    monkeypatch.setenv("OPENMLA_REPLAY", "0")
    _, bounded = openmla.get_mla_metadata(lens, 16, 1)
    assert int(bounded[1] - bounded[0]) <= MAX_SPLITS and bounded not in UNBOUNDED_OLD_FORM

    fused_by_call = []

    def launcher(*args, fused_combine, **kwargs):
        fused_by_call.append(fused_combine)
        raise StopIteration  # the policy is what is checked here, not the kernel

    monkeypatch.setattr(openmla.api, "_dense_launcher", lambda backend: launcher)
    q = torch.randn(1, 1, 16, 576, dtype=torch.bfloat16)
    k_cache = torch.randn(400, 64, 1, 576, dtype=torch.bfloat16)
    block_table = torch.arange(400, dtype=torch.int32).reshape(1, 400)
    for plan in ((sched, splits), (_, bounded)):  # replays off now: each call runs the whole path
        with pytest.raises(StopIteration):
            openmla.flash_mla_with_kvcache(q, k_cache, block_table, lens, 512, *plan, backend="triton")
    assert fused_by_call == [False, True]
    held = len(UNBOUNDED_OLD_FORM._refs)
    del sched, splits, plan
    assert len(UNBOUNDED_OLD_FORM._refs) == held - 1, "a plan its caller drops leaves the set"


def test_fused_combine_policy_and_its_plan_bound():
    """Small eager batches merge split partials in the split kernel and plan at most MAX_SPLITS pieces a
    request; larger batches use the combine kernel and an unbounded plan (the cap would only idle SMs)."""
    from openmla.metadata import plan_dense
    from openmla.ops.combine import FUSED_MAX_BATCH, fuse_combine

    cpu = torch.device("cpu")
    assert fuse_combine(cpu, 1) and fuse_combine(cpu, FUSED_MAX_BATCH)
    assert not fuse_combine(cpu, FUSED_MAX_BATCH + 1)
    assert not fuse_combine(cpu, 1, replayed=True), "calls a step replays leave partials to the combine kernel"
    lens = torch.tensor([64 * 400], dtype=torch.int32)
    _, splits = plan_dense(lens, 128, 1, "triton", bounded=False)
    assert int(splits[1] - splits[0]) > MAX_SPLITS, "an unfused small batch may use every SM"
    for b in (1, FUSED_MAX_BATCH, FUSED_MAX_BATCH + 1):
        lens = torch.full((b,), 64, dtype=torch.int32)
        lens[0] = 64 * 400  # one long request among short ones
        _, splits = plan_dense(lens, 128, 1, "triton")
        most = int((splits[1:] - splits[:-1]).max())
        if b <= FUSED_MAX_BATCH:
            assert most <= MAX_SPLITS
        else:
            assert most > MAX_SPLITS, "a batch past the fused combine's size should not be bounded"


@pytest.mark.skipif(not gluon_available(), reason="Triton's Gluon dialect does not import here")
def test_hopper_kernel_choice_by_rows_and_combine():
    """Which Hopper dense kernel a shape gets: up to 32 query rows per KV head the tokens layout, except 17-32 rows
    over MLA's (576, 512) caches with TMA tiles when partials go to the combine kernel (the warp-specialized
    kernel's padded tile); above, the warp-specialized kernel when partials go to the combine kernel, the 8-warp
    kernel (which merges its own partials) in small eager calls; over a per-tensor FP8 cache of (576, 512) dims
    the warp-specialized kernel at every row count."""
    from openmla.ops.gluon.decode_dense_sm90 import WS_MIN_ROWS_MLA_TMA, layout_for

    assert layout_for(16) == layout_for(32) == "tokens"
    assert layout_for(32, fused=True) == "tokens"
    assert WS_MIN_ROWS_MLA_TMA == 17
    assert layout_for(16, mla_tma=True) == "tokens", "16 rows stream faster in the tokens tile"
    assert layout_for(17, mla_tma=True) == layout_for(32, mla_tma=True) == "ws"
    assert layout_for(32, fused=True, mla_tma=True) == "tokens", "the fused merge lives in the tokens kernel"
    for rows in (33, 64, 128, 256):
        assert layout_for(rows) == "ws"
        assert layout_for(rows, fused=True) == "rows"
    # a per-tensor FP8 cache of (576, 512) dims: the warp-specialized kernel at every row count
    for rows in (1, 16, 32, 33, 128):
        assert layout_for(rows, fp8_codes=True) == layout_for(rows, fused=True, fp8_codes=True) == "ws"


@pytest.mark.skipif(not gluon_available(), reason="Triton's Gluon dialect does not import here")
def test_hopper_dense_call_gives_32_rows_to_the_padded_tile_over_tma_tiles(monkeypatch):
    """The Hopper launcher reads the cache for :func:`layout_for`: 32 rows over a (576, 512) cache whose 64-key tiles
    come as TMA boxes go to the warp-specialized kernel when partials go to the combine kernel; pages of 32 keys,
    (512, 512) dims, 16 rows and the fused merge keep the tokens kernel (the launchers are stubbed: nothing runs)."""
    from openmla.ops.gluon import decode_dense_sm90, decode_dense_sm90_small_heads, decode_dense_sm90_ws

    calls = []
    monkeypatch.setattr(decode_dense_sm90_ws, "dense_decode_sm90_ws_fwd", lambda *a, **kw: calls.append("ws"))
    monkeypatch.setattr(decode_dense_sm90_small_heads, "dense_decode_sm90_small_heads_fwd",
                        lambda *a, **kw: calls.append("tokens"))
    sched, splits = torch.zeros(4, 8, dtype=torch.int32), torch.zeros(3, dtype=torch.int32)
    lens, table = torch.full((2,), 64, dtype=torch.int32), torch.zeros(2, 2, dtype=torch.int32)
    cases = [  # (h_q, d, page_block_size, fused_combine, kernel)
        (32, 576, 64, False, "ws"), (32, 576, 128, False, "ws"), (32, 576, 32, False, "tokens"),
        (32, 512, 64, False, "tokens"), (16, 576, 64, False, "tokens"), (32, 576, 64, True, "tokens")]
    for h_q, d, page, fused, kernel in cases:
        q = torch.zeros(2, 1, h_q, d, dtype=torch.bfloat16)
        k_cache = torch.zeros(8, page, 1, d, dtype=torch.bfloat16)
        decode_dense_sm90.dense_decode_sm90_fwd(q, k_cache, table, lens, 512, sched, splits, 0.1, False,
                                                fused_combine=fused)
        assert calls.pop() == kernel, (h_q, d, page, fused)


@pytest.mark.skipif(not gluon_available(), reason="Triton's Gluon dialect does not import here")
def test_warp_specialized_forms_by_rows_and_cache():
    """The warp-specialized kernel's form: the softmax warpgroup keeps no output half up to 128 rows per KV
    head, 256 where K tiles come by TMA with a ready barrier per box; K tiles come by TMA only from caches whose pages hold whole 64-key tiles of one KV head, with
    strides a descriptor can take (otherwise by cp.async, any page size)."""
    from openmla.ops.gluon.decode_dense_sm90_ws import softmax_only_for, tma_view

    assert softmax_only_for(33) and softmax_only_for(64) and softmax_only_for(128)
    assert not softmax_only_for(129) and not softmax_only_for(256)
    assert softmax_only_for(256, boxed=True) and not softmax_only_for(257, boxed=True)

    cache = torch.empty(10, 64, 1, 576, dtype=torch.bfloat16)
    desc = tma_view(cache)
    assert desc is not None and list(desc.shape) == [640, 576] and list(desc.strides) == [576, 1]
    assert list(desc.block_shape) == [64, 64]
    assert tma_view(torch.empty(10, 128, 1, 512, dtype=torch.float16)) is not None
    assert tma_view(torch.empty(10, 16, 1, 576, dtype=torch.bfloat16)) is None  # a tile spans pages
    assert tma_view(torch.empty(10, 61, 1, 576, dtype=torch.bfloat16)) is None
    assert tma_view(torch.empty(10, 64, 2, 576, dtype=torch.bfloat16)) is None  # two KV heads
    wide = torch.empty(10, 64, 1, 640, dtype=torch.bfloat16)[..., :576]  # padded rows: still one row stride
    assert tma_view(wide) is not None and list(tma_view(wide).strides) == [640, 1]
    gaps = torch.empty(10, 128, 1, 576, dtype=torch.bfloat16)[:, :64]  # pages not back to back
    assert tma_view(gaps) is None
    odd = torch.empty(10 * 64 * 580 + 8, dtype=torch.bfloat16)[1:1 + 10 * 64 * 580].view(10, 64, 1, 580)[..., :576]
    assert tma_view(odd) is None  # rows 1160 bytes apart and the base off 16-byte alignment


def test_fast_getenv_sees_every_change(monkeypatch):
    """The knobs are read on every decode call through a fast path over os.environ's own dict: it must see
    values set, changed and removed at any time, as os.environ.get does."""
    from openmla._runtime import getenv

    monkeypatch.delenv("OPENMLA_TEST_KNOB", raising=False)
    assert getenv("OPENMLA_TEST_KNOB") is None
    monkeypatch.setenv("OPENMLA_TEST_KNOB", "triton")
    assert getenv("OPENMLA_TEST_KNOB") == "triton"
    monkeypatch.setenv("OPENMLA_TEST_KNOB", "Gluon ü")
    assert getenv("OPENMLA_TEST_KNOB") == "Gluon ü" == os.environ.get("OPENMLA_TEST_KNOB")
    monkeypatch.delenv("OPENMLA_TEST_KNOB")
    assert getenv("OPENMLA_TEST_KNOB") is None


def test_v32_cache_scales_need_four_byte_alignment(generator):
    """The kernels read each V3.2 record's fp32 scales with aligned loads: a cache whose base address or page
    stride is not a multiple of 4 bytes is a typed error naming k_cache (it would fault on the GPU), while 4
    bytes off is served (the Gluon kernel's 16-byte rule only moves it to Triton, on Hopper)."""
    from helpers import misaligned_copy

    inputs = _v32_inputs(generator)
    for bad in (misaligned_copy(inputs["k_cache"], "base", elements=1),
                misaligned_copy(inputs["k_cache"], "base", elements=2)):
        with pytest.raises(InvalidArgumentError, match=r"k_cache: got strides .* at address 0x.*multiples of 4"):
            sparse_call(inputs, k_cache=bad)
    n, page = inputs["k_cache"].shape[:2]
    padded = torch.zeros(n, page * 656 + 2, dtype=torch.uint8)[:, : page * 656].view(n, page, 1, 656)
    padded.copy_(inputs["k_cache"])
    with pytest.raises(InvalidArgumentError, match="k_cache: got strides"):
        sparse_call(inputs, k_cache=padded)
    ref_out, ref_lse = sparse_call(inputs, backend="reference")
    out, lse = sparse_call(inputs, k_cache=misaligned_copy(inputs["k_cache"], "base", elements=4),
                           backend="reference")
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
