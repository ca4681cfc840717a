"""Replays of recorded dense decode calls (:mod:`openmla.replay`).

A call with a ``FlashMLASchedMeta`` whose signature (shapes, strides, dtypes, devices, 16-byte alignment,
scalar arguments, environment knobs) an earlier call recorded skips validation and dispatch and starts the
recorded launches with the new tensors. These tests check that such calls give the reference's results on
new data every time, that any change of signature takes the whole path again, and how a recording maps
the launch arguments (inputs, dtype views, outputs, owned buffers, TMA descriptors).
"""

from __future__ import annotations

import pytest
import torch
from helpers import TOL, check_close, interpret_mode, make_dense_decode_inputs, quantize_dense_decode_inputs

import openmla
from openmla import api, reference, replay
from openmla._harness import runs_e4m3_scores
from openmla.ops.launch import Launch, Recording, launch, recording

HAS_CUDA = torch.cuda.is_available()
CAN_RUN_TRITON = HAS_CUDA or interpret_mode()
DEVICE = "cuda" if HAS_CUDA else "cpu"
HERE_AND_GPU = [pytest.param(DEVICE, id=DEVICE), pytest.param("cuda", marks=pytest.mark.gpu, id="gpu-tier")]


def _new_data(inputs: dict, generator) -> dict:
    """The same shapes and lengths with new values in new tensors (new addresses), as the next layer brings."""
    b, s_q, h_q, d = inputs["q"].shape
    num_blocks, page, h_kv, _ = inputs["k_cache"].shape
    fresh = make_dense_decode_inputs(b, s_q, 0, h_q, h_kv, d, inputs["head_dim_v"], page, inputs["q"].dtype,
                                     inputs["q"].device, generator=generator, causal=inputs["causal"],
                                     softmax_scale=inputs["softmax_scale"],
                                     cache_seqlens=inputs["cache_seqlens"].clone())
    assert fresh["k_cache"].shape == inputs["k_cache"].shape
    return fresh


def _call(inputs: dict, meta, **kw):
    return openmla.flash_mla_with_kvcache(
        inputs["q"], inputs["k_cache"], inputs["block_table"], inputs["cache_seqlens"], inputs["head_dim_v"], meta,
        softmax_scale=inputs["softmax_scale"], causal=inputs["causal"], **kw)


def _check(inputs: dict, out: torch.Tensor, lse: torch.Tensor) -> None:
    ref_out, ref_lse = reference.dense_decode(**inputs)
    check_close("out", out, ref_out, TOL[("dense_decode", "out")])
    check_close("lse", lse, ref_lse, TOL[("dense_decode", "lse")])


class _Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


@pytest.fixture
def validations(monkeypatch) -> _Counter:
    """Counts the whole path's validations: a replayed call skips them."""
    counter = _Counter(api._validate_dense)
    monkeypatch.setattr(api, "_validate_dense", counter)
    return counter


# shapes: b, s_q, s_k, h_q, h_kv, d, dv, page, dtype; backend None = what the device picks
CPU_CASES = [(3, 2, 70, 4, 1, 64, 32, 16, torch.float16), (2, 1, 130, 24, 2, 576, 512, 7, torch.float16)]
GPU_CASES = [
    (1, 1, 256, 128, 1, 576, 512, 64, torch.bfloat16),  # the host-bound call (replayed: split and combine)
    (48, 2, 900, 128, 1, 576, 512, 64, torch.bfloat16),  # warp-specialized kernel, TMA descriptor, combine
    (5, 1, 700, 16, 1, 576, 512, 64, torch.float16),  # the small-head kernel
    (3, 3, 300, 9, 3, 512, 512, 16, torch.bfloat16),
]


