"""Circuit formation over training: the interchange test on a small fixed query set, at every evaluation.

He et al.'s second finding is about time: the reasoning path and OOD accuracy form at
different times, or one without the other. The end-of-run evidence
(:mod:`grokray.circuits.evidence`) sees only the last checkpoint; this module measures the
bridge interchange test (:mod:`grokray.circuits.interchange`) at every evaluation step on the
same ``sample`` queries per split (the first ``sample`` of the split's seeded order,
:func:`grokray.circuits.patching.patch_queries`; sources and controls are drawn from the same
rows), so a run's curves show when the bridge started to mediate its answers.

Logged per split (``ood``: test_inferred_ood, ``id``: test_inferred_id, ``train``: the trained
compositions, train_inferred: are memorized compositions computed through the bridge?), beside the
accuracy curves:

* ``circuit/interchange/<split>``: share of the correctly answered sample queries whose answer
  follows a swapped bridge (the best intermediate depth); NaN while fewer than
  ``min_queries`` of them are answered (the test is defined on correct answers only) or for a
  model with no intermediate state;
* ``circuit/interchange_n/<split>``: how many queries that rate rests on;
* ``circuit/carry/<split>`` (``ood``, ``id``): the bridge-carry test (:mod:`grokray.circuits.carry`)
  on the same queries: does a correct answer's own hop-1 state hold its bridge?
* ``circuit/interchange_r1/<split>``: the same with only hop 1's positions patched (r1 under
  causal attention), and ``circuit/answer_leak/<split>``: the share of answers the r2 state alone
  carries over. The interchange rate patches r1 and r2 together where the r2 state does not
  already carry the answer (leak <= ``LEAK_MAX``); on memorized compositions the leak sits near
  that bar and the rate can switch between the two definitions from one evaluation to the next:
  these two curves show when it does.

The verdict reads ``circuit/interchange/<split>`` for ``t_circuit`` (:mod:`grokray.verdict`).
Cost: a few forward passes over ``sample`` queries per split and intermediate depth per
evaluation; ``benchmarks/circuit_curves.py`` measures it against training.

Example:
    >>> from grokray.config import TrialConfig
    >>> from grokray.data import build_dataset
    >>> from grokray.model import LoopedTransformer
    >>> cfg = TrialConfig(); cfg.data.n_entities, cfg.data.phi = 30, 2.0
    >>> ds = build_dataset(cfg.data)
    >>> m = circuit_metrics(LoopedTransformer(cfg.model, ds.vocab_size), ds, sample=32)
    >>> m["circuit/interchange_n/ood"] < 20, m["circuit/interchange/ood"]   # too few correct answers: NaN
    (True, nan)
    >>> [k for k in sorted(m) if k.endswith("/ood")]
    ['circuit/answer_leak/ood', 'circuit/carry/ood', 'circuit/interchange/ood', 'circuit/interchange_n/ood', 'circuit/interchange_r1/ood']
"""
from __future__ import annotations

import math

import torch

from grokray.circuits.carry import carry_test
from grokray.circuits.interchange import MIN_QUERIES, interchange_test
from grokray.circuits.patching import patch_queries
from grokray.data import Dataset
from grokray.model import LoopedTransformer

#: Metric prefix of the circuit curves.
CIRCUIT_PREFIX = "circuit/"
#: Curve splits: short name -> dataset split.
CIRCUIT_SPLITS = {"ood": "test_inferred_ood", "id": "test_inferred_id", "train": "train_inferred"}
#: Fewest correctly answered sample queries a logged rate rests on (the verdict's own minimum).
CURVE_MIN_QUERIES = MIN_QUERIES


def circuit_metric(kind: str, split: str) -> str:
    """``circuit/<kind>/<split>``.

    >>> circuit_metric("interchange", "ood")
    'circuit/interchange/ood'
    """
    return f"{CIRCUIT_PREFIX}{kind}/{split}"


@torch.no_grad()
def circuit_metrics(model: LoopedTransformer, dataset: Dataset, sample: int, precision: str = "fp32",
                    device: torch.device | str | None = None, seed: int = 0) -> dict[str, float]:
    """The circuit curves' values for one evaluation (see the module docstring)."""
    out: dict[str, float] = {}
    for short, split in CIRCUIT_SPLITS.items():
        rows = dataset.rows.get(split)
        if rows is None or len(rows) == 0 or sample <= 0:
            continue
        fixed = patch_queries(dataset, split, sample, seed)
        res = interchange_test(model, dataset, split, n=len(fixed), seed=seed, precision=precision, device=device,
                               min_queries=CURVE_MIN_QUERIES, rows=fixed)
        out[circuit_metric("interchange", short)] = res.best if res.best is not None else math.nan
        out[circuit_metric("interchange_n", short)] = float(res.n_queries)
        usable = res.sufficient and len(res.hop1_only)
        out[circuit_metric("interchange_r1", short)] = float(max(res.hop1_only)) if usable else math.nan
        leak = res.answer_leak[int(res.success.argmax())] if usable else math.nan
        out[circuit_metric("answer_leak", short)] = float(leak)
        if short != "train":   # the bridge-carry test on the test splits (grokray.circuits.carry)
            carry = carry_test(model, dataset, split, n=len(fixed), seed=seed, precision=precision, device=device,
                               min_queries=CURVE_MIN_QUERIES, rows=fixed)
            out[circuit_metric("carry", short)] = carry.best if carry.best is not None else math.nan
    return out
