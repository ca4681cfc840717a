"""Which backend serves a call, and why: one decision table, queried by the API, ``explain`` and ``doctor``."""

from __future__ import annotations

import dataclasses
import warnings

import torch

from ._runtime import (
    BACKENDS,
    UnsupportedError,
    device_arch,
    env_backend,
    env_fp8_scores,
    getenv,
    gpu_description,
    interpret_mode,
    triton_available,
)

TRITON_DTYPES = (torch.bfloat16, torch.float16)


class OpenMLAFallbackWarning(UserWarning):
    """A call is served by a slower backend than this GPU could use for other inputs."""


@dataclasses.dataclass(frozen=True)
class Choice:
    """The backend that serves one call and the reason it was picked."""

    op: str
    backend: str
    reason: str


def _triton_reason_against(
    device: torch.device, dtype: torch.dtype | None, dims: tuple[int, int] | None, kv_fp8: bool = False
) -> str | None:
    """Why the Triton dense-decode kernel cannot serve these inputs (``None`` when it can).

    ``kv_fp8``: the cache is per-tensor FP8, read by the same kernel; q may then be e4m3 too.
    """
    if not triton_available():
        return "triton is not installed or does not import here"
    if device.type == "cpu":
        if not interpret_mode():
            return "the tensors are on the CPU and TRITON_INTERPRET=1 was not set before importing openmla"
    elif device.type != "cuda":
        return f"Triton kernels run on CUDA GPUs, the tensors are on {device.type}"
    else:
        arch = device_arch(device)
        if arch is not None and arch < 80:
            return f"this GPU is sm_{arch}; the Triton kernels need sm_80 or newer"
    if kv_fp8:
        if dtype is not None and dtype not in TRITON_DTYPES + (torch.float8_e4m3fn,):
            return f"over an FP8 cache the Triton kernel takes a bf16, fp16 or float8_e4m3fn q, got {dtype}"
    elif dtype is not None and dtype not in TRITON_DTYPES:
        return f"the Triton kernel takes bf16 or fp16 q and k_cache, got {dtype}"
    if dims is not None:
        d, d_v = dims
        if d_v < 16 or d_v & (d_v - 1):
            return f"head_dim_v={d_v} is not a power of two >= 16"
        d_pe = d - d_v
        if d_pe != 0 and (d_pe < 16 or d_pe & (d_pe - 1)):
            return f"d - head_dim_v = {d_pe} (the RoPE part) is neither 0 nor a power of two >= 16"
    return None


def _gluon_reason_against(
    device: torch.device, dtype: torch.dtype | None, dims: tuple[int, int] | None, kv_fp8: bool = False
) -> str | None:
    """Why the Gluon sm_90 dense-decode kernel cannot serve these inputs (``None`` when it can)."""
    from ._runtime import gluon_available

    if not gluon_available():
        return "Triton's Gluon dialect with its Hopper module does not import here"
    if device.type != "cuda":
        return f"Gluon kernels run on CUDA GPUs only (no interpreter), the tensors are on {device.type}"
    arch = device_arch(device)
    if arch != 90:
        return f"the Gluon kernel is written for Hopper (sm_90); this GPU is sm_{arch}"
    if dtype is not None and dtype not in TRITON_DTYPES and not (kv_fp8 and dtype == torch.float8_e4m3fn):
        return f"the Gluon kernel takes bf16 or fp16 q and k_cache (or an e4m3 q over an FP8 cache), got {dtype}"
    if dims is not None and (dims[1] != 512 or dims[0] not in (512, 576)):
        return f"the Gluon kernel takes (d, head_dim_v) = (576, 512) or (512, 512), got {dims}"
    return None


_CHOICES: dict = {}


#: why the Gluon kernels skip a call whose tensors are not 16-byte aligned (:func:`openmla._runtime.aligned16`)
MISALIGNED = ("q's or the cache's base address, or one of their strides in bytes, is not a multiple of 16 (the Gluon "
              "kernels copy 16 bytes at a time and are compiled for aligned rows)")


