"""Scientific runs of grokray: the calibration study and the default trial's milestones.

A package: run each experiment as a module from the repository root, e.g.
``python -m experiments.calibration --help``; ``experiments/README.md`` says what each one
is, what it costs and where it writes (raw numbers to ``experiments/results/``, plots to
``docs/``). Speed measurements live in ``benchmarks/``.
"""
