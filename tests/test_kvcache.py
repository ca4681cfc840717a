"""KV cache formats: byte-exact packing against hand-built tokens, round-trip bounds, detection.

Expected bytes are written out here independently of ``openmla.kvcache``: e4m3 codes from a table of
known bit patterns, fp32 scales with ``struct.pack('<f', ...)``, bf16 as the high half of an fp32.
"""

from __future__ import annotations

import dataclasses
import math
import struct

import pytest
import torch

from openmla._runtime import InvalidArgumentError, UnsupportedError
from openmla.kvcache import (
    BF16,
    BF16_D512,
    FP8_PER_TENSOR,
    MODEL1_FP8,
    V32_FP8,
    abs_indices_to_cache_indices,
    bytes_per_token_of,
    dequantize_fp8_per_tensor,
    dequantize_kvcache,
    dequantize_model1,
    dequantize_v32,
    detect_format,
    e8m0_to_float,
    model1_block_bytes,
    model1_nominal_view,
    pow2_scale,
    quantize_fp8_per_tensor,
    quantize_model1,
    quantize_v32,
)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]

# (value, float8_e4m3fn byte): sign | exponent (bias 7) << 3 | 3-bit mantissa, worked out by hand.
E4M3 = [
    (448.0, 0x7E),  # 1.75 * 2^8: 0 1111 110
    (1.0, 0x38),  # 0 0111 000
    (0.5, 0x30),  # 0 0110 000
    (-2.0, 0xC0),  # 1 1000 000
    (0.0, 0x00),
    (1.75, 0x3E),  # 0 0111 110
    (-448.0, 0xFE),
    (2.0**-9, 0x01),  # smallest subnormal: 0 0000 001
    (-0.375, 0xAC),  # -1.5 * 2^-2: 1 0101 100
    (96.0, 0x6C),  # 1.5 * 2^6: 0 1101 100
    (-0.0, 0x80),
    (3.0, 0x44),  # 1.5 * 2^1: 0 1000 100
]


def bf16_bytes(value: float) -> bytes:
    """Little-endian bf16 bytes of a bf16-exact value: the high half of its fp32 encoding."""
    return struct.pack("<f", value)[2:4]


def tile_values(n: int, shift: int, exp2: int) -> tuple[list[float], bytes]:
    """``n`` values that are e4m3-exact times ``2^exp2``, first one +-448 * 2^exp2 (so amax fixes the scale)."""
    vals, codes = [], bytearray()
    for k in range(n):
        v, code = E4M3[0] if k == 0 else E4M3[(k + shift) % len(E4M3)]
        if k == 0 and shift % 2:
            v, code = E4M3[6]
        vals.append(math.ldexp(v, exp2))
        codes.append(code)
    return vals, bytes(codes)


def as_bytes(t: torch.Tensor) -> bytes:
    return bytes(t.cpu().contiguous().view(torch.uint8).flatten().tolist())


# --------------------------------------------------------------------------------------------------
# V3.2: 656 bytes per token
# --------------------------------------------------------------------------------------------------


