"""grokray: distributed sweeps on Ray for grokking in looped transformers on two-hop reasoning.

The Python entry points most users want, imported lazily (``import grokray`` stays light):

    >>> import grokray
    >>> callable(grokray.phase_map), callable(grokray.search_map)
    (True, True)
"""
from grokray.version import __version__

_LAZY = {
    "phase_map": ("grokray.phasemap", "phase_map"),
    "pivot": ("grokray.phasemap", "pivot"),
    "filter_label": ("grokray.phasemap", "filter_label"),
    "plot_phase_map": ("grokray.phasemap", "plot_phase_map"),
    "search_map": ("grokray.phasemap.search", "load_search_map"),
    "plot_search_map": ("grokray.phasemap.search", "plot_search_map"),
    "transfer_map": ("grokray.transfermap", "transfer_map"),
    "classify_run": ("grokray.classify", "classify_run"),
    "classify_history": ("grokray.verdict", "classify_history"),
    "load_trial_config": ("grokray.config", "load_trial_config"),
    "Trainer": ("grokray.train", "Trainer"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'grokray' has no attribute {name!r}")
