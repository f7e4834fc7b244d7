"""Transferability (grokray.transfer): data invariants, a real fine-tuning trial logged to a real
MLflow store, source selection, the transfer map, and the spec section's one-line errors.

Real and small: a TINY source model is trained once per module (a few seconds, one thread);
fine-tuning runs are a few dozen steps. The Tune session of the trainable is the only fake:
``ray.tune.get_context`` / ``get_checkpoint`` / ``report`` are replaced by an in-process
recorder that keeps checkpoints as Tune would, so a restart can be replayed.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from grokray import tracking
from grokray.config import ConfigError, DataConfig
from grokray.data import build_dataset, load_dataset
from grokray.cli import main
from grokray.data.cache import forget
from grokray.plots import plot_transfer_curves
from grokray.sweep import trainable as trainable_mod
from grokray.sweep.kinds import KINDS
from grokray.sweep.kinds.finetune import log_transfer_summary, prepare_sources, resolve_sources
from grokray.sweep.spec import load_spec, spec_from_dict
from grokray.sweep.trainable import TrialContext, run_trial
from grokray.transfer import (TEST_SPLITS, TransferConfig, build_transfer_dataset, finetune, load_transfer_dataset,
                              transfer_config_from_dict, transfer_summary)
from grokray.transfermap import (MAP_COLUMNS, SUMMARY_KEYS, TAIL_COLUMNS, format_transfer_table, log_transfer_map,
                                 transfer_map)
from helpers import tiny_config

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TF = TransferConfig(n_new=20, n_retained=40, test_fraction=0.2, seed=0)
#: A short fine-tuning schedule (steps 0..60, evaluations every 20).
FT_TRAIN = {"lr": 3e-3, "weight_decay": 0.1, "warmup_steps": 5, "lr_schedule": "constant", "batch_size": 64,
            "max_steps": 60, "precision": "fp32", "eval_per_decade": 2, "eval_max_interval": 20, "lens_sample": 32,
            "threads": 1, "checkpoint_steps": "none"}

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def source_cfg():
    # TINY: 30 entities x 6 relations, out-degree 4 -> 120 facts, 60 free (entity, relation) pairs.
    return tiny_config("train.max_steps=100", "train.lens_sample=0")


@pytest.fixture(scope="module")
def source(source_cfg):
    return load_dataset(source_cfg.data)


@pytest.fixture(scope="module")
def source_ckpt(source_cfg, tmp_path_factory):
    """A tiny trained source model's final checkpoint (as the trainer writes it)."""
    from grokray.train import Trainer

    work = tmp_path_factory.mktemp("source")
    result = Trainer(source_cfg, work_dir=work).run()
    return result.checkpoints[result.steps_run]


def _kinds(tds, source):
    """[E, R] 0 = no fact / old untouched, 1 = retained, 2 = new (from the dataset's rows)."""
    kind = np.zeros((source.n_entities, source.n_relations), dtype=int)
    ret, new = tds.rows["retained_atomic"], tds.rows["new_atomic"]
    kind[ret[:, 0], ret[:, 1]] = 1
    kind[new[:, 0], new[:, 1]] = 2
    return kind


def _queries(rows):
    return {tuple(q) for q in np.asarray(rows)[:, :3].tolist()}


# =========================================================================== data