def _v32_hand_built() -> tuple[torch.Tensor, list[bytes], torch.Tensor]:
    """Two tokens [1, 2, 1, 576] bf16, their expected 656-byte records, and their exact dequantization."""
    tokens, records, deq = [], [], []
    rope = [(d - 32) * 0.125 for d in range(64)]
    rope_bytes = b"".join(bf16_bytes(v) for v in rope)

    # Token 0: every tile exact in e4m3 with scales 2^0, 2^-3, (zero tile -> 2^-13), 2^4.
    vals, codes, scales = [], b"", []
    for t, exp2 in enumerate((0, -3, None, 4)):
        if exp2 is None:
            vals += [0.0] * 128
            codes += bytes(128)
            scales.append(2.0**-13)  # ceil(log2(1e-4)) = -13
        else:
            v, c = tile_values(128, t, exp2)
            vals += v
            codes += c
            scales.append(2.0**exp2)
    tokens.append(vals + rope)
    records.append(codes + struct.pack("<4f", *scales) + rope_bytes)
    deq.append(vals + rope)

    # Token 1: amax not a power-of-two multiple of 448, so values round; and a tile under the 1e-4 floor.
    bf_03 = 0.30078125  # bf16(0.3)
    tile0 = [300.0, 20.0, bf_03, -20.0] * 32  # amax 300 -> 300/448 = 0.67 -> scale 2^0
    code0 = bytes([0x79, 0x5A, 0x2A, 0xDA]) * 32  # 288 (0 1111 001), 20 (0 1011 010), 0.3125, -20
    deq0 = [288.0, 20.0, 0.3125, -20.0] * 32
    bf_1em3 = 0.00099945068359375  # bf16(1e-3): 1e-3/448 < 1e-4 -> scale 2^-13; x/s = 8.19 -> 8 (0 1010 000)
    tile1 = [bf_1em3, -bf_1em3] * 64
    code1 = bytes([0x50, 0xD0]) * 64
    deq1 = [8 * 2.0**-13, -8 * 2.0**-13] * 64
    tile2 = [-7.0, 0.0] * 64  # amax 7 -> 7/448 = 2^-6 exactly -> scale 2^-6, x/s = -448
    code2 = bytes([0xFE, 0x00]) * 64
    tile3 = [1.0 + 2.0**-7] * 128  # bf16 above 1: scale 2^-8 (1.0078/448 in (2^-9, 2^-8]); x/s = 258 -> 256
    code3 = bytes([0x78]) * 128  # 256 = 0 1111 000
    tokens.append(tile0 + tile1 + tile2 + tile3 + rope)
    records.append(code0 + code1 + code2 + code3 + struct.pack("<4f", 1.0, 2.0**-13, 2.0**-6, 2.0**-8) + rope_bytes)
    deq.append(deq0 + deq1 + tile2 + [1.0] * 128 + rope)

    kv = torch.tensor(tokens, dtype=torch.float32).to(torch.bfloat16).view(1, 2, 1, 576)
    return kv, records, torch.tensor(deq, dtype=torch.float32).view(1, 2, 1, 576)


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("in_dtype", [torch.bfloat16, torch.float32])
def test_v32_hand_built_bytes(dev, in_dtype):
    kv, records, deq = _v32_hand_built()
    packed = quantize_v32(kv.to(device=dev, dtype=in_dtype))
    assert packed.shape == (1, 2, 1, 656) and packed.dtype == torch.uint8 and packed.device.type == dev
    for i in range(2):
        got = as_bytes(packed[0, i, 0])
        assert len(got) == 656
        assert got[:512] == records[i][:512], f"token {i}: e4m3 codes"
        assert got[512:528] == records[i][512:528], f"token {i}: fp32 scales"
        assert got[528:] == records[i][528:], f"token {i}: bf16 RoPE"
    out = dequantize_v32(packed)
    assert out.dtype == torch.bfloat16 and out.shape == (1, 2, 1, 576)
    torch.testing.assert_close(out.float().cpu(), deq, rtol=0, atol=0)


@pytest.mark.parametrize("dev", DEVICES)
def test_v32_roundtrip_error_bound(dev):
    nb, bsz = 3, 17
    kv = torch.randn(nb, bsz, 1, 576, device=dev)
    mag = 10.0 ** torch.empty(nb, bsz, 1, 4, 1, device=dev).uniform_(-7, 4)  # per-tile magnitudes
    kv[..., :512] = (kv[..., :512].view(nb, bsz, 1, 4, 128) * mag).view(nb, bsz, 1, 512)
    kv = kv.to(torch.bfloat16)
    packed = quantize_v32(kv)
    scales = packed[..., 512:528].contiguous().view(torch.float32)  # [nb, B, 1, 4]

    # Every scale is a power of two, the smallest one >= max(amax / 448, 1e-4).
    mant, _ = torch.frexp(scales)
    assert bool((mant == 0.5).all())
    amax = kv[..., :512].float().view(nb, bsz, 1, 4, 128).abs().amax(-1)
    need = torch.clamp_min(amax / 448, 1e-4)
    assert bool((scales >= need).all()) and bool((scales / 2 < need).all())

    # e4m3 keeps 3 mantissa bits: |error| <= 2^-4 |x| for normals, <= 2^-10 * s in the subnormal range.
    out = dequantize_v32(packed).float()
    x = kv.float()
    err = (out[..., :512] - x[..., :512]).view(nb, bsz, 1, 4, 128).abs()
    xs = x[..., :512].view(nb, bsz, 1, 4, 128).abs()
    bound = torch.maximum(xs * 2.0**-4, scales.unsqueeze(-1) * 2.0**-10)
    assert bool((err <= bound).all()), float((err - bound).max())
    # ...which is at most 2^-4 of the tile's scale * 448 range, i.e. relative to the tile scale.
    assert bool((err <= scales.unsqueeze(-1) * 448 * 2.0**-4).all())
    # RoPE dims are the bf16 bits, unchanged.
    assert torch.equal(packed[..., 528:].contiguous().view(torch.int16), kv[..., 512:].contiguous().view(torch.int16))
    assert torch.equal(out[..., 512:], x[..., 512:])


