"""Inputs, checks, metrics and timers shared by the CLI (``demo``, ``warmup``) and ``benchmarks/``.

Nothing here is public API. Inputs follow FlashMLA's dense-decode test data (``flashmla-spec.md`` §4):
``q = randn/10`` clamped to ±1, cache ``randn/10`` clamped to ±1, a random-permutation block table,
NaN in every cache slot past a sequence's length and a poison value in block-table entries past a
sequence's last page, so a kernel that reads what it must not read shows it. Sparse-decode inputs
(:func:`make_sparse_decode_inputs`) follow FlashMLA's sparse-decode test data the same way. Nothing is
ever timed on zeros. The comparator and tolerances are FlashMLA's (``flashmla-spec.md`` §4, "Comparator").
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ._runtime import InvalidArgumentError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: Benchmark dtype names that stand for a per-tensor FP8 dense decode: e4m3 q and cache with descales
#: (FlashMLA's dense FP8 kernel takes exactly this); the inputs are drawn in bf16 first.
FP8_DTYPES = {"fp8": torch.float8_e4m3fn}

#: DeepSeek-V3's softmax scale: 1/sqrt(qk_nope_head_dim + qk_rope_head_dim) = 1/sqrt(128 + 64).
DEEPSEEK_V3_SOFTMAX_SCALE = 192**-0.5

#: What FlashMLA's test writes into block-table entries past a sequence's last page.
BLOCK_TABLE_POISON = 2147480000

#: FlashMLA's dense-decode tolerances: (abs, rel, cos_diff) for ``out``, (abs, rel) for ``lse``.
OUT_TOLERANCE = (8e-4, 2.01 / 128, 5e-6)
LSE_TOLERANCE = (1e-6, 8.01 / 65536)
#: ``lse`` of an e4m3 q times an e4m3 cache on the e4m3 tensor cores (OpenMLA's default on Hopper, and FlashMLA's
#: FP8 kernel): their sums keep fewer bits than fp32, so the LSE was off by up to 6.8e-5 on these inputs (H200);
#: three times that (the tests' tolerance, tests/helpers.py, says more). ``out`` keeps OUT_TOLERANCE.
E4M3_SCORES_LSE_TOLERANCE = (2e-4, 8.01 / 65536)
#: FlashMLA's sparse-decode tolerance for ``out`` (``lse`` as dense decode).
SPARSE_OUT_TOLERANCE = (1e-3, 2.01 / 128, 5e-6)

#: Tokens per chunk when a large sparse cache is generated (bounds the fp32 staging buffer).
_CACHE_CHUNK_TOKENS = 1 << 18


def module_version(module: str) -> str:
    """``module.__version__``, or why it cannot be had (a broken install is a finding, not a crash)."""
    try:
        return str(getattr(__import__(module), "__version__", "unknown"))
    except Exception as exc:
        return f"not importable ({type(exc).__name__}: {exc})"


def openmla_version() -> str:
    """The installed distribution's version of ``openmla``."""
    from importlib import metadata

    try:
        return metadata.version("openmla")
    except metadata.PackageNotFoundError:
        return "not installed (running from a source tree)"


def parse_dtype(name: str) -> torch.dtype:
    """``"bf16"``/``"fp16"``/``"fp8"`` to a torch dtype, with a typed error naming the choices."""
    try:
        return {**DTYPES, **FP8_DTYPES}[name]
    except KeyError:
        choices = sorted({**DTYPES, **FP8_DTYPES})
        raise InvalidArgumentError(f"dtype {name!r} is not supported here; expected one of {choices}") from None


def varlen_seqlens(b: int, s_k: int, s_q: int, seed: int) -> list[int]:
    """FlashMLA's variable lengths: ``max(N(s_k, s_k/2), s_q)`` clipped to ``[s_q, 2*s_k]``, seeded."""
    rng = random.Random(seed)
    return [min(max(int(rng.gauss(s_k, s_k / 2)), s_q), 2 * s_k) for _ in range(b)]


