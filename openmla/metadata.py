"""FlashMLA's two scheduler-metadata conventions, served by one GPU-side planner.

* Old form (FlashMLA v1/v2, SGLang's ``sgl_kernel``, vLLM before 2026): ``get_mla_metadata(
  cache_seqlens, num_q_tokens_per_head_k, num_heads_k, ...)`` returns ``(tile_scheduler_metadata
  int32 [num_sm_parts, 8], num_splits int32 [b + 1])``, passed to every decode call of the step.
* New form (FlashMLA v3+): ``get_mla_metadata()`` returns ``(FlashMLASchedMeta(), None)``; the first
  decode call that receives the object plans the schedule and stores it there; later calls with the
  same object (the other layers of the step) reuse it, and must have the same configuration.

Either way the plan is one kernel launch with no host synchronisation, so a whole decode step,
metadata included, can be captured in a CUDA graph. As in FlashMLA, a reused object trusts that the
*values* of ``cache_seqlens`` did not change; create a fresh object per step.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Optional

import torch

from ._runtime import InvalidArgumentError, SchedMetaMismatchError, device_arch, num_sms
from .ops.combine import FUSED_MAX_BATCH
from .ops.decode_dense import num_sm_parts_for
from .ops.schedule import FIXED_OVERHEAD, MAX_SPLITS, SEGMENT_PLAN_MAX_BATCH, plan_segments, plan_splitkv
from .replay import _knob_values, replay_enabled

__all__ = ["FlashMLASchedMeta", "get_mla_metadata", "get_mla_decoding_metadata"]

#: KV blocks the dense plan charges each request (each piece of one, under ``plan_segments``) on top of its own,
#: for its Q load and output write (FlashMLA's scheduler charges 5). Read at each call (A/Bs:
#: ``benchmarks.kernel_times --plan-overhead``). On an H200 the warp-specialized kernel's programs of a ragged
#: h_q=128 batch planned with 5 took time by their tiles alone (pieces of 244 tiles and 4-5 requests 569 us, of 259
#: tiles and 2 requests 593 us): 5 looks too much for it, not yet measured otherwise (docs/perf-notes.md item 29).
DENSE_PLAN_OVERHEAD = FIXED_OVERHEAD


class _TensorSet:
    """Tensors by identity, held weakly (a ``weakref.WeakSet`` compares tensors with ``==``, which is
    elementwise)."""

    def __init__(self):
        self._refs: dict[int, weakref.ref] = {}

    def add(self, tensor: torch.Tensor) -> None:
        key = id(tensor)
        self._refs[key] = weakref.ref(tensor, lambda _ref, key=key: self._refs.pop(key, None))

    def __contains__(self, tensor) -> bool:
        ref = self._refs.get(id(tensor))
        return ref is not None and ref() is tensor


#: ``num_splits`` of the old-form plans made without the fused merge's bound (:func:`plan_dense`): a decode call
#: handed one merges with the combine kernel whatever its batch (one program merging 66 partials made b=1 at 8k keys
#: 146.1 against 45.0 us on an H100, ``openmla.ops.schedule.MAX_SPLITS``). Held weakly: a plan its caller drops
#: leaves the set.
UNBOUNDED_OLD_FORM = _TensorSet()
#: Whether old-form plans of small batches drop the fused merge's bound while calls replay (:func:`plan_dense`);
#: ``False`` bounds them as before (A/Bs: ``benchmarks.kernel_times --old-form --old-form-bounded``). Read each call.
UNBOUND_REPLAYED_OLD_FORM = True

_REUSE_HINT = (
    " A FlashMLASchedMeta is planned by the first flash_mla_with_kvcache call that receives it and may only be"
    " reused by calls with the same shapes and options (the layers of one decode step). Call"
    " get_mla_metadata() again for a new batch."
)


@dataclasses.dataclass
class FlashMLASchedMeta:
    """Scheduler state filled lazily by the first decode call (FlashMLA v3 compatible)."""

    @dataclasses.dataclass(frozen=True)
    class Config:
        b: int
        s_q: int
        h_q: int
        page_block_size: int
        h_k: int
        causal: bool
        is_fp8_kvcache: bool
        topk: Optional[int] = None
        extra_page_block_size: Optional[int] = None
        extra_topk: Optional[int] = None

    have_initialized: bool = False
    config: Optional[Config] = None
    tile_scheduler_metadata: Optional[torch.Tensor] = None  # int32 [num_sm_parts, 8]
    num_splits: Optional[torch.Tensor] = None  # int32 [b + 1]
    # OpenMLA: split-KV partial buffers, allocated by the first call and reused by the step's other layers
    workspace: Optional[tuple] = None
    # OpenMLA: the dense calls' configuration as a plain tuple, so the step's later layers check it without
    # building a Config (a decode call's host time is counted in microseconds)
    dense_key: Optional[tuple] = None
    # OpenMLA: the step's recorded dense calls by signature (:mod:`openmla.replay`); False for a signature
    # whose launches cannot be replayed
    replays: Optional[dict] = None
    # OpenMLA: the schedule buffers the replays were recorded with (a caller that assigns new ones, as the
    # SGLang fork's hoisted scheduler does, makes them stale: they are then dropped)
    replay_basis: Optional[tuple] = None

    def current_replays(self) -> Optional[dict]:
        """The recorded replays, or None (and none kept) when the schedule buffers they read were replaced."""
        basis = self.replay_basis
        if basis is not None and (basis[0] is not self.tile_scheduler_metadata or basis[1] is not self.num_splits
                                  or basis[2] is not self.workspace):
            self.replays = self.replay_basis = None
        return self.replays

    def check_or_set_config(self, config: "FlashMLASchedMeta.Config") -> None:
        """Record ``config`` on first use; afterwards raise if a call brings a different one."""
        if self.config is None:
            self.config = config
            return
        if self.config != config:
            diffs = [
                f"{f.name}: planned for {getattr(self.config, f.name)!r}, this call has {getattr(config, f.name)!r}"
                for f in dataclasses.fields(config)
                if getattr(self.config, f.name) != getattr(config, f.name)
            ]
            raise SchedMetaMismatchError(
                "tile_scheduler_metadata (FlashMLASchedMeta) was planned for another configuration: "
                + "; ".join(diffs)
                + "."
                + _REUSE_HINT
            )


def _check_seqlens(cache_seqlens: torch.Tensor) -> None:
    if not isinstance(cache_seqlens, torch.Tensor):
        raise InvalidArgumentError(
            f"cache_seqlens must be a torch.Tensor of shape [b], dtype int32; got {type(cache_seqlens).__name__}."
        )
    if cache_seqlens.dtype != torch.int32 or cache_seqlens.dim() != 1:
        raise InvalidArgumentError(
            f"cache_seqlens must be int32 of shape [b]; got dtype {cache_seqlens.dtype}, shape {tuple(cache_seqlens.shape)}."
        )


def plan_dense(
    cache_seqlens: torch.Tensor, rows_per_kv_head: int, h_kv: int, backend: str | None = None, old_api: bool = False,
    kv_fp8: bool = False, bounded: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plan a dense-decode schedule: ``(tile_scheduler_metadata, num_splits)`` on cache_seqlens' device.

    ``backend``: the kernel that will run it (sizes the pieces); ``None`` = what would serve a bf16
    (576, 512) call on this device, over a per-tensor FP8 cache with ``kv_fp8`` (the Triton kernel, on
    Hopper too). Any plan is correct for any kernel; the size only affects speed.
    ``old_api``: the tensors go back to a caller of the old form, so at most one piece per SM.
    Batches of up to :data:`openmla.ops.schedule.SEGMENT_PLAN_MAX_BATCH` requests are planned by
    :func:`~openmla.ops.schedule.plan_segments` (each piece of a request pays the per-request overhead), larger ones
    by :func:`~openmla.ops.schedule.plan_splitkv` (one pass over the requests in closed form).
    ``bounded``: cut any request into at most :data:`openmla.ops.schedule.MAX_SPLITS` pieces (the fused
    combine's bound; speed only). A decode call passes whether it fuses. ``None``: for batches small enough for
    the fused combine (:data:`openmla.ops.combine.FUSED_MAX_BATCH`), except old-form plans while decode calls
    replay (``OPENMLA_REPLAY``, the default): those calls leave their merge to the combine kernel, as new-form
    calls that plan do, so the bound would only leave SMs idle (b=1 at 8k keys: pieces of 9 blocks instead of 3).
    Such plans' ``num_splits`` are kept in :data:`UNBOUNDED_OLD_FORM`, and a call handed one never fuses.
    """
    if backend is None:
        import warnings

        from .dispatch import OpenMLAFallbackWarning, choose_dense_decode

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OpenMLAFallbackWarning)
            backend = choose_dense_decode(cache_seqlens.device, torch.bfloat16, (576, 512), kv_fp8=kv_fp8).backend
    device = cache_seqlens.device
    parts = num_sm_parts_for(rows_per_kv_head, h_kv, num_sms(device), backend=backend, cap_at_sm_count=old_api,
                             arch=device_arch(device), kv_fp8=kv_fp8)
    small = cache_seqlens.shape[0] <= FUSED_MAX_BATCH
    unbounded_old_form = (bounded is None and old_api and small and UNBOUND_REPLAYED_OLD_FORM
                          and replay_enabled(_knob_values()))
    if bounded is None:
        bounded = small and not unbounded_old_form
    # small batches: a piece of a request pays its overhead (no one-block tails beside the next request's start)
    plan = plan_segments if cache_seqlens.shape[0] <= SEGMENT_PLAN_MAX_BATCH else plan_splitkv
    sched, splits = plan(cache_seqlens.contiguous(), parts, MAX_SPLITS if bounded else None,
                         overhead=DENSE_PLAN_OVERHEAD)
    if unbounded_old_form:
        UNBOUNDED_OLD_FORM.add(splits)
    return sched, splits