def test_v32_zero_token_uses_floor_scale():
    packed = quantize_v32(torch.zeros(1, 1, 1, 576, dtype=torch.bfloat16))
    got = as_bytes(packed[0, 0, 0])
    assert got[:512] == bytes(512)
    assert got[512:528] == struct.pack("<4f", *[2.0**-13] * 4)  # 2^ceil(log2(1e-4)) = 2^-13 = 1.2207e-4
    assert got[528:] == bytes(128)
    assert torch.equal(dequantize_v32(packed), torch.zeros(1, 1, 1, 576, dtype=torch.bfloat16))


def test_v32_rope_bits_unchanged_for_odd_values():
    kv = torch.zeros(1, 1, 1, 576, dtype=torch.bfloat16)
    raw = [0x0001, 0x7F7F, 0x8001, 0x3F81, 0xC2F6, 0x0080, 0x7F80, 0xFF80] * 8
    bits = torch.tensor(raw, dtype=torch.int32).to(torch.int16)  # wraps to the same 16 bits
    kv[..., 512:] = bits.view(torch.bfloat16)  # subnormal, max, -subnormal, ..., +inf, -inf
    packed = quantize_v32(kv)
    want = b"".join(struct.pack("<H", b) for b in raw)
    assert as_bytes(packed[0, 0, 0, 528:]) == want
    assert torch.equal(dequantize_v32(packed)[..., 512:].view(torch.int16), kv[..., 512:].view(torch.int16))


def test_v32_strided_and_typed_inputs():
    kv = torch.randn(4, 5, 1, 576).to(torch.bfloat16)
    packed = quantize_v32(kv)
    padded = torch.full((4, 6, 1, 656), 0xFF, dtype=torch.uint8)  # test-style [nb, B+1, 656][:, :B]
    padded[:, :5] = packed
    view = padded[:, :5]
    assert view.stride(0) == 6 * 656 and not view.is_contiguous()
    ref = dequantize_v32(packed)
    assert torch.equal(dequantize_v32(view), ref)
    assert torch.equal(dequantize_v32(packed.view(torch.int8)), ref)
    assert torch.equal(dequantize_v32(packed.view(torch.float8_e4m3fn)), ref)
    assert torch.equal(dequantize_kvcache(view, 576), ref)


def test_v32_nonfinite_tile_reads_back_nan():
    kv = torch.ones(1, 1, 1, 576, dtype=torch.bfloat16)
    kv[0, 0, 0, 5] = float("nan")
    kv[0, 0, 0, 300] = float("inf")
    out = dequantize_v32(quantize_v32(kv)).float()
    assert bool(out[..., 0:128].isnan().all()) and bool(out[..., 256:384].isnan().all())
    assert bool((out[..., 128:256] == 1).all()) and bool((out[..., 384:] == 1).all())


def test_v32_rejects_bad_inputs():
    with pytest.raises(InvalidArgumentError, match="last dim 576"):
        quantize_v32(torch.zeros(1, 1, 1, 512))
    with pytest.raises(InvalidArgumentError, match="bfloat16, float16 or float32"):
        quantize_v32(torch.zeros(1, 1, 1, 576, dtype=torch.int32))
    with pytest.raises(InvalidArgumentError, match="656 bytes per token"):
        dequantize_v32(torch.zeros(1, 1, 1, 584, dtype=torch.uint8))
    with pytest.raises(InvalidArgumentError, match="uint8, int8 or float8_e4m3fn"):
        dequantize_v32(torch.zeros(1, 1, 1, 656, dtype=torch.float32))


