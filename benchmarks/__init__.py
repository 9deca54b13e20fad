"""Benchmarks of analysis_wrapper: each figure measured side by side with what it is compared to.

Run ``python -m benchmarks.run [--quick] [--only NAME,...]`` from the repository root (or
``bash scripts/bench.sh``); see ``benchmarks/README.md``.
"""