@pytest.mark.parametrize("mode", ["unused", "replace"])
def test_transfer_data_invariants(source, mode):
    tds = build_transfer_dataset(source, TransferConfig(n_new=20, n_retained=40, new_pairs=mode, test_fraction=0.2))
    rows = tds.rows
    assert tds.vocab_size == source.vocab_size and tds.source_name == source.name
    assert len(rows["new_atomic"]) == 20 and len(rows["retained_atomic"]) == 40
    new, ret = rows["new_atomic"], rows["retained_atomic"]
    # New facts: unused pairs (unused) or used, non-retained pairs with a different tail (replace).
    if mode == "unused":
        assert (source.tail[new[:, 0], new[:, 1]] == -1).all()
    else:
        old = source.tail[new[:, 0], new[:, 1]]
        assert (old >= 0).all() and (old != new[:, 4]).all()
    assert len(_queries(new)) == 20 and not (_queries(new) & _queries(ret))
    # Retained facts are ID facts of the source, unchanged.
    id_facts = {tuple(f) for f in source.atomic[~source.atomic_ood].tolist()}
    assert {(h, r, t) for h, r, _, _, t in ret.tolist()} <= id_facts
    assert len(rows["unretained_atomic"]) == len(source.atomic) - 40 - (20 if mode == "replace" else 0)

    kind = _kinds(tds, source)
    tail = source.tail.copy()
    tail[new[:, 0], new[:, 1]] = new[:, 4]
    expected_hops = {"train_inferred": (1, 1), **{s: (1 if a == "old" else 2, 1 if b == "old" else 2)
                                                  for s in TEST_SPLITS.values() for a, b in [s[5:].split("_")]}}
    for split, (k1, k2) in expected_hops.items():
        r = rows[split]
        assert len(r) > 0, split
        h, r1, r2, b, t = r.T
        assert (kind[h, r1] == k1).all() and (kind[b, r2] == k2).all(), split     # hop types
        assert (tail[h, r1] == b).all() and (tail[b, r2] == t).all(), split        # bridge and answer
    # Nothing tested is trained: not in fine-tuning, not among the source's training compositions.
    trained = _queries(tds.train_rows())
    src_trained = _queries(np.concatenate([source.rows["train_inferred"], source.rows["train_augmented"]]))
    for split in TEST_SPLITS.values():
        assert not (_queries(rows[split]) & trained), split
        assert not (_queries(rows[split]) & src_trained), split
    assert set(np.asarray(tds.train_rows())[:, 2].tolist()) >= {-1}
    assert tds.lens_splits == {"new_old": "test_new_old", "old_new": "test_old_new", "new_new": "test_new_new",
                               "old_old": "test_old_old"}
    for split in tds.lens_splits.values():
        assert len(tds.probe_rows[split]) == len(rows[split])          # below probe_size: the whole split
    assert tds.summary()["sizes"]["train"] == len(tds.train_rows())


def test_same_seed_same_data_other_seed_other_data_and_phi(source):
    a, b = build_transfer_dataset(source, TF), build_transfer_dataset(source, TF)
    c = build_transfer_dataset(source, TransferConfig(n_new=20, n_retained=40, test_fraction=0.2, seed=1))
    assert a.name == b.name != c.name
    for k in a.rows:
        assert np.array_equal(a.rows[k], b.rows[k]), k
        assert np.array_equal(a.probe_rows[k], b.probe_rows[k]), k
    assert not np.array_equal(a.rows["new_atomic"], c.rows["new_atomic"])
    # phi downsamples the retained compositions; fractions resolve against the source's facts.
    d = build_transfer_dataset(source, TransferConfig(n_new=20, n_retained=40, test_fraction=0.2, phi=0.5))
    assert len(d.rows["train_inferred"]) == 20
    assert _queries(d.rows["train_inferred"]) <= _queries(a.rows["train_inferred"])
    e = build_transfer_dataset(source, TransferConfig(n_new=0.1, n_retained=0.25))
    n_id = int((~source.atomic_ood).sum())
    assert len(e.rows["new_atomic"]) == 12 and len(e.rows["retained_atomic"]) == round(0.25 * n_id)


def test_cache_roundtrip_and_file(source_cfg, source, tmp_path):
    built = build_transfer_dataset(source, TF)
    loaded = load_transfer_dataset(source_cfg.data, TF, cache=tmp_path)
    path = tmp_path / "datasets" / f"{built.name}.npz"
    assert loaded.name == built.name and path.exists()
    assert load_transfer_dataset(source_cfg.data, TF, cache=tmp_path) is loaded          # in-memory
    forget(built.name)
    again = load_transfer_dataset(source_cfg.data, TF, cache=tmp_path)                  # from disk
    assert again is not loaded and type(again).__name__ == "TransferDataset"
    for k in built.rows:
        assert np.array_equal(again.rows[k], built.rows[k]), k
        assert np.array_equal(again.probe_rows[k], built.probe_rows[k]), k
    assert again.lens_splits == built.lens_splits and again.transfer == built.transfer
    assert again.counts == built.counts and np.array_equal(again.atomic, built.atomic)


@pytest.mark.parametrize("overrides, key, problem", [
    ({"n_new": 61}, "transfer.n_new", "asks for 61 new facts but the source graph has 60 free"),
    ({"n_retained": 500}, "transfer.n_retained", "the source graph has 109 ID atomic facts"),
    ({"phi": 50.0}, "transfer.phi", "max phi"),
    ({"new_pairs": "replace", "n_retained": 100, "n_new": 30}, "transfer.n_new", "only 20 are not retained"),
])
def test_infeasible_transfer_is_one_line_naming_key_and_value(source, overrides, key, problem):
    with pytest.raises(ConfigError) as err:
        build_transfer_dataset(source, transfer_config_from_dict({"n_new": 20, "n_retained": 40, **overrides}))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{key}: ") and problem in msg
    assert f"(got {overrides[key.split('.')[1]]!r})" in msg


