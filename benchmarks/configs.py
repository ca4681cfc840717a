"""The benchmark configurations: one declarative list per op and set, no torch needed to read them.

Dense decode sets (``--op dense_decode --configs ...``):

* ``standard``: FlashMLA's dense-decode perf matrix: b=128, varlen, causal, s_q in {1, 2} x s_k in
  {4096, 8192, 16384} at h_q=128, and s_k=8192 at h_q in {16, 32, 64} (the memory-bound cases).
* ``small``: small batches, b in {1, 4, 16} x s_k in {512, 2048, 8192}, h_q=128, s_q=1, fixed lengths.
* ``ragged``: b=16 whose lengths grow geometrically from 64 to 32768 (load balance of the split-KV plan).
* ``medium``: b in {24, 32, 64} x s_k in {512, 2048, 8192}, h_q=128, s_q=1, fixed lengths, and b=32 with
  lengths from 64 to 32768 (where the split-KV plan changes from one loop trip a request to the closed form).
* ``host``: b=1, s_k=256: host overhead, µs per call in a tight Python loop.
* ``all``: every set above.

Every config is DeepSeek-V3 MLA: h_kv=1, d=576, dv=512, page_block_size=64, bf16, unless overridden.

Sparse decode sets (``--op sparse_decode --configs ...``), DeepSeek-V3.2 sparse attention: each query
token attends to its own ``topk`` cache slots; h_kv=1, d_qk=576, d_v=512, bf16 q:

* ``standard``: FlashMLA's published sparse-decode config: V3.2 FP8 cache (656 B/token, page 64),
  h_q=128, s_q=2, s_k=32768, topk=2048, b in {64, 128}.
* ``heads``: the same at b=64 with h_q in {16, 32, 64} (FlashMLA takes h_q 64 or 128 only, so it runs
  on q zero-padded to 64 heads).
* ``bf16``: ``standard`` over a plain 16-bit cache [num_blocks, 64, 1, 576] (OpenMLA only).
* ``small``: b=4, s_q=1, s_k=4096, h_q=128, topk in {64, 576, 2048} x page_block_size in {2, 61, 64}.
* ``all``: every set above.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

CONFIG_SETS = ("standard", "small", "ragged", "medium", "host", "all")  # dense decode's; see config_sets(op)
OPS = ("dense_decode", "sparse_decode")


@dataclass(frozen=True)
class DecodeConfig:
    """One dense-decode benchmark case.

    ``lengths`` fixes every sequence's length (``s_k`` is then their maximum); otherwise ``varlen``
    draws FlashMLA's normal lengths around ``s_k`` with ``seed``, or all lengths equal ``s_k``.
    ``timing`` is ``"device"`` (median of one call, ``do_bench``) or ``"host"`` (µs per call of a loop).
    """

    name: str
    b: int
    s_q: int
    s_k: int
    h_q: int
    h_kv: int = 1
    d: int = 576
    dv: int = 512
    page_block_size: int = 64
    dtype: str = "bf16"
    varlen: bool = True
    causal: bool = True
    lengths: tuple[int, ...] | None = None
    timing: str = "device"
    seed: int = 0

    def seqlens(self) -> list[int]:
        """The per-sequence KV lengths of this case (deterministic)."""
        if self.lengths is not None:
            return list(self.lengths)
        if not self.varlen:
            return [self.s_k] * self.b
        from openmla._harness import varlen_seqlens

        return varlen_seqlens(self.b, self.s_k, self.s_q, self.seed)

    def as_dict(self) -> dict:
        """The ``config`` field of a result record."""
        out = {
            "name": self.name,
            "b": self.b,
            "s_q": self.s_q,
            "s_k": self.s_k,
            "h_q": self.h_q,
            "h_kv": self.h_kv,
            "d": self.d,
            "dv": self.dv,
            "page_block_size": self.page_block_size,
            "dtype": self.dtype,
            "varlen": self.varlen,
            "causal": self.causal,
        }
        if self.lengths is not None:
            out["lengths"] = list(self.lengths)
        if self.timing != "device":
            out["timing"] = self.timing
        return out

    def scaled_down(self, factor: int = 64) -> DecodeConfig:
        """The same case with batch and lengths divided by ``factor`` (for ``--dry-run`` on CPU)."""
        lengths = None if self.lengths is None else tuple(max(1, n // factor) for n in self.lengths)
        return dataclasses.replace(
            self,
            b=len(lengths) if lengths else max(1, self.b // factor),
            s_k=max(self.s_q, self.s_k // factor),
            lengths=lengths,
        )


def standard_configs() -> list[DecodeConfig]:
    """FlashMLA's dense-decode perf cases (b=128, varlen, causal)."""
    cases = [
        DecodeConfig(f"std_sq{s_q}_sk{s_k}_h128", b=128, s_q=s_q, s_k=s_k, h_q=128)
        for s_q in (1, 2)
        for s_k in (4096, 8192, 16384)
    ]
    cases += [DecodeConfig(f"std_sq1_sk8192_h{h_q}", b=128, s_q=1, s_k=8192, h_q=h_q) for h_q in (16, 32, 64)]
    return cases


