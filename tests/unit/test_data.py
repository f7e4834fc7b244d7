"""Generator invariants: counts, fact-level OOD split, no test leakage, augmentation, determinism, cache."""
import multiprocessing as mp
import os

import numpy as np
import pytest

from grokray.config import ConfigError, DataConfig, HopInjection, load_trial_config
from grokray.data import build_dataset, data_hash, load_dataset
from grokray.data.augment import augment
from grokray.data.graph import build_graph, split

CFG = DataConfig(n_entities=80, n_relations=12, out_degree=8, ood_fraction=0.1, phi=4.0, seed=3)


def queries(rows):
    return {tuple(q) for q in np.asarray(rows)[:, :3].tolist()}


def ood_set(ds):
    return {(h, r) for h, r, _ in ds.atomic[ds.atomic_ood].tolist()}


def test_atomic_counts_and_distinct_relations_per_head():
    g = build_graph(CFG)
    assert g.atomic.shape == (80 * 8, 3)
    for h in range(80):
        rels = g.atomic[g.atomic[:, 0] == h, 1]
        assert len(rels) == 8 and len(set(rels.tolist())) == 8
    assert int(g.atomic_ood.sum()) == round(0.1 * 640)
    assert len(g.compositions) == 640 * 8


def test_ood_split_is_by_fact_not_entity():
    g = build_graph(CFG)
    ood_heads = set(g.atomic[g.atomic_ood, 0].tolist())
    id_heads = set(g.atomic[~g.atomic_ood, 0].tolist())
    assert len(ood_heads & id_heads) > 10  # the same head has ID and OOD facts


def test_split_sizes_and_composition_hops():
    ds = build_dataset(CFG)
    s = ds.sizes()
    n_id = s["id_atomic"]
    assert s["train_inferred"] == round(CFG.phi * n_id)
    assert s["id_atomic"] + s["ood_atomic"] == s["atomic"] == 640
    ood = ood_set(ds)
    tail = ds.tail
    for name, want_ood in [("train_inferred", (False, False)), ("test_inferred_id", (False, False)),
                           ("test_inferred_ood", (True, True))]:
        for h, r1, r2, b, t in ds.rows[name].tolist():
            assert tail[h, r1] == b and tail[b, r2] == t  # every composition keeps its true bridge
            assert ((h, r1) in ood, (b, r2) in ood) == want_ood


def test_no_test_composition_in_training():
    for aug in ["none", "both_full", "hop1_full", "hop2_full", "both_half"]:
        ds = build_dataset(DataConfig(**{**CFG.__dict__, "augmentation": aug}))
        train = queries(ds.train_rows()[ds.train_rows()[:, 2] >= 0])
        assert not train & queries(ds.rows["test_inferred_id"])
        assert not train & queries(ds.rows["test_inferred_ood"])
        assert len(train) == len(ds.rows["train_inferred"]) + len(ds.rows["train_augmented"])  # deduplicated


@pytest.mark.parametrize("preset, hop1_added, hop2_added", [
    ("none", False, False), ("hop1_full", True, False), ("hop2_full", False, True), ("both_full", True, True),
    ("both_half", True, True)])
def test_augmentation_adds_only_one_ood_hop_queries(preset, hop1_added, hop2_added):
    ds = build_dataset(DataConfig(**{**CFG.__dict__, "augmentation": preset}))
    ood = ood_set(ds)
    added = ds.rows["train_augmented"]
    hop1 = np.array([(h, r1) in ood for h, r1, *_ in added.tolist()], dtype=bool)
    hop2 = np.array([(b, r2) in ood for _, _, r2, b, _ in added.tolist()], dtype=bool)
    assert not (hop1 & hop2).any()            # never a both-OOD query
    assert (hop1 | hop2).all()                # never a plain ID composition
    assert hop1.any() == hop1_added and hop2.any() == hop2_added
    # Injected hops are exactly the OOD hop facts of the OOD test compositions.
    tests = ds.rows["test_inferred_ood"]
    assert {(h, r1) for h, r1 in added[hop1][:, :2].tolist()} <= {(h, r1) for h, r1 in tests[:, :2].tolist()}
    assert {(b, r2) for _, _, r2, b, _ in added[hop2].tolist()} <= {(b, r2) for _, _, r2, b, _ in tests.tolist()}


