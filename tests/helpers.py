"""Helpers shared by tests (importable: pytest puts tests/ on sys.path)."""
from __future__ import annotations

from grokray.config import TrialConfig, load_trial_config

#: A graph and model small enough to memorize in a few hundred steps on one CPU core.
TINY = ["data.n_entities=30", "data.n_relations=6", "data.out_degree=4", "data.phi=2.0",
        "model.d_model=64", "model.n_heads=2", "model.d_mlp=256", "train.lr=3e-3", "train.weight_decay=0.1",
        "train.lr_schedule=constant", "train.warmup_steps=20", "train.batch_size=128", "train.max_steps=300",
        "train.precision=fp32", "train.lens_sample=64", "train.eval_per_decade=4", "train.eval_max_interval=100",
        "train.threads=1"]


def tiny_config(*overrides: str) -> TrialConfig:
    return load_trial_config(None, [*TINY, *overrides])


def comparable(history: list[dict]) -> list[dict]:
    """History without wall-clock entries and with NaN made comparable (NaN != NaN)."""
    out = []
    for entry in history:
        out.append({k: ("nan" if v != v else v) for k, v in entry.items() if not k.startswith("time/")})
    return out
