"""Run verdicts: one pure function from a run's metric history (+ circuit evidence) to a label.

:func:`classify_history` reads what the trainer logs at every evaluation (``acc/train``,
``acc/test_inferred_<split>``, ``train_loss``, ``param_norm``, the lens metrics, the circuit
curves ``circuit/interchange/<split>``) plus the end-of-run evidence
(:mod:`grokray.circuits.evidence`) and returns a :class:`Verdict`. The words mean what a
grokking researcher reads in them:

* ``true_grokking``: the run generalized **late** (``t_generalize / t_memorize >
  grokking_delay``: Power et al., Liu et al.: grokking is generalization long after the training
  set is fit), held it to the end, **above what the best shortcut explains**, and its answers
  are **mediated by the bridge** (the criterion says so);
* ``fake_grokking`` (He et al.): generalized late and held above the shortcut, but the answers
  are **not** mediated by a bridge: the criterion's test fails at every depth and position
  searched, or the model has no intermediate state (one block application);
* ``no_grokking``: everything else; the detail says which: ``comprehension`` (generalized with
  memorization, no delay: Liu et al.'s comprehension phase; its mechanism is still reported),
  ``shortcut`` (held level within reach of the best shortcut: no generalization beyond the
  data's prior, whatever the mechanism), ``unmemorized``, ``transient``, ``semi``,
  ``memorization``, ``censored``, ``confusion``, ``diverged``.

Criteria (:mod:`grokray.criteria`): every registered criterion labels the run
(``Verdict.labels[name]``, mediation in ``Verdict.mediated[name]``); ``criterion`` picks the one
that drives ``label`` (default ``interchange``, the basis-free test; ``lens`` is He et al.'s
measurement with grokray's threshold).

``phase`` is Liu et al.'s phase of the run (``grokking``, ``comprehension``, ``memorization``,
``confusion``, or ``diverged``); ``determined`` is False for a run whose outcome its budget
did not settle (``semi``, ``censored``, or a memorizing run whose target accuracy was still
rising at the end): its confidence is capped, the phase map marks it.

The rule, step by step:

1. Clean (:func:`grokray.history.clean_history`); the run diverged if ``stop_reason ==
   "diverged"`` or any ``train_loss`` / ``param_norm`` is non-finite.
2. Smooth the target accuracy with a running median over ``smooth_window`` evaluations.
3. ``t_memorize``: first step from which ``acc/train >= memorize_acc`` holds for
   ``sustain`` evaluations.
4. **Generalization must hold.** ``t_generalize`` is the start of the final stretch over
   which the smoothed target accuracy stays at or above ``generalize_acc_<split>`` to the
   end of the run (:func:`grokray.history.held_from`). A sustained crossing that falls back
   is a ``transient`` (recorded as ``t_transient``), never generalization.
5. Behaviour: diverged -> ``diverged``; generalized -> ``unmemorized`` if train never held
   ``memorize_acc``, else ``comprehension`` if ``t_generalize / t_memorize <=
   grokking_delay``, else ``grokking``; not generalized: a transient -> ``transient``;
   never memorized -> ``confusion``; a late rise to ``semi_acc_<split>`` -> ``semi``; ran
   ``memorization_ratio x t_memorize`` -> ``memorization``; else ``censored``.
6. Shortcut (generalized runs). The best rule that never composes scores ``s``
   (:mod:`grokray.data.shortcuts`); the held level must close at least ``shortcut_excess`` of
   the shortcut's errors: ``level >= s + shortcut_excess x (1 - s)``. A bar on the remaining
   headroom stays below 1.0 however good the shortcut is (an additive margin would call a
   perfect model fake once ``s`` is near 1).
7. Mechanism (generalized runs): every criterion judges mediation
   (:func:`grokray.criteria.judge_all`). Evidence read from fewer than ``min_evidence_n``
   correct answers is insufficient (``None``): a late, above-shortcut run without sufficient
   evidence is ``true_grokking`` by behaviour only, its confidence capped at
   ``no_circuit_cap`` (fake grokking is a claim that needs evidence).
8. ``t_circuit``: the first step from which the logged interchange curve
   (``circuit/interchange/<split>``, smoothed like the target) holds ``interchange_min`` for
   ``sustain`` evaluations (when the bridge started to mediate answers), beside ``t_generalize``.
9. Confidence: every decisive comparison contributes the probability that the measured rate
   is on its observed side of the threshold, ``Phi(|value - threshold| / se)`` with the
   binomial ``se = sqrt(t (1 - t) / n)`` over the ``n`` queries it was measured on;
   comparisons of train accuracy and of step ratios use ``0.5 + 0.5 tanh(|margin| / scale)``
   (:mod:`grokray.confidence`). The verdict takes the minimum, times ``n_evals / min_evals``
   for a short curve; an undetermined verdict is capped at ``undetermined_cap``.
   ``Verdict.margins`` lists the contributions. A ranking score, not a calibrated probability.

Example:
    >>> from grokray.verdict import classify_history
    >>> steps = [0, 100, 300, 1000, 2000, 3000, 5000, 10000, 20000, 30000]
    >>> history = [{"step": s, "acc/train": 1.0 if s >= 1000 else 0.1,
    ...             "acc/test_inferred_ood": 0.8 if s >= 10000 else 0.05} for s in steps]
    >>> ev = {"interchange": 0.9, "interchange_n": 200, "bridge_given_correct": 0.97, "lens_n_correct": 200,
    ...       "n_target": 300, "shortcut_best": 0.05}
    >>> v = classify_history(history, max_steps=30000, evidence=ev)
    >>> v.label, v.detail, v.phase, v.t_memorize, v.t_generalize, v.delay_ratio, v.censored
    ('true_grokking', 'grokking, lens-visible', 'grokking', 1000, 10000, 10.0, False)
    >>> v.labels["lens"], round(v.confidence, 2)
    ('true_grokking', 0.98)
    >>> fast = [{**h, "acc/test_inferred_ood": 0.8 if h["step"] >= 1000 else 0.05} for h in history]
    >>> w = classify_history(fast, max_steps=30000, evidence=ev)   # generalized with memorization
    >>> w.label, w.detail, w.phase
    ('no_grokking', 'comprehension, lens-visible', 'comprehension')
    >>> u = classify_history(history[:4], max_steps=30000)   # memorized, then stopped: too short
    >>> u.behaviour, u.determined
    ('censored', False)
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, NamedTuple

import numpy as np

from grokray.confidence import margin_confidence, rate_confidence
from grokray.criteria import CRITERIA, DEFAULT_CRITERION, REGISTRY, criterion_evidence_keys, judge_all
from grokray.history import (clean_history, divergence_step, first_sustained, held_from, is_number, metric_series,
                             running_median, step_ratio, sustained_level)
from grokray.jsonsafe import plain

__all__ = ["CLASSIFIER_VERSION", "LABELS", "SHORT_LABELS", "BEHAVIOURS", "GENERALIZED", "PHASES", "SPLITS",
           "CRITERIA", "EVIDENCE_MODES", "EVIDENCE_KEYS", "Verdict", "VerdictParams", "classify_history",
           "label_name", "margin_confidence", "rate_confidence", "liu_phase"]

#: Bumped whenever a rule or a default changes what a history is labelled.
#: 2: generalization must hold to the end; shortcut baselines; the interchange test decides
#: true vs fake (the lens rule is kept as label_lens); binomial confidence.
#: 3: grokking must be late (t_generalize / t_memorize > grokking_delay), else no_grokking
#: (comprehension); a level within reach of the shortcut is no_grokking (shortcut), not fake;
#: the shortcut bar is on the remaining headroom; undetermined runs (semi, censored, still
#: rising) capped; labels keyed by criterion (grokray.criteria); t_circuit.
CLASSIFIER_VERSION = "3"
#: The labels, in the order of the claim they make, strongest first.
LABELS = ("true_grokking", "fake_grokking", "no_grokking")
#: Short forms (tables, run names, ``--label true``); ``None`` (not labelled yet) reads ``?``.
SHORT_LABELS = {"true_grokking": "true", "fake_grokking": "fake", "no_grokking": "no", None: "?"}
BEHAVIOURS = ("grokking", "comprehension", "unmemorized", "transient", "semi", "memorization", "censored",
              "confusion", "diverged")
#: Behaviours that mean "generalized" (late or not): the runs whose mechanism is examined.
GENERALIZED = ("grokking", "comprehension", "unmemorized")
#: Liu et al.'s (2022) phases, and the behaviour that falls in each.
PHASES = {"grokking": ("grokking",), "comprehension": ("comprehension", "unmemorized"),
          "memorization": ("memorization", "semi", "censored", "transient"), "confusion": ("confusion",),
          "diverged": ("diverged",)}
#: Behaviours whose outcome the budget did not settle (always; ``memorization`` too while still rising).
UNDETERMINED = ("semi", "censored")
SPLITS = ("ood", "id")
#: When the classifier examines a checkpoint: ``auto`` only for runs whose curves generalized (the
#: only runs the circuit evidence can move between true and fake), ``always`` or ``never``.
EVIDENCE_MODES = ("auto", "always", "never")
#: Target accuracy metric per split.
TARGET_ACC = {"ood": "acc/test_inferred_ood", "id": "acc/test_inferred_id"}
TRAIN_ACC = "acc/train"
#: The interchange curve logged during training (:mod:`grokray.circuits.formation`), per split.
CIRCUIT_CURVE = {"ood": "circuit/interchange/ood", "id": "circuit/interchange/id"}
#: ``stop_reason`` values meaning "ran to its budget".
BUDGET_STOPS = (None, "max_steps")
#: Evidence keys every verdict may use beside the criteria's own.
COMMON_EVIDENCE = ("n_intermediate", "bridge_found", "causal_r1", "shortcut_best", "shortcut_rule", "n_target")
#: Keys accepted in ``evidence`` (all optional; None / NaN mean "absent").
EVIDENCE_KEYS = tuple(dict.fromkeys((*criterion_evidence_keys(), *COMMON_EVIDENCE)))


def liu_phase(behaviour: str) -> str:
    """Liu et al.'s phase of a behaviour.

    >>> liu_phase("unmemorized"), liu_phase("censored")
    ('comprehension', 'memorization')
    """
    return next(phase for phase, kinds in PHASES.items() if behaviour in kinds)


def label_name(label: str | None) -> str | None:
    """A label's full name from itself or its short form; ``None`` / ``"unlabelled"`` / ``"?"`` -> None.

    >>> label_name("fake"), label_name("no_grokking"), label_name("unlabelled")
    ('fake_grokking', 'no_grokking', None)
    """
    if label is None or label in ("unlabelled", "?"):
        return None
    if label in LABELS:
        return label
    for full, short in SHORT_LABELS.items():
        if label == short and full is not None:
            return full
    raise ValueError(f"unknown label {label!r}; use one of {', '.join(LABELS)}, true, fake, no or unlabelled")


# --------------------------------------------------------------------------- parameters

def _fail(name: str, problem: str, value: Any) -> None:
    raise ValueError(f"{name}: {problem} (got {value!r})")


@dataclass(frozen=True)
class VerdictParams:
    """Every threshold of the verdict, with its reason. Validated on construction.

    Accuracies are fractions in [0, 1]; ratios are of steps; scales set how fast the
    confidence of a tanh comparison grows with its margin. docs/calibration.md shows how the
    defaults came out on He et al.'s regimes at CPU scale.
    """
    #: Running-median window (evaluations) for the target accuracy. 3 removes an isolated
    #: one-evaluation spike without delaying a real step rise (median of 3 at its edge).
    smooth_window: int = 3
    #: Consecutive evaluations a threshold must hold for (train raw, target smoothed); also the
    #: shortest final stretch that counts as "held to the end".
    sustain: int = 2
    #: Train accuracy that counts as memorized (Wang et al., He et al.: 0.99).
    memorize_acc: float = 0.99
    #: OOD accuracy that counts as generalized: looped models plateau near 0.75-0.8 and He
    #: et al.'s natural run ended at 0.68, so Liu et al.'s 0.9 would miss true grokking.
    generalize_acc_ood: float = 0.5
    #: ID accuracy that counts as generalized: ID grokking reaches 0.95+ (Wang et al.).
    generalize_acc_id: float = 0.9
    #: OOD: a late rise to this, without reaching ``generalize_acc_ood``, is ``semi``
    #: (CPU calibration: hop1 / hop2 runs climb to 0.3-0.4 within 12k steps; chance ~0.01).
    semi_acc_ood: float = 0.2
    #: ID counterpart of ``semi_acc_ood``.
    semi_acc_id: float = 0.5
    #: ``t_generalize / t_memorize`` above which generalization is late (``grokking``); at or
    #: below it the test rose with train (``comprehension``, Liu et al.'s phase: no grokking).
    #: Liu et al. call a gap of >= 1e3 steps grokking where memorization takes ~1e3 steps: a factor
    #: ~2. 2 = 0.3 decades = ~7 of the trainer's log-spaced evaluations (24 per decade), well past
    #: the lag of the smoothing (median of 3) and of ``sustain``.
    grokking_delay: float = 2.0
    #: A run that went ``memorization_ratio x t_memorize`` steps without a rise is
    #: ``memorization``; shorter is ``censored``. Wang et al.'s ID grokking took ~10-20x
    #: the memorization time at small phi, so 20x is where "no rise yet" starts to mean something.
    memorization_ratio: float = 20.0
    #: The held accuracy must close this share of the best shortcut's errors to count as
    #: generalization beyond the data's prior: ``level >= s + shortcut_excess x (1 - s)``. At
    #: s = 0.05 the bar (0.29) is below ``generalize_acc_ood``; at the shortcut regime's s = 0.72
    #: it is 0.79 (held 0.59-0.62: shortcut); at s = 0.95 it is 0.96, never above 1.
    shortcut_excess: float = 0.25
    #: Interchange success at or above which the answers are mediated by the bridge. Set from measured
    #: distributions (docs/calibration.md, "The negative control"): the trained negative control (OOD
    #: queries memorized whole, first hops never trained; 2 constructions x 2 graphs) scores 0.64-0.71,
    #: because a composing model's second hop follows any bridge state it is handed; composing answers
    #: score 0.86-1.00 (delayed OOD grokking 0.86-0.99, ID composition 0.99-1.00). 0.8 lies between.
    interchange_min: float = 0.8
    #: Bridge-carry success (grokray.circuits.carry) at or above which a correct answer's own hop-1 state
    #: holds its bridge. Measured (docs/calibration.md, "The negative control"): answers memorized whole
    #: 0.005-0.078 (default trial, 4 runs; the tests' small model); composed answers 0.78-0.92 at the
    #: default trial (ID and OOD, 6 runs), 0.38-0.48 on the tests' small model. 0.25 lies in the gap.
    carry_min: float = 0.25
    #: He et al.'s lens rule: ``bridge_given_correct`` at or above which the bridge counts as
    #: found (CPU probes: memorized-only 0.54-0.65, generalized ~1.0; He et al.'s fake run 0.65).
    circuit_bridge: float = 0.8
    #: Evidence read from fewer correct answers than this is reported as insufficient.
    min_evidence_n: int = 20
    #: Confidence scale of accuracy comparisons when the number of queries is unknown.
    acc_scale: float = 0.1
    #: Confidence scale of train-accuracy comparisons (train acc sits near the 0.99
    #: ceiling; a margin of 0.01, i.e. train at 1.0, gives 0.98).
    train_acc_scale: float = 0.005
    #: Confidence scale of step-ratio comparisons, in decades (0.3 = a factor 2 gives 0.88).
    log_scale: float = 0.3
    #: Fewer target (or train) evaluations than this: the curve is too short to trust and
    #: the confidence is multiplied by ``n_evals / min_evals`` (0 evaluations: confidence 0).
    min_evals: int = 5
    #: Confidence cap of a censored verdict: it rests on a budget, not on evidence.
    censored_cap: float = 0.5
    #: Confidence cap of a generalized run labelled without sufficient circuit evidence.
    no_circuit_cap: float = 0.5
    #: Confidence cap of an undetermined run (``semi``, ``censored``, or still rising at its end):
    #: its "no" rests on where the budget ended, not on what the run would do.
    undetermined_cap: float = 0.5
    #: A memorizing run is still rising when its smoothed target accuracy over the last
    #: evaluations is at least this much above its level at half the steps run.
    rising_delta: float = 0.05

    def __post_init__(self) -> None:
        def name(f: str) -> str:
            return f"VerdictParams.{f}"

        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int):
                if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
                    _fail(name(f.name), "must be an integer", value)
            elif not is_number(value) or not math.isfinite(value):
                _fail(name(f.name), "must be a finite number", value)
        for f in ("smooth_window", "sustain", "min_evals", "min_evidence_n"):
            if getattr(self, f) < 1:
                _fail(name(f), "must be >= 1", getattr(self, f))
        for f in ("memorize_acc", "generalize_acc_ood", "generalize_acc_id", "semi_acc_ood", "semi_acc_id",
                  "interchange_min", "carry_min", "circuit_bridge"):
            if not 0 < getattr(self, f) <= 1:
                _fail(name(f), "must be in (0, 1]", getattr(self, f))
        if not 0 <= self.shortcut_excess < 1:
            _fail(name("shortcut_excess"), "must be in [0, 1)", self.shortcut_excess)
        if not 0 < self.rising_delta < 1:
            _fail(name("rising_delta"), "must be in (0, 1)", self.rising_delta)
        for s in SPLITS:
            if self.semi_acc(s) >= self.generalize_acc(s):
                raise ValueError(f"{name(f'semi_acc_{s}')}: must be below generalize_acc_{s} (got semi_acc_{s}="
                                 f"{self.semi_acc(s)!r}, generalize_acc_{s}={self.generalize_acc(s)!r})")
        for f in ("no_circuit_cap", "censored_cap", "undetermined_cap"):
            if not 0 < getattr(self, f) <= 1:
                _fail(name(f), "must be in (0, 1]", getattr(self, f))
        if self.grokking_delay < 1:
            _fail(name("grokking_delay"), "must be >= 1", self.grokking_delay)
        if self.memorization_ratio <= 1:
            _fail(name("memorization_ratio"), "must be > 1", self.memorization_ratio)
        for f in ("acc_scale", "train_acc_scale", "log_scale"):
            if getattr(self, f) <= 0:
                _fail(name(f), "must be > 0", getattr(self, f))

    def generalize_acc(self, split: str) -> float:
        return self.generalize_acc_ood if split == "ood" else self.generalize_acc_id

    def semi_acc(self, split: str) -> float:
        return self.semi_acc_ood if split == "ood" else self.semi_acc_id

    def shortcut_bar(self, shortcut: float) -> float:
        """The held level a run needs to count as beyond a shortcut scoring ``shortcut``.

        >>> p = VerdictParams()
        >>> round(p.shortcut_bar(0.05), 4), round(p.shortcut_bar(0.72), 2), round(p.shortcut_bar(0.95), 4)
        (0.2875, 0.79, 0.9625)
        """
        return shortcut + self.shortcut_excess * (1.0 - shortcut)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python numbers (JSON-safe), e.g. for a run's logged params."""
        return {f.name: (int if f.type in ("int", int) else float)(getattr(self, f.name))
                for f in dataclasses.fields(self)}