def test_injection_ratio_and_k():
    g = build_graph(CFG, np.random.default_rng(0))
    sp = split(g, CFG, np.random.default_rng(1))
    tests = g.compositions[sp.test_inferred_ood]
    n_hop1_facts = len({(h, r1) for h, r1 in tests[:, :2].tolist()})
    for ratio, k in [(1.0, 100), (0.5, 2), (1.0, 1)]:
        added = augment(g, sp.test_inferred_ood, HopInjection(ratio, k), HopInjection(0, 0), np.random.default_rng(2))
        per_fact = {}
        for h, r1, *_ in added.tolist():
            per_fact[(h, r1)] = per_fact.get((h, r1), 0) + 1
        assert len(per_fact) <= round(ratio * n_hop1_facts) and max(per_fact.values()) <= k
        if k == 100:  # "up to k": every ID continuation of the bridge
            assert len(per_fact) == n_hop1_facts


def test_same_seed_same_data_other_seed_other_data():
    a, b = build_dataset(CFG), build_dataset(CFG)
    for k in a.rows:
        np.testing.assert_array_equal(a.rows[k], b.rows[k])
    np.testing.assert_array_equal(a.probe_rows["train"], b.probe_rows["train"])
    c = build_dataset(DataConfig(**{**CFG.__dict__, "seed": 4}))
    assert not np.array_equal(a.atomic, c.atomic)
    assert a.name == b.name != c.name


def test_hash_resolves_presets():
    # presets follow He et al.'s equalized supervision: k = round(phi) (full) per injected OOD fact
    explicit = {"hop1": {"ratio": 1.0, "k": 7}, "hop2": {"ratio": 1.0, "k": 7}}
    assert data_hash(DataConfig(augmentation="both_full")) == data_hash(DataConfig(augmentation=explicit))
    at18 = {"hop1": {"ratio": 1.0, "k": 18}, "hop2": {"ratio": 1.0, "k": 18}}
    assert data_hash(DataConfig(phi=18.0, augmentation="both_full")) == data_hash(DataConfig(phi=18.0,
                                                                                             augmentation=at18))
    assert data_hash(DataConfig(augmentation="none")) != data_hash(DataConfig(augmentation="both_full"))


@pytest.mark.parametrize("preset, phi, k1, k2", [("both_full", 7.2, 7, 7), ("both_half", 7.2, 4, 4),
                                                  ("hop2_full", 5.4, 0, 5), ("hop1_full", 3.6, 4, 0)])
def test_presets_inject_at_most_k_equal_to_phi_per_ood_fact(preset, phi, k1, k2):
    ds = build_dataset(DataConfig(n_entities=60, n_relations=12, out_degree=10, ood_fraction=0.15, phi=phi,
                                  augmentation=preset))
    added = ds.rows["train_augmented"]
    ood = {tuple(f) for f in ds.rows["ood_atomic"][:, [0, 1]].tolist()}
    hop1 = [tuple(r) for r in added[:, [0, 1]].tolist() if tuple(r) in ood]      # (h, r1) is an OOD fact
    hop2 = [tuple(r) for r in added[:, [3, 2]].tolist() if tuple(r) in ood]      # (b, r2) is an OOD fact
    counts1 = np.unique(np.array(hop1).reshape(-1, 2), axis=0, return_counts=True)[1] if hop1 else np.zeros(0)
    counts2 = np.unique(np.array(hop2).reshape(-1, 2), axis=0, return_counts=True)[1] if hop2 else np.zeros(0)
    assert (counts1.max(initial=0), counts2.max(initial=0)) == (k1, k2)   # capped by k, reached where edges allow


