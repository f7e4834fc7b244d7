"""Which trials can share a pack: equal shapes and equal shared program (:func:`pack_key`)."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any


from grokray.config import ModelConfig, TrialConfig


#: Keys outside the model section that fix a tensor shape or the shared program.
#: Every ModelConfig field is part of the key too (see :func:`pack_key`).
PACK_KEYS_DATA = ("n_entities", "n_relations")                 # vocab size = E + R + 1
PACK_KEYS_TRAIN = ("batch_size", "precision", "device")        # batch shape, autocast, where


def pack_key(cfg: TrialConfig) -> tuple:
    """The shape-defining keys of a trial as ``(("model.d_model", 128), ...)``: two trials can
    share a pack iff their keys are equal.

    All model keys are in it (d_model, heads, d_mlp, layers, loops, reinject_input, causal,
    tie_embeddings, init, and any key added later: a new model key splits packs until
    someone decides it need not), the entity and relation counts (vocab size), the batch
    size, the precision and the device. ``train.precision`` is taken as written (``auto``
    is not resolved), so the key is a pure function of the config.
    """
    key = [(f"model.{f.name}", _hashable(getattr(cfg.model, f.name))) for f in dataclasses.fields(ModelConfig)]
    key += [(f"data.{k}", getattr(cfg.data, k)) for k in PACK_KEYS_DATA]
    key += [(f"train.{k}", getattr(cfg.train, k)) for k in PACK_KEYS_TRAIN]
    return tuple(key)


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def group_into_packs(configs: Sequence[TrialConfig], k: int) -> list[list[int]]:
    """Indices of ``configs`` grouped by :func:`pack_key` into packs of at most ``k``.

    Stable: groups come in the order of their first member, members in input order.

    >>> from grokray.config import load_trial_config
    >>> cs = [load_trial_config(None, [o]) for o in ("seed=0", "model.n_loops=1", "seed=1", "seed=2")]
    >>> group_into_packs(cs, 2)
    [[0, 2], [3], [1]]
    """
    if k < 1:
        raise ValueError(f"pack size must be >= 1 (got {k})")
    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(configs):
        groups.setdefault(pack_key(cfg), []).append(i)
    return [idx[j:j + k] for idx in groups.values() for j in range(0, len(idx), k)]


def check_packable(configs: Sequence[TrialConfig]) -> None:
    """Raise ValueError naming the first key in which a config differs from the first one."""
    if not configs:
        raise ValueError("a pack needs at least one trial config")
    ref = pack_key(configs[0])
    for i, cfg in enumerate(configs[1:], start=1):
        for (name, a), (_, b) in zip(ref, pack_key(cfg)):
            if a != b:
                raise ValueError(f"cannot pack these trials: member {i} differs from member 0 in {name} "
                                 f"({b!r} vs {a!r}); only trials with equal pack_key share a pack")