# --------------------------------------------------------------------------- verdict

@dataclass(frozen=True)
class Verdict:
    """What :func:`classify_history` concluded about one run, and why.

    Steps are ints, accuracies floats in [0, 1]; an unknown value is ``None``.
    ``final_target_level`` is the smoothed target accuracy held over the last evaluations
    (what "generalized" is decided on); ``max_target_acc`` the maximum of the smoothed curve;
    ``final_*_acc`` the last finite raw values; ``margins`` maps each decisive comparison to
    its confidence contribution.
    """
    label: str
    detail: str
    behaviour: str
    confidence: float
    split: str
    criterion: str
    t_memorize: int | None
    t_generalize: int | None
    t_transient: int | None
    delay_ratio: float | None
    log_step_gap: float | None
    censored: bool
    steps_run: int
    max_steps: int
    stop_reason: str | None
    n_evals: int
    final_train_acc: float | None
    final_target_acc: float | None
    final_target_level: float | None
    max_target_acc: float | None
    shortcut_best: float | None
    interchange: float | None
    interchange_control: float | None
    interchange_n: int | None
    bridge_found: float | None
    bridge_given_correct: float | None
    causal_r1: float | None
    n_target: int | None
    lens_visible: bool | None
    #: The label by every criterion of :data:`grokray.criteria.REGISTRY` (``label`` is ``labels[criterion]``).
    labels: dict[str, str] = field(default_factory=dict)
    #: Whether each criterion found the answers mediated by the bridge (None: no sufficient evidence;
    #: absent: the run did not generalize, so mechanism was not asked).
    mediated: dict[str, bool | None] = field(default_factory=dict)
    #: Each criterion's measured rate (None: not measured, or on too few answers), keyed by criterion.
    rates: dict[str, float | None] = field(default_factory=dict)
    #: False when the budget did not settle the outcome (``semi``, ``censored``, still rising).
    determined: bool = True
    #: First step from which the logged interchange curve held ``interchange_min`` (None: never or not logged).
    t_circuit: int | None = None
    margins: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    classifier_version: str = CLASSIFIER_VERSION
    params: dict[str, Any] = field(default_factory=lambda: VerdictParams().to_dict())

    def __post_init__(self) -> None:
        for name, value, allowed in (("label", self.label, LABELS), ("behaviour", self.behaviour, BEHAVIOURS),
                                     ("split", self.split, SPLITS), ("criterion", self.criterion, tuple(REGISTRY))):
            if value not in allowed:
                _fail(f"Verdict.{name}", f"must be one of {allowed}", value)
        for crit, value in self.labels.items():
            if value not in LABELS:
                _fail(f"Verdict.labels[{crit!r}]", f"must be one of {LABELS}", value)

    @property
    def phase(self) -> str:
        """Liu et al.'s phase: grokking, comprehension, memorization, confusion (or diverged)."""
        return liu_phase(self.behaviour)

    @property
    def grokked(self) -> bool:
        """Generalized (true or fake)."""
        return self.label != "no_grokking"

    def summary(self) -> str:
        """The verdict and the numbers it rests on, in one paragraph (a run's description)."""
        return "; ".join([f"{self.label} ({self.detail}, confidence {self.confidence:.2f})", *self.reasons]) + "."

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite floats become ``None``)."""
        return plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Verdict":
        """Inverse of :meth:`to_dict`; unknown or missing keys are a one-line ValueError."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names) - {"label_lens", "label_interchange"})
        if unknown:
            _fail("Verdict.from_dict", "unknown keys", unknown)
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            _fail("Verdict.from_dict", "missing keys", missing)
        kwargs = dict(data)
        # Verdicts stored before classifier v3 kept one field per criterion.
        legacy = {c: kwargs.pop(f"label_{c}") for c in ("lens", "interchange") if f"label_{c}" in kwargs}
        if legacy and "labels" not in kwargs:
            kwargs["labels"] = {c: v for c, v in legacy.items() if v is not None}
        for key in ("margins", "params", "labels", "mediated", "rates"):
            if key in kwargs:
                kwargs[key] = dict(kwargs[key])
        if "reasons" in kwargs:
            kwargs["reasons"] = list(kwargs["reasons"])
        return cls(**kwargs)


