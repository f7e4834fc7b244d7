"""Run verdicts: one pure function from a run's metric history (+ circuit evidence) to a label.

:func:`classify_history` reads what the trainer logs at every evaluation
(``acc/train``, ``acc/test_inferred_<split>``, ``train_loss``, ``param_norm``,
``lens/<split>/bridge_found``, ``lens/<split>/bridge_given_correct``) plus optional
end-of-run circuit evidence, and returns a :class:`Verdict`:

* ``label``: ``true_grokking`` (generalized, and the answers go through the bridge),
  ``fake_grokking`` (generalized, answers do not go through the bridge),
  ``no_grokking``. A run that generalized but comes with no circuit evidence at all is
  labelled ``true_grokking`` by behaviour only, with confidence capped at
  ``no_circuit_cap`` and a reason saying so: fake grokking is a claim about the circuit
  that needs evidence, so it is never the default;
* ``detail``: the behaviour, after Liu et al. 2022 adapted to this task (ratios of
  steps, an OOD threshold well below 0.99): ``grokking``, ``comprehension``, ``semi``,
  ``memorization``, ``censored``, ``confusion``, ``diverged``;
* ``censored``: the run did not generalize and ended on its step budget; that is not
  proof of "no grokking", only of "not within this budget";
* ``confidence`` in [0, 1], ``reasons`` (why, in words), and the numbers behind them.

The rule, step by step (each step is one small function below):

1. Clean (:func:`clean_history`): sort by step, keep the last of duplicated steps,
   drop entries without a finite step; non-finite metric values are ignored per metric
   (:func:`metric_series`). The run diverged if ``stop_reason == "diverged"`` or any
   ``train_loss`` / ``param_norm`` is non-finite.
2. Smooth the target accuracy with a running median over ``smooth_window`` evaluations
   (:func:`running_median`): a ~100-query OOD set swings 0.05-0.1 per evaluation.
3. ``t_memorize``: first step from which ``acc/train >= memorize_acc`` holds for
   ``sustain`` consecutive evaluations (:func:`first_sustained`; at the end of the
   history all remaining evaluations must pass).
4. ``t_generalize``: the same on the smoothed target accuracy with the split's
   ``generalize_acc_<split>``.
5. ``delay_ratio = t_generalize / t_memorize`` (steps clamped to >= 1, so an event at
   step 0 gives a finite ratio) and ``log_step_gap = log10`` of it.
6. Behaviour (:func:`behaviour`): diverged -> ``diverged``; generalized -> ``comprehension``
   if ``delay_ratio <= comprehension_ratio`` (also when it generalized before, or
   without, memorizing) else ``grokking``; not generalized: never memorized ->
   ``confusion``; smoothed target after ``t_memorize`` reached ``semi_acc_<split>`` ->
   ``semi``; ran ``>= memorization_ratio x t_memorize`` steps -> ``memorization``;
   else ``censored`` (too short to say).
7. Circuit (:func:`circuit`, generalized runs only): true when
   ``bridge_given_correct >= circuit_bridge`` AND (if given) ``causal_r1 >=
   circuit_causal``, fake otherwise. The lens alone cannot tell fake from true (a
   decoded bridge shows hop 1 was retrieved, not that the answer used it), so a verdict
   without ``causal_r1`` has its confidence multiplied by ``lens_only_factor``. Without
   any circuit evidence the label is ``true_grokking`` by behaviour only and the
   confidence is capped at ``no_circuit_cap`` (0.5).
8. Confidence (:func:`margin_confidence`, :func:`confidence`): every comparison that
   decided the branch taken contributes ``0.5 + 0.5 * tanh(|value - threshold| / scale)``
   (0.5 when the value is unknown); the verdict takes the minimum, then multiplies by
   ``n_evals / min_evals`` if fewer than ``min_evals`` evaluations, by
   ``small_target_factor`` if ``n_target < min_target_n``, by ``lens_only_factor`` as
   above, and caps at ``no_circuit_cap`` without circuit evidence. A diverged run has
   confidence 1 (divergence is observed, not inferred). ``Verdict.margins`` lists the
   contributions. It is a monotone score for ranking and filtering, not a calibrated
   probability.

Example:
    >>> from grokray.verdict import classify_history
    >>> steps = [0, 100, 300, 1000, 2000, 3000, 5000, 10000, 20000, 30000]
    >>> history = [{"step": s, "acc/train": 1.0 if s >= 1000 else 0.1,
    ...             "acc/test_inferred_ood": 0.8 if s >= 10000 else 0.05} for s in steps]
    >>> v = classify_history(history, max_steps=30000,
    ...                      evidence={"causal_r1": 0.9, "bridge_given_correct": 0.97, "n_target": 500})
    >>> v.label, v.detail, v.t_memorize, v.t_generalize, v.delay_ratio, v.censored
    ('true_grokking', 'grokking', 1000, 10000, 10.0, False)
    >>> round(v.confidence, 2), v.reasons[0]
    (0.97, 'OOD acc >= 0.5 from step 10000 to the end (smoothed), 10.0x after memorization at 1000')
    >>> classify_history(history[:4], max_steps=30000).detail   # memorized, then stopped: too short
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

#: Bumped whenever a rule or a default changes what a history is labelled.
CLASSIFIER_VERSION = "1"
LABELS = ("true_grokking", "fake_grokking", "no_grokking")
DETAILS = ("grokking", "comprehension", "unmemorized", "transient", "semi", "memorization", "censored", "confusion",
           "diverged")
SPLITS = ("ood", "id")
#: Target accuracy metric per split.
TARGET_ACC = {"ood": "acc/test_inferred_ood", "id": "acc/test_inferred_id"}
TRAIN_ACC = "acc/train"
#: ``stop_reason`` values meaning "ran to its budget".
BUDGET_STOPS = (None, "max_steps")
#: Keys accepted in ``evidence``.
EVIDENCE_KEYS = ("causal_r1", "bridge_given_correct", "bridge_found", "n_target")


# --------------------------------------------------------------------------- parameters

def _fail(name: str, problem: str, value: Any) -> None:
    raise ValueError(f"{name}: {problem} (got {value!r})")


@dataclass(frozen=True)
class VerdictParams:
    """Every threshold of the verdict, with its reason. Validated on construction.

    Accuracies are fractions in [0, 1]; ratios are of steps; scales set how fast the
    confidence of a comparison grows with its margin.
    """
    #: Running-median window (evaluations) for the target accuracy. 3 removes an isolated
    #: one-evaluation spike without delaying a real step rise (median of 3 at its edge).
    smooth_window: int = 3
    #: Consecutive evaluations a threshold must hold for (train raw, target smoothed).
    sustain: int = 2
    #: Train accuracy that counts as memorized (Wang et al., He et al.: 0.99).
    memorize_acc: float = 0.99
    #: OOD accuracy that counts as generalized: looped models plateau near 0.75-0.8 and He
    #: et al.'s natural run ended at 0.68, so Liu et al.'s 0.9 would miss true grokking.
    generalize_acc_ood: float = 0.5
    #: ID accuracy that counts as generalized: ID grokking reaches 0.95+ (Wang et al.).
    generalize_acc_id: float = 0.9
    #: OOD: a late rise to this, without reaching ``generalize_acc_ood``, is ``semi``
    #: (CPU probes: hop1/hop2 runs climb to 0.3-0.6; chance is ~0.01-0.05).
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
    #: ``bridge_given_correct`` at or above which answers count as going through the
    #: bridge. CPU probes: memorized-only 0.54-0.65, generalized ~1.0; He et al.'s fake
    #: run (hop2 only) ended with bridge found 0.65. To calibrate.
    circuit_bridge: float = 0.8
    #: ``causal_r1`` at or above which the answers depend on the r1 state: a majority of
    #: correct answers flip when it is patched. No paper number; to calibrate.
    circuit_causal: float = 0.5
    #: Confidence scale of test-accuracy and circuit comparisons: a margin of 0.1 (one to
    #: two single-evaluation swings of a ~100-query set) gives 0.88.
    acc_scale: float = 0.1
    #: Confidence scale of train-accuracy comparisons (train acc sits near the 0.99
    #: ceiling; a margin of 0.01, i.e. train at 1.0, gives 0.98).
    train_acc_scale: float = 0.005
    #: Confidence scale of step-ratio comparisons, in decades (0.3 = a factor 2 gives 0.88).
    log_scale: float = 0.3
    #: Fewer target (or train) evaluations than this: the curve is too short to trust and
    #: the confidence is multiplied by ``n_evals / min_evals`` (0 evaluations: confidence 0).
    min_evals: int = 5
    #: A target set smaller than this (``evidence["n_target"]``) is noisy (112 queries:
    #: one query = 0.9 points of accuracy).
    min_target_n: int = 200
    #: Confidence multiplier for a small target set.
    small_target_factor: float = 0.8
    #: Confidence multiplier when the circuit was decided on the logit lens alone.
    lens_only_factor: float = 0.75
    #: Confidence cap for a generalized run without any circuit evidence (<= 0.5: whether
    #: it is true or fake grokking is a coin flip as far as this function knows).
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
        for f in ("smooth_window", "sustain", "min_evals"):
            if getattr(self, f) < 1:
                _fail(name(f), "must be >= 1", getattr(self, f))
        if self.min_target_n < 0:
            _fail(name("min_target_n"), "must be >= 0", self.min_target_n)
        for f in ("memorize_acc", "generalize_acc_ood", "generalize_acc_id", "semi_acc_ood", "semi_acc_id",
                  "circuit_bridge", "circuit_causal", "small_target_factor", "lens_only_factor"):
            if not 0 < getattr(self, f) <= 1:
                _fail(name(f), "must be in (0, 1]", getattr(self, f))
        for s in SPLITS:
            if self.semi_acc(s) >= self.generalize_acc(s):
                raise ValueError(f"{name(f'semi_acc_{s}')}: must be below generalize_acc_{s} (got semi_acc_{s}="
                                 f"{self.semi_acc(s)!r}, generalize_acc_{s}={self.generalize_acc(s)!r})")
        if not 0 < self.no_circuit_cap <= 0.5:
            _fail(name("no_circuit_cap"), "must be in (0, 0.5]", self.no_circuit_cap)
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

def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


@dataclass(frozen=True)
class Verdict:
    """What :func:`classify_history` concluded about one run, and why.

    Steps are ints, accuracies floats in [0, 1]; an unknown value is ``None``.
    ``max_target_acc`` is the maximum of the SMOOTHED target accuracy;
    ``final_*`` are the last finite raw values; ``margins`` maps each decisive
    comparison to its confidence contribution.
    """
    label: str
    detail: str
    confidence: float
    split: str
    t_memorize: int | None
    t_generalize: int | None
    delay_ratio: float | None
    log_step_gap: float | None
    censored: bool
    steps_run: int
    max_steps: int
    stop_reason: str | None
    n_evals: int
    final_train_acc: float | None
    final_target_acc: float | None
    max_target_acc: float | None
    bridge_found: float | None
    bridge_given_correct: float | None
    causal_r1: float | None
    n_target: int | None
    margins: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    classifier_version: str = CLASSIFIER_VERSION
    params: dict[str, Any] = field(default_factory=lambda: VerdictParams().to_dict())

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            _fail("Verdict.label", f"must be one of {LABELS}", self.label)
        if self.detail not in DETAILS:
            _fail("Verdict.detail", f"must be one of {DETAILS}", self.detail)
        if self.split not in SPLITS:
            _fail("Verdict.split", f"must be one of {SPLITS}", self.split)

    @property
    def grokked(self) -> bool:
        """Generalized (true or fake)."""
        return self.label != "no_grokking"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite floats become ``None``)."""
        return _json_safe(dataclasses.asdict(self))

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