def small_configs() -> list[DecodeConfig]:
    """Small-batch decode, fixed lengths, where launch overhead and split-KV planning matter most."""
    return [
        DecodeConfig(f"small_b{b}_sk{s_k}", b=b, s_q=1, s_k=s_k, h_q=128, varlen=False)
        for b in (1, 4, 16)
        for s_k in (512, 2048, 8192)
    ]


def geometric_lengths(b: int, lo: int, hi: int) -> tuple[int, ...]:
    """``b`` lengths growing geometrically from ``lo`` to ``hi`` (both included)."""
    if b == 1:
        return (hi,)
    return tuple(round(lo * (hi / lo) ** (i / (b - 1))) for i in range(b))


def ragged_configs() -> list[DecodeConfig]:
    """One batch of 16 sequences, 64 to 32768 tokens: tests how evenly the split-KV plan spreads work."""
    lengths = geometric_lengths(16, 64, 32768)
    return [DecodeConfig("ragged_b16_64-32768", b=16, s_q=1, s_k=max(lengths), h_q=128, varlen=True, lengths=lengths)]


def medium_configs() -> list[DecodeConfig]:
    """Batches between ``small`` and ``standard``: where :func:`openmla.metadata.plan_dense` stops planning one loop
    trip a request (``SEGMENT_PLAN_MAX_BATCH``)."""
    cases = [
        DecodeConfig(f"medium_b{b}_sk{s_k}", b=b, s_q=1, s_k=s_k, h_q=128, varlen=False)
        for b in (24, 32, 64)
        for s_k in (512, 2048, 8192)
    ]
    lengths = geometric_lengths(32, 64, 32768)
    cases.append(DecodeConfig("ragged_b32_64-32768", b=32, s_q=1, s_k=max(lengths), h_q=128, varlen=True,
                              lengths=lengths))
    return cases


def host_configs() -> list[DecodeConfig]:
    """A tiny call timed in a Python loop: what one call costs the host."""
    return [DecodeConfig("host_b1_sk256", b=1, s_q=1, s_k=256, h_q=128, varlen=False, timing="host")]