# --------------------------------------------------------------------------- behaviour

class _Facts(NamedTuple):
    split: str
    diverged_at: int | None
    stop_diverged: bool
    steps_run: int
    n_evals: int
    train_level: float | None   # best sustained train acc
    target_level: float | None  # best sustained smoothed target acc
    final_level: float | None   # smoothed target acc held over the last evaluations
    t_memorize: int | None
    t_generalize: int | None    # start of the final held stretch
    t_transient: int | None     # a sustained crossing that fell back before the end
    max_after_memorize: float | None
    n_target: int | None


def behaviour(facts: _Facts, p: VerdictParams) -> tuple[str, dict[str, float], list[str]]:
    """The behaviour of a run, the confidence contributions of the comparisons that decided it,
    and reasons in words."""
    name = facts.split.upper()
    g_acc, s_acc = p.generalize_acc(facts.split), p.semi_acc(facts.split)
    margins: dict[str, float] = {}
    reasons: list[str] = []
    if facts.stop_diverged or facts.diverged_at is not None:
        why = "stop_reason='diverged'" if facts.stop_diverged else \
            f"non-finite train_loss/param_norm at step {facts.diverged_at}"
        reasons.append(f"diverged: {why}")
        if facts.t_generalize is not None:
            reasons.append(f"{name} acc had held {g_acc:g} from step {facts.t_generalize} before diverging")
        return "diverged", {"diverged": 1.0}, reasons
    memorized = facts.t_memorize is not None
    margins["memorized" if memorized else "not_memorized"] = margin_confidence(facts.train_level, p.memorize_acc,
                                                                               p.train_acc_scale)
    margins["generalized"] = rate_confidence(facts.final_level, g_acc, facts.n_target, p.acc_scale)
    final = "none" if facts.final_level is None else f"{facts.final_level:.2f}"
    if facts.t_generalize is not None:
        t_gen = facts.t_generalize
        if not memorized:
            reasons.append(f"{name} acc >= {g_acc:g} from step {t_gen} to the end (smoothed, final {final}), "
                           f"but train acc never held >= {p.memorize_acc:g} for {p.sustain} evaluations")
            return "unmemorized", margins, reasons
        ratio = step_ratio(t_gen, facts.t_memorize)
        margins["delay_ratio"] = margin_confidence(math.log10(ratio), math.log10(p.grokking_delay), p.log_scale)
        reasons.append(f"{name} acc >= {g_acc:g} from step {t_gen} to the end (smoothed, final {final}), "
                       f"{ratio:.1f}x after memorization at {facts.t_memorize}")
        if ratio <= p.grokking_delay:
            reasons.append(f"delay ratio {ratio:.2f} <= {p.grokking_delay:g}: test rose with train "
                           f"(comprehension, not grokking: grokking is late)")
            return "comprehension", margins, reasons
        reasons.append(f"delay ratio {ratio:.2f} > {p.grokking_delay:g}: generalized late")
        return "grokking", margins, reasons
    if facts.t_transient is not None:
        # Reached the threshold, then fell back: a transient (e.g. a shortcut learned before the
        # facts), never generalization. Recorded with its step, labelled on where the run ended.
        reasons.append(f"transient: smoothed {name} acc reached {facts.target_level:.2f} >= {g_acc:g} at step "
                       f"{facts.t_transient} and fell back (ends at {final})")
        return "transient", margins, reasons
    best = "none" if facts.target_level is None else f"{facts.target_level:.2f}"
    reasons.append(f"{name} acc never >= {g_acc:g} for {p.sustain} evaluations (best smoothed {best})")
    if not memorized:
        best = "none" if facts.train_level is None else f"{facts.train_level:.3f}"
        reasons.append(f"train acc never >= {p.memorize_acc:g} for {p.sustain} evaluations (best {best})")
        return "confusion", margins, reasons
    reasons.append(f"train acc >= {p.memorize_acc:g} from step {facts.t_memorize}")
    late = facts.max_after_memorize
    margins["semi"] = rate_confidence(late, s_acc, facts.n_target, p.acc_scale)
    if late is not None and late >= s_acc:
        reasons.append(f"late partial rise: smoothed {name} acc reached {late:.2f} >= {s_acc:g} "
                       f"after memorization")
        return "semi", margins, reasons
    ran = step_ratio(facts.steps_run, facts.t_memorize)
    margins["run_length"] = margin_confidence(math.log10(ran), math.log10(p.memorization_ratio), p.log_scale)
    if ran >= p.memorization_ratio:
        reasons.append(f"ran {facts.steps_run} steps = {ran:.1f}x t_memorize >= {p.memorization_ratio:g}x "
                       f"without a test rise")
        return "memorization", margins, reasons
    reasons.append(f"ran only {ran:.1f}x t_memorize (< {p.memorization_ratio:g}x): too short to rule out grokking")
    return "censored", margins, reasons