def test_full_graph_needs_replace():
    full = build_dataset(DataConfig(n_entities=20, n_relations=4, out_degree=4, phi=1.0))
    with pytest.raises(ConfigError, match=r"^transfer\.n_new: .*0 free .*new_pairs: replace.*\(got 0\.05\)$"):
        build_transfer_dataset(full, TransferConfig())
    tds = build_transfer_dataset(full, TransferConfig(new_pairs="replace"))
    assert len(tds.rows["new_atomic"]) == 4


@pytest.mark.parametrize("raw, expect", [
    ({"n_new": 0}, "transfer.n_new: must be a count >= 1 or a fraction in (0, 1) (got 0)"),
    ({"n_new": 2.5}, "transfer.n_new: a count must be a whole number"),
    ({"new_pairs": "fresh"}, "transfer.new_pairs: must be one of unused, replace (got 'fresh')"),
    ({"test_fraction": 1.0}, "transfer.test_fraction: must be in [0, 1) (got 1.0)"),
    ({"phi": -1}, "transfer.phi: must be > 0"),
    ({"n_nwe": 3}, "transfer.n_nwe: unknown key"),
    ({"probe_size": 0}, "transfer.probe_size: must be >= 1"),
])
def test_transfer_config_errors(raw, expect):
    with pytest.raises(ConfigError) as err:
        transfer_config_from_dict(raw)
    assert str(err.value).startswith(expect) and "\n" not in str(err.value)


# =========================================================================== fine-tuning

def test_finetune_starts_from_the_source_weights(source_ckpt):
    from grokray.model import load_checkpoint

    trainer, result = finetune(source_ckpt, TF, {**FT_TRAIN, "max_steps": 20})
    first, last = result.history[0], result.history[-1]
    src_model, _ = load_checkpoint(source_ckpt)
    # Step 0 is the source model on the transfer probes: it knows the retained facts, not the new ones.
    assert first["step"] == 0 and first["acc/retained_atomic"] >= 0.9 and first["acc/new_atomic"] <= 0.2
    for k in ("new_atomic", "retained_atomic", "unretained_atomic", "train", *TEST_SPLITS.values()):
        assert f"acc/{k}" in last, k
    for short in TEST_SPLITS:
        assert f"lens/{short}/bridge_found" in last and "lens/ood/bridge_found" not in last
    assert last["step"] == 20 and trainer.model.cfg == src_model.cfg
    assert last["acc/new_atomic"] > first["acc/new_atomic"]


class FakeTune:
    """The parts of a Tune session the trainables use, in process: a trial id, the last
    reported checkpoint (copied, as Tune persists it), and the reported results."""

    def __init__(self, root: Path, trial_id: str = "ft_00001", fail_after: int | None = None):
        self.root, self.trial_id, self.fail_after = root, trial_id, fail_after
        self.results: list[dict] = []
        self.saved: Path | None = None

    def install(self, monkeypatch):
        from ray import tune

        monkeypatch.setattr(tune, "get_context", lambda: type("Ctx", (), {"get_trial_id": lambda s: self.trial_id})())
        monkeypatch.setattr(tune, "get_checkpoint",
                            lambda: tune.Checkpoint.from_directory(str(self.saved)) if self.saved else None)
        monkeypatch.setattr(tune, "report", self.report)

    def report(self, metrics: dict, checkpoint=None) -> None:
        self.results.append(dict(metrics))
        if checkpoint is not None:
            dst = self.root / f"ckpt_{len(self.results):04d}"
            shutil.copytree(checkpoint.path, dst)
            self.saved = dst
        if self.fail_after is not None and len(self.results) >= self.fail_after and self.saved is not None:
            self.fail_after = None
            raise RuntimeError("worker killed")