def test_probes_are_capped_samples():
    ds = build_dataset(DataConfig(**{**CFG.__dict__, "probe_size": 50}))
    assert all(len(v) <= 50 for v in ds.probe_rows.values())
    assert queries(ds.probe_rows["train_inferred"]) <= queries(ds.rows["train_inferred"])


@pytest.mark.parametrize("override, key", [
    ("data.phi=30", "data.phi"), ("data.out_degree=40", "data.out_degree")])
def test_impossible_configs(override, key):
    with pytest.raises(ConfigError) as err:
        cfg = load_trial_config(None, [override])
        build_dataset(cfg.data)
    assert str(err.value).startswith(f"{key}:") and "got" in str(err.value)


def test_encoding():
    ds = build_dataset(CFG)
    batch = ds.encode(np.concatenate([ds.rows["id_atomic"][:2], ds.rows["train_inferred"][:2]]))
    assert batch.tokens.shape == (4, 3)
    assert batch.answer_pos.tolist() == [1, 1, 2, 2]
    assert (batch.tokens[:2, 2] == ds.pad).all()
    assert (batch.tokens[:, 1] >= ds.n_entities).all() and (batch.tokens[:, 0] < ds.n_entities).all()
    assert batch.bridge[:2].tolist() == [-1, -1] and (batch.bridge[2:] >= 0).all()


def _load_in_child(cache, q):
    ds = load_dataset(CFG, cache=cache)
    q.put((ds.name, int(ds.rows["train_inferred"].sum())))


def test_cache_generates_once_and_is_race_safe(tmp_path):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_load_in_child, args=(str(tmp_path), q)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    results = [q.get(timeout=5) for _ in procs]
    assert len(set(results)) == 1
    files = sorted(os.listdir(tmp_path / "datasets"))
    assert files == [f"{results[0][0]}.lock", f"{results[0][0]}.npz"]  # no temp files left behind
    again = load_dataset(CFG, cache=tmp_path)
    assert int(again.rows["train_inferred"].sum()) == results[0][1]


def test_the_negative_control_trains_the_ood_queries_without_their_first_hops():
    from grokray.config import DataConfig
    from grokray.data import build_dataset
    from grokray.data.dataset import data_hash
    from grokray.data.graph import H, R1

    plain_cfg = DataConfig(n_entities=60, n_relations=10, out_degree=8, phi=3.0)
    ctl = build_dataset(DataConfig(n_entities=60, n_relations=10, out_degree=8, phi=3.0, memorize_ood_queries=500))
    plain = build_dataset(plain_cfg)
    ood = ctl.rows["test_inferred_ood"]
    assert len(ood) > 0 and (ctl.rows["train_ood_queries"] == ood).all()
    firsts = {tuple(x) for x in ood[:, [H, R1]].tolist()}
    trained = ctl.train_rows()
    atomic = trained[trained[:, 2] < 0]
    assert not firsts & {tuple(x) for x in atomic[:, [H, R1]].tolist()}      # no first hop is trained
    assert {tuple(x) for x in ctl.rows["withheld_hop1"][:, [H, R1]].tolist()} == firsts
    assert (trained[-len(ood):] == ood).all() and ctl.late_rows() == len(ood)   # last, so they can come late
    assert ctl.rows_in_play(499) == len(trained) - len(ood) and ctl.rows_in_play(500) == len(trained)
    # everything else is the plain dataset; its name is unchanged by the new (unset) key
    for k in ("id_atomic", "train_inferred", "train_augmented", "test_inferred_id", "test_inferred_ood"):
        assert (ctl.rows[k] == plain.rows[k]).all(), k
    assert plain.late_rows() == 0 and plain.rows_in_play(0) == len(plain.train_rows())
    assert data_hash(plain_cfg) == data_hash(DataConfig(n_entities=60, n_relations=10, out_degree=8, phi=3.0))
    assert data_hash(plain_cfg) != ctl.name