def choose_dense_decode(
    device: torch.device,
    dtype: torch.dtype | None = None,
    dims: tuple[int, int] | None = None,
    backend: str | None = None,
    kv_fp8: bool = False,
    aligned16: bool = True,
) -> Choice:
    """Pick the backend for a dense decode call; raise :class:`UnsupportedError` if a forced one cannot serve.

    ``backend`` (the call's argument) wins over ``OPENMLA_BACKEND``; ``None``/``"auto"`` decides here.
    ``dtype`` is q's; ``kv_fp8``: the cache is per-tensor FP8 (op ``dense_fp8_decode``): on Hopper the Gluon
    kernels read it (the warp-specialized one for (576, 512) dims; for other dims above 32 rows the Triton
    kernel), elsewhere the Triton kernel. ``aligned16``: q's and the cache's base addresses and strides are
    multiples of 16 bytes; where only that keeps the Gluon kernels away, the Triton kernel serves with an
    :class:`OpenMLAFallbackWarning` saying how to fix it. Decisions are cached per (device, dtype, dims,
    backend, kv_fp8, aligned16, knobs): this runs on every decode call.
    """
    key = (device, dtype, dims, backend, kv_fp8, aligned16, getenv("OPENMLA_BACKEND"), getenv("OPENMLA_ARCH"),
           getenv("TRITON_INTERPRET"), getenv("OPENMLA_FP8_SCORES") if kv_fp8 else None)
    choice = _CHOICES.get(key)
    if choice is None:
        choice = _choose_dense_decode(device, dtype, dims, backend, kv_fp8, aligned16)
        if choice.backend != "reference" or torch.device(device).type != "cuda":
            _CHOICES[key] = choice  # a GPU fallback is not cached: it must warn on every call
    return choice


def _choose_dense_decode(device, dtype, dims, backend, kv_fp8=False, aligned16=True) -> Choice:
    op = "dense_fp8_decode" if kv_fp8 else "dense_decode"
    forced = (backend or "auto").lower()
    if forced == "auto":
        forced = env_backend()
    elif forced not in BACKENDS:
        raise UnsupportedError(f"backend={backend!r} is not a backend; expected 'auto' or one of {BACKENDS}.")
    device = torch.device(device)
    against = _triton_reason_against(device, dtype, dims, kv_fp8)
    gluon_against = _gluon_reason_against(device, dtype, dims, kv_fp8)
    only_alignment = gluon_against is None and not aligned16
    if only_alignment:
        gluon_against = MISALIGNED
    where = gpu_description(device)
    if forced == "reference":
        return Choice(op, "reference", "forced (backend='reference' or OPENMLA_BACKEND=reference)")
    if forced == "gluon":
        if gluon_against is not None:
            raise UnsupportedError(
                f"backend='gluon' cannot serve {op}: {gluon_against}. GPU: {where}. Supported: bf16/fp16 on sm_90 "
                "(H100/H200/H20), (d, head_dim_v) of (576, 512) or (512, 512), also over per-tensor FP8 caches "
                "(q bf16, fp16 or float8_e4m3fn), q and cache 16-byte aligned. Use backend='triton' (any NVIDIA GPU "
                "sm_80+) or 'reference'."
            )
        return Choice(op, "gluon", "forced (backend='gluon' or OPENMLA_BACKEND=gluon)")
    if forced == "triton":
        if against is not None:
            raise UnsupportedError(
                f"backend='triton' cannot serve {op}: {against}. GPU: {where}. "
                "Supported: bf16/fp16 on sm_80+ GPUs (or CPU tensors with TRITON_INTERPRET=1 set before import), "
                "also over per-tensor FP8 caches (q bf16, fp16 or float8_e4m3fn), "
                "head_dim_v a power of two, d - head_dim_v 0 or a power of two. Use backend='reference' otherwise."
            )
        return Choice(op, "triton", "forced (backend='triton' or OPENMLA_BACKEND=triton)")
    if gluon_against is None and kv_fp8:
        if dtype == torch.float8_e4m3fn and env_fp8_scores() == "e4m3":
            served = ("the e4m3-product kernel: scores on the e4m3 tensor cores as FlashMLA's FP8 kernel (their "
                      "sums keep fewer bits than fp32: the LSE was off by up to 6.8e-5 on FlashMLA's test inputs; "
                      "OPENMLA_FP8_SCORES=exact for 16-bit products), each output warpgroup decoding its value "
                      "half to fp16; up to 32 query rows per KV head its value products transposed (the rows on "
                      "wgmma's N side, 16 or 32, not the 64-row tile)")
        else:
            served = "the warp-specialized kernel decoding the codes to 16 bits in its loader"
        return Choice(op, "gluon", f"Hopper (Gluon, wgmma): (576, 512) dims: {served}, at every head count (rows "
                                  f"past the heads masked in its 64-row tile); other dims: KV tokens on the 64-row "
                                  f"side up to 32 query rows per KV head, above that the Triton split-KV kernel, on "
                                  f"{where}")
    if gluon_against is None:
        return Choice(op, "gluon", f"Hopper kernels (Gluon, wgmma; K tiles by TMA where the cache allows; KV "
                                  f"tokens on the 64-row side up to 32 query rows per KV head (16 over (576, 512) "
                                  f"caches with whole 64-key TMA tiles when the partials go to the combine kernel); "
                                  f"above, query rows, warp-specialized unless a small eager batch merges its "
                                  f"splits in the kernel) on {where}")
    if against is None:
        if device.type == "cpu":
            return Choice(op, "triton", "CPU tensors with TRITON_INTERPRET=1: Triton kernels in the interpreter")
        if only_alignment:  # the caller can fix this: say so (once per call signature: choices are cached)
            warnings.warn(
                f"openmla: {op.replace('_', ' ')} runs the Triton kernel, not the faster Gluon one, because "
                f"{gluon_against} ({where}); pass q and k_cache with base addresses and strides that are multiples "
                "of 16 bytes (a contiguous tensor, or a view at such an offset).",
                OpenMLAFallbackWarning,
                stacklevel=4,
            )
        return Choice(op, "triton", f"portable Triton split-KV kernel on {where} ({gluon_against})")
    return _reference_choice(op, device, against, where)


