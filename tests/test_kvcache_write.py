"""write_kv: new tokens quantized into their paged slots, byte for byte what the quantizers produce.

On CPU these run the Triton kernels under the interpreter (conftest sets TRITON_INTERPRET=1 without a
GPU); the GPU tier runs them compiled. Every check compares whole caches: the written slots against
the reference quantizers, every other byte against its value before the write (nothing else touched).
"""

from __future__ import annotations

import pytest
import torch

from openmla._runtime import InvalidArgumentError, UnsupportedError
from openmla.kvcache import model1_nominal_view, quantize_fp8_per_tensor, quantize_model1, quantize_v32, write_kv

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _keys(n: int, d: int, dtype, device, generator) -> torch.Tensor:
    """Random keys with a spread of magnitudes per token (tiles of very different scales, some zeros)."""
    x = torch.randn(n, d, generator=generator) * torch.exp2(torch.randint(-12, 6, (n, 1), generator=generator).float())
    x[0, :128] = 0.0  # an all-zero tile: scale 2^-13
    return x.to(device=device, dtype=dtype)


def _slots(n: int, num_slots: int, device, generator, dtype=torch.int64) -> torch.Tensor:
    """Distinct slots in random order, with padding (-1) and out-of-range values mixed in."""
    slots = torch.randperm(num_slots, generator=generator)[:n].to(dtype)
    slots[1] = -1
    slots[2] = num_slots + 5
    slots[3] = -(2**40) if dtype == torch.int64 else -(2**31)
    return slots.to(device)