# --------------------------------------------------------------------------------------------------
# MODEL1 (V4): block-split pages
# --------------------------------------------------------------------------------------------------

# ceil(B * 584 / 576) * 576, worked out by hand.
PADDED_BLOCK_BYTES = {1: 1152, 2: 1728, 61: 35712, 64: 37440}


def _model1_hand_built(bsz: int, nb: int = 2) -> tuple[torch.Tensor, list[bytes]]:
    """[nb, B, 1, 512] bf16 keys whose tiles are e4m3-exact at known scales, and each page's bytes."""
    padded = PADDED_BLOCK_BYTES[bsz]
    tokens, pages = [], []
    for p in range(nb):
        page = bytearray(padded)  # zero padding and pad bytes
        for i in range(bsz):
            vals = []
            data = bytearray()
            scale_bytes = bytearray()
            for j in range(7):
                if (p + i + j) % 11 == 10:  # an all-zero tile: scale 2^-13 -> e8m0 byte 127 - 13 = 114
                    vals += [0.0] * 64
                    data += bytes(64)
                    scale_bytes.append(114)
                    continue
                exp2 = (p * 7 + i * 3 + j) % 9 - 4
                v, c = tile_values(64, i + j + p, exp2)
                vals += v
                data += c
                scale_bytes.append(127 + exp2)
            rope = [((p * 5 + i * 3 + d) % 29 - 14) * 0.0625 for d in range(64)]
            vals += rope
            data += b"".join(bf16_bytes(v) for v in rope)
            assert len(data) == 576 and len(vals) == 512
            page[i * 576 : (i + 1) * 576] = data
            page[bsz * 576 + 8 * i : bsz * 576 + 8 * i + 7] = scale_bytes
            tokens.append(vals)
        pages.append(bytes(page))
    kv = torch.tensor(tokens, dtype=torch.float32).to(torch.bfloat16).view(nb, bsz, 1, 512)
    return kv, pages


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("bsz", [1, 2, 61, 64])
def test_model1_hand_built_page_layout(dev, bsz):
    kv, pages = _model1_hand_built(bsz)
    blocks = quantize_model1(kv.to(dev))
    padded = PADDED_BLOCK_BYTES[bsz]
    assert model1_block_bytes(bsz) == padded == MODEL1_FP8.block_bytes(bsz)
    assert blocks.shape == (2, padded) and blocks.dtype == torch.uint8 and blocks.is_contiguous()
    for p in range(2):
        got = as_bytes(blocks[p])
        want = pages[p]
        for i in (0, bsz // 2, bsz - 1):  # spelled-out offsets of a few tokens, then the whole page
            assert got[i * 576 : i * 576 + 448] == want[i * 576 : i * 576 + 448], f"page {p} token {i}: NoPE"
            assert got[i * 576 + 448 : i * 576 + 576] == want[i * 576 + 448 : i * 576 + 576], f"token {i}: RoPE"
            s = bsz * 576 + 8 * i
            assert got[s : s + 7] == want[s : s + 7], f"page {p} token {i}: e8m0 scales"
            assert got[s + 7] == 0, "pad byte"
        assert got[bsz * 584 :] == bytes(padded - bsz * 584), "block padding"
        assert got == want

    view = model1_nominal_view(blocks, bsz)
    assert view.shape == (2, bsz, 1, 584)
    assert view.stride() == (padded, 584, 584, 1)
    assert view.data_ptr() == blocks.data_ptr() and view.untyped_storage().data_ptr() == blocks.data_ptr()
    assert torch.equal(view[1].reshape(-1), blocks[1, : bsz * 584])  # the view covers the used bytes, in order
    assert bytes_per_token_of(view) == 584 and detect_format(512, bytes_per_token_of(view)) is MODEL1_FP8

    out = dequantize_model1(view)
    assert out.shape == (2, bsz, 1, 512) and out.dtype == torch.bfloat16
    assert torch.equal(out.cpu(), kv)  # every value was exact
    assert torch.equal(dequantize_model1(blocks, bsz), out)
    assert torch.equal(dequantize_kvcache(view, 512), out)


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("bsz", [1, 2, 61, 64])
def test_model1_roundtrip_error_bound(dev, bsz):
    nb = 3
    kv = torch.randn(nb, bsz, 1, 512, device=dev)
    mag = 10.0 ** torch.empty(nb, bsz, 1, 7, 1, device=dev).uniform_(-7, 4)
    kv[..., :448] = (kv[..., :448].view(nb, bsz, 1, 7, 64) * mag).view(nb, bsz, 1, 448)
    kv = kv.to(torch.bfloat16)
    blocks = quantize_model1(kv)
    scale_bytes = blocks[:, bsz * 576 : bsz * 584].view(nb, bsz, 8)
    assert bool((scale_bytes[..., 7] == 0).all())
    scales = torch.ldexp(torch.ones(nb, bsz, 7, device=dev), scale_bytes[..., :7].int() - 127)
    amax = kv[..., :448].float().view(nb, bsz, 7, 64).abs().amax(-1)
    need = torch.clamp_min(amax / 448, 1e-4)
    assert bool((scales >= need).all()) and bool((scales / 2 < need).all())

    out = dequantize_model1(model1_nominal_view(blocks, bsz)).float()
    x = kv.float()
    err = (out[..., :448] - x[..., :448]).view(nb, bsz, 7, 64).abs()
    xs = x[..., :448].view(nb, bsz, 7, 64).abs()
    bound = torch.maximum(xs * 2.0**-4, scales.unsqueeze(-1) * 2.0**-10)
    assert bool((err <= bound).all())
    assert torch.equal(out[..., 448:], x[..., 448:])  # RoPE exact

    # A cache with extra padding per block (stride(0) > padded) and garbage in padding reads the same.
    padded = model1_block_bytes(bsz)
    big = torch.full((nb, padded + 576), 0xFF, dtype=torch.uint8, device=dev)
    big[:, : bsz * 584] = blocks[:, : bsz * 584]
    assert torch.equal(dequantize_model1(model1_nominal_view(big, bsz)).float(), out)


def test_model1_float32_input_matches_bf16_rounding():
    kv = torch.randn(2, 3, 1, 512)
    a = quantize_model1(kv)
    b = quantize_model1(kv.to(torch.bfloat16))
    assert a.shape == b.shape == (2, model1_block_bytes(3))
    for i in range(3):  # RoPE is rounded to bf16 (nearest even) either way
        assert torch.equal(a[:, i * 576 + 448 : i * 576 + 576], b[:, i * 576 + 448 : i * 576 + 576])


def test_model1_nonfinite_tile_gets_nan_scale_byte():
    kv = torch.ones(1, 2, 1, 512, dtype=torch.bfloat16)
    kv[0, 1, 0, 70] = float("nan")  # token 1, tile 1
    blocks = quantize_model1(kv)
    assert blocks[0, 2 * 576 + 8 + 1].item() == 0xFF
    assert blocks[0, 2 * 576 + 8].item() == 127 - 8  # amax 1 -> 1/448 -> 2^-8
    out = dequantize_model1(blocks, 2).float()
    assert bool(out[0, 1, 0, 64:128].isnan().all()) and bool((out[0, 0] == 1).all())


def test_model1_rejects_bad_inputs():
    kv = torch.zeros(2, 4, 1, 512, dtype=torch.bfloat16)
    blocks = quantize_model1(kv)
    with pytest.raises(InvalidArgumentError, match="h_kv == 1"):
        quantize_model1(torch.zeros(2, 4, 2, 512))
    with pytest.raises(InvalidArgumentError, match="page_block_size is required"):
        dequantize_model1(blocks)
    with pytest.raises(InvalidArgumentError, match="at least"):
        model1_nominal_view(blocks, 5)
    with pytest.raises(InvalidArgumentError, match="stride\\(1\\) == 584"):
        dequantize_model1(torch.zeros(2, 4, 1, 584, dtype=torch.uint8)[:, ::2])
    with pytest.raises(InvalidArgumentError, match="disagrees"):
        dequantize_model1(model1_nominal_view(blocks, 4), page_block_size=2)
    with pytest.raises(InvalidArgumentError, match="positive int"):
        model1_block_bytes(0)


# --------------------------------------------------------------------------------------------------
# Scale helpers
# --------------------------------------------------------------------------------------------------


def test_e8m0_decoding_all_bytes():
    got = e8m0_to_float(torch.arange(256, dtype=torch.int32).to(torch.uint8))
    for b in range(255):
        assert got[b].item() == math.ldexp(1.0, b - 127), b
    assert math.isnan(got[255].item())
    if hasattr(torch, "float8_e8m0fnu"):
        ref = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e8m0fnu).float()
        assert torch.equal(got[:255], ref[:255])


