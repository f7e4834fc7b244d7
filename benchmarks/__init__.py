"""Speed benchmarks of grokray (training step, MFU, classifier, sweep overhead, packing).

A package: run each benchmark as a module from the repository root, e.g.
``python -m benchmarks.throughput``; ``benchmarks/README.md`` lists them. The shared helpers
are :mod:`benchmarks.common` (CLI, conditions, interleaved timing, JSON output),
:mod:`benchmarks.models` (the default trial, the papers'-style reference, analytic FLOPs) and
:mod:`benchmarks.prototypes` (candidate trainer changes, applied per instance). Scientific
runs (calibration, the default trial's milestones) live in ``experiments/``.
"""
