"""Every kernel variant compiles ahead of time for the GPUs we claim, on a machine with no GPU.

Triton's wheel carries ptxas and cuobjdump, so these run in CPU CI. Checks: the compile succeeds,
Hopper builds of the 64/128-row tiles use ``wgmma`` (the tensor-core path; a kernel that fell back
to ``mma.sync`` there would be several times slower), and no variant puts arrays in local memory.
Register spills (stack frame bytes) are recorded, not asserted: the portable kernel's epilogue spills
a few hundred to ~1700 bytes a thread on sm_90 once per request, which the GPU benchmarks account for.
"""

from __future__ import annotations

import functools

import pytest

from openmla._runtime import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not importable")


@functools.lru_cache(maxsize=None)
def reports(arch: int, select: str):
    from openmla.ops.aot import compile_all

    found = compile_all(arch, select)
    assert found and all(r.kernel != "*" for r in found), found
    return found


@pytest.mark.parametrize("select", ["bf16", "_plan_splitkv_kernel"])  # "bf16" includes the Gluon variants
def test_compiles_for_sm90a(select):
    for report in reports(90, select):
        assert report.ok, f"{report.kernel}[{report.variant}]: {report.error}"
        assert report.local_bytes == 0, f"{report.variant}: {report.local_bytes} bytes of local memory"
        if "bm64" in report.variant or "bm128" in report.variant or report.variant.startswith("gluon"):
            assert report.has_wgmma, f"{report.variant} does not use wgmma on sm_90a"
        assert report.shared_bytes <= 227 * 1024, f"{report.variant}: {report.shared_bytes} B of shared memory"


@pytest.mark.parametrize("arch", [80, 120])
def test_compiles_for_ampere_and_consumer_blackwell(arch):
    found = [r for r in reports(arch, "d576 causal") if not r.variant.startswith("gluon")]
    assert len(found) >= 4
    for report in found:
        assert report.ok, f"{report.variant}: {report.error}"
        assert report.local_bytes == 0
        assert not report.has_wgmma  # wgmma exists only on sm_90a