@dataclass
class DecodeInputs:
    """The tensors of one dense-decode call, plus the host-side lengths used for metrics."""

    q: torch.Tensor
    k_cache: torch.Tensor
    block_table: torch.Tensor
    cache_seqlens: torch.Tensor
    seqlens: list[int]
    head_dim_v: int
    softmax_scale: float
    causal: bool
    #: per-tensor FP8 (q and cache e4m3): the fp32 [1] factors the codes are multiplied by; else None
    descale_q: torch.Tensor | None = None
    descale_k: torch.Tensor | None = None

    def call_args(self) -> tuple:
        """Positional arguments of ``flash_mla_with_kvcache`` up to ``head_dim_v``."""
        return (self.q, self.k_cache, self.block_table, self.cache_seqlens, self.head_dim_v)


def _poison_unused(k_cache: torch.Tensor, perm: torch.Tensor, seqlens_t: torch.Tensor, max_blocks: int) -> None:
    """Write NaN into every cache slot that lies past its sequence's length (in place)."""
    page_block_size = k_cache.shape[1]
    num_blocks = perm.numel()
    logical_of = torch.empty_like(perm)
    logical_of[perm] = torch.arange(num_blocks, device=perm.device)  # physical block -> flat logical index
    owner = logical_of // max_blocks
    token = (logical_of % max_blocks)[:, None] * page_block_size + torch.arange(page_block_size, device=perm.device)
    k_cache[token >= seqlens_t[owner][:, None]] = float("nan")


def make_dense_decode_inputs(
    seqlens: Sequence[int],
    s_q: int,
    h_q: int,
    h_kv: int = 1,
    d: int = 576,
    dv: int = 512,
    page_block_size: int = 64,
    dtype: torch.dtype = torch.bfloat16,
    causal: bool = True,
    device: str | torch.device = "cuda",
    seed: int = 0,
    softmax_scale: float = DEEPSEEK_V3_SOFTMAX_SCALE,
) -> DecodeInputs:
    """Random paged dense-decode inputs on ``device``, poisoned as FlashMLA's test poisons them."""
    if h_q % h_kv:
        raise InvalidArgumentError(f"h_q={h_q} must be a multiple of h_kv={h_kv}")
    b = len(seqlens)
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    max_seqlen_pad = max(256, math.ceil(max(seqlens) / 256) * 256)
    max_blocks = math.ceil(max_seqlen_pad / page_block_size)
    num_blocks = b * max_blocks

    q = torch.randn(b, s_q, h_q, d, generator=gen, device=device, dtype=dtype).div_(10).clamp_(-1, 1)
    k_cache = torch.randn(num_blocks, page_block_size, h_kv, d, generator=gen, device=device, dtype=dtype)
    k_cache.div_(10).clamp_(-1, 1)
    perm = torch.randperm(num_blocks, generator=gen, device=device)
    seqlens_t = torch.tensor(list(seqlens), dtype=torch.int32, device=device)
    _poison_unused(k_cache, perm, seqlens_t, max_blocks)

    block_table = perm.view(b, max_blocks).to(torch.int32)
    used_pages = (seqlens_t + page_block_size - 1) // page_block_size
    past_end = torch.arange(max_blocks, device=device)[None, :] >= used_pages[:, None]
    block_table.masked_fill_(past_end, BLOCK_TABLE_POISON)
    return DecodeInputs(q, k_cache, block_table, seqlens_t, list(seqlens), dv, softmax_scale, causal)


def quantize_dense_fp8(inp: DecodeInputs, fp8_q: bool = True) -> DecodeInputs:
    """``inp`` with the cache (and, with ``fp8_q``, q) as per-tensor e4m3 codes and their descales.

    ``descale = amax / 448`` (fp32 [1]) over the finite values, so nothing saturates; without ``fp8_q``,
    q is cast to fp16 and ``descale_q`` is None. NaN slots past each length become code 0 here, not NaN:
    FlashMLA's FP8 kernel multiplies the masked tail of a sequence's last page by a zero probability
    (NaN there would reach its output), and both libraries must time the same bytes. That OpenMLA never
    reads those slots is proven by the GPU tests, which keep the NaN.
    """
    from .kvcache import quantize_fp8_per_tensor

    k = torch.nan_to_num(inp.k_cache, nan=0.0)
    descale_k = (k.abs().amax().float() / 448).clamp_min(1e-12).reshape(1)
    q, descale_q = inp.q.half(), None
    if fp8_q:
        descale_q = (inp.q.abs().amax().float() / 448).clamp_min(1e-12).reshape(1)
        q = quantize_fp8_per_tensor(inp.q, descale_q)
    return DecodeInputs(
        q, quantize_fp8_per_tensor(k, descale_k), inp.block_table, inp.cache_seqlens, inp.seqlens,
        inp.head_dim_v, inp.softmax_scale, inp.causal, descale_q, descale_k,
    )


