"""OpenMLA: DeepSeek Multi-head Latent Attention kernels in Triton, a drop-in for FlashMLA's Python API.

``import openmla as flash_mla`` serves code written against ``flash_mla``.
"""

from ._runtime import interpret_mode as _interpret_mode

if _interpret_mode():
    # must run before any @triton.jit kernel of ours is decorated
    from ._compat import patch_triton_interpreter as _patch_triton_interpreter

    _patch_triton_interpreter()

from . import dispatch, reference  # noqa: E402
from ._runtime import (  # noqa: E402
    InvalidArgumentError,
    OpenMLAError,
    SchedMetaMismatchError,
    UnsupportedError,
)
from .api import explain, flash_mla_with_kvcache  # noqa: E402
from .dispatch import OpenMLAFallbackWarning  # noqa: E402
from .metadata import FlashMLASchedMeta, get_mla_decoding_metadata, get_mla_metadata  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "FlashMLASchedMeta",
    "InvalidArgumentError",
    "OpenMLAError",
    "OpenMLAFallbackWarning",
    "SchedMetaMismatchError",
    "UnsupportedError",
    "explain",
    "flash_mla_with_kvcache",
    "get_mla_decoding_metadata",
    "get_mla_metadata",
    "dispatch",
    "reference",
]
