"""The public API's contract: FlashMLA-compatible names and metadata forms, typed errors, dispatch."""

from __future__ import annotations

import inspect

import pytest
import torch
from helpers import make_dense_decode_inputs

import openmla
from openmla import FlashMLASchedMeta, InvalidArgumentError, SchedMetaMismatchError, UnsupportedError
from openmla.ops.schedule import plan_splitkv, plan_splitkv_torch


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


@pytest.mark.parametrize("parts", [1, 3, 17, 132, 264])
def test_split_plan_covers_every_token_once(parts, generator):
    lens = torch.randint(0, 5000, (37,), generator=generator, dtype=torch.int32)
    lens[::7] = 0
    sched, splits = plan_splitkv(lens, parts)
    sched_t, splits_t = plan_splitkv_torch(lens, parts)
    assert torch.equal(sched, sched_t) and torch.equal(splits, splits_t)
    cover = [torch.zeros(max(int(n), 1), dtype=torch.int32) for n in lens]
    owners = [0] * len(lens)
    for p in range(parts):
        begin, begin_tok, end, end_tok, begin_split = sched[p, :5].tolist()
        for i in range(begin, end + 1):
            lo = begin_tok if i == begin else 0
            hi = min(end_tok if i == end else int(lens[i]), int(lens[i]))
            cover[i][lo:hi] += 1
            owners[i] += 1
            split = begin_split if i == begin else 0
            assert 0 <= split < int(splits[i + 1] - splits[i])
    for i, n in enumerate(lens.tolist()):
        assert torch.all(cover[i][:n] == 1), f"request {i}: tokens covered {cover[i][:n].unique().tolist()} times"
        assert owners[i] == int(splits[i + 1] - splits[i]) >= 1
    # every piece has at most one payload of work: the plan is balanced
    assert int(splits[-1]) <= len(lens) + parts


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


@pytest.mark.parametrize("arg", ["indices", "attn_sink", "topk_length", "extra_k_cache"])
def test_sparse_arguments_are_refused_not_ignored(arg, generator):
    inputs = tiny_inputs(generator)
    with pytest.raises(UnsupportedError, match=arg):
        call(inputs, **{arg: torch.zeros(1)})


def test_fp8_cache_is_refused(generator):
    with pytest.raises(UnsupportedError, match="FP8"):
        call(tiny_inputs(generator), is_fp8_kvcache=True)


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
    ops = {r.op for r in rows}
    assert {"dense_decode", "sparse_decode", "sparse_prefill"} <= ops
    assert all(r.reason for r in rows)