@pytest.mark.skipif(not CAN_RUN_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("device", HERE_AND_GPU)
@pytest.mark.parametrize("case_index", range(max(len(CPU_CASES), len(GPU_CASES))))
def test_replayed_layers_match_the_reference_on_new_data(device, case_index, validations, generator):
    b, s_q, s_k, h_q, h_kv, d, dv, page, dtype = _tier_case(device, case_index, GPU_CASES, CPU_CASES)
    backend = None if device == "cuda" else "triton"
    inputs = make_dense_decode_inputs(b, s_q, s_k, h_q, h_kv, d, dv, page, dtype, device, varlen=True,
                                      generator=generator, causal=True)
    meta, _ = openmla.get_mla_metadata()
    layer = inputs
    for i in range(4):
        out, lse = _call(layer, meta, backend=backend)
        _check(layer, out, lse)
        layer = _new_data(inputs, generator)
    assert validations.calls == 1, "calls after the first should have replayed its launches"
    (recorded,) = meta.replays.values()
    assert isinstance(recorded, replay.Replay)
    if device == "cuda":
        assert all(step.compiled is not None for step in recorded.steps), "GPU replays launch the compiled kernels"


@pytest.mark.gpu
@pytest.mark.parametrize("q_dtype", [torch.bfloat16, torch.float8_e4m3fn])
@pytest.mark.parametrize("h_q", [16, 128])
def test_replayed_fp8_layers_match_the_reference(q_dtype, h_q, validations, generator):
    base = make_dense_decode_inputs(4, 2, 600, h_q, 1, 576, 512, 64, torch.bfloat16, "cuda", varlen=True,
                                    generator=generator, causal=True)
    meta, _ = openmla.get_mla_metadata()
    layer = base
    for i in range(3):
        fp8 = quantize_dense_decode_inputs(layer, q_dtype)
        out, lse = _call(fp8, meta, is_fp8_kvcache=True, descale_q=fp8["descale_q"], descale_k=fp8["descale_k"])
        ref_out, ref_lse = reference.dense_decode(**fp8)
        check_close("out", out, ref_out, TOL[("dense_decode", "out")])
        # an e4m3 q on Hopper runs the e4m3-product kernel, whose LSE has a tolerance of its own (tests/helpers.py)
        served = openmla.explain(fp8["q"], fp8["k_cache"], head_dim_v=512, is_fp8_kvcache=True).backend
        e4m3_scores = runs_e4m3_scores(served, fp8["q"], fp8["k_cache"], 512, fp8["descale_q"], fp8["descale_k"])
        check_close("lse", lse, ref_lse, TOL[("dense_decode_e4m3_scores" if e4m3_scores else "dense_decode", "lse")])
        layer = _new_data(base, generator)
    assert validations.calls == 1


@pytest.mark.skipif(not CAN_RUN_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("device", HERE_AND_GPU)
def test_a_new_signature_takes_the_whole_path(device, validations, generator):
    """Misaligned q (another 16-byte residue), other strides, another scale: each is recorded on its own."""
    backend = None if device == "cuda" else "triton"
    inputs = make_dense_decode_inputs(2, 1, 90, 8, 1, 64, 32, 16, torch.float16, device, varlen=True,
                                      generator=generator)
    meta, _ = openmla.get_mla_metadata()
    _call(inputs, meta, backend=backend)
    q = inputs["q"]
    shifted = torch.empty(q.numel() + 1, dtype=q.dtype, device=q.device)[1:].view(q.shape)
    shifted.copy_(q)
    strided = torch.empty_strided(q.shape, (q.shape[1] * q.shape[2] * 80, q.shape[2] * 80, 80, 1), dtype=q.dtype,
                                  device=q.device)
    strided.copy_(q)
    variants = [dict(inputs, q=shifted), dict(inputs, q=strided), dict(inputs, softmax_scale=0.3)]
    for case in variants:
        before = validations.calls
        for _ in range(2):
            out, lse = _call(case, meta, backend=backend)
            _check(case, out, lse)
        assert validations.calls == before + 1, "a new signature is validated once, then replayed"
    assert len(meta.replays) == 1 + len(variants)


@pytest.mark.skipif(not CAN_RUN_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
def test_environment_knobs_are_part_of_the_signature(monkeypatch, generator):
    inputs = make_dense_decode_inputs(2, 1, 50, 4, 1, 64, 32, 16, torch.float16, DEVICE, generator=generator)
    monkeypatch.setenv("OPENMLA_BACKEND", "triton")
    meta, _ = openmla.get_mla_metadata()
    _call(inputs, meta)
    _call(inputs, meta)
    monkeypatch.setenv("OPENMLA_BACKEND", "reference")
    served = _Counter(reference.dense_decode)
    monkeypatch.setattr(reference, "dense_decode", served)
    _call(inputs, meta)
    assert served.calls == 1, "OPENMLA_BACKEND changed: the call must run the backend it names"


@pytest.mark.skipif(not CAN_RUN_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("knob, value", [("OPENMLA_REPLAY", "0"), ("OPENMLA_CHECK_VALUES", "always")])
def test_knobs_that_turn_recording_off(knob, value, monkeypatch, generator):
    monkeypatch.setenv(knob, value)
    inputs = make_dense_decode_inputs(2, 1, 50, 4, 1, 64, 32, 16, torch.float16, DEVICE, generator=generator)
    meta, _ = openmla.get_mla_metadata()
    backend = None if HAS_CUDA else "triton"
    for _ in range(2):
        _call(inputs, meta, backend=backend)
    assert not meta.replays
    if knob == "OPENMLA_CHECK_VALUES":  # every call checks values, so the second layer's bad length is caught
        bad = dict(inputs, cache_seqlens=inputs["cache_seqlens"].clone())
        bad["cache_seqlens"][0] = 10_000
        with pytest.raises(openmla.InvalidArgumentError, match="cache_seqlens\\[0\\] = 10000"):
            _call(bad, meta, backend=backend)


# ------------------------------------------------------------------------------------------------------------
# How a recording maps a launch's arguments (fake kernels: no Triton needed)
# ------------------------------------------------------------------------------------------------------------


class _FakeKernel:
    """Stands in for a @triton.jit function: ``kernel[grid](...)`` records the call."""

    class _Param:
        def __init__(self, name, default):
            self.name, self.default = name, default

    def __init__(self, *params):
        import inspect

        self.params = [self._Param(n, d if d is not None else inspect.Parameter.empty) for n, d in params]
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((grid, args, kwargs))


class _FakeCompiled:
    def __init__(self):
        self.function, self.packed_metadata, self.calls = 1234, (4, 1, 0), []

    def run(self, *args):
        self.calls.append(args)


def test_a_launch_records_only_inside_a_recording():
    kernel = _FakeKernel()
    launch(kernel, (2,), 1, X=3)
    with recording() as rec:
        launch(kernel, (4, 5), "a", X=3)
    launch(kernel, (6,), 2)
    assert [c[0] for c in kernel.calls] == [(2,), (4, 5), (6,)]
    assert len(rec.launches) == 1 and rec.launches[0].grid == (4, 5) and rec.launches[0].args == ("a",)


def test_generic_replay_passes_new_tensors_dtype_views_and_owned_buffers():
    x, out, owned = torch.randn(4, 8), torch.empty(4, 8), torch.zeros(3)
    kernel = _FakeKernel()
    rec = Launch(kernel, (2, 1), (x.view(torch.int32), out, owned, 7, 0.5), {"BLOCK": 16, "num_warps": 4}, None)
    r = replay.Replay(Recording([rec]), (x, None), (out,), (owned,))
    x2 = torch.randn(4, 8)
    (out2,) = r(x2, None)
    grid, args, kwargs = kernel.calls[-1]
    assert grid == (2, 1) and kwargs == {"BLOCK": 16, "num_warps": 4}
    assert args[0].dtype == torch.int32 and args[0].data_ptr() == x2.data_ptr()
    assert args[1] is out2 and out2 is not out and out2.shape == out.shape
    assert args[2] is owned and args[3:] == (7, 0.5)


def test_a_view_reaching_past_its_source_is_refused():
    """A launch that addresses more memory than the output at that address holds (the output a view of a bigger
    buffer) would, replayed, write past the fresh output: refused."""
    buf = torch.empty(16)
    out = buf[:8]  # contiguous, offset 0, but the kernel is handed all of buf
    rec = Launch(_FakeKernel(), (1,), (buf,), {}, None)
    with pytest.raises(replay.NotReplayable, match="reaching past"):
        replay.Replay(Recording([rec]), (), (out,), ())


def test_views_scratch_and_kept_buffers_of_a_recording():
    """A reshaped view of an input or output is rebuilt over the new tensor; declared scratch is allocated anew
    for each replay; kept buffers pass unchanged; an output no launch writes is refused."""
    from openmla.ops.launch import kept, scratch

    x, out = torch.randn(2, 3, 4), torch.empty(6, 4)
    kernel = _FakeKernel()
    with recording() as rec:
        work, plan = torch.empty(5, 7)[:, :4], torch.arange(3)
        scratch(work)
        kept(plan)
        launch(kernel, (1,), x.reshape(6, 4), out.view(2, 3, 4).transpose(1, 2), work, plan)
    r = replay.Replay(rec, (x,), (out,), ())
    x2 = torch.randn(2, 3, 4)
    (out2,) = r(x2)
    args = kernel.calls[-1][1]
    assert args[0].data_ptr() == x2.data_ptr() and args[0].shape == (6, 4)
    assert args[1].data_ptr() == out2.data_ptr() and args[1].stride() == out.view(2, 3, 4).transpose(1, 2).stride()
    assert args[2] is not work and args[2].shape == work.shape and args[2].stride() == work.stride()
    assert args[3] is plan
    with pytest.raises(replay.NotReplayable, match="no recorded launch writes"):
        replay.Replay(Recording([Launch(kernel, (1,), (x,), {}, None)]), (x,), (out,), ())


def test_direct_replay_binds_every_parameter_in_order(monkeypatch):
    monkeypatch.setattr(replay, "_cuda_stream", lambda device: 99)
    monkeypatch.setattr(replay, "_cuda_device", lambda: 0)
    monkeypatch.setattr(replay, "_no_launch_hooks", lambda: True)
    from triton.tools.tensor_descriptor import TensorDescriptor

    x, out = torch.randn(64, 16), torch.empty(64, 16)
    desc = TensorDescriptor(x, [64, 16], [16, 1], [16, 16])
    kernel = _FakeKernel(("x", None), ("o", None), ("k_desc", None), ("n", None), ("HAS_SINK", False),
                         ("BLOCK", None))
    compiled = _FakeCompiled()
    rec = Launch(kernel, (3,), (x, out, desc, 5), {"BLOCK": 32, "num_warps": 8}, compiled)
    r = replay.Replay(Recording([rec]), (x,), (out,), ())
    x2 = torch.randn(64, 16)
    (out2,) = r(x2)
    (call,) = compiled.calls
    assert call[:9] == (3, 1, 1, 99, 1234, (4, 1, 0), None, None, None)
    bound = call[9:]
    assert bound[0] is x2 and bound[1] is out2 and bound[3:] == (5, False, 32)  # default, then the constexpr
    assert bound[2].base is x2 and bound[2].shape == [64, 16] and bound[2].strides == [16, 1]
    assert not kernel.calls, "the compiled kernel's launcher, not kernel[grid]"


def test_a_descriptor_over_a_dtype_view_is_rebuilt_over_the_new_source(monkeypatch):
    """The FP8 paths build TMA descriptors over the cache's codes seen as uint8: a replay rebuilds the descriptor
    over the same view of the new cache (the generic launch), or hands the new cache's address (the compiled
    kernel's launcher, which reads the base's address only)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    codes, out = torch.zeros(64, 16, dtype=torch.float8_e4m3fn), torch.empty(64, 16)
    kernel = _FakeKernel(("k_desc", None), ("o", None))
    rec = Launch(kernel, (1,), (TensorDescriptor(codes.view(torch.uint8), [64, 16], [16, 1], [16, 16]), out), {},
                 None)
    r = replay.Replay(Recording([rec]), (codes,), (out,), ())
    codes2 = torch.ones(64, 16, dtype=torch.float8_e4m3fn)
    r(codes2)
    desc = kernel.calls[-1][1][0]
    assert desc.base.dtype == torch.uint8 and desc.base.data_ptr() == codes2.data_ptr()
    assert desc.shape == [64, 16] and desc.strides == [16, 1] and desc.block_shape == [16, 16]

    monkeypatch.setattr(replay, "_cuda_stream", lambda device: 99)
    monkeypatch.setattr(replay, "_cuda_device", lambda: 0)
    monkeypatch.setattr(replay, "_no_launch_hooks", lambda: True)
    compiled = _FakeCompiled()
    rec = Launch(kernel, (1,), rec.args, {}, compiled)
    r = replay.Replay(Recording([rec]), (codes,), (out,), ())
    r(codes2)
    bound = compiled.calls[-1][9:]
    assert bound[0].base.data_ptr() == codes2.data_ptr() and bound[0].shape == [64, 16]


@pytest.mark.parametrize(
    "args, why",
    [
        (lambda x, out: (x, torch.zeros(2)), "not the call's input, output or schedule buffer"),
        (lambda x, out: (x[1:],), "not the call's input"),  # a view at another address
        (lambda x, out: (x.view(torch.int16),), "int16 view of a torch.float32"),  # another element width
        (lambda x, out: (x, object()), "an argument of type object"),
    ],
    ids=["unknown-tensor", "offset-view", "narrower-dtype-view", "unknown-type"],
)
def test_recordings_a_replay_cannot_reproduce_are_refused(args, why):
    x, out = torch.randn(8, 8), torch.empty(8)
    rec = Launch(_FakeKernel(), (1,), args(x, out), {}, None)
    with pytest.raises(replay.NotReplayable, match=why):
        replay.Replay(Recording([rec]), (x,), (out,), ())


def test_a_refused_signature_runs_the_whole_path(monkeypatch, validations, generator):
    if not CAN_RUN_TRITON:
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")

    def refuse(*args, **kwargs):
        raise replay.NotReplayable("test")

    monkeypatch.setattr(api, "Replay", refuse)
    inputs = make_dense_decode_inputs(2, 1, 50, 4, 1, 64, 32, 16, torch.float16, DEVICE, generator=generator)
    meta, _ = openmla.get_mla_metadata()
    backend = None if HAS_CUDA else "triton"
    for _ in range(3):
        out, lse = _call(inputs, meta, backend=backend)
    _check(inputs, out, lse)
    assert validations.calls == 3 and list(meta.replays.values()) == [False]


def test_sparse_signature_keys_an_extra_scope_given_as_the_main_one():
    """A recording made with the main cache passed as the extra cache too would, replayed, hand the main cache to
    both scopes: a call that passes a separate extra cache of the same shape must have another signature."""
    q, cache, lists = torch.zeros(2, 1, 16, 576), torch.zeros(8, 16, 1, 576), torch.zeros(2, 1, 64, dtype=torch.int32)
    args = (q, cache, lists, None, 512, None, False, False, None, None, None)
    shared = replay.sparse_signature(*args, extra_k_cache=cache, extra_indices=lists)
    separate = replay.sparse_signature(*args, extra_k_cache=cache.clone(), extra_indices=lists.clone())
    assert shared is not None and separate is not None and shared != separate
    assert separate == replay.sparse_signature(*args, extra_k_cache=cache.clone(), extra_indices=lists.clone())


def test_signature_keys_types_and_refuses_what_it_cannot_key():
    q = torch.zeros(1, 1, 4, 64)
    base = (q, q, torch.zeros(1, 1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32), 32)
    a = replay.dense_signature(*base, None, True, None, None, None, None)
    b = replay.dense_signature(*base, None, 1, None, None, None, None)
    assert a == b  # causal is read for its truth
    assert replay.dense_signature(*base, 0.5, True, None, None, None, None) != a
    assert replay.dense_signature(*base, torch.tensor(0.5), True, None, None, None, None) is None
    assert replay.dense_signature(q, "not a tensor", *base[2:], None, True, None, None, None, None) is None


def test_compile_time_values_of_any_kind_are_kept_as_they_were():
    """Gluon layouts, Triton constexprs and dtypes, torch dtypes and tuples of them are fixed by the signature."""
    gl = pytest.importorskip("triton.experimental.gluon.language")
    layout = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    x, out = torch.randn(4), torch.empty(4)
    kernel = _FakeKernel()
    rec = Launch(kernel, (1,), (x, out), {"P_SMEM": layout, "DT": torch.float16, "SHAPE": (2, 3)}, None)
    r = replay.Replay(Recording([rec]), (x,), (out,), ())
    r(torch.randn(4))
    assert kernel.calls[-1][2] == {"P_SMEM": layout, "DT": torch.float16, "SHAPE": (2, 3)}


@pytest.mark.skipif(not CAN_RUN_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("replays", ["1", "0"])
def test_recorded_small_batches_leave_partials_to_the_combine_kernel(replays, monkeypatch, generator):
    """A small eager batch merges its partials in the split kernel (one launch through Triton's path) unless
    the step's later calls replay it: two direct launches then cost microseconds, and the combine kernel is
    faster on the GPU."""
    monkeypatch.setenv("OPENMLA_REPLAY", replays)
    backend = "gluon" if HAS_CUDA and torch.cuda.get_device_capability() == (9, 0) else "triton"
    real = api._dense_launcher(backend)
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["fused_combine"])
        return real(*args, **kwargs)

    monkeypatch.setitem(api._LAUNCHERS, backend, spy)
    d, dv = (576, 512) if backend == "gluon" else (64, 32)
    inputs = make_dense_decode_inputs(2, 1, 90, 64, 1, d, dv, 16, torch.float16, DEVICE, generator=generator)
    meta, _ = openmla.get_mla_metadata()
    for _ in range(2):
        out, lse = _call(inputs, meta, backend=backend)
    _check(inputs, out, lse)
    assert seen == ([False] if replays == "1" else [True, True])


# ------------------------------------------------------------------------------------------------------------
# Sparse calls (no topk_length, no extra cache): the V3.2 FP8 and 16-bit caches
# ------------------------------------------------------------------------------------------------------------

# b, s_q, h_q, s_k, topk, page, fp8, sink
SPARSE_CPU_CASES = [(2, 1, 16, 200, 64, 64, True, False), (3, 1, 8, 150, 40, 16, False, True),
                    (2, 1, 16, 600, 512, 64, True, True)]  # long lists: split, merged by the combine kernel
SPARSE_GPU_CASES = [(4, 1, 128, 4096, 64, 64, True, False), (4, 1, 64, 3000, 576, 61, True, True),
                    (5, 1, 16, 2000, 100, 64, False, False), (2, 2, 128, 2000, 256, 64, True, False)]


@pytest.mark.skipif(not CAN_RUN_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("device", HERE_AND_GPU)
@pytest.mark.parametrize("case_index", range(max(len(SPARSE_CPU_CASES), len(SPARSE_GPU_CASES))))
def test_replayed_sparse_layers_match_the_reference(device, case_index, monkeypatch, generator):
    """A sparse call records where the launcher's buffers are declared (split partials as scratch, cached
    plans as kept), MTP (s_q > 1) included."""
    from helpers import make_sparse_decode_inputs

    b, s_q, h_q, s_k, topk, page, fp8, sink = _tier_case(device, case_index, SPARSE_GPU_CASES, SPARSE_CPU_CASES)
    backend, dtype, validations, meta = _sparse_tier(device, monkeypatch)
    inputs = make_sparse_decode_inputs(b, s_q, h_q, s_k, topk, page, dtype=dtype, device=device, fp8=fp8,
                                       sink=sink, generator=generator)
    for i in range(3):
        if i:  # the next layer: new tensors (new addresses) of the same shapes, new q, lists in another order
            perm = torch.randperm(topk, generator=generator).to(device)
            inputs = dict(inputs, q=torch.randn_like(inputs["q"]).div_(10), k_cache=inputs["k_cache"].clone(),
                          indices=inputs["indices"][..., perm].contiguous(),
                          attn_sink=None if inputs["attn_sink"] is None else inputs["attn_sink"].clone())
        _sparse_layer_matches_the_reference(inputs, meta, fp8, backend)
    _assert_recorded(meta, validations)


def _tier_case(device: str, case_index: int, gpu_cases: list, cpu_cases: list) -> tuple:
    """Case ``case_index`` of this tier's list (the GPU's or the interpreter's); skipped past its end."""
    cases = gpu_cases if device == "cuda" else cpu_cases
    if case_index >= len(cases):
        pytest.skip("fewer cases on this tier")
    return cases[case_index]


def _sparse_tier(device: str, monkeypatch) -> tuple:
    """``(backend, dtype, validations, meta)`` of a sparse replay test: what serves the tier (the dispatcher's
    pick on a GPU, Triton under the interpreter), its dtype, a counter of the sparse validations, a schedule."""
    validations = _Counter(api._validate_sparse)
    monkeypatch.setattr(api, "_validate_sparse", validations)
    meta, _ = openmla.get_mla_metadata()
    on_gpu = device == "cuda"
    return (None if on_gpu else "triton"), (torch.bfloat16 if on_gpu else torch.float16), validations, meta


def _sparse_layer_matches_the_reference(inputs: dict, meta, fp8: bool, backend) -> None:
    """One sparse call with ``meta`` (recorded, replayed or whole path), checked against the reference."""
    from helpers import dequantized

    out, lse = openmla.flash_mla_with_kvcache(
        inputs["q"], inputs["k_cache"], None, None, inputs["head_dim_v"], meta,
        softmax_scale=inputs["softmax_scale"], is_fp8_kvcache=fp8, indices=inputs["indices"],
        attn_sink=inputs.get("attn_sink"), topk_length=inputs.get("topk_length"),
        extra_k_cache=inputs.get("extra_k_cache"), extra_indices_in_kvcache=inputs.get("extra_indices_in_kvcache"),
        extra_topk_length=inputs.get("extra_topk_length"), backend=backend)
    ref_out, ref_lse = reference.sparse_decode(**dequantized(inputs))
    check_close("out", out, ref_out, TOL[("sparse_decode", "out")])
    check_close("lse", lse, ref_lse, TOL[("sparse_decode", "lse")])


def _assert_recorded(meta, validations) -> None:
    """Three layers ran: one recorded and two replays (one validation). MTP too: on the Gluon kernel its lse is
    laid out as [b, h_q, s_q] by a launch (it was a torch copy, which kept its calls off replays)."""
    (recorded,) = meta.replays.values()
    assert isinstance(recorded, replay.Replay) and validations.calls == 1


# b, s_q, h_q, s_k, topk, page, fp8
SPARSE_LENGTH_CPU_CASES = [(3, 1, 16, 200, 64, 64, True)]
SPARSE_LENGTH_GPU_CASES = [(4, 1, 128, 4096, 576, 64, True), (5, 1, 16, 2000, 100, 64, False),
                           (3, 2, 64, 3000, 256, 61, True)]


@pytest.mark.skipif(not CAN_RUN_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("device", HERE_AND_GPU)
@pytest.mark.parametrize("case_index", range(max(len(SPARSE_LENGTH_CPU_CASES), len(SPARSE_LENGTH_GPU_CASES))))
def test_replayed_sparse_calls_take_each_calls_lengths(device, case_index, monkeypatch, generator):
    """With ``topk_length`` the Hopper launcher turns the lengths into each token's list length and a plan by
    launches (declared scratch), so a replay plans anew from the call's lengths: each layer here has other
    lengths (0, full, in between), and a stale plan or stale lengths would give the wrong rows."""
    from helpers import make_sparse_decode_inputs

    b, s_q, h_q, s_k, topk, page, fp8 = _tier_case(device, case_index, SPARSE_LENGTH_GPU_CASES,
                                                   SPARSE_LENGTH_CPU_CASES)
    backend, dtype, validations, meta = _sparse_tier(device, monkeypatch)
    inputs = make_sparse_decode_inputs(b, s_q, h_q, s_k, topk, page, dtype=dtype, device=device, fp8=fp8,
                                       generator=generator)
    lengths = [torch.randint(0, topk + 1, (b,), generator=generator, dtype=torch.int32) for _ in range(3)]
    lengths[1][0], lengths[2][-1] = 0, topk  # an empty list, a full one
    for i, n in enumerate(lengths):
        if i:  # the next layer: new q and cache tensors of the same shapes
            inputs = dict(inputs, q=torch.randn_like(inputs["q"]).div_(10), k_cache=inputs["k_cache"].clone())
        _sparse_layer_matches_the_reference(dict(inputs, topk_length=n.to(device)), meta, fp8, backend)
    _assert_recorded(meta, validations)


# b, s_q, h_q, s_k, topk, page, fp8, (extra s_k, extra topk, extra page)
SPARSE_EXTRA_CPU_CASES = [(2, 1, 16, 200, 64, 16, True, (120, 40, 8))]
SPARSE_EXTRA_GPU_CASES = [(4, 2, 64, 2000, 128, 64, True, (700, 256, 61)),
                          (3, 1, 128, 1000, 64, 64, False, (300, 64, 16))]


@pytest.mark.skipif(not CAN_RUN_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("device", HERE_AND_GPU)
@pytest.mark.parametrize("case_index", range(max(len(SPARSE_EXTRA_CPU_CASES), len(SPARSE_EXTRA_GPU_CASES))))
def test_replayed_sparse_calls_with_an_extra_cache(device, case_index, monkeypatch, generator):
    """An extra cache, its lists and its lengths are part of a sparse call's signature and of what a replay takes:
    each layer here has a new extra cache tensor, its lists in another order and other extra lengths (an empty
    list and a full one among them), so a replay holding the recorded call's would give the wrong rows."""
    from helpers import make_sparse_decode_inputs

    b, s_q, h_q, s_k, topk, page, fp8, extra = _tier_case(device, case_index, SPARSE_EXTRA_GPU_CASES,
                                                          SPARSE_EXTRA_CPU_CASES)
    backend, dtype, validations, meta = _sparse_tier(device, monkeypatch)
    inputs = make_sparse_decode_inputs(b, s_q, h_q, s_k, topk, page, dtype=dtype, device=device, fp8=fp8,
                                       extra=extra, extra_topk_length=True, generator=generator)
    extra_topk = extra[1]
    for i in range(3):
        if i:  # the next layer: new q and caches, the extra lists in another order, other extra lengths
            perm = torch.randperm(extra_topk, generator=generator).to(device)
            lengths = torch.randint(0, extra_topk + 1, (b,), generator=generator, dtype=torch.int32)
            lengths[0], lengths[-1] = (0, extra_topk) if i == 1 else (extra_topk, 0)
            inputs = dict(inputs, q=torch.randn_like(inputs["q"]).div_(10), k_cache=inputs["k_cache"].clone(),
                          extra_k_cache=inputs["extra_k_cache"].clone(),
                          extra_indices_in_kvcache=inputs["extra_indices_in_kvcache"][..., perm].contiguous(),
                          extra_topk_length=lengths.to(device))
        _sparse_layer_matches_the_reference(inputs, meta, fp8, backend)
    _assert_recorded(meta, validations)


@pytest.mark.skipif(not CAN_RUN_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
def test_assigning_a_new_schedule_drops_the_replays(validations, generator):
    """The SGLang fork's hoisted scheduler assigns a new (tile_scheduler_metadata, num_splits) pair onto the
    schedule each step: the replays recorded with the old pair would read it, so they are dropped."""
    inputs = make_dense_decode_inputs(3, 1, 90, 8, 1, 64, 32, 16, torch.float16, DEVICE, varlen=True,
                                      generator=generator)
    backend = None if HAS_CUDA else "triton"
    meta, _ = openmla.get_mla_metadata()
    _call(inputs, meta, backend=backend)
    _call(inputs, meta, backend=backend)
    assert validations.calls == 1 and meta.replays
    # the next step: new lengths (every request as long as its pages allow: a stale plan would miss keys), a new
    # plan assigned onto the same schedule
    covered = inputs["block_table"].shape[1] * inputs["k_cache"].shape[1]
    used_pages = (inputs["cache_seqlens"] + 15) // 16
    lens = torch.minimum(used_pages * 16, torch.full_like(used_pages, covered)).to(torch.int32)
    assert bool((lens > inputs["cache_seqlens"]).any())
    step2 = dict(inputs, cache_seqlens=lens)
    meta.tile_scheduler_metadata, meta.num_splits = openmla.get_mla_decoding_metadata(lens, 8, 1)
    for _ in range(2):
        out, lse = _call(step2, meta, backend=backend)
        _check(step2, out, lse)
    assert validations.calls == 2, "the first call after the assignment runs the whole path, then replays"


def test_a_replay_does_not_keep_the_recorded_calls_tensors_alive():
    """A long-lived schedule (one the hoisted scheduler refills) must not pin the first call's q, outputs or
    split partials: a replay keeps the positions of the call's tensors, not the tensors."""
    import gc
    import weakref

    from triton.tools.tensor_descriptor import TensorDescriptor

    from openmla.ops.launch import scratch

    x, out, work = torch.randn(64, 16), torch.empty(64, 16), torch.empty(8)
    kernel = _FakeKernel()
    with recording() as rec:
        scratch(work)
        launch(kernel, (1,), x, out, work, TensorDescriptor(x, [64, 16], [16, 1], [16, 16]))
    r = replay.Replay(rec, (x,), (out,), ())
    refs = [weakref.ref(t) for t in (x, out, work)]
    del x, out, work, rec
    kernel.calls.clear()
    gc.collect()
    assert all(ref() is None for ref in refs), "the replay pins a recorded tensor"
    x2 = torch.randn(64, 16)
    (out2,) = r(x2)
    args = kernel.calls[-1][1]
    assert args[0] is x2 and args[1] is out2 and args[3].base is x2


@pytest.fixture
def no_old_form_replays():
    """Old-form replays are module-wide: each test starts and ends without any."""
    replay.OLD_FORM_REPLAYS.clear()
    yield replay.OLD_FORM_REPLAYS
    replay.OLD_FORM_REPLAYS.clear()


@pytest.mark.skipif(not CAN_RUN_TRITON, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("device", HERE_AND_GPU)
def test_replayed_old_form_layers_match_the_reference(device, validations, no_old_form_replays, generator):
    """The old metadata form (SGLang's eager decode): the schedule tensors are inputs of each call, the split
    partials scratch of the call; later layers with the same signature replay."""
    shapes = (5, 2, 700, 128, 1, 576, 512, 64, torch.bfloat16) if device == "cuda" else \
        (3, 2, 90, 8, 1, 64, 32, 16, torch.float16)
    b, s_q, s_k, h_q, h_kv, d, dv, page, dtype = shapes
    backend = None if device == "cuda" else "triton"
    inputs = make_dense_decode_inputs(b, s_q, s_k, h_q, h_kv, d, dv, page, dtype, device, varlen=True,
                                      generator=generator, causal=True)
    layer = inputs
    for i in range(3):
        # each layer brings its own tensors, the schedule included (new addresses, same shapes)
        sched, splits = openmla.get_mla_metadata(layer["cache_seqlens"], s_q * h_q // h_kv, h_kv)
        out, lse = openmla.flash_mla_with_kvcache(
            layer["q"], layer["k_cache"], layer["block_table"], layer["cache_seqlens"], dv, sched, splits,
            softmax_scale=layer["softmax_scale"], causal=True, backend=backend)
        _check(layer, out, lse)
        layer = _new_data(inputs, generator)
    assert validations.calls == 1
    (recorded,) = no_old_form_replays.values()
    assert isinstance(recorded, replay.Replay)
    with pytest.raises(openmla.InvalidArgumentError, match="num_splits"):  # bad input still meets validation
        openmla.flash_mla_with_kvcache(layer["q"], layer["k_cache"], layer["block_table"], layer["cache_seqlens"],
                                       dv, sched, splits[:2], causal=True, backend=backend)


@pytest.mark.gpu
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse-v32"])
def test_layers_replayed_inside_a_cuda_graph_capture(sparse, generator):
    """A captured decode step whose second layer replays the first one's launches (recorded during the capture:
    the signature includes the capture state; a sparse call's fixed-length plan there is the one its warm-up call
    made and cached, so it is recorded and replayed too), replayed from the graph on new lengths or new lists."""
    from helpers import capture_cuda_graph, dequantized, make_sparse_decode_inputs

    if sparse:
        inputs = make_sparse_decode_inputs(4, 1, 128, 3000, 256, 64, device="cuda", fp8=True, generator=generator)
        static_idx = inputs["indices"].clone()

        def step():
            meta, _ = openmla.get_mla_metadata()
            outs = [openmla.flash_mla_with_kvcache(inputs["q"], inputs["k_cache"], None, None, 512, meta,
                                                   softmax_scale=inputs["softmax_scale"], is_fp8_kvcache=True,
                                                   indices=static_idx) for _ in range(2)]
            (kept,) = meta.replays.values()
            # the capture reads the fixed-length plan the warm-up cached (a cached tensor serves every stream)
            assert isinstance(kept, replay.Replay)
            return outs
    else:
        inputs = make_dense_decode_inputs(8, 1, 1000, 128, 1, 576, 512, 64, torch.bfloat16, "cuda", varlen=True,
                                          generator=generator, causal=True)
        static_lens = inputs["cache_seqlens"].clone()

        def step():
            meta, _ = openmla.get_mla_metadata()
            outs = [openmla.flash_mla_with_kvcache(inputs["q"], inputs["k_cache"], inputs["block_table"], static_lens,
                                                   512, meta, causal=True) for _ in range(2)]
            (kept,) = meta.replays.values()
            assert isinstance(kept, replay.Replay)
            return outs

    graph, outs = capture_cuda_graph(step)
    for trial in range(2):
        if sparse:
            perm = torch.randperm(static_idx.shape[-1], generator=generator).cuda()
            static_idx.copy_(inputs["indices"][..., perm])
            case = dict(inputs, indices=static_idx.clone())
        else:
            lens = (torch.rand(8, generator=generator) * (inputs["cache_seqlens"].cpu() + 1)).floor().to(torch.int32)
            static_lens.copy_(lens.cuda())
            case = dict(inputs, cache_seqlens=static_lens.clone())
        graph.replay()
        torch.cuda.synchronize()
        ref_out, ref_lse = reference.sparse_decode(**dequantized(case)) if sparse else reference.dense_decode(**case)
        op = "sparse_decode" if sparse else "dense_decode"
        for out, lse in outs:
            check_close("out", out, ref_out, TOL[(op, "out")])
            check_close("lse", lse, ref_lse, TOL[(op, "lse")])