# --------------------------------------------------------------------------- steps 6-8: decisions

def margin_confidence(value: float | None, threshold: float, scale: float) -> float:
    """``0.5 + 0.5 * tanh(|value - threshold| / scale)``: 0.5 at the threshold (or when the
    value is unknown), towards 1 far from it. Monotone in the margin.

    >>> round(margin_confidence(0.6, 0.5, 0.1), 3), margin_confidence(None, 0.5, 0.1)
    (0.881, 0.5)
    """
    if value is None:
        return 0.5
    return 0.5 + 0.5 * math.tanh(abs(value - threshold) / scale)


class _Facts(NamedTuple):
    split: str
    diverged_at: int | None
    stop_diverged: bool
    steps_run: int
    n_evals: int
    train_level: float | None   # best sustained train acc
    target_level: float | None  # best sustained smoothed target acc
    t_memorize: int | None
    t_generalize: int | None
    t_transient: int | None      # a sustained crossing that fell back before the end (None if none)
    final_level: float | None    # the smoothed target level held over the last evaluations
    max_after_memorize: float | None


def behaviour(facts: _Facts, p: VerdictParams) -> tuple[str, dict[str, float], list[str]]:
    """The ``detail`` of a run, the confidence contributions of the comparisons that
    decided it, and reasons in words."""
    name = facts.split.upper()
    g_acc, s_acc = p.generalize_acc(facts.split), p.semi_acc(facts.split)
    margins: dict[str, float] = {}
    reasons: list[str] = []
    if facts.stop_diverged or facts.diverged_at is not None:
        why = "stop_reason='diverged'" if facts.stop_diverged else \
            f"non-finite train_loss/param_norm at step {facts.diverged_at}"
        reasons.append(f"diverged: {why}")
        if facts.t_generalize is not None:
            reasons.append(f"{name} acc had reached {g_acc:g} at step {facts.t_generalize} before diverging")
        return "diverged", {"diverged": 1.0}, reasons
    memorized = facts.t_memorize is not None
    margins["memorized"] = margin_confidence(facts.train_level, p.memorize_acc, p.train_acc_scale)
    margins["generalized"] = margin_confidence(facts.final_level, g_acc, p.acc_scale)
    if facts.t_generalize is not None:
        t_gen = facts.t_generalize
        if not memorized:
            del margins["memorized"]
            margins["not_memorized"] = margin_confidence(facts.train_level, p.memorize_acc, p.train_acc_scale)
            reasons.append(f"{name} acc >= {g_acc:g} from step {t_gen} to the end (smoothed), "
                           f"but train acc never held >= {p.memorize_acc:g} for {p.sustain} evaluations")
            return "unmemorized", margins, reasons
        ratio = step_ratio(t_gen, facts.t_memorize)
        margins["delay_ratio"] = margin_confidence(math.log10(ratio), math.log10(p.comprehension_ratio),
                                                   p.log_scale)
        reasons.append(f"{name} acc >= {g_acc:g} from step {t_gen} to the end (smoothed), "
                       f"{ratio:.1f}x after memorization at {facts.t_memorize}")
        if ratio <= p.comprehension_ratio:
            reasons.append(f"delay ratio {ratio:.2f} <= {p.comprehension_ratio:g}: test rose with train")
            return "comprehension", margins, reasons
        reasons.append(f"delay ratio {ratio:.2f} > {p.comprehension_ratio:g}: delayed generalization")
        return "grokking", margins, reasons
    final = "none" if facts.final_level is None else f"{facts.final_level:.2f}"
    if facts.t_transient is not None:
        # Reached the threshold, then fell back: a transient (e.g. a shortcut learned before the
        # facts), never generalization. Recorded with its step, labelled on where the run ended.
        reasons.append(f"transient: smoothed {name} acc reached {facts.target_level:.2f} >= {g_acc:g} at step "
                       f"{facts.t_transient} and fell back (ends at {final})")
        return "transient", margins, reasons
    best = "none" if facts.target_level is None else f"{facts.target_level:.2f}"
    reasons.append(f"{name} acc never >= {g_acc:g} for {p.sustain} evaluations (best smoothed {best})")
    if not memorized:
        del margins["memorized"]
        margins["not_memorized"] = margin_confidence(facts.train_level, p.memorize_acc, p.train_acc_scale)
        best = "none" if facts.train_level is None else f"{facts.train_level:.3f}"
        reasons.append(f"train acc never >= {p.memorize_acc:g} for {p.sustain} evaluations (best {best})")
        return "confusion", margins, reasons
    reasons.append(f"train acc >= {p.memorize_acc:g} from step {facts.t_memorize}")
    late = facts.max_after_memorize
    margins["semi"] = margin_confidence(late, s_acc, p.acc_scale)
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


