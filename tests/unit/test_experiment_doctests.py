"""The docstring examples of the experiments' pure parts hold (pytest collects doctests only under
grokray/; the experiments live beside it)."""
import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["experiments.phase_map_analysis", "experiments.paths_pairs", "experiments.store_args",
                                    "experiments.transfer_mature", "experiments.past_the_stop",
                                    "experiments.adaptive_vs_grid"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
