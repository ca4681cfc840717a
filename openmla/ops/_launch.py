"""Re-launch an already compiled Triton/Gluon kernel with less host work than ``kernel[grid](...)``.

Decode steps are host-bound at small batch: ``JITFunction.run`` re-binds and re-specialises every
argument, hashes a cache key and builds launch metadata on each call (~15-20 µs per launch on an
H200's host). Here the first launch for a given specialisation goes through Triton as usual and
returns the compiled kernel; later launches with the same key call its launcher directly.

The key covers everything Triton specialises on: the constexprs and launch options, the dtype and
16-byte alignment of every pointer, and for every integer whether it is 1, a multiple of 16 and
outside int32 (taken for all integers, which can only add cache entries). Profiling hooks (Triton's
launch hooks) and the CPU interpreter always take Triton's own path.
"""

from __future__ import annotations

import torch

_COMPILED: dict = {}


def _triton_path_required() -> bool:
    from triton import knobs

    return knobs.runtime.launch_enter_hook is not None or knobs.runtime.launch_exit_hook is not None


def _arg_key(a):
    if isinstance(a, torch.Tensor):
        return a.dtype, a.data_ptr() % 16 == 0
    if isinstance(a, int):
        return a == 1, a % 16 == 0, not -(2**31) <= a < 2**31
    return type(a)


def launch(jit_fn, grid: tuple, args: tuple, constexprs: dict, **options) -> None:
    """``jit_fn[grid](*args, **constexprs, **options)``, through the compiled-kernel cache when possible.

    Args:
        args: the non-constexpr arguments in the kernel's parameter order; the kernel's constexpr
            parameters must all come after them, and ``constexprs`` must list them in that order.
    """
    device = args[0].device
    if device.type != "cuda":
        jit_fn[grid](*args, **constexprs, **options)
        return
    key = (jit_fn, device.index, tuple(constexprs.items()), tuple(options.items()), tuple(map(_arg_key, args)))
    kernel = _COMPILED.get(key)
    if kernel is None or _triton_path_required():
        kernel = jit_fn[grid](*args, **constexprs, **options)
        if kernel is not None and hasattr(kernel, "function"):
            _COMPILED[key] = kernel
        return
    stream = torch._C._cuda_getCurrentRawStream(device.index)
    g1 = grid[1] if len(grid) > 1 else 1
    g2 = grid[2] if len(grid) > 2 else 1
    kernel.run(grid[0], g1, g2, stream, kernel.function, kernel.packed_metadata, None, None, None,
               *args, *constexprs.values())