def _source_run(client, exp_id, ckpt, *, name, label=None, sweep=None, parent=None, cfg=None, status="FINISHED",
                i=0):
    """A trial run as a sweep trial + the classifier leave it: tags, trial.yaml, the final checkpoint."""
    tags = {"grokray.kind": "trial"}
    if sweep:
        tags.update({"grokray.sweep": sweep, "grokray.trial_id": f"src{i}", "mlflow.parentRunId": parent,
                     "grokray.swept": json.dumps({"seed": i})})
    if label:
        tags["grokray.label"] = label
    run_id = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
    if ckpt is not None:
        client.log_artifact(run_id, str(ckpt), "checkpoints")
    if cfg is not None:
        d = Path(ckpt).parent.parent / f"cfg{i}"
        d.mkdir(exist_ok=True)
        (d / "trial.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
        client.log_artifact(run_id, str(d / "trial.yaml"))
    if status != "RUNNING":
        client.set_terminated(run_id, status=status)
    return run_id


def _sweep_parent(client, exp_id, name, swept):
    from mlflow.entities import Param

    run = client.create_run(exp_id, run_name=name, tags={"grokray.kind": "sweep", "grokray.sweep": name})
    client.log_batch(run.info.run_id, params=[Param("sweep.swept", ",".join(swept))])
    return run.info.run_id


def _ft_spec(name: str, swept_n_new: bool = True, **base):
    raw = {"name": name, "kind": "finetune", "source": {"sweep": "src-sweep"}, "transfer": TF.to_dict(),
           "base": {"train": FT_TRAIN, **base}}
    if swept_n_new:
        raw["parameters"] = {"transfer.n_new": [10, 20]}
    return spec_from_dict(raw)


def test_finetune_trial_logs_transfer_metrics_and_tags_and_restarts(mlflow_uri, source_cfg, source_ckpt, tmp_path,
                                                                    monkeypatch):
    client = tracking.get_client(mlflow_uri)
    exp = tracking.get_or_create_experiment(client, "tf")
    src_parent = _sweep_parent(client, exp, "src-sweep", ["seed"])
    src = _source_run(client, exp, source_ckpt, name="seed=0", label="true_grokking", sweep="src-sweep",
                      parent=src_parent, cfg=source_cfg)
    parent = _sweep_parent(client, exp, "ft-sweep", ["source_run", "transfer.n_new"])
    ctx = TrialContext(spec=_ft_spec("ft-sweep", seed=3), tracking_uri=mlflow_uri, experiment_id=exp,
                       parent_run_id=parent)
    monkeypatch.setattr(trainable_mod, "CHECKPOINT_EVERY_S", 0.0)   # a Tune checkpoint at every evaluation
    fake = FakeTune(tmp_path, fail_after=3)
    fake.install(monkeypatch)
    config = {"source_run": src, "transfer.n_new": 10}
    with pytest.raises(RuntimeError, match="worker killed"):
        run_trial(config, ctx)
    [run] = client.search_runs([exp], "tags.`grokray.kind` = 'finetune'")
    assert run.info.status == "FAILED"
    run_trial(config, ctx)                                   # the restart: same trial id, from the checkpoint

    [run] = client.search_runs([exp], "tags.`grokray.kind` = 'finetune'")
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert run.info.status == "FINISHED"
    assert tags["grokray.source_run"] == src and tags["grokray.source_label"] == "true_grokking"
    assert tags["grokray.source_sweep"] == "src-sweep" and tags["grokray.source_run_name"] == "seed=0"
    assert tags["mlflow.parentRunId"] == parent and tags["grokray.sweep"] == "ft-sweep"
    assert run.info.run_name == "true:seed=0|tf_n_new=10"
    assert params["transfer.n_new"] == "10" and params["source.run_id"] == src and params["seed"] == "3"
    assert params["data.n_entities"] == "30" and params["transfer.size.new_atomic"] == "10"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "acc/new_atomic")]
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 60     # no step twice, none lost
    for key in ("acc/test_new_old", "acc/test_old_new", "acc/test_new_new", "acc/test_old_old",
                "acc/retained_atomic", "acc/unretained_atomic", "lens/new_old/bridge_found",
                "lens/old_new/bridge_found", "transfer/t_memorize_new", "transfer/final_new_old",
                "transfer/forget_old_old"):
        assert key in metrics, key
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"transfer_curves.png", "history.json", "dataset.json"} <= arts
    assert json.loads(client.download_artifacts(run.info.run_id, "dataset.json", str(tmp_path / "d"))
                      and (tmp_path / "d" / "dataset.json").read_text())["kind"] == "transfer"
    final = fake.results[-1]
    assert final["steps_run"] == 60 and "acc/test_new_old" in final and final["mlflow_run_id"] == run.info.run_id


def test_finetune_trial_without_a_source_checkpoint_fails_its_run(mlflow_uri, tmp_path, monkeypatch):
    client = tracking.get_client(mlflow_uri)
    exp = tracking.get_or_create_experiment(client, "tf")
    src = _source_run(client, exp, None, name="no-ckpt", label="true_grokking")
    parent = _sweep_parent(client, exp, "ft-sweep", ["source_run"])
    ctx = TrialContext(spec=_ft_spec("ft-sweep", swept_n_new=False), tracking_uri=mlflow_uri, experiment_id=exp,
                       parent_run_id=parent)
    FakeTune(tmp_path).install(monkeypatch)
    with pytest.raises(ConfigError, match=r"source\.runs: run \w+ has no checkpoints"):
        run_trial({"source_run": src}, ctx)
    [run] = client.search_runs([exp], "tags.`grokray.kind` = 'finetune'")
    assert run.info.status == "FAILED" and run.data.tags["grokray.source_run"] == src