# --------------------------------------------------------------------------- mechanism

class _Mechanism(NamedTuple):
    labels: dict[str, str]                # criterion -> label
    mediated: dict[str, bool | None]      # criterion -> mediated (None: insufficient evidence)
    margins: dict[str, dict[str, float]]  # criterion -> its decisive comparisons
    reasons: list[str]
    capped: dict[str, bool]               # criterion -> labelled by behaviour only
    shortcut_level: bool                  # the held level is within reach of the best shortcut
    detail_words: list[str]               # words the criteria add to the detail (lens-visible, ...)


def mechanism(kind: str, final_level: float | None, ev: Mapping[str, Any], split: str, p: VerdictParams
              ) -> _Mechanism:
    """The label of a generalized run by every criterion (see the module docstring, steps 6-7).

    Late (``grokking``), above the shortcut bar, mediated -> true; late, above the bar, not
    mediated -> fake; not late or at the shortcut's level -> no_grokking (its mechanism still
    judged and reported). Insufficient evidence on a late, above-shortcut run -> true, capped.
    """
    name = split.upper()
    reasons: list[str] = []
    common: dict[str, float] = {}
    shortcut_level = False
    s = ev.get("shortcut_best")
    if s is not None and final_level is not None:
        bar = p.shortcut_bar(s)
        common["shortcut"] = rate_confidence(final_level, bar, ev.get("n_target"), p.acc_scale)
        rule = f" ({ev['shortcut_rule']} rule)" if ev.get("shortcut_rule") else ""
        gained = (final_level - s) / (1.0 - s) if s < 1 else float("-inf")
        if final_level < bar:
            shortcut_level = True
            reasons.append(f"within reach of a shortcut: held {name} acc {final_level:.2f} closes {gained:.2f} of "
                           f"the best shortcut's errors ({s:.2f}{rule}; needs >= {p.shortcut_excess:g}: level "
                           f">= {bar:.2f}): no generalization beyond the data's prior")
        else:
            reasons.append(f"held {name} acc {final_level:.2f} >= {bar:.2f} (best shortcut {s:.2f}{rule} + "
                           f"{p.shortcut_excess:g} of its errors): beyond what answers without composing")
    judgements = judge_all(ev, p)
    late = kind == "grokking"
    labels, mediated, margins, capped, words = {}, {}, {}, {}, []
    for crit, j in judgements.items():
        mediated[crit] = j.mediated
        m = dict(common)
        if not late:
            labels[crit] = "no_grokking"
        elif shortcut_level:
            labels[crit] = "no_grokking"
        else:
            if j.mediated is not None:
                m[crit] = j.confidence
            labels[crit] = "fake_grokking" if j.mediated is False else "true_grokking"
        capped[crit] = late and not shortcut_level and j.mediated is None
        margins[crit] = m if (late or shortcut_level) else {}
        reasons.append(j.reason)
        if j.detail:
            words.append(j.detail)
    if ev.get("causal_r1") is not None:
        reasons.append(f"causal patching: r1-state flip rate {ev['causal_r1']:.2f} (supporting)")
    return _Mechanism(labels, mediated, margins, reasons, capped, shortcut_level, words)