def circuit(bridge_given_correct: float | None, causal_r1: float | None,
            p: VerdictParams) -> tuple[str, dict[str, float], list[str], float]:
    """Label of a generalized run from its circuit evidence, the decisive contributions,
    reasons, and a confidence multiplier (``lens_only_factor`` without the causal test)."""
    if bridge_given_correct is None and causal_r1 is None:
        return "true_grokking", {}, [
            "no circuit evidence: labelled by behaviour only (fake grokking needs evidence); "
            f"confidence capped at {p.no_circuit_cap:g}"], 1.0
    checks = {}
    if bridge_given_correct is not None:
        checks["bridge_given_correct"] = (bridge_given_correct, p.circuit_bridge)
    if causal_r1 is not None:
        checks["causal_r1"] = (causal_r1, p.circuit_causal)
    contrib = {k: margin_confidence(v, t, p.acc_scale) for k, (v, t) in checks.items()}
    failed = [k for k, (v, t) in checks.items() if v < t]
    reasons = [f"{k} {v:.2f} {'<' if k in failed else '>='} {t:g}" for k, (v, t) in checks.items()]
    factor = 1.0
    if causal_r1 is None:
        factor = p.lens_only_factor
        reasons.append("no causal test: the lens alone shows the bridge was retrieved, not that the "
                       f"answer used it; confidence x{p.lens_only_factor:g}")
    if failed:
        # fake if ANY check fails: the strongest failing check decides
        worst = max(failed, key=lambda k: contrib[k])
        reasons.append("answers do not go through the bridge: fake grokking")
        return "fake_grokking", {worst: contrib[worst]}, reasons, factor
    reasons.append("answers go through the bridge: true grokking")
    return "true_grokking", contrib, reasons, factor