# =========================================================================== sources

@pytest.fixture
def sources_store(mlflow_uri, source_cfg, source_ckpt):
    client = tracking.get_client(mlflow_uri)
    exp = tracking.get_or_create_experiment(client, "calib")
    parent = _sweep_parent(client, exp, "calib", ["seed"])
    runs = {}
    for i, (label, status) in enumerate([("true_grokking", "FINISHED"), ("true_grokking", "FINISHED"),
                                         ("fake_grokking", "FINISHED"), ("no_grokking", "FINISHED"),
                                         (None, "FINISHED"), (None, "RUNNING")]):
        runs[i] = _source_run(client, exp, source_ckpt, name=f"seed={i}", label=label, sweep="calib", parent=parent,
                              cfg=source_cfg, status=status, i=i)
    loose = _source_run(client, exp, source_ckpt, name="loose", label="true_grokking", cfg=source_cfg, i=9)
    return {"client": client, "runs": runs, "loose": loose, "uri": mlflow_uri}


def test_resolve_sources_selection(sources_store):
    client, runs = sources_store["client"], sources_store["runs"]
    true = resolve_sources(client, sweep="calib", label="true_grokking")
    assert [s["run_id"] for s in true] == [runs[0], runs[1]]
    assert true[0]["label"] == "true_grokking" and true[0]["run_name"] == "seed=0" and true[0]["swept"] == {"seed": 0}
    assert [s["run_id"] for s in resolve_sources(client, sweep="calib", label="fake")] == [runs[2]]
    assert {s["run_id"] for s in resolve_sources(client, sweep="calib", label=["true", "fake_grokking"])} == \
        {runs[0], runs[1], runs[2]}
    assert len(resolve_sources(client, sweep="calib")) == 4                        # every labelled, finished run
    assert len(resolve_sources(client, sweep="calib", experiment="calib")) == 4
    explicit = resolve_sources(client, runs=[sources_store["loose"], runs[2]])
    assert [s["label"] for s in explicit] == ["true_grokking", "fake_grokking"]


@pytest.mark.parametrize("kwargs, expect", [
    ({"sweep": "nope"}, "source.sweep: no sweep with that name in the MLflow store at "),
    ({"sweep": "calib", "label": "fake", "experiment": "nope"}, "source.experiment: no MLflow experiment"),
    ({"sweep": "calib", "label": "maybe"}, "source.label: unknown label"),
    ({"runs": ["0123456789abcdef0123456789abcdef"]}, "source.runs[0]: no MLflow run with that id"),
    ({"sweep": "calib", "runs": ["x"]}, "source: give source.sweep or source.runs"),
    ({}, "source: give source.sweep or source.runs"),
])
def test_resolve_sources_errors(sources_store, kwargs, expect):
    with pytest.raises(ConfigError) as err:
        resolve_sources(sources_store["client"], **kwargs)
    assert str(err.value).startswith(expect) and "\n" not in str(err.value)


def test_resolve_sources_empty_selection_and_wrong_label(sources_store):
    client = sources_store["client"]
    exp = tracking.get_or_create_experiment(client, "calib")
    _sweep_parent(client, exp, "empty", ["seed"])
    with pytest.raises(ConfigError, match=r"^source\.sweep: sweep has no finished trial run labelled true_grokking "
                                          r"\(it has: no trial runs\) \(got 'empty'\)$"):
        resolve_sources(client, sweep="empty", label="true")
    # A label nobody has: the message says what is there.
    client.set_tag(sources_store["runs"][2], "grokray.label", "no_grokking")
    with pytest.raises(ConfigError, match=r"it has: no_grokking 2, running 1, true_grokking 2, unlabelled 1"):
        resolve_sources(client, sweep="calib", label="fake")
    with pytest.raises(ConfigError, match=r"^source\.runs\[0\]: run is labelled no_grokking, not true_grokking"):
        resolve_sources(client, runs=[sources_store["runs"][3]], label="true")


