"""Where the time of a slice of the GPU test tier goes: pytest under cProfile, top functions by own time.

Usage: ``python -m benchmarks.profile_tests -k "<expression>" [test files]``. Prints the 30 functions
with the most own time and the 30 with the most cumulative time. The GPU tier costs far more per test
than its kernels do; this says whether inputs, the reference, checks or compiles are to blame.
"""

from __future__ import annotations

import cProfile
import pstats
import sys


def main(argv: list[str]) -> int:
    import pytest

    prof = cProfile.Profile()
    prof.enable()
    rc = pytest.main(["-q", "-m", "gpu", "-p", "no:cacheprovider", *argv])
    prof.disable()
    stats = pstats.Stats(prof).strip_dirs()
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(30)
    return int(rc)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
