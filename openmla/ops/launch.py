"""Kernel launches with less host time: reuse the compiled kernel instead of re-binding every call.

``kernel[grid](*args, **constexprs)`` goes through ``JITFunction.run``, which binds the arguments,
specialises each one, hashes a cache key and looks the compiled kernel up on every call: about 19 us
of Python per launch on the GPU machine, two launches per decode step. :func:`launch` does the first
launch of each variant that way and keeps the ``CompiledKernel`` it returns; later launches of the
same variant call the compiled kernel's launcher directly.

A variant is keyed more finely than Triton keys it, so a cached kernel is never launched with
arguments it was not compiled for: for each tensor its dtype and whether its address is 16-byte
aligned; for each int whether it is 1, a multiple of 16, and fits in 32 bits; the constexprs; the
launch options; the device. The direct path is off under the interpreter and while a Triton launch
hook is installed (profilers rely on those), and ``OPENMLA_LAUNCH=jit`` turns it off everywhere.
"""

from __future__ import annotations

import os

import torch

_INT32 = (-(2**31), 2**31 - 1)


def _arg_key(value) -> tuple | str:
    """What of one runtime argument can change the compiled code (a superset of Triton's specialisation)."""
    if isinstance(value, torch.Tensor):
        return (value.dtype, value.data_ptr() % 16 == 0)
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int):
        return ("i", value == 1, value % 16 == 0, _INT32[0] <= value <= _INT32[1])
    if isinstance(value, float):
        return "f"
    if value is None:
        return "n"
    return (type(value).__name__, value)


def variant_key(args: tuple, constexprs: dict, options: dict, device: int) -> tuple:
    """The cache key of one launch: runtime argument traits, constexpr values, options and device."""
    return (tuple(_arg_key(a) for a in args), tuple(constexprs.items()), tuple(options.items()), device)


def direct_launch_enabled() -> bool:
    """Whether :func:`launch` may skip ``JITFunction.run`` (``OPENMLA_LAUNCH`` unset or ``direct``)."""
    from .._runtime import interpret_mode

    if os.environ.get("OPENMLA_LAUNCH", "direct").strip().lower() == "jit" or interpret_mode():
        return False
    from triton import knobs

    return knobs.runtime.launch_enter_hook is None and knobs.runtime.launch_exit_hook is None


_COMPILED: dict = {}


def _constexpr_tail(kernel, args: tuple, constexprs: dict) -> tuple | None:
    """The constexpr values in signature order, when the signature is ``len(args)`` runtime parameters then
    exactly the constexprs given (the launcher takes every parameter, constexprs included); else None."""
    params = kernel.params
    runtime, tail = params[: len(args)], params[len(args):]
    if any(p.is_constexpr for p in runtime) or not all(p.is_constexpr for p in tail):
        return None
    if sorted(p.name for p in tail) != sorted(constexprs):
        return None
    return tuple(constexprs[p.name] for p in tail)


def launch(kernel, grid: tuple, args: tuple, constexprs: dict, **options) -> None:
    """Launch ``kernel[grid](*args, **constexprs, **options)``, through the compiled kernel when cached.

    ``args`` are the kernel's runtime arguments in signature order and ``constexprs`` its constexpr
    parameters, which must all follow the runtime ones in the signature (true of every OpenMLA kernel).
    """
    if not direct_launch_enabled():
        kernel[grid](*args, **constexprs, **options)
        return
    tensor = next((a for a in args if isinstance(a, torch.Tensor)), None)
    device = tensor.device.index if tensor is not None and tensor.device.index is not None else 0
    key = (id(kernel), variant_key(args, constexprs, options, device))
    cached = _COMPILED.get(key)
    if cached is None:
        compiled = kernel[grid](*args, **constexprs, **options)
        if hasattr(compiled, "result"):  # an asynchronous compile
            compiled = compiled.result()
        consts = _constexpr_tail(kernel, args, constexprs)
        if consts is not None:  # else this kernel's signature does not allow the direct path: keep the JIT one
            _COMPILED[key] = (compiled, consts)
        return
    compiled, consts = cached
    from triton.runtime import driver

    stream = driver.active.get_current_stream(device)
    grid_1 = grid[1] if len(grid) > 1 else 1
    grid_2 = grid[2] if len(grid) > 2 else 1
    compiled.run(grid[0], grid_1, grid_2, stream, compiled.function, compiled.packed_metadata, None, None, None,
                 *args, *consts)