def test_prepare_sources_builds_the_data_and_fails_once_when_infeasible(sources_store, tmp_path):
    spec = spec_from_dict({"name": "p", "kind": "finetune", "source": {"sweep": "calib", "label": "true"},
                           "transfer": TF.to_dict()}).kind_spec
    forget("tf-")                                                  # built by earlier tests: build them here
    sources = prepare_sources(spec, sources_store["uri"], [{"transfer.n_new": 10}, {"transfer.n_new": 20}],
                              cache=tmp_path)
    assert len(sources) == 2 and sources[0]["data"]["n_entities"] == 30
    assert len(list((tmp_path / "datasets").glob("tf-*.npz"))) == 2
    with pytest.raises(ConfigError, match=r"^transfer\.n_new: asks for 100 new facts .* \(got 100\)$"):
        prepare_sources(spec, sources_store["uri"], [{"transfer.n_new": 100}], cache=tmp_path)
    at_step = spec_from_dict({"name": "p", "kind": "finetune",
                              "source": {"sweep": "calib", "label": "true", "checkpoint": 999}}).kind_spec
    with pytest.raises(ConfigError, match=r"^source\.checkpoint: run \w+ has no checkpoint at step 999 "
                                          r"\(has: 100\) \(got 999\)$"):
        prepare_sources(at_step, sources_store["uri"], cache=tmp_path)


# =========================================================================== the transfer map

def _history(t_mem: int, new_old: float, old_new: float, steps=tuple(range(0, 801, 100))) -> list[dict]:
    """Accuracies rise linearly to step 400, then hold (the last 5 evaluations: the final value)."""
    out = []
    for s in steps:
        f = min(1.0, s / 400)
        out.append({"step": s, "acc/train": min(1.0, 0.5 + f), "acc/new_atomic": 1.0 if s >= t_mem else 0.1 * f,
                    "acc/retained_atomic": 1.0, "acc/unretained_atomic": 1.0 - 0.5 * f,
                    "acc/test_new_old": new_old * f, "acc/test_old_new": old_new * f, "acc/test_new_new": 0.02 * f,
                    "acc/test_old_old": 0.8 - 0.2 * f, "lens/old_new/bridge_found": 0.9 * f,
                    "lens/new_old/bridge_found": f, "lens/new_new/bridge_found": 0.0, "lens/old_old/bridge_found": 1.0})
    return out


#: (source label, t_memorize, final new+old, final old+new, status)
RUNS = [("true_grokking", 100, 1.0, 0.0, "FINISHED"), ("true_grokking", 200, 0.9, 0.1, "FINISHED"),
        ("fake_grokking", 300, 0.4, 0.0, "FINISHED"), ("fake_grokking", 10_000, 0.3, 0.0, "RUNNING")]


@pytest.fixture(scope="module")
def map_store(_migrated_store, tmp_path_factory):
    """One store for the map tests (they only read it, or log on the parent): built once."""
    import sqlite3

    from mlflow.entities import RunTag

    db = tmp_path_factory.mktemp("map-store") / "mlflow.db"
    src, dst = sqlite3.connect(_migrated_store), sqlite3.connect(db)
    src.backup(dst)
    src.close()
    dst.close()
    mlflow_uri = f"sqlite:///{db}"
    client = tracking.get_client(mlflow_uri)
    exp = tracking.get_or_create_experiment(client, "transfer-exp")
    parent = _sweep_parent(client, exp, "tf-demo", ["source_run", "train.lr"])
    ids = []
    for i, (label, t_mem, no, on, status) in enumerate(RUNS):
        tags = {"grokray.kind": "finetune", "grokray.sweep": "tf-demo", "grokray.trial_id": f"t{i}",
                "mlflow.parentRunId": parent, "grokray.source_run": f"src{i % 2}", "grokray.source_label": label,
                "grokray.source_sweep": "calib", "grokray.source_run_name": f"seed={i}",
                "grokray.source_classifier_version": "3" if i % 2 == 0 else "2",   # src1: an older label
                "grokray.swept": json.dumps({"source_run": f"src{i % 2}", "train.lr": 0.001 * (1 + i % 2)})}
        run_id = client.create_run(exp, run_name=f"r{i}", tags=tags).info.run_id
        history = _history(t_mem, no, on)
        for h in history:
            tracking.log_metrics(client, run_id, h["step"], {k: v for k, v in h.items() if k != "step"})
        if status == "FINISHED":
            tracking.log_run_summary(client, run_id, history, "max_steps", 800, 800)
            log_transfer_summary(client, run_id, history, label)
            client.set_terminated(run_id)
        ids.append(run_id)
    client.log_batch(ids[0], tags=[RunTag("grokray.note", "x")])
    return {"uri": mlflow_uri, "client": client, "parent": parent, "ids": ids}


