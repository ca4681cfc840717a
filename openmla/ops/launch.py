"""Kernel launches that a later call with the same signature can replay (see :mod:`openmla.replay`).

Every OpenMLA launcher starts its kernels through :func:`launch`. Outside a :func:`recording` that is
exactly ``kernel[grid](*args, **kwargs)``; inside one, each launch is also kept: the kernel, its grid, its
arguments and the compiled kernel Triton returned (``None`` under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any, Iterator

__all__ = ["Launch", "launch", "recording"]


@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel launch as its launcher made it."""

    kernel: Any  # the @triton.jit / @gluon.jit function
    grid: tuple
    args: tuple
    kwargs: dict  # constexprs and launch options (num_warps, ...)
    compiled: Any  # triton's CompiledKernel, or None where there is none (the interpreter)


class _Recorder(threading.local):
    # per thread: two threads decoding at once must not record each other's launches
    launches: list | None = None


_RECORDER = _Recorder()


def launch(kernel, grid, *args, **kwargs):
    """``kernel[grid](*args, **kwargs)``, kept by the active :func:`recording` of this thread, if any."""
    compiled = kernel[grid](*args, **kwargs)
    launches = _RECORDER.launches
    if launches is not None:
        launches.append(Launch(kernel, tuple(grid), args, kwargs, compiled))
    return compiled


@contextlib.contextmanager
def recording() -> Iterator[list[Launch]]:
    """Collect the launches this thread makes inside the block, in order."""
    outer = _RECORDER.launches
    _RECORDER.launches = launches = []
    try:
        yield launches
    finally:
        _RECORDER.launches = outer