def _rising(steps: np.ndarray, smoothed: np.ndarray, final_level: float | None, p: VerdictParams) -> bool:
    """Is the smoothed target accuracy at the end clearly above its level at half the steps run?"""
    if final_level is None or len(steps) < 2:
        return False
    half = smoothed[steps <= steps[-1] / 2]
    return len(half) > 0 and final_level - float(half[-1]) >= p.rising_delta


# --------------------------------------------------------------------------- entry point

def _check_inputs(split: Any, max_steps: Any, stop_reason: Any, criterion: Any, params: Any) -> VerdictParams:
    if split not in SPLITS:
        _fail("split", f"must be one of {SPLITS}", split)
    if criterion not in REGISTRY:
        _fail("criterion", f"must be one of {tuple(REGISTRY)}", criterion)
    if not isinstance(max_steps, (int, np.integer)) or isinstance(max_steps, (bool, np.bool_)) or max_steps < 1:
        _fail("max_steps", "must be an integer >= 1", max_steps)
    if stop_reason is not None and not isinstance(stop_reason, str):
        _fail("stop_reason", "must be a string or None", stop_reason)
    if isinstance(params, VerdictParams):
        return params
    if isinstance(params, Mapping):
        unknown = sorted(set(params) - {f.name for f in dataclasses.fields(VerdictParams)})
        if unknown:
            _fail("params", "unknown keys", unknown)
        return VerdictParams(**params)
    _fail("params", "must be a VerdictParams or a dict of its fields", params)
    raise AssertionError  # unreachable


