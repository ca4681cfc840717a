"""Test tiers, seeding and poisoning for the OpenMLA suite.

* No CUDA GPU and ``TRITON_INTERPRET`` unset: set ``TRITON_INTERPRET=1`` here, at import time, before
  any test module imports ``openmla``. Triton picks its interpreter when ``@triton.jit`` decorates a
  function, i.e. when ``openmla``'s kernel modules are imported, so setting it later has no effect.
* Tests marked ``gpu`` are skipped, with the reason, when no CUDA GPU is visible.
* Every test starts from a seed derived from its node id (same test, same data, whatever runs before).
"""

from __future__ import annotations

import os
import random
import sys
import zlib

import torch

if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

# Make ``import helpers`` work whatever pytest's import mode is.
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from helpers import interpret_mode, poison_cuda_cache  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
INTERPRET = interpret_mode()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped when none is visible")


def pytest_report_header(config: pytest.Config) -> str:
    gpu = torch.cuda.get_device_name(0) if HAS_CUDA else "none visible"
    return f"openmla tests: torch {torch.__version__}, CUDA GPU: {gpu}, TRITON_INTERPRET={int(INTERPRET)}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)


def seed_for(nodeid: str) -> int:
    """A deterministic 31-bit seed from a test's node id (stable across runs and machines)."""
    return zlib.crc32(nodeid.encode()) & 0x7FFFFFFF


@pytest.fixture(autouse=True)
def _seed_per_test(request: pytest.FixtureRequest) -> int:
    """Seed torch (all devices) and ``random`` from the test's node id."""
    seed = seed_for(request.node.nodeid)
    torch.manual_seed(seed)
    random.seed(seed)
    return seed


@pytest.fixture
def seed(_seed_per_test: int) -> int:
    """The seed this test started from (for messages, or to build a private ``torch.Generator``)."""
    return _seed_per_test


@pytest.fixture
def generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded like the test, for input generators."""
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def _release_cuda_cache():
    """Hand each test's cached GPU memory back afterwards: with several workers on one GPU, a worker's
    caching allocator would otherwise keep the peak of every test it ran (40 GB seen on an H200)."""
    yield
    if HAS_CUDA:
        torch.cuda.empty_cache()


@pytest.fixture(scope="session")
def triton_interpret() -> bool:
    """True when Triton kernels run in the CPU interpreter in this session."""
    return INTERPRET


@pytest.fixture(scope="session")
def device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu`` (where Triton kernels run interpreted)."""
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture
def poison_empty():
    """Explicit poisoning, nothing monkeypatched: returns ``poison(nbytes=1 << 30, device=None)``.

    Calling it fills the CUDA caching allocator's free memory with NaN bytes (see
    :func:`helpers.poison_cuda_cache`), so outputs allocated afterwards start as NaN and any element a
    kernel leaves unwritten is caught. A no-op on CPU. For buffers the test owns, use
    :func:`helpers.poison_like`.
    """
    return poison_cuda_cache