def _expected(cache: torch.Tensor, records: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    out = cache.view(torch.uint8).clone()
    keep = (slots >= 0) & (slots < cache.shape[0] * cache.shape[1])
    s = slots[keep].long()
    out[s // cache.shape[1], s % cache.shape[1], 0] = records[keep]
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("page", [1, 16, 64])
def test_v32_write_is_byte_exact(device, dtype, page, generator):
    n = 24
    num_blocks = max(8, -(-2 * n // page))
    cache = torch.randint(0, 256, (num_blocks, page, 1, 656), generator=generator, dtype=torch.uint8).to(device)
    kv = _keys(n, 576, dtype, device, generator)
    slots = _slots(n, num_blocks * page, device, generator)
    want = _expected(cache, quantize_v32(kv), slots)
    write_kv(cache, kv, slots)
    assert torch.equal(cache, want), (cache != want).nonzero()[:8].tolist()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("page", [1, 16, 64])
def test_model1_write_is_byte_exact(device, dtype, page, generator):
    """MODEL1 keeps a token's codes and RoPE bytes at 576*i of its page and its scales at 576*B + 8*i: the
    written pages equal quantize_model1 of the keys with the new tokens in their slots, padding included."""
    n = 24
    num_blocks = max(8, -(-2 * n // page))
    keys = _keys(num_blocks * page, 512, torch.float32, "cpu", generator).reshape(num_blocks, page, 1, 512)
    pages = quantize_model1(keys).to(device)
    cache = model1_nominal_view(pages, page)
    kv = _keys(n, 512, dtype, device, generator)
    slots = _slots(n, num_blocks * page, device, generator)
    keep = ((slots >= 0) & (slots < num_blocks * page)).cpu()
    s = slots.cpu()[keep]
    keys.view(-1, 512)[s] = kv.cpu()[keep].float()  # exact: bf16 -> fp32
    want = quantize_model1(keys).to(device)
    write_kv(cache, kv, slots)
    assert torch.equal(pages, want), (pages != want).nonzero()[:8].tolist()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.float16])
def test_16bit_write_casts_and_skips_invalid_slots(device, cache_dtype, generator):
    n, num_blocks, page = 20, 3, 16
    cache = torch.randn(num_blocks, page, 1, 576, generator=generator).to(device=device, dtype=cache_dtype)
    kv = _keys(n, 576, torch.float32, device, generator).unsqueeze(1)  # [n, 1, d] is taken too
    slots = _slots(n, num_blocks * page, device, generator, torch.int32)
    want = _expected(cache, kv[:, 0].to(cache_dtype).view(torch.uint8), slots).view(cache_dtype)
    write_kv(cache, kv, slots)
    assert torch.equal(cache, want)


@pytest.mark.parametrize("device", DEVICES)
def test_per_tensor_fp8_write_matches_the_quantizer(device, generator):
    n, num_blocks, page = 20, 2, 64
    cache = torch.zeros(num_blocks, page, 1, 576, dtype=torch.float8_e4m3fn, device=device)
    kv = _keys(n, 576, torch.bfloat16, device, generator)
    scale = torch.tensor([0.0123], device=device)
    slots = _slots(n, num_blocks * page, device, generator)
    want = _expected(cache, quantize_fp8_per_tensor(kv, scale).view(torch.uint8), slots)
    write_kv(cache, kv, slots, scale=scale)
    assert torch.equal(cache.view(torch.uint8), want)


def test_bad_calls_raise_typed_errors(generator):
    cache = torch.zeros(2, 16, 1, 656, dtype=torch.uint8)
    kv = torch.zeros(4, 576)
    slots = torch.arange(4)
    with pytest.raises(InvalidArgumentError, match="slot_mapping must be an int32 or int64"):
        write_kv(cache, kv, slots.float())
    with pytest.raises(InvalidArgumentError, match=r"shape \[4\]"):
        write_kv(cache, kv, slots[:3])
    with pytest.raises(InvalidArgumentError, match=r"no known KV cache layout has \(d_qk=512, bytes_per_token=656\)"):
        write_kv(cache, torch.zeros(4, 512), slots)
    with pytest.raises(InvalidArgumentError, match=r"kv must be \[n, 576\]"):
        write_kv(torch.zeros(2, 16, 1, 576, dtype=torch.bfloat16), torch.zeros(4, 2, 576), slots)
    with pytest.raises(InvalidArgumentError, match="V32_FP8.* records carry their own"):
        write_kv(cache, kv, slots, scale=1.0)
    with pytest.raises(InvalidArgumentError, match="needs scale="):
        write_kv(torch.zeros(2, 16, 1, 576, dtype=torch.float8_e4m3fn), kv, slots)
    with pytest.raises(InvalidArgumentError, match="one KV head"):
        write_kv(torch.zeros(2, 16, 2, 656, dtype=torch.uint8), kv, slots)
    with pytest.raises(UnsupportedError, match="does not write .* as bytes"):  # bf16 records held as uint8
        write_kv(torch.zeros(2, 16, 1, 1152, dtype=torch.uint8), kv, slots)
    with pytest.raises(InvalidArgumentError, match="MODEL1.* records carry their own"):
        write_kv(torch.zeros(2, 16, 1, 584, dtype=torch.uint8), torch.zeros(4, 512), slots, scale=1.0)


def test_cpu_pytorch_path_writes_the_same_bytes(monkeypatch, generator):
    """Without the interpreter, CPU tensors take the PyTorch path: same bytes as the kernels above."""
    import openmla.kvcache.write as write_mod

    monkeypatch.setattr(write_mod, "interpret_mode", lambda: False)
    n, page = 12, 16
    kv = _keys(n, 576, torch.float32, "cpu", generator)
    slots = _slots(n, 2 * page, "cpu", generator)
    v32 = torch.randint(0, 256, (2, page, 1, 656), generator=generator, dtype=torch.uint8)
    want = _expected(v32, quantize_v32(kv), slots)
    write_kv(v32, kv, slots)
    assert torch.equal(v32, want)
    fp8 = torch.zeros(2, page, 1, 576, dtype=torch.float8_e4m3fn)
    want = _expected(fp8, quantize_fp8_per_tensor(kv, 0.5).view(torch.uint8), slots)
    write_kv(fp8, kv, slots, scale=0.5)
    assert torch.equal(fp8.view(torch.uint8), want)
    bf16 = torch.zeros(2, page, 1, 576, dtype=torch.bfloat16)
    want = _expected(bf16, kv.bfloat16().view(torch.uint8), slots).view(torch.bfloat16)
    write_kv(bf16, kv, slots)
    assert torch.equal(bf16, want)
    keys = _keys(2 * page, 512, torch.float32, "cpu", generator).reshape(2, page, 1, 512)
    pages = quantize_model1(keys)
    kv512 = _keys(n, 512, torch.float32, "cpu", generator)
    keep = (slots >= 0) & (slots < 2 * page)
    keys.view(-1, 512)[slots[keep]] = kv512[keep]
    write_kv(model1_nominal_view(pages, page), kv512, slots)
    assert torch.equal(pages, quantize_model1(keys))