def confidence(margins: Mapping[str, float], *, n_evals: int, n_target: int | None, factor: float,
               cap: float, p: VerdictParams) -> tuple[float, list[str]]:
    """``min(margins) x penalties``, capped; see the module docstring."""
    value = min(margins.values()) * factor
    reasons = []
    if n_evals < p.min_evals:
        value *= n_evals / p.min_evals
        reasons.append(f"only {n_evals} evaluations (< {p.min_evals}): confidence x{n_evals}/{p.min_evals}")
    if n_target is not None and n_target < p.min_target_n:
        value *= p.small_target_factor
        reasons.append(f"target set has {n_target} queries (< {p.min_target_n}): "
                       f"confidence x{p.small_target_factor:g}")
    return float(min(max(value, 0.0), cap, 1.0)), reasons


# --------------------------------------------------------------------------- entry point

def _check_inputs(split: Any, max_steps: Any, stop_reason: Any, params: Any) -> VerdictParams:
    if split not in SPLITS:
        _fail("split", f"must be one of {SPLITS}", split)
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


def _check_evidence(evidence: Mapping[str, Any] | None) -> dict[str, Any]:
    """Known keys only; ``None``/NaN values mean "absent"; fractions in [0, 1]."""
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
        if key == "n_target":
            if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < 0:
                _fail("evidence['n_target']", "must be an integer >= 0", value)
            out[key] = int(value)
        else:
            if not is_number(value) or not 0 <= value <= 1:
                _fail(f"evidence[{key!r}]", "must be a number in [0, 1]", value)
            out[key] = float(value)
    return out


