"""Runtime facts shared by every module: typed errors, environment knobs, the arch probe.

Environment knobs (all read here, nowhere else; documented in the README):

| variable | default | meaning |
|---|---|---|
| ``OPENMLA_BACKEND`` | ``auto`` | ``auto``, ``reference``, ``triton`` or ``gluon``: force the backend of every call |
| ``OPENMLA_ARCH`` | unset | pretend the GPU is this arch (``sm_90``, ``90``, ``sm_90a``) when picking kernels |
| ``OPENMLA_NUM_SMS`` | unset | override the SM count used by the split-KV planner (tests, tuning) |
| ``TRITON_INTERPRET`` | unset | Triton's own knob: ``1`` runs Triton kernels on CPU tensors (set before import) |
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

BACKENDS = ("reference", "triton", "gluon")


class OpenMLAError(Exception):
    """Base class of every error OpenMLA raises on purpose."""


class InvalidArgumentError(OpenMLAError, ValueError):
    """An argument has the wrong dtype, shape, device, stride or value."""


class UnsupportedError(OpenMLAError, NotImplementedError):
    """The call is well formed, but no backend here serves it (or the forced one cannot)."""


class SchedMetaMismatchError(InvalidArgumentError):
    """A ``FlashMLASchedMeta`` was reused for a call with a different shape or configuration."""


# Decode calls read a few environment knobs on every call; ``os.environ.get`` costs ~0.7 µs a read (key
# encoding, the Mapping machinery), the dict under it ~0.05 µs. CPython keeps that dict, with encoded
# keys, as ``os.environ._data``; anything else takes the plain path.
_ENV_DATA = getattr(os.environ, "_data", None)
_ENV_ENCODE = getattr(os.environ, "encodekey", None)
_ENV_DECODE = getattr(os.environ, "decodevalue", None)
_ENV_KEYS: dict = {}


def getenv(name: str) -> str | None:
    """``os.environ.get(name)``, read fast: it sees every change made through ``os.environ``."""
    if _ENV_DATA is None or _ENV_ENCODE is None or _ENV_DECODE is None:
        return os.environ.get(name)
    key = _ENV_KEYS.get(name)
    if key is None:
        key = _ENV_KEYS[name] = _ENV_ENCODE(name)
    value = _ENV_DATA.get(key)
    return None if value is None else _ENV_DECODE(value)


def env_reader(names: tuple[str, ...]):
    """A function returning the current values of ``names`` as one tuple (raw, as the environment holds
    them): a cheap key for state that depends on those knobs, read on every decode call."""
    if _ENV_DATA is None or _ENV_ENCODE is None:
        return lambda: tuple(os.environ.get(n) for n in names)
    keys, get = tuple(_ENV_ENCODE(n) for n in names), _ENV_DATA.get
    return lambda: tuple(map(get, keys))


def env_backend() -> str:
    """The backend forced by ``OPENMLA_BACKEND`` (``"auto"`` when unset)."""
    value = (getenv("OPENMLA_BACKEND") or "auto").strip().lower() or "auto"
    if value != "auto" and value not in BACKENDS:
        raise InvalidArgumentError(
            f"OPENMLA_BACKEND={value!r} is not a backend; expected one of 'auto', "
            f"{', '.join(repr(b) for b in BACKENDS)}. Unset it to let OpenMLA choose."
        )
    return value


#: values of ``OPENMLA_FP8_SCORES``: how an e4m3 q's scores over a per-tensor FP8 cache are computed on Hopper
FP8_SCORES = ("e4m3", "exact")


def env_fp8_scores() -> str:
    """``OPENMLA_FP8_SCORES`` (``"e4m3"`` when unset): ``"e4m3"`` multiplies an e4m3 q by the e4m3 cache on the e4m3
    tensor cores, as FlashMLA's FP8 kernel does: their sums keep fewer bits than fp32, so on FlashMLA's test
    inputs the LSE is off an fp32 sum by up to 6.8e-5 (its dense-decode tolerance is 1e-6; FlashMLA's kernel is off
    by the same) and the output stays within that tolerance. ``"exact"`` decodes both to fp16 first (16-bit
    products, fp32 sums, every tolerance met), 1.17-1.45x the time (H200, H100, ``docs/perf-notes.md``)."""
    value = (getenv("OPENMLA_FP8_SCORES") or "e4m3").strip().lower() or "e4m3"
    if value not in FP8_SCORES:
        raise InvalidArgumentError(
            f"OPENMLA_FP8_SCORES={value!r} is not a score mode; expected one of "
            f"{', '.join(repr(m) for m in FP8_SCORES)}. Unset it for 'e4m3'."
        )
    return value


def interpret_mode() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return (getenv("TRITON_INTERPRET") or "0").strip().lower() in ("1", "true", "on", "yes")


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when ``triton`` imports (it does not on macOS or Windows without a Triton build)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # a broken install must not break ``import openmla``
        return False
    return True


@functools.lru_cache(maxsize=None)
def gluon_available() -> bool:
    """True when Triton's Gluon dialect with the Hopper module imports."""
    if not triton_available():
        return False
    try:
        from triton.experimental import gluon  # noqa: F401
        from triton.experimental.gluon.language.nvidia import hopper  # noqa: F401
    except Exception:
        return False
    return True


