"""``method: boundary`` on Ray Tune: the adaptive phase-boundary search as a Tune searcher.

:class:`BoundarySearcher` runs :class:`grokray.sweep.boundary.FacetedSearch` over the spec's numeric
grid values (refined) within every combination of its categorical values and graphs (facets,
searched separately), each point once per initialisation seed (replicates: seeds that disagree make
the point mixed), proposing at most ``num_samples`` trials. It learns each trial's label from the trial's
final Tune result (:func:`grokray.sweep.boundary.behaviour_label`: Liu et al.'s phase from its curves,
grokking / comprehension / not_generalized / confusion / diverged / failed): the classifier's
true / fake / no arrive later, from its actor,
and are not waited for. Every proposed config carries why it was proposed
(:data:`~grokray.sweep.boundary.REASON_KEY`, tagged on the trial's run as
``grokray.search_reason``). The state is plain data: Tune saves it with the experiment, so
``grokray sweep resume`` continues the same search. Concurrency is Tune's ``max_concurrent``: the
searcher proposes only what its open cells need and waits (``None``) for labels in flight.
"""
from __future__ import annotations

import itertools
import json
from typing import Any

from ray.tune.search import Searcher

from grokray.sweep.boundary import REASON_KEY, BoundarySearch, FacetedSearch, Point, behaviour_label


class BoundarySearcher(Searcher):
    def __init__(self, axes: dict[str, list], facets: dict[str, list], constants: dict[str, Any], budget: int,
                 split: str = "ood", generalize_acc: float = 0.5, min_coarse: int = 3, island_probe: int = 0,
                 replicates: dict[str, list] | None = None):
        super().__init__()
        self.axes, self.facets, self.constants = dict(axes), dict(facets), dict(constants)
        # every proposed point runs once per replicate value (init seeds); disagreeing replicates make it mixed
        self.replicates = [dict(zip((replicates or {}).keys(), c)) for c in itertools.product(*(replicates or {}).values())]
        self.queue: list[tuple[int, Point, dict]] = []
        self.budget, self.split, self.generalize_acc = int(budget), split, float(generalize_acc)
        self.combos = [tuple(c) for c in itertools.product(*self.facets.values())] or [()]
        self.search = FacetedSearch(list(range(len(self.combos))), tuple(len(v) for v in self.axes.values()),
                                    min_coarse=min_coarse, island_probe=island_probe)
        self.trials: dict[str, tuple[int, Point]] = {}
        self.proposed = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str):
        if self.proposed >= self.budget:
            return None if self.trials else Searcher.FINISHED
        if not self.queue:
            nxt = self.search.propose()
            if nxt is None:
                return None if self.trials else Searcher.FINISHED
            self.queue = [(nxt[0], nxt[1], rep) for rep in (self.replicates or [{}])]
        facet, point, rep = self.queue.pop(0)
        self.trials[trial_id] = (facet, point)
        self.proposed += 1
        config = dict(self.constants)
        config.update(rep)
        config.update({k: v[i] for (k, v), i in zip(self.axes.items(), point)})
        config.update(dict(zip(self.facets, self.combos[facet])))
        why = self.search.searches[facet].reasons.get(point, "")
        config[REASON_KEY] = f"trial {self.proposed}/{self.budget}: {why}"
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        facet, point = self.trials.pop(trial_id, (None, None))
        if facet is None:
            return
        label = "failed" if error else behaviour_label(result, self.generalize_acc, self.split)
        self.search.observe(facet, point, label)

    def get_state(self) -> dict:
        return {"searches": {str(f): s.state_dict() for f, s in self.search.searches.items()},
                "turn": self.search._turn, "trials": {t: [f, list(p)] for t, (f, p) in self.trials.items()},
                "proposed": self.proposed, "queue": [[f, list(p), rep] for f, p, rep in self.queue]}

    def set_state(self, state: dict) -> None:
        self.search.searches = {int(f): BoundarySearch.from_state(s) for f, s in state["searches"].items()}
        self.search._turn = state["turn"]
        self.trials = {t: (f, tuple(p)) for t, (f, p) in state["trials"].items()}
        self.proposed = state["proposed"]
        self.queue = [(f, tuple(p), rep) for f, p, rep in state.get("queue", [])]

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as fh:
            json.dump(self.get_state(), fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as fh:
            self.set_state(json.load(fh))


def searcher_for(spec: Any) -> BoundarySearcher:
    """The searcher of a ``method: boundary`` spec, as ``grokray sweep run`` builds it (and the
    replay benchmark, so both run the same search): the spec's axes, facets, replicates, budget,
    split (the classifier's, whose phase the map shows) and ``boundary:`` settings."""
    axes, facets, constants, replicates = spec.boundary_axes()
    split = spec.map_split
    return BoundarySearcher(axes, facets, constants, budget=spec.num_samples, split=split, replicates=replicates,
                            generalize_acc=spec.stopping.params.generalize_acc(split), **spec.boundary)