def get_mla_metadata(*args, **kwargs):
    """Scheduler metadata, in whichever convention the caller speaks.

    ``get_mla_metadata()`` (no arguments, FlashMLA v3+): returns ``(FlashMLASchedMeta(), None)``.

    ``get_mla_metadata(cache_seqlens, num_q_tokens_per_head_k, num_heads_k, num_heads_q=None,
    is_fp8_kvcache=False, topk=None)`` (FlashMLA v1/v2; ``num_heads_per_head_k`` is accepted as the
    v1 name of the second argument): returns ``(tile_scheduler_metadata int32 [num_sm_parts, 8],
    num_splits int32 [b + 1])`` computed on ``cache_seqlens.device`` without a host sync.
    ``num_q_tokens_per_head_k`` is ``s_q * h_q // h_kv``. ``num_sm_parts`` never exceeds the SM count.
    With ``topk`` (sparse decoding) the same pair is returned; sparse calls accept it and do not read it.
    ``is_fp8_kvcache`` without ``topk`` plans for dense decoding over a per-tensor FP8 cache.
    """
    if not args and not kwargs:
        return FlashMLASchedMeta(), None
    names = ["cache_seqlens", "num_q_tokens_per_head_k", "num_heads_k", "num_heads_q", "is_fp8_kvcache", "topk"]
    if "num_heads_per_head_k" in kwargs:
        kwargs["num_q_tokens_per_head_k"] = kwargs.pop("num_heads_per_head_k")
    if len(args) > len(names):
        raise InvalidArgumentError(f"get_mla_metadata takes at most {len(names)} positional arguments; got {len(args)}.")
    bound = dict(zip(names, args))
    for key, value in kwargs.items():
        if key not in names:
            raise InvalidArgumentError(f"get_mla_metadata got an unexpected argument {key!r}; it takes {names}.")
        if key in bound:
            raise InvalidArgumentError(f"get_mla_metadata got {key!r} twice.")
        bound[key] = value
    if "cache_seqlens" not in bound:
        # FlashMLA v3 ignores its arguments entirely; so do we when the seqlens are missing
        return FlashMLASchedMeta(), None
    missing = [n for n in names[:3] if n not in bound]
    if missing:
        raise InvalidArgumentError(f"get_mla_metadata(cache_seqlens, ...) also needs {missing}.")
    cache_seqlens = bound["cache_seqlens"]
    _check_seqlens(cache_seqlens)
    rows, h_kv = int(bound["num_q_tokens_per_head_k"]), int(bound["num_heads_k"])
    if rows <= 0 or h_kv <= 0:
        raise InvalidArgumentError(
            f"num_q_tokens_per_head_k (s_q*h_q//h_kv) and num_heads_k must be positive; got {rows} and {h_kv}."
        )
    # With topk (v2 sparse callers) the pair is returned too, for the calls to carry: the sparse kernel
    # splits its index lists by itself and does not read it.
    dense_fp8 = bool(bound.get("is_fp8_kvcache")) and bound.get("topk") is None
    return plan_dense(cache_seqlens, rows, h_kv, old_api=True, kv_fp8=dense_fp8)


def get_mla_decoding_metadata(
    seqlens_k: torch.Tensor,
    num_q_tokens_per_head_k: int,
    h_k: int,
    h_q: Optional[int] = None,
    is_fp8_kvcache: bool = False,
    topk: Optional[int] = None,
    use_legacy: bool = False,
):
    """The SGLang fork's hoisted scheduler: same result as the old-form :func:`get_mla_metadata`.

    ``is_fp8_kvcache=True`` without ``topk`` is the fork's dense FP8 scheduler: a plan for dense decoding over
    a per-tensor FP8 cache (assign the pair onto a ``FlashMLASchedMeta``, or pass it as the old form).
    """
    del use_legacy  # one implementation serves both of the fork's kernel generations
    return get_mla_metadata(seqlens_k, num_q_tokens_per_head_k, h_k, h_q, is_fp8_kvcache, topk)