#: Counts among the evidence keys (every criterion's ``n`` too); text keys (notes, a rule's name).
_INT_KEYS = (*(c.n for c in REGISTRY.values()), "n_intermediate", "n_target")
_TEXT_KEYS = (*(k for k in EVIDENCE_KEYS if k.endswith("_note")), "shortcut_rule")


def _check_evidence(evidence: Mapping[str, Any] | None) -> dict[str, Any]:
    """Known keys only; ``None``/NaN values mean "absent"; rates in [0, 1], counts >= 0."""
    if evidence is None:
        return {}
    if not isinstance(evidence, Mapping):
        _fail("evidence", "must be a dict or None", evidence)
    unknown = sorted(set(evidence) - set(EVIDENCE_KEYS))
    if unknown:
        _fail("evidence", f"unknown keys (known: {', '.join(EVIDENCE_KEYS)})", unknown)
    out: dict[str, Any] = {}
    for key, value in evidence.items():
        if value is None or (is_number(value) and math.isnan(value)):
            continue
        if key in _INT_KEYS:
            if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < 0:
                _fail(f"evidence[{key!r}]", "must be an integer >= 0", value)
            out[key] = int(value)
        elif key in _TEXT_KEYS:
            out[key] = str(value)
        else:
            if not is_number(value) or not 0 <= value <= 1:
                _fail(f"evidence[{key!r}]", "must be a number in [0, 1]", value)
            out[key] = float(value)
    return out