def test_transfer_map_frame(map_store):
    df = transfer_map("tf-demo", map_store["uri"])
    assert df["run_id"].tolist() == map_store["ids"]
    assert df.attrs["params"] == ["train.lr"] and df.attrs["parent_run_id"] == map_store["parent"]
    assert df["source_label"].tolist() == [r[0] for r in RUNS]
    assert df["source_run"].tolist() == ["src0", "src1", "src0", "src1"] and df["train.lr"].tolist()[:2] == [0.001,
                                                                                                          0.002]
    assert df["t_memorize_new"].tolist()[:3] == [100.0, 200.0, 300.0] and math.isnan(df["t_memorize_new"][3])
    assert df["final_new_old"].tolist() == pytest.approx([1.0, 0.9, 0.4, 0.3])      # the running one: from histories
    assert df["max_old_new"].tolist() == pytest.approx([0.0, 0.1, 0.0, 0.0])
    assert df["forget_old_old"].tolist() == pytest.approx([0.2] * 4)
    assert df["forget_unretained"].tolist() == pytest.approx([0.5] * 4)
    assert df["bridge_old_new"].tolist() == pytest.approx([0.9] * 4)
    assert df["status"].tolist() == ["FINISHED"] * 3 + ["RUNNING"] and df["steps_run"].tolist() == [800] * 4
    # each source's classifier version, and a flag on a source labelled by an older classifier than today's
    assert df["source_classifier_version"].tolist() == ["3", "2", "3", "2"]
    assert df["source_label_stale"].tolist() == [False, True, False, True]
    assert ("warning: 1 source(s) labelled by classifier 2, not today's v3" in format_transfer_table(df))
    assert "warning" not in format_transfer_table(df[~df["source_label_stale"]])
    with pytest.raises(LookupError, match="no sweep named 'nope'"):
        transfer_map("nope", map_store["uri"])


def test_transfer_table_png_and_parent_artifacts(map_store, tmp_path):
    df = transfer_map("tf-demo", map_store["uri"])
    text = format_transfer_table(df)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["source", "runs", "memorized", "t_mem"]
    true, fake = lines[1].split(), lines[2].split()
    assert true[:4] == ["true", "2", "2/2", "150"] and true[5] == "0.95" and true[6] == "0.05"
    assert fake[:4] == ["fake", "2", "1/2", "300"] and fake[5] == "0.35"
    png = plot_transfer_curves({"true_grokking": [_history(100, 1, 0)], "fake_grokking": [_history(300, 0.4, 0)]},
                               tmp_path / "c.png")
    assert Path(png).read_bytes()[:8] == PNG_MAGIC
    log_transfer_map(map_store["uri"], map_store["parent"], "tf-demo")
    arts = {a.path for a in map_store["client"].list_artifacts(map_store["parent"], "transfer_map")}
    assert arts == {"transfer_map/transfer_map.csv", "transfer_map/transfer_map.txt",
                    "transfer_map/transfer_curves.png"}


def test_transfer_table_of_no_runs():
    import pandas as pd

    text = format_transfer_table(pd.DataFrame(columns=[*MAP_COLUMNS, *SUMMARY_KEYS, *TAIL_COLUMNS]))
    assert "(no finetune runs)" in text