def _parse_arch(text: str) -> int:
    t = text.strip().lower().removeprefix("sm_").removeprefix("sm").rstrip("af")
    if not t.isdigit():
        raise InvalidArgumentError(f"OPENMLA_ARCH={text!r} is not an arch; write it as 'sm_90', '90' or 'sm_90a'.")
    return int(t)


@functools.lru_cache(maxsize=None)
def _device_capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def device_arch(device: torch.device | None = None) -> int | None:
    """Compute capability as an int (``90`` for Hopper), ``None`` for CPU tensors.

    ``OPENMLA_ARCH`` overrides what the GPU reports.
    """
    override = getenv("OPENMLA_ARCH")
    if device is not None and torch.device(device).type != "cuda":
        return None
    if override:
        return _parse_arch(override)
    if not torch.cuda.is_available():
        return None
    index = torch.device(device).index if device is not None else None
    major, minor = _device_capability(torch.cuda.current_device() if index is None else index)
    return major * 10 + minor


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (``OPENMLA_NUM_SMS`` overrides; 132 for CPU tensors)."""
    override = getenv("OPENMLA_NUM_SMS")
    if override:
        return max(1, int(override))
    device = torch.device(device)
    if device.type != "cuda":
        return 132  # an H100's count, so CPU runs exercise the same split-KV plans
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def gpu_description(device: torch.device | None = None) -> str:
    """One line naming the GPU a call runs on, for error messages (``"CPU (no GPU)"`` otherwise)."""
    if device is not None and torch.device(device).type != "cuda":
        return f"{torch.device(device).type.upper()} tensors (no GPU in this call)"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible"
    index = torch.device(device).index if device is not None and torch.device(device).index is not None else (
        torch.cuda.current_device()
    )
    name = torch.cuda.get_device_name(index)
    major, minor = _device_capability(index)
    return f"{name} (sm_{major}{minor}, {_sm_count(index)} SMs)"


def aligned16(*tensors: torch.Tensor) -> bool:
    """Every tensor's base address and every stride in bytes (the last, 1, aside) are multiples of 16.

    The Gluon kernels copy 16 bytes at a time and are compiled for such rows (Triton specializes them on it;
    misaligned ones do not compile), so calls that break it go to the Triton kernels. Strides of dims of size 1
    count too: the kernels take them as arguments all the same."""
    for t in tensors:
        size = t.element_size()
        if t.data_ptr() % 16 or any((st * size) % 16 for st in t.stride()[:-1]):
            return False
    return True
