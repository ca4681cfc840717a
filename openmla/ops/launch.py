"""Kernel launches that a later call with the same signature can replay (see :mod:`openmla.replay`).

Every OpenMLA launcher starts its kernels through :func:`launch`. Outside a :func:`recording` that is
exactly ``kernel[grid](*args, **kwargs)``; inside one, each launch is also kept: the kernel, its grid, its
arguments and the compiled kernel Triton returned (``None`` under ``TRITON_INTERPRET=1``). A launcher that
passes its kernels buffers of its own says what they are (:func:`scratch`, :func:`kept`); a recording that
meets any other tensor is not replayed. :class:`ShapeCache` keeps tensors that depend on a call's shapes only
(made once per stream, declared kept).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any, Callable, Iterator

import torch

__all__ = ["Launch", "Recording", "ShapeCache", "kept", "launch", "recording", "scratch", "unrecorded"]


@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel launch as its launcher made it."""

    kernel: Any  # the @triton.jit / @gluon.jit function
    grid: tuple
    args: tuple
    kwargs: dict  # constexprs and launch options (num_warps, ...)
    compiled: Any  # triton's CompiledKernel, or None where there is none (the interpreter)


@dataclasses.dataclass
class Recording:
    """What a launcher did inside a :func:`recording`: its launches in order, the tensors it allocated for
    them whose contents its kernels write before they read them (``scratch``: a replay allocates new ones),
    and the tensors it passed that outlive the call (``kept``: cached plans, passed to a replay unchanged)."""

    launches: list = dataclasses.field(default_factory=list)
    scratch: list = dataclasses.field(default_factory=list)
    kept: list = dataclasses.field(default_factory=list)


class _Recorder(threading.local):
    # per thread: two threads decoding at once must not record each other's launches
    active: Recording | None = None


_RECORDER = _Recorder()


def launch(kernel, grid, *args, **kwargs):
    """``kernel[grid](*args, **kwargs)``, kept by the active :func:`recording` of this thread, if any."""
    compiled = kernel[grid](*args, **kwargs)
    rec = _RECORDER.active
    if rec is not None:
        rec.launches.append(Launch(kernel, tuple(grid), args, kwargs, compiled))
    return compiled


def scratch(*tensors) -> None:
    """Declare tensors this call allocated for its kernels, which write them before reading them (split
    partials): a replay allocates fresh ones of the same shape, strides and dtype. A no-op outside a recording."""
    rec = _RECORDER.active
    if rec is not None:
        rec.scratch.extend(t for t in tensors if t is not None)


def kept(*tensors) -> None:
    """Declare tensors that outlive this call and that a replay may pass unchanged (a cached plan). A no-op
    outside a recording."""
    rec = _RECORDER.active
    if rec is not None:
        rec.kept.extend(t for t in tensors if t is not None)


@contextlib.contextmanager
def unrecorded() -> Iterator[None]:
    """Launches in this block are not recorded (work whose results a launcher caches and declares kept)."""
    outer = _RECORDER.active
    _RECORDER.active = None
    try:
        yield
    finally:
        _RECORDER.active = outer


@contextlib.contextmanager
def recording() -> Iterator[Recording]:
    """Collect what this thread's launchers do inside the block (:class:`Recording`)."""
    outer = _RECORDER.active
    _RECORDER.active = rec = Recording()
    try:
        yield rec
    finally:
        _RECORDER.active = outer


class ShapeCache:
    """Tensors that depend on a call's shapes only (a plan of fixed-length lists, split offsets), made once per
    (device, key) and reused by later calls on any stream: a launch or an allocation less a call, and a replay may
    pass them on (declared :func:`kept`; never rewritten once made).

    Made outside any recording, and the making stream is synchronized once before an entry is stored, so a call on
    any other stream, or a CUDA-graph capture on one, reads a finished tensor with no event to wait for. So a step
    captured after one eager call of its shapes (what serving engines' warm-ups do) replays without remaking them:
    made inside the capture they would be launches of every replay. Inside a capture a missing entry is made there
    and not cached (a tensor made there lives in the graph's pool and is written on replay only) nor declared kept,
    so a recording of that call is refused. At most ``limit`` entries, the oldest dropped first (a Replay holding one
    keeps it alive). The one synchronization is what a first call of a shape costs; made while another thread
    captures a CUDA graph in PyTorch's default (global) mode it would invalidate that capture, as any synchronizing
    call then does (serving engines capture after warm-up calls of their shapes, which made the entries).
    """

    def __init__(self, limit: int = 64):
        self.entries: dict = {}
        self.limit = limit

    def get(self, device: torch.device, key: tuple, make: Callable[[], Any]):
        """The cached value for ``key`` on ``device``, else ``make()`` (a tensor or a tuple of tensors)."""
        cuda = device.type == "cuda"
        full = (device, *key)
        value = self.entries.get(full)
        if value is None:
            if cuda and torch.cuda.is_current_stream_capturing():
                return make()
            with unrecorded():
                value = make()
            if cuda:  # once per entry: later readers on other streams need no event
                torch.cuda.current_stream(device).synchronize()
            if len(self.entries) >= self.limit:
                self.entries.pop(next(iter(self.entries)))
            self.entries[full] = value
        kept(*(value if isinstance(value, tuple) else (value,)))
        return value