@dataclass
class SparseDecodeInputs:
    """The tensors of one sparse-decode call, plus the counts its FLOP and byte model needs."""

    q: torch.Tensor
    k_cache: torch.Tensor
    indices: torch.Tensor
    head_dim_v: int
    softmax_scale: float
    kv_format: str
    bytes_per_token: int
    n_valid: int
    n_unique_tokens: int

    @property
    def is_fp8(self) -> bool:
        """True for the V3.2 FP8 cache (bytes)."""
        return self.kv_format == "V32_FP8"


def _fill_sparse_cache(
    cache: torch.Tensor, perm: torch.Tensor, max_blocks: int, s_k: int, d_qk: int, fp8: bool, gen: torch.Generator
) -> None:
    """Fill ``cache`` page chunk by page chunk with ``randn/10`` clamped to ±1, NaN in slots no request owns.

    Physical page ``perm[l]`` holds logical page ``l % max_blocks`` of request ``l // max_blocks``; its token
    ``o`` is position ``(l % max_blocks) * page + o`` of that request, owned when below ``s_k``. An FP8
    cache is packed from the fp32 values by :func:`openmla.kvcache.quantize_v32`.
    """
    from .kvcache import quantize_v32

    num_blocks, page_block_size = cache.shape[:2]
    device = cache.device
    logical_of = torch.empty_like(perm)
    logical_of[perm] = torch.arange(num_blocks, device=device)
    first_pos = (logical_of % max_blocks) * page_block_size  # [num_blocks] position of each page's token 0
    chunk = max(1, _CACHE_CHUNK_TOKENS // page_block_size)
    for start in range(0, num_blocks, chunk):
        stop = min(num_blocks, start + chunk)
        x = torch.randn(stop - start, page_block_size, 1, d_qk, generator=gen, device=device)
        x.div_(10).clamp_(-1, 1)
        pos = first_pos[start:stop, None] + torch.arange(page_block_size, device=device)
        x[pos >= s_k] = float("nan")
        cache[start:stop] = quantize_v32(x) if fp8 else x.to(cache.dtype)


def make_sparse_decode_inputs(
    b: int,
    s_q: int,
    h_q: int,
    s_k: int,
    topk: int,
    page_block_size: int = 64,
    kv_format: str = "V32_FP8",
    d_qk: int = 576,
    dv: int = 512,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cuda",
    seed: int = 0,
    invalid_frac: float = 0.02,
    softmax_scale: float = DEEPSEEK_V3_SOFTMAX_SCALE,
) -> SparseDecodeInputs:
    """Random sparse-decode inputs on ``device``, built like FlashMLA's sparse-decode test.

    * ``k_cache``: every request owns ``s_k`` tokens on pages placed by a random permutation of the
      ``b * ceil(s_k / page_block_size)`` pages; values ``randn/10`` clamped to ±1, NaN in the slots no
      request owns. ``kv_format="V32_FP8"``: uint8 ``[num_blocks, page, 1, 656]`` packed by
      :func:`openmla.kvcache.quantize_v32` (``d_qk`` 576); ``"BF16"``: ``[num_blocks, page, 1, d_qk]`` in
      q's ``dtype``.
    * ``indices``: int32 ``[b, s_q, topk]``: per query token ``min(topk, s_k)`` distinct random positions
      of its request in random order (padded with -1 past ``s_k``), then a fraction ``invalid_frac`` of
      the entries set to -1 (FlashMLA's only invalid marker), mapped to ``page * page_block_size +
      offset`` by :func:`openmla.kvcache.abs_indices_to_cache_indices`.
    * ``q``: ``[b, s_q, h_q, d_qk]`` ``randn/10`` clamped to ±1, in ``dtype``.
    """
    from .kvcache import abs_indices_to_cache_indices

    if kv_format not in ("V32_FP8", "BF16"):
        raise InvalidArgumentError(f"kv_format {kv_format!r}: expected 'V32_FP8' or 'BF16'")
    fp8 = kv_format == "V32_FP8"
    if fp8 and (d_qk, dv) != (576, 512):
        raise InvalidArgumentError(f"the V3.2 FP8 cache has d_qk=576, dv=512 (got d_qk={d_qk}, dv={dv})")
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    max_blocks = math.ceil(s_k / page_block_size)
    num_blocks = b * max_blocks
    perm = torch.randperm(num_blocks, generator=gen, device=device)
    block_table = perm.view(b, max_blocks).to(torch.int32)
    last = 656 if fp8 else d_qk
    cache_dtype = torch.uint8 if fp8 else dtype
    k_cache = torch.empty(num_blocks, page_block_size, 1, last, dtype=cache_dtype, device=device)
    _fill_sparse_cache(k_cache, perm, max_blocks, s_k, d_qk, fp8, gen)

    picked = min(topk, s_k)
    keys = torch.rand(b, s_q, s_k, generator=gen, device=device)
    pos = keys.topk(picked, dim=-1).indices  # distinct positions, in random order
    del keys
    if picked < topk:
        pos = torch.cat([pos, pos.new_full((b, s_q, topk - picked), -1)], dim=-1)
    drop = torch.rand(b, s_q, topk, generator=gen, device=device) < invalid_frac
    pos = pos.masked_fill(drop, -1)
    indices = abs_indices_to_cache_indices(pos.to(torch.int32), block_table, page_block_size).contiguous()
    valid = indices[indices >= 0]
    n_valid, n_unique = int(valid.numel()), int(torch.unique(valid).numel())

    q = torch.randn(b, s_q, h_q, d_qk, generator=gen, device=device, dtype=dtype).div_(10).clamp_(-1, 1)
    bytes_per_token = last * k_cache.element_size()
    return SparseDecodeInputs(q, k_cache, indices, dv, softmax_scale, kv_format, bytes_per_token, n_valid, n_unique)


@dataclass
class CheckResult:
    """Outcome of comparing one tensor with its reference."""

    name: str
    ok: bool
    max_abs_err: float
    cos_diff: float
    message: str = ""

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "FAIL"
        extra = f" ({self.message})" if self.message else ""
        return f"{self.name}: {verdict}, max_abs_err={self.max_abs_err:.3g}, cos_diff={self.cos_diff:.3g}{extra}"


def check_close(
    name: str, actual: torch.Tensor, expected: torch.Tensor, abs_tol: float, rel_tol: float, cos_tol: float
) -> CheckResult:
    """FlashMLA's comparator: same NaN/±inf positions; each element within abs OR rel; cosine bound."""
    if actual.shape != expected.shape:
        return CheckResult(name, False, math.inf, math.inf, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    a = actual.detach().to(torch.float64)
    r = expected.detach().to(torch.float64).to(a.device)
    for what, pred in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        if not torch.equal(pred(a), pred(r)):
            return CheckResult(name, False, math.inf, math.inf, f"positions of {what} differ")
    special = ~torch.isfinite(r)
    a = a.masked_fill(special, 0.0)
    r = r.masked_fill(special, 0.0)
    err = (a - r).abs()
    max_abs = float(err.max()) if err.numel() else 0.0
    bad = (err >= abs_tol) & (err / (r.abs() + 1e-6) >= rel_tol)
    ref_sq = float((r * r).sum())
    cos_diff = 0.0 if ref_sq < 1e-12 else 1.0 - 2.0 * float((a * r).sum()) / float((a * a).sum() + ref_sq)
    n_bad = int(bad.sum())
    if n_bad:
        return CheckResult(name, False, max_abs, cos_diff, f"{n_bad} of {err.numel()} elements out of tolerance")
    if cos_diff > cos_tol:
        return CheckResult(name, False, max_abs, cos_diff, f"cos_diff above {cos_tol:g}")
    return CheckResult(name, True, max_abs, cos_diff)


def check_decode(
    out: torch.Tensor, lse: torch.Tensor, ref_out: torch.Tensor, ref_lse: torch.Tensor, e4m3_scores: bool = False
) -> list[CheckResult]:
    """Check ``(out, lse)`` of a dense-decode call against the reference with FlashMLA's tolerances
    (``e4m3_scores``: the call multiplied an e4m3 q by an e4m3 cache on the e4m3 tensor cores, so the LSE gets
    :data:`E4M3_SCORES_LSE_TOLERANCE`)."""
    return [
        check_close("out", out, ref_out, *OUT_TOLERANCE),
        check_close("lse", lse, ref_lse, *(E4M3_SCORES_LSE_TOLERANCE if e4m3_scores else LSE_TOLERANCE),
                    cos_tol=math.inf),
    ]


def runs_e4m3_scores(backend: str, q: torch.Tensor, k_cache: torch.Tensor, head_dim_v: int, descale_q,
                     descale_k) -> bool:
    """Whether an OpenMLA dense call served by ``backend`` (``openmla.explain``'s) multiplies on the e4m3 tensor
    cores: the Gluon backend, an e4m3 q and cache the e4m3-product kernel takes, ``OPENMLA_FP8_SCORES`` not
    ``exact``."""
    from ._runtime import env_fp8_scores
    from .ops.gluon.decode_dense_fp8_sm90 import serves

    return backend == "gluon" and serves(q, k_cache, head_dim_v, descale_q, descale_k) and env_fp8_scores() == "e4m3"


def check_sparse_decode(
    out: torch.Tensor, lse: torch.Tensor, ref_out: torch.Tensor, ref_lse: torch.Tensor
) -> list[CheckResult]:
    """Check ``(out, lse)`` of a sparse-decode call against the reference with FlashMLA's tolerances."""
    return [
        check_close("out", out, ref_out, *SPARSE_OUT_TOLERANCE),
        check_close("lse", lse, ref_lse, *LSE_TOLERANCE, cos_tol=math.inf),
    ]


def sparse_decode_flops_bytes(
    b: int,
    s_q: int,
    h_q: int,
    topk: int,
    d_qk: int,
    dv: int,
    n_unique_tokens: int,
    bytes_per_token: int,
    elem_bytes: int = 2,
) -> tuple[float, float]:
    """FlashMLA's sparse-decode model (``flashmla-spec.md`` §4), one scope, no ``topk_length``.

    FLOP = 2 * h_q * N_att * (d_qk + dv) with N_att = b * s_q * topk (invalid entries included, as
    FlashMLA counts them); bytes = e * b * s_q * h_q * d_qk + N_unique_tokens * bytes_per_token +
    e * b * s_q * h_q * dv (q read, the distinct cache records gathered, out written).
    """
    n_att = float(b * s_q * topk)
    flops = 2.0 * h_q * n_att * (d_qk + dv)
    nbytes = elem_bytes * b * s_q * h_q * (d_qk + dv) + float(n_unique_tokens) * bytes_per_token
    return flops, nbytes


def dense_decode_flops_bytes(
    seqlens: Sequence[int], s_q: int, h_q: int, h_kv: int, d: int, dv: int, elem_bytes: int = 2
) -> tuple[float, float]:
    """FlashMLA's dense-decode model (``flashmla-spec.md`` §4) summed over the batch's actual lengths.

    FLOP = h_q * s_q * sum(s_k) * 2 * (d + dv); bytes = sum(s_k) * h_kv * d * e + b * s_q * h_q * (d + dv) * e.
    """
    total = float(sum(seqlens))
    flops = h_q * s_q * total * 2.0 * (d + dv)
    nbytes = total * h_kv * d * elem_bytes + len(seqlens) * s_q * h_q * (d + dv) * elem_bytes
    return flops, nbytes


def device_median_us(fn: Callable[[], object], warmup_ms: float, rep_ms: float) -> float:
    """Median time of one call in µs, by ``triton.testing.do_bench`` (CUDA events, L2 flushed per call)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")) * 1e3


def host_loop_us(fn: Callable[[], object], calls: int = 500) -> float:
    """Mean µs per call of ``fn`` in a tight Python loop (host overhead), synchronized at the end."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain left-aligned text table (no dependencies), ``-`` for ``None``."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