def _sparse_triton_reason_against(
    device: torch.device, dtype: torch.dtype | None, dims: tuple[int, int] | None, cache_format: str | None
) -> str | None:
    """Why the Triton sparse kernel cannot serve these inputs (``None`` when it can).

    ``cache_format``: ``None`` for a bf16/fp16 cache, else the FP8 layout's name (only ``"V32_FP8"`` is read
    by the kernel).
    """
    if cache_format is None:
        return _triton_reason_against(device, dtype, dims)
    against = _triton_reason_against(device, dtype, None)
    if against is None and cache_format != "V32_FP8":
        against = f"the Triton sparse kernel reads the V3.2 FP8 layout (656 B/token), not {cache_format}"
    if against is None and dims is not None and dims != (576, 512):
        against = f"the V3.2 FP8 layout has (d_qk, head_dim_v) = (576, 512), got {dims}"
    return against


def _sparse_gluon_reason_against(
    device: torch.device, dtype: torch.dtype | None, dims: tuple[int, int] | None, cache_format: str | None,
    extras: bool, aligned16: bool = True
) -> str | None:
    """Why the Gluon sm_90 sparse kernel cannot serve these inputs (``None`` when it can).

    ``aligned16``: q's and the cache's base addresses and strides are multiples of 16 bytes (its copies move
    16 bytes at a time; a 656-byte record keeps every natural allocation aligned)."""
    against = _gluon_reason_against(device, dtype, dims if cache_format is None else None)
    if against is None and cache_format is not None:
        if cache_format != "V32_FP8":
            against = f"the Gluon sparse kernel reads 16-bit caches and the V3.2 FP8 layout, not {cache_format}"
        elif dims is not None and dims != (576, 512):
            against = f"the V3.2 FP8 layout has (d_qk, head_dim_v) = (576, 512), got {dims}"
    if against is None and not aligned16:
        against = MISALIGNED
    if against is None and extras:
        against = "the Gluon sparse kernel takes no extra cache (extra_k_cache)"
    return against


