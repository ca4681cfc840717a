"""KV cache formats (byte layouts, detection) and their quantizers, in plain PyTorch.

* :mod:`.formats`: :class:`KVFormat`, the constants :data:`V32_FP8` (656 B/token), :data:`MODEL1_FP8`
  (V4, 584 B/token nominal, block-split), :data:`BF16`, :data:`BF16_D512`, :data:`FP8_PER_TENSOR`,
  and :func:`detect_format`.
* :mod:`.quant`: byte-exact :func:`quantize_v32` / :func:`dequantize_v32`, :func:`quantize_model1` /
  :func:`dequantize_model1` / :func:`model1_nominal_view`, the per-tensor FP8 pair, and
  :func:`abs_indices_to_cache_indices`.
* :mod:`.write`: :func:`write_kv`, new tokens quantized and written into their paged slots (Triton on a
  GPU, no host sync).
"""

from .formats import (
    BF16,
    BF16_D512,
    FP8_PER_TENSOR,
    KNOWN_FORMATS,
    MODEL1_FP8,
    V32_FP8,
    KVFormat,
    bytes_per_token_of,
    detect_format,
)
from .quant import (
    abs_indices_to_cache_indices,
    dequantize_fp8_per_tensor,
    dequantize_kvcache,
    dequantize_model1,
    dequantize_v32,
    e8m0_to_float,
    model1_block_bytes,
    model1_nominal_view,
    pow2_scale,
    quantize_fp8_per_tensor,
    quantize_model1,
    quantize_v32,
)
from .write import write_kv

__all__ = [
    "KVFormat",
    "V32_FP8",
    "MODEL1_FP8",
    "BF16",
    "BF16_D512",
    "FP8_PER_TENSOR",
    "KNOWN_FORMATS",
    "detect_format",
    "bytes_per_token_of",
    "quantize_v32",
    "dequantize_v32",
    "quantize_model1",
    "dequantize_model1",
    "model1_nominal_view",
    "model1_block_bytes",
    "quantize_fp8_per_tensor",
    "dequantize_fp8_per_tensor",
    "dequantize_kvcache",
    "abs_indices_to_cache_indices",
    "pow2_scale",
    "e8m0_to_float",
    "write_kv",
]