def test_transfer_map_command(map_store, tmp_path, capsys):
    args = ["transfer-map", "tf-demo", "--png", str(tmp_path / "t.png"), "--csv", str(tmp_path / "t.csv"),
            "--tracking-uri", map_store["uri"]]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("tf-demo: 4 finetune run(s)\nsource") and "true " in out
    assert (tmp_path / "t.png").read_bytes()[:8] == PNG_MAGIC
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 5
    assert main(["transfer-map", "tf-demo", "--json", "--png", str(tmp_path / "u.png"),
                 "--tracking-uri", map_store["uri"]]) == 0
    assert [json.loads(x)["source_label"] for x in capsys.readouterr().out.splitlines()] == [r[0] for r in RUNS]
    assert main(["transfer-map", "nope", "--tracking-uri", map_store["uri"]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("grokray: error: no sweep named 'nope'") and err.count("\n") == 1


def test_transfer_summary_rules():
    h = [{"step": 0, "acc/new_atomic": 0.0}, {"step": 10, "acc/new_atomic": 1.0}, {"step": 20, "acc/new_atomic": 0.5},
         {"step": 30, "acc/new_atomic": 0.995}, {"step": 40, "acc/new_atomic": 1.0}]
    s = transfer_summary(h)
    assert s["t_memorize_new"] == 30.0                     # a one-evaluation spike is not sustained
    assert math.isnan(s["final_new_old"]) and s["init_new_atomic"] == 0.0 and s["max_new_atomic"] == 1.0
    assert s["final_new_atomic"] == 0.995                  # median of the last 5: a spike at the end is not final


# =========================================================================== the spec section

GOOD = {"name": "tf", "kind": "finetune", "source": {"sweep": "calibration", "label": "true_grokking"},
        "transfer": {"n_new": 0.05, "new_pairs": "replace"}, "parameters": {"transfer.n_new": [0.05, 0.1],
                                                                           "train.lr": [1e-3]}}


def test_parse_finetune_good_and_shipped_spec():
    spec = spec_from_dict(GOOD, source="s.yaml").kind_spec
    kind = KINDS["finetune"]
    assert spec.source.sweep == "calibration" and spec.source.label == ["true_grokking"]
    assert spec.source.checkpoint == "last" and spec.transfer.new_pairs == "replace"
    assert spec.transfer_keys == ("transfer.n_new",) and kind.owns("transfer.n_new") and not kind.owns("train.lr")
    assert spec.transfer_config({"transfer.n_new": 0.1, "train.lr": 1.0}).n_new == 0.1
    shipped = load_spec(ROOT / "sweeps" / "transfer.yaml")
    assert shipped.kind_spec.source.sweep == ("calibration", "calibration-nonshared") and shipped.kind == "finetune"
    assert shipped.budget >= 1


@pytest.mark.parametrize("patch, expect", [
    ({"kind": "finetun"}, "kind: must be one of trial, finetune (got 'finetun')"),
    ({"source": None}, "source: kind: finetune needs a mapping"),
    ({"source": {"sweep": "calibration", "lable": "true"}}, "source.lable: unknown key; known keys: sweep, label"),
    ({"source": {"sweep": "calibration", "runs": ["a"]}}, "source: give sweep or runs (one of the two)"),
    ({"source": {"sweep": "bad name!"}}, "source.sweep: must be a sweep name (or a list of them) (got 'bad name!')"),
    ({"source": {"sweep": ["calibration", "bad name!"]}},
     "source.sweep[1]: must be a sweep name (or a list of them) (got 'bad name!')"),
    ({"source": {"runs": []}}, "source.runs: must be a non-empty list of MLflow run ids (got [])"),
    ({"source": {"runs": ["ab-c"]}}, "source.runs[0]: must be an MLflow run id (got 'ab-c')"),
    ({"source": {"sweep": "calibration", "label": "sort_of"}}, "source.label: unknown label"),
    ({"source": {"sweep": "calibration", "checkpoint": "first"}},
     "source.checkpoint: must be last or a step (an integer in [0, 1,000,000,000]) (got 'first')"),
    ({"transfer": {"n_new": -3}}, "transfer.n_new: must be a count >= 1 or a fraction in (0, 1) (got -3)"),
    ({"transfer": {"seeed": 1}}, "transfer.seeed: unknown key"),
    ({"parameters": {"transfer.n_new": [0.05, 1.5]}},
     "parameters.transfer.n_new.values[1]: a count must be a whole number"),
    ({"parameters": {"transfer.nnew": [1, 2]}}, "parameters.transfer.nnew: unknown key"),
    ({"parameters": {"data.phi": [3.6]}}, "parameters.data.phi: a finetune sweep takes data and model from"),
    ({"parameters": {"source_run": ["x"]}}, "parameters.source_run: source_run is set from source:"),
    ({"stopping": {"memorize_by": 10}}, "stopping: not allowed with kind: finetune"),
    ({"classifier": {"enabled": True}}, "classifier: not allowed with kind: finetune"),
])
def test_parse_finetune_errors_are_one_line_with_file_key_value(patch, expect):
    raw = {**GOOD, **patch}
    with pytest.raises(ConfigError) as err:
        spec_from_dict(raw, source="sweeps/x.yaml")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"sweeps/x.yaml: {expect}"), msg


def test_sweep_spec_reads_the_finetune_section():
    spec = spec_from_dict(GOOD, source="s.yaml")
    kind = KINDS["finetune"]
    assert spec.kind == "finetune" and spec.kind_spec.source.sweep == "calibration" and not spec.classifier.enabled
    assert kind.transfer_grid(spec) == [{"transfer.n_new": 0.05}, {"transfer.n_new": 0.1}]
    assert kind.trial_keys(spec) == ["source_run", "transfer.n_new"]
    with pytest.raises(ConfigError, match=r"^s\.yaml: parameters\.transfer\.n_new\.values\[1\]: a count must be"):
        spec_from_dict({**GOOD, "parameters": {"transfer.n_new": [0.05, 2.5]}}, source="s.yaml")
    with pytest.raises(ConfigError, match=r"^s\.yaml: transfer: only for kind: finetune"):
        spec_from_dict({"name": "x", "transfer": {"n_new": 3}}, source="s.yaml")
    with pytest.raises(ConfigError, match=r"^kind: must be one of trial, finetune \(got 'fine'\)"):
        spec_from_dict({"name": "x", "kind": "fine"})
    shipped = load_spec(ROOT / "sweeps" / "transfer.yaml")
    assert shipped.kind_spec.transfer.new_pairs == "replace" and shipped.budget == 3000