def test_pow2_scale_matches_exact_math():
    rng = torch.Generator().manual_seed(0)
    amax = torch.cat(
        [
            10.0 ** torch.empty(2000).uniform_(-9, 30, generator=rng),
            torch.tensor([0.0, 448.0, 56.0, 7168.0, 0.0448, 448.0 * 2.0**-14, 1e-30]),
            torch.tensor([448.0 * 2.0**k for k in range(-12, 20)]),
            torch.tensor([448.0 * 2.0**k for k in range(-12, 20)]).nextafter(torch.tensor(math.inf)),
        ]
    ).float()
    got = pow2_scale(amax)
    for a, s in zip(amax.tolist(), got.tolist()):
        y = max(float(torch.tensor(a, dtype=torch.float32) / 448), float(torch.tensor(1e-4, dtype=torch.float32)))
        assert s == 2.0 ** math.ceil(math.log2(y)), (a, s)
    assert pow2_scale(torch.tensor([0.0])).item() == 2.0**-13
    assert pow2_scale(torch.tensor([448.0])).item() == 1.0
    assert pow2_scale(torch.tensor([448.0]).nextafter(torch.tensor(math.inf))).item() == 2.0
    assert math.isinf(pow2_scale(torch.tensor([math.inf])).item())
    assert math.isnan(pow2_scale(torch.tensor([math.nan])).item())


