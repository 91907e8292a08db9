"""Benchmarks: each prints our numbers next to a reference run in the same process.

Run them from the repository root as modules, ``python -m benchmarks.bench_train`` (``spknet`` is then imported
from the checkout, or from the installed copy when the checkout is not the working directory).
"""
