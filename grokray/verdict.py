"""Run verdicts: one pure function from a run's metric history (+ circuit evidence) to a label.

:func:`classify_history` reads what the trainer logs at every evaluation (``acc/train``,
``acc/test_inferred_<split>``, ``train_loss``, ``param_norm``, the lens metrics) plus the
end-of-run evidence (:mod:`grokray.circuits.evidence`) and returns a :class:`Verdict`:

* ``label``: ``true_grokking`` (generalized, and the answers are mediated by the bridge),
  ``fake_grokking`` (generalized, but the answers are not mediated by the bridge, or a
  shortcut in the data explains the accuracy), ``no_grokking`` (did not generalize). Two
  criteria decide true vs fake, both always computed: ``interchange`` (the default: the
  bridge interchange test, :mod:`grokray.circuits.interchange`, basis-free) and ``lens``
  (He et al.'s rule: the logit lens finds the bridge for most correct answers);
  ``criterion`` picks the one that drives ``label``; ``label_lens`` and
  ``label_interchange`` hold both;
* ``behaviour``: ``grokking``, ``comprehension``, ``unmemorized``, ``transient``, ``semi``,
  ``memorization``, ``censored``, ``confusion``, ``diverged``; ``detail`` is the behaviour,
  plus ``lens-visible`` / ``lens-invisible`` for a run that generalized (is its bridge also
  readable by the plain logit lens?);
* ``censored``: did not generalize and ended on its step budget: not proof of "no
  grokking", only of "not within this budget";
* ``confidence`` in [0, 1], ``reasons`` (why, in words, with the numbers), the numbers.

The rule, step by step:

1. Clean (:func:`grokray.history.clean_history`); the run diverged if ``stop_reason ==
   "diverged"`` or any ``train_loss`` / ``param_norm`` is non-finite.
2. Smooth the target accuracy with a running median over ``smooth_window`` evaluations.
3. ``t_memorize``: first step from which ``acc/train >= memorize_acc`` holds for
   ``sustain`` evaluations.
4. **Generalization must hold.** ``t_generalize`` is the start of the final stretch over
   which the smoothed target accuracy stays at or above ``generalize_acc_<split>`` to the
   end of the run (:func:`grokray.history.held_from`). A sustained crossing that falls back
   is a ``transient`` (recorded as ``t_transient``), never generalization: a shortcut learned
   before the facts makes OOD accuracy spike and fall back within the first hundred steps.
5. Behaviour: diverged -> ``diverged``; generalized -> ``unmemorized`` if train never held
   ``memorize_acc``, else ``comprehension`` if ``t_generalize / t_memorize <=
   comprehension_ratio``, else ``grokking``; not generalized: a transient -> ``transient``;
   never memorized -> ``confusion``; a late rise to ``semi_acc_<split>`` -> ``semi``; ran
   ``memorization_ratio x t_memorize`` -> ``memorization``; else ``censored``.
6. Mechanism (generalized runs only). A shortcut explains the accuracy when the held level
   is below ``shortcut_best + shortcut_margin`` (the best rule that never composes,
   :mod:`grokray.data.shortcuts`): fake. A model with no intermediate state (one block
   application) cannot route an answer through a bridge: never true. Otherwise, interchange
   criterion: true when ``interchange >= interchange_min``; lens criterion: true when
   ``bridge_given_correct >= circuit_bridge``. Evidence read from fewer than
   ``min_evidence_n`` correct answers is *insufficient* (``None``), not a rate; a run that
   generalized without sufficient evidence is ``true_grokking`` by behaviour only, its
   confidence capped at ``no_circuit_cap`` (fake grokking is a claim that needs evidence).
7. Confidence: every decisive comparison contributes the probability that the measured rate
   is on its observed side of the threshold, ``Phi(|value - threshold| / se)`` with the
   binomial ``se = sqrt(t (1 - t) / n)`` over the ``n`` queries it was measured on (a rate
   from 20 answers is far less sure than one from 300); comparisons of train accuracy and of
   step ratios use ``0.5 + 0.5 tanh(|margin| / scale)``. The verdict takes the minimum,
   times ``n_evals / min_evals`` for a short curve; a censored verdict is capped at
   ``censored_cap`` (it rests on a budget, not on evidence). ``Verdict.margins`` lists the
   contributions. A ranking score, not a calibrated probability.

Example:
    >>> from grokray.verdict import classify_history
    >>> steps = [0, 100, 300, 1000, 2000, 3000, 5000, 10000, 20000, 30000]
    >>> history = [{"step": s, "acc/train": 1.0 if s >= 1000 else 0.1,
    ...             "acc/test_inferred_ood": 0.8 if s >= 10000 else 0.05} for s in steps]
    >>> ev = {"interchange": 0.9, "interchange_n": 200, "bridge_given_correct": 0.97, "n_target": 300,
    ...       "shortcut_best": 0.05}
    >>> v = classify_history(history, max_steps=30000, evidence=ev)
    >>> v.label, v.detail, v.t_memorize, v.t_generalize, v.delay_ratio, v.censored
    ('true_grokking', 'grokking, lens-visible', 1000, 10000, 10.0, False)
    >>> v.label_lens, round(v.confidence, 2)
    ('true_grokking', 0.98)
    >>> classify_history(history[:4], max_steps=30000).behaviour   # memorized, then stopped: too short
    'censored'
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, NamedTuple

import numpy as np

from grokray.history import (clean_history, divergence_step, first_sustained, held_from, is_number, metric_series,
                             running_median, step_ratio, sustained_level)
from grokray.jsonsafe import plain

#: Bumped whenever a rule or a default changes what a history is labelled.
#: 2: generalization must hold to the end; shortcut baselines; the interchange test decides
#: true vs fake (the lens rule is kept as label_lens); binomial confidence.
CLASSIFIER_VERSION = "2"
#: The labels, in the order of the claim they make, strongest first.
LABELS = ("true_grokking", "fake_grokking", "no_grokking")
#: Short forms (tables, run names, ``--label true``); ``None`` (not labelled yet) reads ``?``.
SHORT_LABELS = {"true_grokking": "true", "fake_grokking": "fake", "no_grokking": "no", None: "?"}
BEHAVIOURS = ("grokking", "comprehension", "unmemorized", "transient", "semi", "memorization", "censored",
              "confusion", "diverged")
#: Behaviours that mean "generalized".
GENERALIZED = ("grokking", "comprehension", "unmemorized")
LENS_DETAILS = ("lens-visible", "lens-invisible")
SPLITS = ("ood", "id")
CRITERIA = ("interchange", "lens")
#: When the classifier examines a checkpoint: ``auto`` only for runs whose curves generalized (the
#: only runs the circuit evidence can move between true and fake), ``always`` or ``never``.
EVIDENCE_MODES = ("auto", "always", "never")
#: Target accuracy metric per split.
TARGET_ACC = {"ood": "acc/test_inferred_ood", "id": "acc/test_inferred_id"}
TRAIN_ACC = "acc/train"
#: ``stop_reason`` values meaning "ran to its budget".
BUDGET_STOPS = (None, "max_steps")
#: Keys accepted in ``evidence`` (all optional; None / NaN mean "absent").
EVIDENCE_KEYS = ("interchange", "interchange_control", "interchange_n", "interchange_note", "n_intermediate",
                 "bridge_given_correct", "bridge_found", "lens_n_correct", "causal_r1", "shortcut_best",
                 "shortcut_rule", "n_target")


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
    #: ``t_generalize / t_memorize`` at or below which the rise is ``comprehension``
    #: (test rose with train) rather than delayed ``grokking``. 1.5 ~ 0.18 decades: about
    #: four of the trainer's log-spaced evaluations (24 per decade).
    comprehension_ratio: float = 1.5
    #: A run that went ``memorization_ratio x t_memorize`` steps without a rise is
    #: ``memorization``; shorter is ``censored``. Wang et al.'s ID grokking took ~10-20x
    #: the memorization time at small phi, so 20x is where "no rise yet" starts to mean something.
    memorization_ratio: float = 20.0
    #: The held accuracy must beat the best shortcut baseline by this much to count as evidence
    #: of composition: 0.1 is ~3 binomial standard errors of a ~300-query test set at 0.5.
    shortcut_margin: float = 0.1
    #: Interchange success at or above which the answers are mediated by the bridge: most
    #: correct answers follow a swapped bridge. Calibration: delayed OOD grokking 0.86, ID
    #: composition 0.97; a rule that reads r2 alone scores ~0 by construction.
    interchange_min: float = 0.5
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
                  "interchange_min", "circuit_bridge"):
            if not 0 < getattr(self, f) <= 1:
                _fail(name(f), "must be in (0, 1]", getattr(self, f))
        if not 0 <= self.shortcut_margin < 1:
            _fail(name("shortcut_margin"), "must be in [0, 1)", self.shortcut_margin)
        for s in SPLITS:
            if self.semi_acc(s) >= self.generalize_acc(s):
                raise ValueError(f"{name(f'semi_acc_{s}')}: must be below generalize_acc_{s} (got semi_acc_{s}="
                                 f"{self.semi_acc(s)!r}, generalize_acc_{s}={self.generalize_acc(s)!r})")
        for f in ("no_circuit_cap", "censored_cap"):
            if not 0 < getattr(self, f) <= 1:
                _fail(name(f), "must be in (0, 1]", getattr(self, f))
        if self.comprehension_ratio < 1:
            _fail(name("comprehension_ratio"), "must be >= 1", self.comprehension_ratio)
        if self.memorization_ratio <= 1:
            _fail(name("memorization_ratio"), "must be > 1", self.memorization_ratio)
        for f in ("acc_scale", "train_acc_scale", "log_scale"):
            if getattr(self, f) <= 0:
                _fail(name(f), "must be > 0", getattr(self, f))

    def generalize_acc(self, split: str) -> float:
        return self.generalize_acc_ood if split == "ood" else self.generalize_acc_id

    def semi_acc(self, split: str) -> float:
        return self.semi_acc_ood if split == "ood" else self.semi_acc_id

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
    label_lens: str
    label_interchange: str
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
    margins: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    classifier_version: str = CLASSIFIER_VERSION
    params: dict[str, Any] = field(default_factory=lambda: VerdictParams().to_dict())

    def __post_init__(self) -> None:
        for name, value, allowed in (("label", self.label, LABELS), ("label_lens", self.label_lens, LABELS),
                                     ("label_interchange", self.label_interchange, LABELS),
                                     ("behaviour", self.behaviour, BEHAVIOURS), ("split", self.split, SPLITS),
                                     ("criterion", self.criterion, CRITERIA)):
            if value not in allowed:
                _fail(f"Verdict.{name}", f"must be one of {allowed}", value)

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
        unknown = sorted(set(data) - set(names))
        if unknown:
            _fail("Verdict.from_dict", "unknown keys", unknown)
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            _fail("Verdict.from_dict", "missing keys", missing)
        kwargs = dict(data)
        for key in ("margins", "params"):
            if key in kwargs:
                kwargs[key] = dict(kwargs[key])
        if "reasons" in kwargs:
            kwargs["reasons"] = list(kwargs["reasons"])
        return cls(**kwargs)


# --------------------------------------------------------------------------- confidence

def margin_confidence(value: float | None, threshold: float, scale: float) -> float:
    """``0.5 + 0.5 * tanh(|value - threshold| / scale)``: 0.5 at the threshold (or when the
    value is unknown), towards 1 far from it. Monotone in the margin.

    >>> round(margin_confidence(0.6, 0.5, 0.1), 3), margin_confidence(None, 0.5, 0.1)
    (0.881, 0.5)
    """
    if value is None:
        return 0.5
    return 0.5 + 0.5 * math.tanh(abs(value - threshold) / scale)


def rate_confidence(value: float | None, threshold: float, n: int | None, scale: float) -> float:
    """How sure a rate measured on ``n`` queries is to lie on its side of ``threshold``:
    ``Phi(|value - threshold| / se)``, ``se = sqrt(t (1 - t) / n)`` (``t`` the threshold, kept
    inside [0.01, 0.99]). Without ``n``: :func:`margin_confidence` with ``scale``.

    >>> round(rate_confidence(0.6, 0.5, 300, 0.1), 3), round(rate_confidence(0.6, 0.5, 20, 0.1), 3)
    (1.0, 0.814)
    """
    if value is None:
        return 0.5
    if not n:
        return margin_confidence(value, threshold, scale)
    t = min(max(threshold, 0.01), 0.99)
    z = abs(value - threshold) / math.sqrt(t * (1 - t) / n)
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


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
        margins["delay_ratio"] = margin_confidence(math.log10(ratio), math.log10(p.comprehension_ratio),
                                                   p.log_scale)
        reasons.append(f"{name} acc >= {g_acc:g} from step {t_gen} to the end (smoothed, final {final}), "
                       f"{ratio:.1f}x after memorization at {facts.t_memorize}")
        if ratio <= p.comprehension_ratio:
            reasons.append(f"delay ratio {ratio:.2f} <= {p.comprehension_ratio:g}: test rose with train")
            return "comprehension", margins, reasons
        reasons.append(f"delay ratio {ratio:.2f} > {p.comprehension_ratio:g}: delayed generalization")
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

class _Evidence(NamedTuple):
    interchange: float | None
    interchange_control: float | None
    interchange_n: int | None
    interchange_note: str | None
    n_intermediate: int | None
    bridge_given_correct: float | None
    bridge_found: float | None
    lens_n_correct: int | None
    causal_r1: float | None
    shortcut_best: float | None
    shortcut_rule: str | None
    n_target: int | None


def mechanism(final_level: float | None, ev: _Evidence, split: str, p: VerdictParams
              ) -> tuple[str, str, dict[str, dict[str, float]], list[str], bool, bool | None]:
    """True vs fake for a generalized run, by both criteria.

    Returns ``(label_interchange, label_lens, {criterion: margins}, reasons, evidence_missing,
    lens_visible)``; ``evidence_missing[criterion]`` means that criterion's label rests on
    behaviour only.
    """
    name = split.upper()
    reasons: list[str] = []
    margins: dict[str, dict[str, float]] = {"interchange": {}, "lens": {}}
    shortcut_fake = False
    if ev.shortcut_best is not None and final_level is not None:
        bar = ev.shortcut_best + p.shortcut_margin
        c = rate_confidence(final_level, bar, ev.n_target, p.acc_scale)
        margins["interchange"]["shortcut"] = c
        rule = f" ({ev.shortcut_rule} rule)" if ev.shortcut_rule else ""
        if final_level < bar:
            shortcut_fake = True
            reasons.append(f"a shortcut explains the accuracy: held {name} acc {final_level:.2f} < best shortcut "
                           f"baseline {ev.shortcut_best:.2f}{rule} + {p.shortcut_margin:g}")
        else:
            reasons.append(f"held {name} acc {final_level:.2f} >= best shortcut baseline {ev.shortcut_best:.2f}{rule} "
                           f"+ {p.shortcut_margin:g}: beyond what answers without composing")
    # interchange
    missing_interchange = False
    if ev.n_intermediate == 0:
        label_i = "fake_grokking"
        margins["interchange"]["no_intermediate_state"] = 1.0
        reasons.append("no intermediate state (one block application): the answers cannot be mediated by a "
                       "bridge state")
    elif ev.interchange is not None:
        n = ev.interchange_n
        c = rate_confidence(ev.interchange, p.interchange_min, n, p.acc_scale)
        margins["interchange"]["interchange"] = c
        ctl = f", same-bridge control keeps {ev.interchange_control:.2f}" if ev.interchange_control is not None else ""
        if ev.interchange >= p.interchange_min:
            label_i = "true_grokking"
            reasons.append(f"interchange {ev.interchange:.2f} >= {p.interchange_min:g} over {n} correct answers"
                           f"{ctl}: swapping the bridge swaps the answer")
        else:
            label_i = "fake_grokking"
            reasons.append(f"interchange {ev.interchange:.2f} < {p.interchange_min:g} over {n} correct answers"
                           f"{ctl}: the answers do not follow the bridge")
    else:
        label_i = "true_grokking"
        missing_interchange = True
        note = ev.interchange_note or "no interchange test"
        reasons.append(f"{note}: labelled by behaviour only (fake grokking needs evidence); confidence capped "
                       f"at {p.no_circuit_cap:g}")
    if shortcut_fake:
        label_i = "fake_grokking"
        missing_interchange = False
    # He et al.'s lens rule (kept as its own label)
    lens_visible = None
    missing_lens = False
    if ev.bridge_given_correct is not None:
        n = ev.lens_n_correct
        lens_visible = ev.bridge_given_correct >= p.circuit_bridge
        margins["lens"]["bridge_given_correct"] = rate_confidence(ev.bridge_given_correct, p.circuit_bridge, n,
                                                                  p.acc_scale)
        label_l = "true_grokking" if lens_visible else "fake_grokking"
        reasons.append(f"lens: bridge found for {ev.bridge_given_correct:.2f} of correct answers "
                       f"({'>=' if lens_visible else '<'} {p.circuit_bridge:g}): lens-"
                       f"{'visible' if lens_visible else 'invisible'}; He et al.'s rule says {label_l}")
    else:
        label_l = "true_grokking"
        missing_lens = True
    if ev.causal_r1 is not None:
        reasons.append(f"causal patching: r1-state flip rate {ev.causal_r1:.2f} (supporting)")
    return label_i, label_l, margins, reasons, {"interchange": missing_interchange, "lens": missing_lens}, lens_visible


# --------------------------------------------------------------------------- entry point

def _check_inputs(split: Any, max_steps: Any, stop_reason: Any, criterion: Any, params: Any) -> VerdictParams:
    if split not in SPLITS:
        _fail("split", f"must be one of {SPLITS}", split)
    if criterion not in CRITERIA:
        _fail("criterion", f"must be one of {CRITERIA}", criterion)
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


_INT_KEYS = ("interchange_n", "n_intermediate", "lens_n_correct", "n_target")
_TEXT_KEYS = ("interchange_note", "shortcut_rule")


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


def _sufficient(ev: dict[str, Any], rate: str, n_key: str, p: VerdictParams, what: str) -> str | None:
    """Drop a rate measured on too few answers (it is insufficient, not a rate); the note why."""
    n = ev.get(n_key)
    if rate in ev and n is not None and n < p.min_evidence_n:
        del ev[rate]
        return f"insufficient: {what} on {n} correct answers (< {p.min_evidence_n})"
    return None


def classify_history(history: Iterable[Mapping[str, Any]], *, max_steps: int, stop_reason: str | None = None,
                     evidence: Mapping[str, Any] | None = None, split: str = "ood",
                     criterion: str = "interchange",
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
        criterion: ``"interchange"`` or ``"lens"``: which evidence drives ``label``.
        params: thresholds (:class:`VerdictParams` or a dict of its fields).

    Raises:
        ValueError: one line naming a bad argument, parameter or history value.
    """
    p = _check_inputs(split, max_steps, stop_reason, criterion, params)
    ev = _check_evidence(evidence)
    interchange_note = _sufficient(ev, "interchange", "interchange_n", p, "interchange")
    if interchange_note:
        ev.setdefault("interchange_note", interchange_note)
    lens_note = _sufficient(ev, "bridge_given_correct", "lens_n_correct", p, "lens bridge given correct")
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
    if lens_note:
        reasons.append(lens_note)
    lens = f"lens/{split}/"
    ev.setdefault("bridge_found", metric_series(entries, lens + "bridge_found").last())
    if "bridge_given_correct" not in ev and "lens_n_correct" not in ev and not lens_note:
        # No end-of-run lens reading: the last logged one (over the lens sample's correct answers).
        ev["bridge_given_correct"] = metric_series(entries, lens + "bridge_given_correct").last()
    e = _Evidence(**{k: ev.get(k) for k in _Evidence._fields})

    label_i = label_l = "no_grokking"
    lens_visible = None
    cap = 1.0
    if kind in GENERALIZED:
        label_i, label_l, mech_margins, mech_reasons, missing, lens_visible = mechanism(final_level, e, split, p)
        margins.update(mech_margins[criterion])
        reasons += mech_reasons
        if missing[criterion]:
            cap = p.no_circuit_cap
    label = label_i if criterion == "interchange" else label_l
    detail = kind if lens_visible is None else f"{kind}, lens-{'visible' if lens_visible else 'invisible'}"

    generalized = label != "no_grokking"
    on_budget = stop_reason in BUDGET_STOPS or facts.steps_run >= max_steps
    censored = not generalized and kind != "diverged" and on_budget
    if censored:
        reasons.append(f"ended on its step budget ({facts.steps_run}/{max_steps}) without holding {g_acc:g}: "
                       "censored, not proof of no grokking")
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
        label_lens=label_l, label_interchange=label_i, t_memorize=t_mem, t_generalize=t_gen,
        t_transient=facts.t_transient, delay_ratio=ratio, log_step_gap=math.log10(ratio) if ratio is not None else None,
        censored=censored, steps_run=facts.steps_run, max_steps=int(max_steps), stop_reason=stop_reason,
        n_evals=facts.n_evals, final_train_acc=train.last(), final_target_acc=target.last(),
        final_target_level=final_level, max_target_acc=float(smoothed.max()) if len(smoothed) else None,
        shortcut_best=e.shortcut_best, interchange=e.interchange, interchange_control=e.interchange_control,
        interchange_n=e.interchange_n, bridge_found=e.bridge_found, bridge_given_correct=e.bridge_given_correct,
        causal_r1=e.causal_r1, n_target=e.n_target, lens_visible=lens_visible,
        margins={k: float(v) for k, v in margins.items()}, reasons=reasons,
        classifier_version=CLASSIFIER_VERSION, params=p.to_dict())