def classify_history(history: Iterable[Mapping[str, Any]], *, max_steps: int, stop_reason: str | None = None,
                     evidence: Mapping[str, Any] | None = None, split: str = "ood",
                     params: VerdictParams | Mapping[str, Any] = VerdictParams()) -> Verdict:
    """Label one run from its metric history (see the module docstring for the rule).

    Args:
        history: the trainer's per-evaluation dicts (``"step"`` plus metrics), in any
            order, possibly duplicated (the last entry of a step wins), with missing or
            non-finite values (ignored), possibly empty.
        max_steps: the run's step budget.
        stop_reason: why the run stopped (``"max_steps"``, ``"diverged"``, a sweep
            stopper's reason) or ``None`` if unknown.
        evidence: end-of-run circuit evidence: ``causal_r1``, ``bridge_given_correct``
            (overrides the history's last value), ``bridge_found`` (idem), ``n_target``.
        split: ``"ood"`` or ``"id"``: which test split is the target.
        params: thresholds (:class:`VerdictParams` or a dict of its fields).

    Raises:
        ValueError: one line naming a bad argument, parameter or history value.
    """
    p = _check_inputs(split, max_steps, stop_reason, params)
    ev = _check_evidence(evidence)
    entries, dropped = clean_history(history)
    train = metric_series(entries, TRAIN_ACC)
    target = metric_series(entries, TARGET_ACC[split])
    smoothed = running_median(target.values, p.smooth_window)
    t_mem = first_sustained(train.steps, train.values, p.memorize_acc, p.sustain)
    # Generalization must hold: from t_gen to the end of the run, not just once.
    t_gen = held_from(target.steps, smoothed, p.generalize_acc(split), p.sustain)
    t_first = first_sustained(target.steps, smoothed, p.generalize_acc(split), p.sustain)
    after = smoothed[target.steps >= t_mem] if t_mem is not None else smoothed[:0]
    facts = _Facts(
        split=split, diverged_at=divergence_step(entries), stop_diverged=stop_reason == "diverged",
        steps_run=entries[-1]["step"] if entries else 0, n_evals=min(len(train.values), len(target.values)),
        train_level=sustained_level(train.values, p.sustain), target_level=sustained_level(smoothed, p.sustain),
        t_memorize=t_mem, t_generalize=t_gen, t_transient=t_first if t_gen is None else None,
        final_level=float(smoothed[-min(p.sustain, len(smoothed)):].min()) if len(smoothed) else None,
        max_after_memorize=float(after.max()) if len(after) else None)

    detail, margins, reasons = behaviour(facts, p)
    lens = f"lens/{split}/"
    bgc = ev.get("bridge_given_correct", metric_series(entries, lens + "bridge_given_correct").last())
    found = ev.get("bridge_found", metric_series(entries, lens + "bridge_found").last())
    causal = ev.get("causal_r1")
    n_target = ev.get("n_target")

    label, factor, cap = "no_grokking", 1.0, 1.0
    if detail in ("grokking", "comprehension", "unmemorized"):
        label, circuit_margins, circuit_reasons, factor = circuit(bgc, causal, p)
        margins.update(circuit_margins)
        reasons += circuit_reasons
        if bgc is None and causal is None:
            cap = p.no_circuit_cap

    generalized = label != "no_grokking"
    on_budget = stop_reason in BUDGET_STOPS or facts.steps_run >= max_steps
    censored = not generalized and detail != "diverged" and on_budget
    if censored:
        reasons.append(f"ended on its step budget ({facts.steps_run}/{max_steps}) without a test rise: "
                       "censored, not proof of no grokking")
    if stop_reason not in BUDGET_STOPS and stop_reason != "diverged":
        reasons.append(f"stopped early at step {facts.steps_run} by {stop_reason!r}")
    if dropped:
        reasons.append(f"{dropped} history entries without a finite step ignored")

    if detail == "diverged":
        conf = 1.0
    else:
        conf, penalty_reasons = confidence(margins, n_evals=facts.n_evals, n_target=n_target, factor=factor,
                                           cap=cap, p=p)
        reasons += penalty_reasons

    ratio = step_ratio(t_gen, t_mem) if t_gen is not None and t_mem is not None else None
    return Verdict(
        label=label, detail=detail, confidence=conf, split=split, t_memorize=t_mem, t_generalize=t_gen,
        delay_ratio=ratio, log_step_gap=math.log10(ratio) if ratio is not None else None, censored=censored,
        steps_run=facts.steps_run, max_steps=int(max_steps), stop_reason=stop_reason, n_evals=facts.n_evals,
        final_train_acc=train.last(), final_target_acc=target.last(),
        max_target_acc=float(smoothed.max()) if len(smoothed) else None,
        bridge_found=found, bridge_given_correct=bgc, causal_r1=causal, n_target=n_target,
        margins={k: float(v) for k, v in margins.items()}, reasons=reasons,
        classifier_version=CLASSIFIER_VERSION, params=p.to_dict())
