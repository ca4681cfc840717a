"""OpenMLA's benchmarks: ``configs`` (what is timed) and ``runner`` (how); run ``python -m benchmarks.runner``.

This package lives in the source checkout only (it is not installed with ``openmla``); results go to
``benchmarks/results/*.json``.
"""
