"""experiments/paths_pairs.py: which runs make a matched pair, and which checkpoint matches."""
import pandas as pd
import pytest

from experiments import paths_pairs as pp



def _runs(rows):
    cols = ["data.seed", "data.phi", "data.augmentation", "train.weight_decay", "label", "t_generalize",
            "final_ood_acc", "final_id_acc"]
    return pd.DataFrame([dict(zip(cols, r)) for r in rows])


@pytest.mark.parametrize("rows, want", [
    # no B in the group (the one that did not generalize OOD does not compose ID either)
    ([(0, 7.2, "both_full", 1.0, "true_grokking", 6000, 0.9, 0.95),
      (0, 7.2, "both_full", 0.3, "no_grokking", None, 0.05, 0.4)], []),
    # different data (phi) never pairs under the default match
    ([(0, 7.2, "both_full", 1.0, "true_grokking", 6000, 0.9, 0.95),
      (0, 18.0, "both_full", 0.3, "no_grokking", None, 0.05, 0.9)], []),
    # a true_grokking A is preferred to a comprehension one; the B with the highest ID wins
    ([(1, 7.2, "none", 1.0, "no_grokking", 900, 0.6, 0.99),
      (1, 7.2, "none", 0.3, "true_grokking", 7000, 0.8, 0.9),
      (1, 7.2, "none", 0.1, "no_grokking", None, 0.02, 0.85),
      (1, 7.2, "none", 3.0, "no_grokking", None, 0.02, 0.95)], [(0.3, 3.0)]),
    # a B whose OOD is high but never held (no t_generalize) is not "did not grok OOD"
    ([(0, 5.4, "hop2_full", 1.0, "true_grokking", 6000, 0.9, 0.95),
      (0, 5.4, "hop2_full", 0.3, "no_grokking", None, 0.45, 0.9)], []),
])
def test_pairs_share_the_data_and_split_on_ood(rows, want):
    got = [(float(a["train.weight_decay"]), float(b["train.weight_decay"])) for a, b in pp.pick_pairs(_runs(rows))]
    assert got == want


def test_a_looser_match_pairs_across_augmentations_on_one_graph():
    runs = _runs([(0, 18.0, "both_full", 0.1, "no_grokking", 4000, 0.8, 0.9),
                  (0, 18.0, "none", 0.1, "no_grokking", None, 0.01, 0.95)])
    assert pp.pick_pairs(runs) == []
    (a, b), = pp.pick_pairs(runs, match=["data.seed"])
    assert (a["data.augmentation"], b["data.augmentation"]) == ("both_full", "none")


def test_the_matched_checkpoint_is_the_closest_in_id_accuracy():
    history = [(0, 0.0), (1000, 0.2), (2000, 0.6), (3000, 0.85), (4000, 0.95)]
    assert pp.matched_step(history, [1000, 2000, 4000], 0.9) == 4000
    assert pp.matched_step(history, [1000, 2000, 4000], 0.5) == 2000
    assert pp.matched_step(history, [1000, 3000], 0.85) == 3000