_SPARSE_CHOICES: dict = {}


def choose_sparse_decode(
    device: torch.device,
    dtype: torch.dtype | None = None,
    dims: tuple[int, int] | None = None,
    cache_format: str | None = None,
    backend: str | None = None,
    extras: bool = False,
    aligned16: bool = True,
    h_q: int | None = None,
) -> Choice:
    """Pick the backend for a sparse decode call; raise :class:`UnsupportedError` if a forced one cannot serve.

    ``dtype`` is q's; ``cache_format`` ``None`` for a bf16/fp16 cache, else the FP8 layout's name;
    ``extras``: the call has an extra cache (``extra_k_cache``); ``aligned16``: q's and the cache's base addresses
    and strides are multiples of 16 bytes; ``h_q``, where known, names the Gluon kernel in the reason (the
    small-head kernel at most 16 heads over the V3.2 cache with a bf16 q; at 17-32 heads both, its 32-row build
    serving long batches). On Hopper the Gluon kernels serve
    bf16/fp16 q over a cache of q's dtype with (576 or 512, 512) dims, or over an aligned V3.2 FP8 cache, with or
    without ``attn_sink``, without an extra cache; Triton serves bf16/fp16 q over a cache of q's dtype or the V3.2
    FP8 layout; the reference serves the rest (fp32, MODEL1). Cached like :func:`choose_dense_decode`.
    """
    key = (device, dtype, dims, cache_format, backend, extras, aligned16, h_q, getenv("OPENMLA_BACKEND"),
           getenv("OPENMLA_ARCH"), getenv("TRITON_INTERPRET"))
    choice = _SPARSE_CHOICES.get(key)
    if choice is None:
        choice = _choose_sparse_decode(torch.device(device), dtype, dims, cache_format, backend, extras, aligned16,
                                       h_q)
        if choice.backend != "reference" or torch.device(device).type != "cuda":
            _SPARSE_CHOICES[key] = choice  # a GPU fallback is not cached: it must warn on every call
    return choice


