"""The benchmark configurations: one declarative list per set, no torch needed to read them.

Sets (``--configs``):

* ``standard``: FlashMLA's dense-decode perf matrix: b=128, varlen, causal, s_q in {1, 2} x s_k in
  {4096, 8192, 16384} at h_q=128, and s_k=8192 at h_q in {16, 32, 64} (the memory-bound cases).
* ``small``: small batches, b in {1, 4, 16} x s_k in {512, 2048, 8192}, h_q=128, s_q=1, fixed lengths.
* ``ragged``: b=16 whose lengths grow geometrically from 64 to 32768 (load balance of the split-KV plan).
* ``host``: b=1, s_k=256: host overhead, µs per call in a tight Python loop.
* ``all``: every set above.

Every config is DeepSeek-V3 MLA: h_kv=1, d=576, dv=512, page_block_size=64, bf16, unless overridden.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

CONFIG_SETS = ("standard", "small", "ragged", "host", "all")


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


def host_configs() -> list[DecodeConfig]:
    """A tiny call timed in a Python loop: what one call costs the host."""
    return [DecodeConfig("host_b1_sk256", b=1, s_q=1, s_k=256, h_q=128, varlen=False, timing="host")]


def get_configs(name: str, dtype: str | None = None) -> list[DecodeConfig]:
    """The configs of set ``name`` (see the module docstring), with ``dtype`` overriding each one's."""
    builders = {"standard": standard_configs, "small": small_configs, "ragged": ragged_configs, "host": host_configs}
    if name == "all":
        cases = [c for build in builders.values() for c in build()]
    elif name in builders:
        cases = builders[name]()
    else:
        raise ValueError(f"unknown config set {name!r}; expected one of {', '.join(CONFIG_SETS)}")
    return [dataclasses.replace(c, dtype=dtype) for c in cases] if dtype else cases
