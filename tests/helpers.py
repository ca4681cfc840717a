"""Shared test machinery: one comparator, one tolerance table, input generators, poisoning, brute force.

Everything a test needs to judge a result lives here, so every tier (reference, interpreter, GPU)
uses the same rules:

* :data:`TOL` holds FlashMLA's tolerances (``reference/flashmla-spec.md`` §4), keyed by ``(op, field)``.
* :func:`check_close` is FlashMLA's ``check_is_allclose`` comparator, re-stated from its specification.
* :func:`make_dense_decode_inputs` builds dense-decode inputs the way FlashMLA's dense-decode test does
  (NaN in every cache slot past a sequence's length, garbage block-table entries past its last page);
  :func:`quantize_dense_decode_inputs` turns them into per-tensor FP8 inputs (cache, optionally q).
* :func:`make_sparse_decode_inputs` builds sparse-decode inputs the way FlashMLA's sparse-decode test does
  (per-token random index lists padded with -1, NaN in unused slots, sinks with ±inf), plus out-of-range
  indices; :func:`dequantized` gives the same inputs with FP8 caches read back, for the reference.
* :func:`poison_like` / :func:`poison_cuda_cache` make uninitialised memory visible as NaN.
* :func:`brute_force_dense_decode` and :func:`brute_force_sparse_decode` are deliberately naive float64
  loops, used only to test :mod:`openmla.reference` (kernels are tested against the reference, not
  against these).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import NamedTuple

import torch

# Block-table filler FlashMLA's tests write past each sequence's last used page: far out of range,
# so a kernel that reads it faults (or reads garbage) instead of silently reading a valid page.
BLOCK_TABLE_GARBAGE = 2147480000


def interpret_mode() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET`` set truthy)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


# --------------------------------------------------------------------------------------------------
# Tolerances
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tol:
    """Tolerance of one compared field.

    Attributes:
        abs: an element passes if ``|ans - ref| < abs`` ...
        rel: ... or if ``|ans - ref| / (|ref| + 1e-6) < rel``.
        cos: the whole tensor must have ``cos_diff <= cos``; ``None`` skips the cosine check.
    """

    abs: float
    rel: float
    cos: float | None = None


_LSE_DECODE = Tol(1e-6, 8.01 / 65536, None)
_LSE_PREFILL = Tol(1e-6, 2.01 / 65536, None)

#: FlashMLA's tolerances (v3 tests), keyed by ``(op, field)``.
TOL: dict[tuple[str, str], Tol] = {
    ("dense_decode", "out"): Tol(8e-4, 2.01 / 128, 5e-6),
    ("dense_decode", "lse"): _LSE_DECODE,
    ("sparse_decode", "out"): Tol(1e-3, 2.01 / 128, 5e-6),
    ("sparse_decode", "lse"): _LSE_DECODE,
    ("sparse_prefill", "out"): Tol(8e-4, 3.01 / 128, 7e-6),
    ("sparse_prefill", "lse"): _LSE_PREFILL,
    ("sparse_prefill", "max_logits"): _LSE_PREFILL,
    # Dense decoding of an e4m3 q over an e4m3 cache with the scores on the e4m3 tensor cores (the default on
    # Hopper, as FlashMLA's FP8 kernel; OPENMLA_FP8_SCORES=exact gives 16-bit products and the tolerance above).
    # Those tensor cores sum products with fewer bits than fp32 and truncate, even within one k=32 instruction:
    # on FlashMLA's dense-decode inputs the LSE is off by up to 6.8e-5 (H200), the same as FlashMLA's own FP8
    # kernel on the same inputs, and adding every 32 dims in fp32 still left 3.2e-6
    # (benchmarks/results/2026-11-27-h200-dense-fp8-e4m3-scores-chunks.txt). 2e-4: three times the worst seen.
    # The output keeps the dense-decode tolerance.
    ("dense_decode_e4m3_scores", "lse"): Tol(2e-4, 8.01 / 65536, None),
}


# --------------------------------------------------------------------------------------------------
# Comparator
# --------------------------------------------------------------------------------------------------

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def cos_diff(a: torch.Tensor, r: torch.Tensor) -> float:
    """``1 - 2·Σ(a·r) / Σ(a² + r²)`` in float64; 0 when ``Σr² < 1e-12`` (nothing to compare against)."""
    a = a.double()
    r = r.double()
    if float((r * r).sum()) < 1e-12:
        return 0.0
    return 1.0 - 2.0 * float((a * r).sum()) / float((a * a + r * r).sum())


def _fmt_index(flat: int, shape: torch.Size) -> tuple[int, ...]:
    idx = []
    for size in reversed(shape):
        idx.append(flat % size)
        flat //= size
    return tuple(reversed(idx))


def _special_mismatch(name: str, what: str, mask_a: torch.Tensor, mask_r: torch.Tensor, a, r) -> str | None:
    diff = mask_a != mask_r
    n = int(diff.sum())
    if n == 0:
        return None
    flat = diff.flatten().nonzero().flatten()[:5].tolist()
    af, rf = a.flatten(), r.flatten()
    shown = ", ".join(f"{_fmt_index(i, a.shape)}: ans={af[i].item()!r} ref={rf[i].item()!r}" for i in flat)
    return (
        f"{name}: {what} positions differ at {n} of {a.numel()} elements "
        f"(ans has {int(mask_a.sum())}, ref has {int(mask_r.sum())}); first: {shown}"
    )


def check_close(name: str, ans: torch.Tensor, ref: torch.Tensor, tol: Tol) -> None:
    """Assert ``ans`` matches ``ref`` under ``tol`` with FlashMLA's ``check_is_allclose`` semantics.

    1. Shapes must be equal. Dtypes must be equal, with one exception: ``ref`` may be fp32 where
       ``ans`` is fp16/bf16 (a kernel's low-precision output against an fp32 reference). Both sides
       are then compared as ``ans.double()`` vs ``ref.double()``, i.e. ``ans`` in its own precision,
       upcast exactly.
    2. The positions of ``+inf``, ``-inf`` and ``NaN`` must match exactly; those elements are then
       zeroed on both sides.
    3. An element passes if ``abs_err < tol.abs`` or ``abs_err / (|ref| + 1e-6) < tol.rel``; every
       element must pass.
    4. If ``tol.cos`` is given, ``cos_diff(ans, ref) <= tol.cos`` (see :func:`cos_diff`).

    Raises:
        AssertionError: naming the field, what failed, the worst few elements, max abs error and
        the cosine difference.
    """
    assert isinstance(ans, torch.Tensor) and isinstance(ref, torch.Tensor), (
        f"{name}: expected two tensors, got {type(ans).__name__} and {type(ref).__name__}"
    )
    assert ans.shape == ref.shape, f"{name}: shape mismatch: ans {tuple(ans.shape)} vs ref {tuple(ref.shape)}"
    dtype_ok = ans.dtype == ref.dtype or (ans.dtype in _LOW_PRECISION and ref.dtype == torch.float32)
    assert dtype_ok, f"{name}: dtype mismatch: ans {ans.dtype} vs ref {ref.dtype}"

    # compared where ``ans`` lives: float64 on the GPU is far cheaper than moving big outputs to the host
    a = ans.detach().to(torch.float64)
    r = ref.detach().to(a.device, torch.float64)

    for what, fn in (("+inf", torch.isposinf), ("-inf", torch.isneginf), ("NaN", torch.isnan)):
        msg = _special_mismatch(name, what, fn(a), fn(r), a, r)
        if msg is not None:
            raise AssertionError(msg)

    special = ~torch.isfinite(r)  # same positions in a, checked above
    a = a.masked_fill(special, 0.0)
    r = r.masked_fill(special, 0.0)

    abs_err = (a - r).abs()
    rel_err = abs_err / (r.abs() + 1e-6)
    bad = ~((abs_err < tol.abs) | (rel_err < tol.rel))
    n_bad = int(bad.sum())
    cd = cos_diff(a, r)
    max_abs = float(abs_err.max()) if abs_err.numel() else 0.0

    problems = []
    if n_bad:
        problems.append(f"{n_bad} of {a.numel()} elements outside abs {tol.abs:.3g} / rel {tol.rel:.3g}")
    if tol.cos is not None and cd > tol.cos:
        problems.append(f"cos_diff {cd:.3e} > {tol.cos:.3e}")
    if not problems:
        return

    lines = [f"{name}: " + "; ".join(problems) + f" (max abs err {max_abs:.3e}, cos_diff {cd:.3e})"]
    if n_bad:
        worst = torch.where(bad, abs_err, torch.zeros_like(abs_err)).flatten()
        k = min(5, n_bad)
        for i in worst.topk(k).indices.tolist():
            lines.append(
                f"  at {_fmt_index(i, a.shape)}: ans={a.flatten()[i].item():.8g} ref={r.flatten()[i].item():.8g} "
                f"abs_err={abs_err.flatten()[i].item():.3e} rel_err={rel_err.flatten()[i].item():.3e}"
            )
    raise AssertionError("\n".join(lines))


# --------------------------------------------------------------------------------------------------
# Input generators
# --------------------------------------------------------------------------------------------------


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def make_seqlens(
    b: int,
    s_q: int,
    s_k: int,
    varlen: bool = False,
    zero_len_frac: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sequence KV lengths, int32 [b] on CPU.

    Fixed length ``s_k``, or with ``varlen`` ``max(N(s_k, s_k/2), s_q)`` rounded and clipped to at most
    ``max(2*s_k, s_q)``, so every length is ``>= s_q`` (FlashMLA's rule). Then
    ``ceil(zero_len_frac * b)`` randomly chosen sequences get length 0.
    """
    if varlen:
        draw = torch.randn(b, generator=generator, dtype=torch.float64) * (s_k / 2) + s_k
        lens = draw.round().clamp(min=s_q, max=max(2 * s_k, s_q)).to(torch.int32)
    else:
        lens = torch.full((b,), s_k, dtype=torch.int32)
    n_zero = math.ceil(zero_len_frac * b) if zero_len_frac > 0 else 0
    if n_zero:
        lens[torch.randperm(b, generator=generator)[:n_zero]] = 0
    return lens


def make_dense_decode_inputs(
    b: int,
    s_q: int,
    s_k: int,
    h_q: int,
    h_kv: int,
    d: int = 576,
    dv: int = 512,
    page_block_size: int = 64,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    varlen: bool = False,
    zero_len_frac: float = 0.0,
    generator: torch.Generator | None = None,
    causal: bool = False,
    softmax_scale: float | None = None,
    cache_seqlens: torch.Tensor | None = None,
) -> dict:
    """Dense-decode inputs built like FlashMLA's dense-decode test.

    Returns a dict whose keys are exactly the keyword arguments of ``dense_decode`` (so
    ``reference.dense_decode(**inputs)`` works, and ``flash_mla_with_kvcache(**inputs,
    tile_scheduler_metadata=...)``):

    * ``q``: [b, s_q, h_q, d], ``randn/10`` clamped to ±1, in ``dtype``.
    * ``k_cache``: [num_blocks, page_block_size, h_kv, d], same recipe; every slot past its sequence's
      length (the tail of the last used page and every unused page) is NaN.
    * ``block_table``: int32 [b, max_blocks], a random permutation of all pages; entries past each
      sequence's last used page are ``BLOCK_TABLE_GARBAGE``. ``max_blocks`` is
      ``ceil(max_len / page_block_size)`` rounded up to a multiple of 4 (at least 4), so there is
      padding past the longest sequence too; ``num_blocks = b * max_blocks``.
    * ``cache_seqlens``: int32 [b], see :func:`make_seqlens` (or the one passed in).
    * ``head_dim_v``, ``softmax_scale`` (``None`` = the op's default), ``causal``.

    Lengths, tables and (on CPU) q and the cache are drawn from ``generator`` (the global generator
    when ``None``); on a GPU, q and the cache are drawn there from a generator seeded by it.
    """
    assert h_q % h_kv == 0, f"h_q={h_q} must be a multiple of h_kv={h_kv}"
    if cache_seqlens is None:
        lens = make_seqlens(b, s_q, s_k, varlen, zero_len_frac, generator)
    else:
        lens = cache_seqlens.to("cpu", torch.int32).clone()
        assert lens.shape == (b,)
    max_len = int(lens.max()) if b else 0
    max_blocks = _cdiv(max(_cdiv(max_len, page_block_size), 1), 4) * 4
    num_blocks = b * max_blocks

    dev = torch.device(device)
    if dev.type == "cpu":
        draw_gen = generator
    else:
        # big caches are drawn on the GPU (CPU draws would dominate the GPU tier's run time), seeded
        # from ``generator`` so a test's data stay reproducible
        draw_gen = torch.Generator(device=dev)
        draw_gen.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    # drawn in ``dtype`` and scaled in place: a b=128, s_k=8k, h_kv=8 cache is 9 GB in bf16 (twice that in fp32)
    q = torch.randn(b, s_q, h_q, d, generator=draw_gen, device=dev, dtype=dtype).div_(10).clamp_(-1, 1)
    k_cache = torch.randn(num_blocks, page_block_size, h_kv, d, generator=draw_gen, device=dev, dtype=dtype)
    k_cache.div_(10).clamp_(-1, 1)
    block_table = torch.randperm(num_blocks, generator=generator).view(b, max_blocks).to(torch.int32)

    # Logical position of every slot of every logical page, against its sequence's length.
    page_start = (torch.arange(max_blocks) * page_block_size).repeat(b)  # [b*max_blocks]
    owner_len = lens.long().repeat_interleave(max_blocks)  # [b*max_blocks]
    pos = page_start[:, None] + torch.arange(page_block_size)[None, :]  # [b*max_blocks, page]
    unused_logical = pos >= owner_len[:, None]
    unused_physical = torch.empty_like(unused_logical)
    unused_physical[block_table.flatten().long()] = unused_logical
    k_cache[unused_physical.to(dev)] = float("nan")

    used_pages = torch.tensor([_cdiv(int(n), page_block_size) for n in lens.tolist()], dtype=torch.long)
    past = torch.arange(max_blocks)[None, :] >= used_pages[:, None]
    block_table[past] = BLOCK_TABLE_GARBAGE

    return {
        "q": q.to(device=device, dtype=dtype),
        "k_cache": k_cache.to(device=device, dtype=dtype),
        "block_table": block_table.to(device),
        "cache_seqlens": lens.to(device),
        "head_dim_v": dv,
        "softmax_scale": softmax_scale,
        "causal": causal,
    }


def quantize_dense_decode_inputs(inputs: dict, q_dtype: torch.dtype) -> dict:
    """``inputs`` of :func:`make_dense_decode_inputs` over a per-tensor FP8 cache, as vLLM and SGLang store it.

    * ``k_cache``: float8_e4m3fn codes of ``k / descale_k`` (NaN slots stay NaN codes, never to be read);
    * ``descale_k``: fp32 [1], ``amax(|k|) / 448 * 1.1`` over the finite values (not a power of two, no
      value saturates), computed where the inputs live (no host sync on a GPU);
    * ``q``: with ``q_dtype`` float8_e4m3fn, the codes of ``q / descale_q`` (``descale_q`` likewise, with
      1.3 for 1.1); else ``q`` cast to ``q_dtype`` and ``descale_q`` None.

    The keys stay those of ``reference.dense_decode``, so ``reference.dense_decode(**quantized)`` reads the
    same FP8 inputs back (``x.float() * descale``) and only the kernel's own error is measured.
    """
    from openmla.kvcache import quantize_fp8_per_tensor

    out = dict(inputs)
    # chunk by chunk: the matrix's biggest caches are GBs, and several test workers share one GPU
    chunks = inputs["k_cache"].split(256)
    amax = torch.stack([torch.nan_to_num(c.float(), nan=0.0).abs().amax() for c in chunks]).amax()
    descale_k = (amax / 448 * 1.1).reshape(1)
    codes = torch.empty(inputs["k_cache"].shape, dtype=torch.float8_e4m3fn, device=inputs["k_cache"].device)
    for dst, c in zip(codes.split(256), chunks):
        dst.copy_(quantize_fp8_per_tensor(c, descale_k))
    out["k_cache"] = codes
    out["descale_k"] = descale_k
    q = inputs["q"].float()
    if q_dtype == torch.float8_e4m3fn:
        descale_q = (q.abs().amax() / 448 * 1.3).reshape(1)
        out["q"], out["descale_q"] = quantize_fp8_per_tensor(q, descale_q), descale_q
    else:
        out["q"], out["descale_q"] = q.to(q_dtype), None
    return out


def invalid_index_candidates(num_slots: int) -> tuple[int, ...]:
    """Index values a sparse kernel must mask without reading: FlashMLA's ``-1`` and other out-of-range values.

    ``-1`` is FlashMLA's marker; the others (OpenMLA extension: any value outside the cache is invalid)
    are the int32 extremes, the first slot past the cache and a large value far past it.
    """
    return (-1, -(2**31), 2**31 - 1, num_slots, 123456789)


def _draw_generator(device: torch.device, generator: torch.Generator | None) -> torch.Generator | None:
    """The generator to draw big tensors with: ``generator`` on CPU; on a GPU one seeded from it."""
    if device.type == "cpu":
        return generator
    gen = torch.Generator(device=device)
    gen.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    return gen


def _sparse_scope(
    b: int, s_q: int, s_k: int, topk: int, page_block_size: int, d_qk: int, device: torch.device,
    varlen: bool, invalid_frac: float, generator: torch.Generator | None, draw: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One scope's fp32 cache [num_blocks, page_block_size, 1, d_qk] and int32 indices [b, s_q, topk].

    Each request owns ``len_i`` tokens (``s_k``, or varlen around it) on randomly placed pages; slots past
    ``len_i`` and pages nobody owns hold NaN. Each query token picks ``min(topk, len_i)`` distinct tokens
    of its request in random order, padded with -1; then a fraction ``invalid_frac`` of all entries is
    replaced by values from :func:`invalid_index_candidates`.
    """
    lens = make_seqlens(b, 1, s_k, varlen, 0.0, generator).clamp(min=1)
    max_len = int(lens.max())
    max_blocks = _cdiv(max_len, page_block_size)
    num_blocks = b * max_blocks + 1  # one page nobody owns
    block_table = torch.randperm(num_blocks, generator=generator)[: b * max_blocks].view(b, max_blocks)

    cache = (torch.randn(num_blocks, page_block_size, 1, d_qk, generator=draw, device=device) / 10).clamp(-1, 1)
    owned = torch.zeros(num_blocks * page_block_size, dtype=torch.bool)
    pos = torch.arange(max_blocks * page_block_size)
    slot_of_pos = block_table.long().repeat_interleave(page_block_size, dim=1) * page_block_size + pos % page_block_size
    owned[slot_of_pos[pos[None, :] < lens[:, None].long()]] = True
    cache.view(-1, d_qk)[~owned.to(device)] = float("nan")

    # distinct random positions per query token: sort random keys, positions past the length sort last
    width = max(max_len, topk)
    keys = torch.rand(b, s_q, width, generator=draw, device=device)
    lens_dev = lens.to(device).long()
    keys = keys.masked_fill(torch.arange(width, device=device)[None, None, :] >= lens_dev[:, None, None], 2.0)
    order = keys.argsort(dim=-1)[..., :topk]  # [b, s_q, topk] positions in the request
    valid = order < lens_dev[:, None, None]
    table = slot_of_pos.to(device)  # [b, max_blocks * page] slot of each position
    safe = torch.where(valid, order, torch.zeros_like(order)).clamp(max=table.shape[1] - 1)
    slots = torch.gather(table[:, None, :].expand(b, s_q, -1), 2, safe)
    indices = torch.where(valid, slots, torch.full_like(slots, -1))
    if invalid_frac > 0:
        bad = torch.tensor(invalid_index_candidates(num_blocks * page_block_size), device=device)
        pick = torch.randint(0, bad.numel(), indices.shape, generator=draw, device=device)
        hit = torch.rand(indices.shape, generator=draw, device=device) < invalid_frac
        indices = torch.where(hit, bad[pick], indices)
    return cache, indices.to(torch.int32)


def make_sparse_decode_inputs(
    b: int,
    s_q: int,
    h_q: int,
    s_k: int,
    topk: int,
    page_block_size: int = 64,
    d_qk: int = 576,
    d_v: int = 512,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    fp8: bool = False,
    varlen: bool = True,
    invalid_frac: float = 0.0,
    all_invalid_rows: int = 0,
    topk_length: bool = False,
    sink: bool = False,
    extra: tuple[int, int, int] | None = None,
    extra_topk_length: bool = False,
    pad_blocks: bool = False,
    softmax_scale: float | None = None,
    generator: torch.Generator | None = None,
) -> dict:
    """Sparse-decode inputs built like FlashMLA's sparse-decode test (plus out-of-range indices).

    Returns a dict whose keys are the keyword arguments of ``reference.sparse_decode``:

    * ``q``: [b, s_q, h_q, d_qk] ``randn/10`` clamped to ±1, in ``dtype``.
    * ``k_cache``: [num_blocks, page_block_size, 1, d_qk] in ``dtype`` (same recipe, NaN in every slot no
      request owns), or with ``fp8`` its V3.2 bytes (uint8 [.., 656], ``d_qk`` must be 576) from
      :func:`openmla.kvcache.quantize_v32`. ``pad_blocks`` pads each page by one token (``stride(0)``
      larger than the page, as FlashMLA's test allocates it).
    * ``indices``: int32 [b, s_q, topk], see :func:`_sparse_scope`; ``invalid_frac`` of the entries
      replaced by invalid values, and ``all_invalid_rows`` random (request, token) rows made wholly invalid.
    * ``topk_length``: with ``topk_length``, int32 [b] uniform in ``[0, topk]`` (request 0 gets 0 and
      request 1 gets ``topk`` when ``b >= 3``); else None.
    * ``attn_sink``: with ``sink``, fp32 [h_q] ``randn``, head 1 ``+inf`` and head 2 ``-inf`` (when
      ``h_q >= 3``); else None.
    * ``extra=(extra_s_k, extra_topk, extra_page_block_size)``: a second scope, same format, in
      ``extra_k_cache`` / ``extra_indices_in_kvcache`` (and ``extra_topk_length`` like ``topk_length``).
    * ``head_dim_v``, ``softmax_scale`` (``None`` = the op's default).

    Small tables are drawn from ``generator``; on a GPU the big tensors are drawn there from a generator
    seeded by it.
    """
    dev = torch.device(device)
    draw = _draw_generator(dev, generator)
    if fp8 and d_qk != 576:
        raise ValueError("the V3.2 FP8 cache has d_qk 576")

    def cache_of(cache: torch.Tensor) -> torch.Tensor:
        if fp8:
            from openmla.kvcache import quantize_v32

            cache = quantize_v32(cache)
        else:
            cache = cache.to(dtype)
        if pad_blocks:
            padded = torch.zeros(cache.shape[0], cache.shape[1] + 1, *cache.shape[2:], dtype=cache.dtype, device=dev)
            padded[:, : cache.shape[1]] = cache
            cache = padded[:, : cache.shape[1]]
        return cache

    def lengths_of(top: int) -> torch.Tensor:
        lengths = torch.randint(0, top + 1, (b,), generator=generator, dtype=torch.int32)
        if b >= 3:
            lengths[0], lengths[1] = 0, top
        return lengths.to(dev)

    cache, indices = _sparse_scope(b, s_q, s_k, topk, page_block_size, d_qk, dev, varlen, invalid_frac,
                                   generator, draw)
    if all_invalid_rows:
        num_slots = cache.shape[0] * cache.shape[1]
        bad = torch.tensor(invalid_index_candidates(num_slots), dtype=torch.int32, device=dev)
        rows = torch.randperm(b * s_q, generator=generator)[:all_invalid_rows]
        flat = indices.view(b * s_q, topk)
        flat[rows.to(dev)] = bad[torch.randint(0, bad.numel(), (rows.numel(), topk), generator=draw, device=dev)]
    q = (torch.randn(b, s_q, h_q, d_qk, generator=draw, device=dev) / 10).clamp(-1, 1).to(dtype)
    attn_sink = None
    if sink:
        attn_sink = torch.randn(h_q, generator=draw, device=dev, dtype=torch.float32)
        if h_q >= 3:
            attn_sink[1], attn_sink[2] = float("inf"), float("-inf")
    out = {
        "q": q,
        "k_cache": cache_of(cache),
        "indices": indices,
        "head_dim_v": d_v,
        "softmax_scale": softmax_scale,
        "attn_sink": attn_sink,
        "topk_length": lengths_of(topk) if topk_length else None,
        "extra_k_cache": None,
        "extra_indices_in_kvcache": None,
        "extra_topk_length": None,
    }
    if extra is not None:
        extra_s_k, extra_topk, extra_page = extra
        x_cache, x_indices = _sparse_scope(b, s_q, extra_s_k, extra_topk, extra_page, d_qk, dev, varlen,
                                           invalid_frac, generator, draw)
        out["extra_k_cache"] = cache_of(x_cache)
        out["extra_indices_in_kvcache"] = x_indices
        out["extra_topk_length"] = lengths_of(extra_topk) if extra_topk_length else None
    return out


def dequantized(inputs: dict) -> dict:
    """``inputs`` with FP8 caches replaced by their bf16 read-back (what the reference is run on in tests)."""
    from openmla.kvcache import dequantize_v32

    out = dict(inputs)
    for key in ("k_cache", "extra_k_cache"):
        cache = out.get(key)
        if cache is not None and cache.dtype in (torch.uint8, torch.int8, torch.float8_e4m3fn):
            out[key] = dequantize_v32(cache)
    return out


# --------------------------------------------------------------------------------------------------
# Poisoning
# --------------------------------------------------------------------------------------------------


def poison_like(t: torch.Tensor) -> torch.Tensor:
    """A tensor like ``t`` that no correct result can equal: NaN for floats, the max value for ints.

    Use it for buffers a test owns (e.g. a pre-filled ``out`` the code under test must overwrite).
    The public ops allocate their own outputs, so to catch a kernel that leaves part of its output
    unwritten use :func:`poison_cuda_cache` instead.
    """
    if t.dtype.is_floating_point:
        return torch.full_like(t, float("nan"))
    if t.dtype == torch.bool:
        return torch.ones_like(t)
    return torch.full_like(t, torch.iinfo(t.dtype).max)


def poison_cuda_cache(nbytes: int = 1 << 30, device: torch.device | str | None = None) -> None:
    """Fill free memory of PyTorch's CUDA caching allocator with NaN bytes.

    Allocates ``nbytes``, fills every byte with ``0xFF`` (NaN in fp32, fp16 and bf16) and frees it; the
    block stays in the allocator's cache, so the next allocations (a kernel's outputs and scratch
    buffers) reuse NaN-filled memory and any element a kernel forgets to write shows up as NaN.
    Best effort (the allocator may serve a request from another cached block). A no-op when CUDA
    is not available or ``device`` is not a CUDA device.
    """
    if not torch.cuda.is_available():
        return
    device = torch.device("cuda") if device is None else torch.device(device)
    if device.type != "cuda":
        return
    buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
    buf.fill_(0xFF)
    torch.cuda.synchronize(device)
    del buf


# --------------------------------------------------------------------------------------------------
# Brute force (tests the reference only)
# --------------------------------------------------------------------------------------------------


def brute_force_dense_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int,
    softmax_scale: float | None = None,
    causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense MLA decode by loops, in float64, written independently of :mod:`openmla.reference`.

    One (batch, query token, head) at a time: keys are fetched token by token through the block table
    with Python ints (so nothing past the length is ever touched), the causal rule is
    ``j <= s_k - s_q + i`` (when ``causal`` and ``s_q > 1``), and softmax / log-sum-exp are done by
    hand with :mod:`math`. A row with no visible key gives ``out = 0`` and ``lse = +inf``.

    Returns:
        out: float64 [b, s_q, h_q, head_dim_v]; lse: float64 [b, h_q, s_q].
    """
    b, s_q, h_q, d = q.shape
    page = k_cache.shape[1]
    h_kv = k_cache.shape[2]
    group = h_q // h_kv
    scale = 1.0 / math.sqrt(d) if softmax_scale is None else float(softmax_scale)
    q64 = q.detach().cpu().double()
    cache64 = k_cache.detach().cpu()
    table = block_table.detach().cpu().tolist()
    lens = [int(n) for n in cache_seqlens.detach().cpu().tolist()]
    out = torch.zeros(b, s_q, h_q, head_dim_v, dtype=torch.float64)
    lse = torch.full((b, h_q, s_q), math.inf, dtype=torch.float64)

    for bi in range(b):
        s_k = lens[bi]
        keys = []  # keys[j]: [h_kv, d] float64, token j of this sequence
        for j in range(s_k):
            physical = table[bi][j // page]
            keys.append(cache64[physical, j % page].double())
        for i in range(s_q):
            last = s_k - 1
            if causal and s_q > 1:
                last = min(last, s_k - s_q + i)
            visible = range(last + 1)  # empty when last < 0
            for h in range(h_q):
                kv_head = h // group
                scores = [float(torch.dot(q64[bi, i, h], keys[j][kv_head])) * scale for j in visible]
                if not scores:
                    continue  # out stays 0, lse stays +inf
                m = max(scores)
                weights = [math.exp(s - m) for s in scores]
                total = math.fsum(weights)
                acc = torch.zeros(head_dim_v, dtype=torch.float64)
                for j, w in zip(visible, weights):
                    acc += (w / total) * keys[j][kv_head, :head_dim_v]
                out[bi, i, h] = acc
                lse[bi, h, i] = m + math.log(total)
    return out, lse


def brute_force_sparse_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    indices: torch.Tensor,
    head_dim_v: int,
    softmax_scale: float | None = None,
    attn_sink: torch.Tensor | None = None,
    topk_length: torch.Tensor | None = None,
    extra_k_cache: torch.Tensor | None = None,
    extra_indices_in_kvcache: torch.Tensor | None = None,
    extra_topk_length: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse MLA decode by loops, in float64, written independently of :mod:`openmla.reference`.

    Caches must hold plain floats (read FP8 caches back first, :func:`dequantized`). For each (request,
    query token) the keys are collected entry by entry with Python ints: main list then extra list,
    entry ``j`` used when ``j < length`` and ``0 <= index < num_blocks * page_block_size`` (slot ``index``
    is page ``index // page_block_size``, token ``index % page_block_size``). Softmax by hand with
    :mod:`math`; the sink scales the output by ``1 / (1 + exp(sink - lse))``. No valid key: out 0,
    lse +inf.

    Returns:
        out: float64 [b, s_q, h_q, head_dim_v]; lse: float64 [b, h_q, s_q].
    """
    b, s_q, h_q, d = q.shape
    scale = 1.0 / math.sqrt(d) if softmax_scale is None else float(softmax_scale)
    q64 = q.detach().cpu().double()
    scopes = [(k_cache, indices, topk_length)]
    if extra_k_cache is not None:
        scopes.append((extra_k_cache, extra_indices_in_kvcache, extra_topk_length))
    scopes = [
        (cache.detach().cpu().double(), idx.detach().cpu().tolist(), None if n is None else n.cpu().tolist())
        for cache, idx, n in scopes
    ]
    sinks = None if attn_sink is None else attn_sink.detach().cpu().tolist()
    out = torch.zeros(b, s_q, h_q, head_dim_v, dtype=torch.float64)
    lse = torch.full((b, h_q, s_q), math.inf, dtype=torch.float64)
    for bi in range(b):
        for t in range(s_q):
            keys = []
            for cache, idx, lengths in scopes:
                page = cache.shape[1]
                num_slots = cache.shape[0] * page
                row = idx[bi][t]
                limit = len(row) if lengths is None else int(lengths[bi])
                for j, slot in enumerate(row):
                    if j < limit and 0 <= slot < num_slots:
                        keys.append(cache[slot // page, slot % page, 0])
            for h in range(h_q):
                scores = [float(torch.dot(q64[bi, t, h], k)) * scale for k in keys]
                if not scores:
                    continue
                m = max(scores)
                weights = [math.exp(s - m) for s in scores]
                total = math.fsum(weights)
                row_lse = m + math.log(total)
                acc = torch.zeros(head_dim_v, dtype=torch.float64)
                for k, w in zip(keys, weights):
                    acc += (w / total) * k[:head_dim_v]
                if sinks is not None:
                    s = sinks[h]
                    acc *= 0.0 if s == math.inf else 1.0 if s == -math.inf else 1.0 / (1.0 + math.exp(s - row_lse))
                out[bi, t, h] = acc
                lse[bi, h, t] = row_lse
    return out, lse


def capture_cuda_graph(step):
    """Run ``step()`` once on a side stream (so kernels compile outside the capture), then capture it.

    Returns ``(graph, outputs)``: ``graph.replay()`` recomputes ``outputs`` in place.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()
    return graph, outputs


def misaligned_copy(t: torch.Tensor, how: str, elements: int = 1) -> torch.Tensor:
    """A tensor equal to ``t`` whose layout is not 16-byte aligned, the last dim still contiguous.

    ``how``: ``"base"`` starts ``elements`` elements past a 16-byte boundary (a view into a larger buffer);
    ``"stride"`` pads each last-dim row by one element (a view of the first ``t.shape[-1]`` of
    ``t.shape[-1] + 1``)."""
    if how == "base":
        flat = torch.empty(t.numel() + 16, dtype=t.dtype, device=t.device)
        view = flat.narrow(0, elements, t.numel()).view(t.shape)
    elif how == "stride":
        view = torch.empty(*t.shape[:-1], t.shape[-1] + 1, dtype=t.dtype, device=t.device)[..., : t.shape[-1]]
    else:
        raise ValueError(f"how must be 'base' or 'stride', got {how!r}")
    view.copy_(t)
    return view


def run_expecting_alignment_fallback(call, monkeypatch):
    """``call()``, a decode call on a q or cache that is not 16-byte aligned, with the dispatchers' choice caches
    emptied (a choice warns when it is made); on a Hopper GPU where the Gluon kernels import, assert that the
    call warned that the alignment keeps them away. Returns what ``call()`` returned."""
    import warnings

    import openmla

    monkeypatch.setattr(openmla.dispatch, "_CHOICES", {})
    monkeypatch.setattr(openmla.dispatch, "_SPARSE_CHOICES", {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    torch.cuda.synchronize()
    if torch.cuda.get_device_capability()[0] == 9 and openmla._runtime.gluon_available():
        fallbacks = [w for w in caught if issubclass(w.category, openmla.OpenMLAFallbackWarning)]
        assert fallbacks and "16 bytes" in str(fallbacks[0].message), [str(w.message) for w in caught]
    return result


class Launch(NamedTuple):
    """One recorded kernel launch (:func:`record_launches`): ``kernel[grid](*args, **kwargs)``."""

    grid: object
    args: tuple
    kwargs: dict


def record_launches(monkeypatch, module, name: str) -> list[Launch]:
    """Replace the kernel ``module.name`` by a recorder for the test: each launch ``kernel[grid](*args, **kwargs)``
    is appended to the returned list as a :class:`Launch` and nothing runs, so a launcher's choices can be checked
    on CPU tensors."""
    launches: list[Launch] = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(Launch(grid, args, kwargs))

    monkeypatch.setattr(module, name, Recorder(), raising=False)
    return launches