@dataclass(frozen=True)
class SparseDecodeConfig:
    """One sparse-decode benchmark case.

    Every request holds ``s_k`` tokens on randomly placed pages; each of its ``s_q`` query tokens attends
    to ``topk`` distinct random ones of them, a fraction ``invalid_frac`` of the entries replaced by -1.
    ``kv_format`` is ``"V32_FP8"`` (656-byte V3.2 records) or ``"BF16"`` (a 16-bit cache in q's dtype).
    """

    name: str
    set: str
    b: int
    s_q: int
    s_k: int
    h_q: int
    topk: int
    page_block_size: int = 64
    kv_format: str = "V32_FP8"
    d_qk: int = 576
    dv: int = 512
    dtype: str = "bf16"
    invalid_frac: float = 0.02
    timing: str = "device"
    seed: int = 0

    def as_dict(self) -> dict:
        """The ``config`` field of a result record."""
        return {
            "name": self.name,
            "set": self.set,
            "b": self.b,
            "s_q": self.s_q,
            "s_k": self.s_k,
            "h_q": self.h_q,
            "h_kv": 1,
            "topk": self.topk,
            "page_block_size": self.page_block_size,
            "kv_format": self.kv_format,
            "d_qk": self.d_qk,
            "dv": self.dv,
            "dtype": self.dtype,
            "invalid_frac": self.invalid_frac,
        }

    def scaled_down(self, factor: int = 64) -> SparseDecodeConfig:
        """The same case with batch, lengths and ``topk`` divided by ``factor`` (for ``--dry-run`` on CPU)."""
        return dataclasses.replace(
            self, b=max(1, self.b // factor), s_k=max(1, self.s_k // factor), topk=max(1, self.topk // factor)
        )


def sparse_standard_configs() -> list[SparseDecodeConfig]:
    """FlashMLA's published sparse-decode config (V3.2 FP8, h_q=128, s_q=2, s_k=32k, topk=2048)."""
    return [
        SparseDecodeConfig(f"sparse_std_b{b}", "standard", b=b, s_q=2, s_k=32768, h_q=128, topk=2048) for b in (64, 128)
    ]


def sparse_heads_configs() -> list[SparseDecodeConfig]:
    """Fewer query heads (tensor-parallel shards): FlashMLA needs them padded to 64."""
    return [
        SparseDecodeConfig(f"sparse_heads_h{h_q}", "heads", b=64, s_q=2, s_k=32768, h_q=h_q, topk=2048)
        for h_q in (16, 32, 64)
    ]


def sparse_few_heads_configs() -> list[SparseDecodeConfig]:
    """16 and 32 heads (where the small-head kernel's two builds serve) over batch sizes and MTP depths beside the
    heads set's b=64, s_q=2: the shapes its dispatch rule must hold on."""
    return [
        SparseDecodeConfig(f"sparse_h{h_q}_b{b}_sq{s_q}", "few_heads", b=b, s_q=s_q, s_k=32768, h_q=h_q, topk=2048)
        for h_q in (16, 32)
        for b, s_q in ((1, 1), (4, 1), (16, 1), (16, 2), (64, 1), (128, 1), (128, 2), (96, 2), (64, 4), (256, 1))
    ]


def sparse_bf16_configs() -> list[SparseDecodeConfig]:
    """The standard config over a 16-bit cache (no FlashMLA counterpart on SM90)."""
    return [
        SparseDecodeConfig(f"sparse_bf16_b{b}", "bf16", b=b, s_q=2, s_k=32768, h_q=128, topk=2048, kv_format="BF16")
        for b in (64, 128)
    ]


def sparse_small_configs() -> list[SparseDecodeConfig]:
    """Small batches over FlashMLA's test list lengths and page sizes (2 and 61 tokens: pages split tiles)."""
    return [
        SparseDecodeConfig(
            f"sparse_small_topk{topk}_p{page}",
            "small",
            b=4,
            s_q=1,
            s_k=4096,
            h_q=128,
            topk=topk,
            page_block_size=page,
        )
        for topk in (64, 576, 2048)
        for page in (2, 61, 64)
    ]


_BUILDERS = {
    "dense_decode": {
        "standard": standard_configs,
        "small": small_configs,
        "ragged": ragged_configs,
        "medium": medium_configs,
        "host": host_configs,
    },
    "sparse_decode": {
        "standard": sparse_standard_configs,
        "heads": sparse_heads_configs,
        "few_heads": sparse_few_heads_configs,
        "bf16": sparse_bf16_configs,
        "small": sparse_small_configs,
    },
}


def config_sets(op: str) -> tuple[str, ...]:
    """The set names ``op`` defines, ``"all"`` included."""
    return (*_BUILDERS[op], "all")


def get_configs(name: str, dtype: str | None = None, op: str = "dense_decode") -> list:
    """The configs of ``op``'s set ``name`` (see the module docstring), with ``dtype`` overriding each one's."""
    if op not in _BUILDERS:
        raise ValueError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
    builders = _BUILDERS[op]
    if name == "all":
        cases = [c for build in builders.values() for c in build()]
    elif name in builders:
        cases = builders[name]()
    else:
        raise ValueError(f"{op} has no config set {name!r}; expected one of {', '.join(config_sets(op))}")
    return [dataclasses.replace(c, dtype=dtype) for c in cases] if dtype else cases