# --------------------------------------------------------------------------------------------------
# Per-tensor FP8
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dev", DEVICES)
def test_fp8_per_tensor_bytes_and_roundtrip(dev):
    x = torch.tensor([224.0, 0.5, -1.0, 0.875, 0.0, 1000.0, -math.inf], device=dev)
    q = quantize_fp8_per_tensor(x, 0.5)
    assert q.dtype == torch.float8_e4m3fn
    assert as_bytes(q) == bytes([0x7E, 0x38, 0xC0, 0x3E, 0x00, 0x7E, 0xFE])  # 448 1 -2 1.75 0 sat sat
    nan = quantize_fp8_per_tensor(torch.tensor([math.nan], device=dev), 1.0).view(torch.uint8).item()
    assert nan & 0x7F == 0x7F
    back = dequantize_fp8_per_tensor(q.view(torch.uint8), torch.tensor([0.5], device=dev))
    assert back.dtype == torch.float32
    assert back.tolist() == [224.0, 0.5, -1.0, 0.875, 0.0, 224.0, -224.0]
    assert dequantize_fp8_per_tensor(q, 0.5, out_dtype=torch.bfloat16).dtype == torch.bfloat16

    kv = torch.randn(3, 64, 1, 576, device=dev).to(torch.bfloat16)
    scale = float(kv.float().abs().max()) / 448
    back = dequantize_fp8_per_tensor(quantize_fp8_per_tensor(kv, scale), scale)
    err = (back - kv.float()).abs()
    assert bool((err <= torch.maximum(kv.float().abs() * 2.0**-4, torch.tensor(scale * 2.0**-9))).all())
    assert torch.equal(dequantize_kvcache(quantize_fp8_per_tensor(kv, scale), 576, descale=scale), back)


def test_fp8_per_tensor_rejects_bad_scale():
    with pytest.raises(InvalidArgumentError, match="finite positive"):
        quantize_fp8_per_tensor(torch.ones(2), 0.0)
    with pytest.raises(InvalidArgumentError, match="one value"):
        dequantize_fp8_per_tensor(torch.zeros(2, dtype=torch.uint8), torch.ones(2))
    with pytest.raises(InvalidArgumentError, match="descale"):
        dequantize_kvcache(torch.zeros(1, 1, 1, 576, dtype=torch.float8_e4m3fn), 576)


# --------------------------------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------------------------------