def classify_history(history: Iterable[Mapping[str, Any]], *, max_steps: int, stop_reason: str | None = None,
                     evidence: Mapping[str, Any] | None = None, split: str = "ood",
                     criterion: str = DEFAULT_CRITERION,
                     params: VerdictParams | Mapping[str, Any] = VerdictParams()) -> Verdict:
    """Label one run from its metric history and evidence (see the module docstring for the rule).

    Args:
        history: the trainer's per-evaluation dicts (``"step"`` plus metrics), in any
            order, possibly duplicated (the last entry of a step wins), with missing or
            non-finite values (ignored), possibly empty.
        max_steps: the run's step budget.
        stop_reason: why the run stopped (``"max_steps"``, ``"diverged"``, a sweep
            stopper's reason) or ``None`` if unknown.
        evidence: end-of-run evidence (:data:`EVIDENCE_KEYS`): the interchange test, the lens,
            causal patching, the shortcut baseline of the target split, ``n_target``.
        split: ``"ood"`` or ``"id"``: which test split is the target.
        criterion: a name of :data:`grokray.criteria.REGISTRY`: which criterion drives ``label``.
        params: thresholds (:class:`VerdictParams` or a dict of its fields).

    Raises:
        ValueError: one line naming a bad argument, parameter or history value.
    """
    p = _check_inputs(split, max_steps, stop_reason, criterion, params)
    ev = _check_evidence(evidence)
    entries, dropped = clean_history(history)
    train = metric_series(entries, TRAIN_ACC)
    target = metric_series(entries, TARGET_ACC[split])
    smoothed = running_median(target.values, p.smooth_window)
    g_acc = p.generalize_acc(split)
    t_mem = first_sustained(train.steps, train.values, p.memorize_acc, p.sustain)
    t_gen = held_from(target.steps, smoothed, g_acc, p.sustain)         # must hold to the end
    t_first = first_sustained(target.steps, smoothed, g_acc, p.sustain)
    after = smoothed[target.steps >= t_mem] if t_mem is not None else smoothed[:0]
    final_level = float(smoothed[-min(p.sustain, len(smoothed)):].min()) if len(smoothed) else None
    facts = _Facts(
        split=split, diverged_at=divergence_step(entries), stop_diverged=stop_reason == "diverged",
        steps_run=entries[-1]["step"] if entries else 0, n_evals=min(len(train.values), len(target.values)),
        train_level=sustained_level(train.values, p.sustain), target_level=sustained_level(smoothed, p.sustain),
        final_level=final_level, t_memorize=t_mem, t_generalize=t_gen,
        t_transient=t_first if t_gen is None else None,
        max_after_memorize=float(after.max()) if len(after) else None, n_target=ev.get("n_target"))

    kind, margins, reasons = behaviour(facts, p)
    lens = f"lens/{split}/"
    ev.setdefault("bridge_found", metric_series(entries, lens + "bridge_found").last())
    if "bridge_given_correct" not in ev and "lens_n_correct" not in ev:
        # No end-of-run lens reading: the last logged one (over the lens sample's correct answers).
        ev["bridge_given_correct"] = metric_series(entries, lens + "bridge_given_correct").last()
    ev = {k: v for k, v in ev.items() if v is not None}
    # the curve of the chosen criterion where the trainer logs one (interchange, carry), else the interchange's
    curve_name = f"circuit/{criterion}/{split}" if criterion in ("interchange", "carry") else CIRCUIT_CURVE[split]
    curve_bar = getattr(p, REGISTRY[criterion if criterion in ("interchange", "carry") else "interchange"].threshold)
    curve = metric_series(entries, curve_name)
    # smoothed like the target: the rate can switch between its r1 and r1+r2 definitions from one evaluation
    # to the next (grokray.circuits.formation); a median of 3 keeps an isolated flip from starting or ending it
    t_circuit = (first_sustained(curve.steps, running_median(curve.values, p.smooth_window), curve_bar,
                                 p.sustain) if len(curve.steps) else None)

    labels = {c: "no_grokking" for c in REGISTRY}
    mediated: dict[str, bool | None] = {}
    words: list[str] = []
    cap = 1.0
    shortcut_level = False
    if kind in GENERALIZED:
        mech = mechanism(kind, final_level, ev, split, p)
        labels, mediated, words, shortcut_level = mech.labels, mech.mediated, mech.detail_words, mech.shortcut_level
        margins.update(mech.margins[criterion])
        reasons += mech.reasons
        if mech.capped[criterion]:
            cap = p.no_circuit_cap
            reasons.append(f"{criterion}: labelled by behaviour only (fake grokking needs evidence); confidence "
                           f"capped at {p.no_circuit_cap:g}")
    label = labels[criterion]
    if t_circuit is not None:
        reasons.append(f"the bridge mediated answers (logged {curve_name} >= {curve_bar:g}) "
                       f"from step {t_circuit}" + (f"; {split.upper()} acc held from step {t_gen}"
                                                   if t_gen is not None else ""))
    head = "shortcut" if shortcut_level else kind
    detail = ", ".join([head, *words])
    lens_visible = {"lens-visible": True, "lens-invisible": False}.get(next(iter(words), ""), None)

    on_budget = stop_reason in BUDGET_STOPS or facts.steps_run >= max_steps
    censored = kind not in GENERALIZED and kind != "diverged" and on_budget
    if censored:
        reasons.append(f"ended on its step budget ({facts.steps_run}/{max_steps}) without holding {g_acc:g}: "
                       "censored, not proof of no grokking")
    rising = kind == "memorization" and _rising(target.steps, smoothed, final_level, p)
    determined = not (kind in UNDETERMINED or rising)
    if not determined:
        why = "still rising at its end" if rising else f"{kind}: the budget did not settle it"
        reasons.append(f"undetermined ({why}): confidence capped at {p.undetermined_cap:g}")
        cap = min(cap, p.undetermined_cap)
    if kind == "censored":  # too short to say: the verdict rests on the budget, not on evidence
        cap = min(cap, p.censored_cap)
    if stop_reason not in BUDGET_STOPS and stop_reason != "diverged":
        reasons.append(f"stopped early at step {facts.steps_run} by {stop_reason!r}")
    if dropped:
        reasons.append(f"{dropped} history entries without a finite step ignored")

    if kind == "diverged":
        conf = 1.0
    else:
        conf = min(margins.values()) if margins else 0.5
        if facts.n_evals < p.min_evals:
            conf *= facts.n_evals / p.min_evals
            reasons.append(f"only {facts.n_evals} evaluations (< {p.min_evals}): confidence "
                           f"x{facts.n_evals}/{p.min_evals}")
        if cap < 1.0 and conf > cap:
            reasons.append(f"confidence capped at {cap:g}")
        conf = float(min(max(conf, 0.0), cap))

    ratio = step_ratio(t_gen, t_mem) if t_gen is not None and t_mem is not None else None
    return Verdict(
        label=label, detail=detail, behaviour=kind, confidence=conf, split=split, criterion=criterion,
        t_memorize=t_mem, t_generalize=t_gen,
        t_transient=facts.t_transient, delay_ratio=ratio, log_step_gap=math.log10(ratio) if ratio is not None else None,
        censored=censored, steps_run=facts.steps_run, max_steps=int(max_steps), stop_reason=stop_reason,
        n_evals=facts.n_evals, final_train_acc=train.last(), final_target_acc=target.last(),
        final_target_level=final_level, max_target_acc=float(smoothed.max()) if len(smoothed) else None,
        shortcut_best=ev.get("shortcut_best"), interchange=_usable(ev, "interchange", p),
        interchange_control=ev.get("interchange_control"), interchange_n=ev.get("interchange_n"),
        bridge_found=ev.get("bridge_found"), bridge_given_correct=_usable(ev, "lens", p),
        causal_r1=ev.get("causal_r1"), n_target=ev.get("n_target"), lens_visible=lens_visible,
        labels=labels, mediated=mediated, determined=determined, t_circuit=t_circuit,
        rates={name: _usable(ev, name, p) for name in REGISTRY},
        margins={k: float(v) for k, v in margins.items()}, reasons=reasons,
        classifier_version=CLASSIFIER_VERSION, params=p.to_dict())


def _usable(ev: Mapping[str, Any], criterion: str, p: VerdictParams) -> float | None:
    """A criterion's rate as the verdict reports it: None when measured on too few answers."""
    c = REGISTRY[criterion]
    n = ev.get(c.n)
    return None if n is not None and n < p.min_evidence_n else ev.get(c.rate)