def _choose_sparse_decode(device, dtype, dims, cache_format, backend, extras=False, aligned16=True,
                          h_q=None) -> Choice:
    op = "sparse_decode"
    forced = (backend or "auto").lower()
    if forced == "auto":
        forced = env_backend()
    elif forced not in BACKENDS:
        raise UnsupportedError(f"backend={backend!r} is not a backend; expected 'auto' or one of {BACKENDS}.")
    against = _sparse_triton_reason_against(device, dtype, dims, cache_format)
    where = gpu_description(device)
    if forced == "reference":
        return Choice(op, "reference", "forced (backend='reference' or OPENMLA_BACKEND=reference)")
    gluon_against = _sparse_gluon_reason_against(device, dtype, dims, cache_format, extras, aligned16)
    if forced == "gluon":
        if gluon_against is not None:
            raise UnsupportedError(
                f"backend='gluon' cannot serve {op}: {gluon_against}. GPU: {where}. Supported: bf16/fp16 q over a "
                "cache of q's dtype, (d_qk, head_dim_v) = (576, 512) or (512, 512), or over the V3.2 FP8 layout "
                "(656 B/token), q and cache 16-byte aligned, on Hopper (sm_90), without "
                "extra_k_cache. Use backend='triton' (any NVIDIA GPU sm_80+) or 'reference'."
            )
        return Choice(op, "gluon", "forced (backend='gluon' or OPENMLA_BACKEND=gluon)")
    if forced == "triton":
        if against is not None:
            raise UnsupportedError(
                f"backend='triton' cannot serve {op}: {against}. GPU: {where}. Supported: bf16/fp16 q on sm_80+ GPUs "
                "(or CPU tensors with TRITON_INTERPRET=1 set before import) over a cache of q's dtype (head_dim_v a "
                "power of two, d_qk - head_dim_v 0 or a power of two) or the V3.2 FP8 layout (656 B/token). "
                "Use backend='reference' otherwise."
            )
        return Choice(op, "triton", "forced (backend='triton' or OPENMLA_BACKEND=triton)")
    if gluon_against is None:
        cache = "a 16-bit cache" if cache_format is None else "the V3.2 FP8 cache, dequantized in shared memory"
        from .ops.gluon.decode_sparse_sm90 import ROWS32_MIN_PIECE_TILES, small_heads_for, small_heads_for_some_shapes

        if h_q is not None and small_heads_for(h_q, cache_format is not None, dtype):
            return Choice(op, "gluon", f"Hopper small-head sparse kernel (Gluon, wgmma; the keys on the 64-row side, "
                                       f"the {h_q} heads on N, no padded rows, two programs an SM) over {cache} on "
                                       f"{where}")
        if h_q is not None and small_heads_for_some_shapes(h_q, cache_format is not None, dtype):
            return Choice(op, "gluon", f"Hopper warp-specialized kernel (Gluon, wgmma) over {cache} on {where}, or "
                                       f"the small-head sparse kernel's 32-row build (the {h_q} heads on N, two "
                                       f"programs an SM) for calls whose split-KV pieces walk at least "
                                       f"{ROWS32_MIN_PIECE_TILES} tiles of 64 keys")
        return Choice(op, "gluon", f"Hopper warp-specialized kernel (Gluon, wgmma) over {cache} on {where}")
    if against is None:
        if device.type == "cpu":
            return Choice(op, "triton", "CPU tensors with TRITON_INTERPRET=1: Triton kernels in the interpreter")
        if not aligned16 and _sparse_gluon_reason_against(device, dtype, dims, cache_format, extras) is None:
            # only the tensors' alignment keeps the faster kernel away, and the caller can fix that: say so
            # (once per call signature: choices are cached)
            warnings.warn(
                f"openmla: sparse decode runs the Triton kernel, not the faster Gluon one, because {gluon_against} "
                f"({where}); pass q and k_cache with base addresses and strides that are multiples of 16 bytes (a "
                "contiguous tensor, or a view at such an offset).",
                OpenMLAFallbackWarning,
                stacklevel=4,
            )
        return Choice(op, "triton", f"portable Triton sparse kernel on {where} ({gluon_against})")
    return _reference_choice(op, device, against, where)


def _reference_choice(op: str, device: torch.device, against: str, where: str) -> Choice:
    """The reference serves a call no kernel can; on a GPU that is a slow fallback, so it warns every time."""
    if device.type == "cuda":
        # stacklevel: this helper, the chooser, its caching wrapper, then the public API call
        warnings.warn(
            f"openmla: {op.replace('_', ' ')} falls back to the slow fp32 reference because {against} ({where}).",
            OpenMLAFallbackWarning,
            stacklevel=5,
        )
        return Choice(op, "reference", f"fallback: {against}")
    return Choice(op, "reference", f"{against}: the fp32 PyTorch reference serves CPU calls")


def backend_table(device: torch.device | str | None = None) -> list[Choice]:
    """What serves each public op on ``device`` (default: the current GPU, else CPU), for ``openmla doctor``.

    Rows are for DeepSeek's shapes: bf16 q, (576, 512) dims; dense decoding over a bf16 and a per-tensor
    FP8 cache; sparse decoding over the V3.2 FP8 cache and over a bf16 cache.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OpenMLAFallbackWarning)
        for op, choose in (
            ("dense_decode", lambda: choose_dense_decode(device, torch.bfloat16, (576, 512))),
            ("dense_fp8_decode", lambda: choose_dense_decode(device, torch.bfloat16, (576, 512), kv_fp8=True)),
            ("sparse_decode", lambda: choose_sparse_decode(device, torch.bfloat16, (576, 512), "V32_FP8")),
            ("sparse_bf16_decode", lambda: dataclasses.replace(
                choose_sparse_decode(device, torch.bfloat16, (576, 512), None), op="sparse_bf16_decode")),
        ):
            try:
                rows.append(choose())
            except UnsupportedError as exc:
                rows.append(Choice(op, "none", str(exc)))
    for op in ("sparse_prefill", "dense_prefill"):
        rows.append(Choice(op, "none", "not implemented in this version of openmla"))
    return rows