def test_detect_format_by_sizes():
    assert detect_format(576, 656) is V32_FP8
    assert detect_format(512, 584) is MODEL1_FP8
    assert detect_format(576, 1152) is BF16
    assert detect_format(512, 1024) is BF16_D512
    assert detect_format(576, 576) is FP8_PER_TENSOR
    assert bytes_per_token_of(torch.zeros(1, 64, 1, 576, dtype=torch.bfloat16)) == 1152
    assert bytes_per_token_of(torch.zeros(1, 64, 1, 656, dtype=torch.uint8)) == 656


def test_detect_format_override():
    assert detect_format(576, 656, kv_format="V32") is V32_FP8
    assert detect_format(576, 656, kv_format="v32_fp8") is V32_FP8
    assert detect_format(512, 584, kv_format="MODEL1") is MODEL1_FP8
    assert detect_format(512, 584, kv_format="V4") is MODEL1_FP8
    assert detect_format(576, 1152, kv_format="bf16") is BF16
    assert detect_format(512, 1024, kv_format="BF16") is BF16_D512
    with pytest.raises(InvalidArgumentError, match="kv_format='V32' needs \\(d_qk=576, 656 B/token\\)"):
        detect_format(512, 584, kv_format="V32")
    with pytest.raises(InvalidArgumentError, match="not a KV cache format") as info:
        detect_format(576, 656, kv_format="int4")
    assert "MODEL1" in str(info.value) and "V32" in str(info.value)
    with pytest.raises(UnsupportedError, match="V3.2-no-RoPE"):
        detect_format(512, 528, kv_format="V32_NO_ROPE")


def test_detect_format_unknown_pair_message():
    with pytest.raises(InvalidArgumentError) as info:
        detect_format(512, 600)
    msg = str(info.value)
    assert "d_qk=512" in msg and "bytes_per_token=600" in msg
    for fmt in (V32_FP8, MODEL1_FP8, BF16, BF16_D512, FP8_PER_TENSOR):
        assert fmt.describe() in msg
    with pytest.raises(UnsupportedError, match="V4.1 FP8"):
        detect_format(512, 528)
    with pytest.raises(UnsupportedError, match="V4.1 FP4"):
        detect_format(512, 288)
    with pytest.raises(InvalidArgumentError, match="must be an int"):
        detect_format(576.0, 656)


def test_kvformat_is_frozen_and_describes_layout():
    with pytest.raises(dataclasses.FrozenInstanceError):
        V32_FP8.bytes_per_token = 1  # type: ignore[misc]
    assert V32_FP8.block_bytes(64) == 64 * 656 and BF16.block_bytes(64) == 64 * 1152
    assert MODEL1_FP8.token_stride_bytes == 576 and MODEL1_FP8.block_split and not V32_FP8.block_split
    assert V32_FP8.last_dim == 656 and BF16.last_dim == 576 and FP8_PER_TENSOR.last_dim == 576
    assert "B*576 + 8i" in MODEL1_FP8.physical_layout and "[512, 528)" in V32_FP8.physical_layout


# --------------------------------------------------------------------------------------------------
# Index conversion
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dev", DEVICES)
def test_abs_indices_to_cache_indices(dev):
    block_table = torch.tensor([[3, 1, 7], [0, 5, 2]], dtype=torch.int32, device=dev)
    abs_idx = torch.tensor([[[0, 5, -1, 11]], [[3, 4, -1, 8]]], dtype=torch.int32, device=dev)  # [b=2, s_q=1, 4]
    got = abs_indices_to_cache_indices(abs_idx, block_table, 4)
    assert got.dtype == torch.int32 and got.shape == abs_idx.shape and got.device.type == dev
    # b0: 0 -> page 3 -> 12; 5 -> page 1 slot 1 -> 5; 11 -> page 7 slot 3 -> 31.  b1: 3 -> 3; 4 -> 20; 8 -> 8.
    assert got.tolist() == [[[12, 5, -1, 31]], [[3, 20, -1, 8]]]
    with pytest.raises(InvalidArgumentError, match="-2"):
        abs_indices_to_cache_indices(torch.full((2, 1, 1), -2, dtype=torch.int32, device=dev), block_table, 4)
    with pytest.raises(InvalidArgumentError, match="12"):
        abs_indices_to_cache_indices(torch.full((2, 1, 1), 12, dtype=torch.int32, device=dev), block_table, 4)
