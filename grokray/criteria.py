"""Label criteria as data: does a run's circuit evidence say its answers are mediated by the bridge?

A *criterion* is one way of deciding mechanism: a rate measured on the run's correct answers
(``rate``, over ``n`` answers), compared with a threshold (a :class:`~grokray.verdict.VerdictParams`
field). The verdict (:mod:`grokray.verdict`) decides *behaviour* from the curves (did the run
generalize, and late?) and asks every criterion of :data:`REGISTRY` whether the answers are
mediated; each criterion gives its own label (``Verdict.labels[name]``), stored as the tag
``grokray.label_<name>``, shown as the phase map's ``label_<name>`` column and offered by the
CLI's ``--criterion``. Everything that lists criteria iterates :data:`REGISTRY`: a new criterion
is one :class:`Criterion` entry here plus its measurement (an evidence key computed in
:mod:`grokray.circuits.evidence`), nothing else.

The registered criteria:

* ``interchange`` (the default; grokray's rule): the bridge interchange test
  (:mod:`grokray.circuits.interchange`, basis-free): the share of correct answers that follow a
  swapped bridge state, the best over the intermediate depths and positions searched;
  mediated when ``>= interchange_min``.
* ``carry``: the bridge-carry test (:mod:`grokray.circuits.carry`): the share of correct answers
  whose own hop-1 state, patched into another query with another second relation, makes it answer
  with their bridge; mediated when ``>= carry_min``. The interchange test shows the second hop
  *reads* the hop-1 state; this one that the clean answer's state *holds* its bridge: the trained
  negative control (answers memorized whole) passes the first (0.64-0.71) and fails this one
  (<= 0.08).
* ``lens``: the plain logit lens reads the true bridge at an intermediate state for
  ``bridge_given_correct`` of the correct answers; mediated when ``>= circuit_bridge``. He et
  al. report the lens bridge rate over all OOD queries and set no threshold: conditioning on
  correct answers and the 0.8 cut-off are grokray's choices. The lens reads only the
  unembedding's basis, so "not found" can mean "in another basis"; its verdict also gives the
  ``lens-visible`` / ``lens-invisible`` part of a verdict's detail.

A model with no intermediate state (one block application) cannot route an answer through a
bridge state: every criterion says "not mediated" (:func:`judge_all`).

Example:
    >>> from grokray.verdict import VerdictParams
    >>> j = REGISTRY["interchange"].judge({"interchange": 0.9, "interchange_n": 200}, VerdictParams())
    >>> j.mediated, round(j.confidence, 2)
    (True, 1.0)
    >>> REGISTRY["lens"].judge({"bridge_given_correct": 0.9, "lens_n_correct": 8}, VerdictParams()).mediated is None
    True
    >>> [c.tag for c in REGISTRY.values()]
    ['grokray.label_interchange', 'grokray.label_carry', 'grokray.label_lens']
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from grokray.confidence import rate_confidence

if TYPE_CHECKING:
    from grokray.verdict import VerdictParams

#: Prefix of a criterion's label tag (today's spelling: stored runs still read).
LABEL_TAG_PREFIX = "grokray.label_"


@dataclass(frozen=True)
class Judgement:
    """One criterion's answer for one run."""
    mediated: bool | None        # None: no sufficient evidence for this criterion
    rate: float | None           # the measured rate (None when absent or insufficient)
    confidence: float            # how sure the comparison is (0.5 when undecided)
    reason: str                  # in words, with the numbers and the threshold
    detail: str | None = None    # words this criterion adds to the verdict's detail, if any


def _no_extra(ev: Mapping[str, Any]) -> str:
    return ""


@dataclass(frozen=True)
class Criterion:
    """A label criterion: which evidence it reads, which threshold, what it says."""
    name: str
    summary: str                          # one line: docs, ``--help``, the UI's description
    rate: str                             # evidence key of the measured rate
    n: str                                # evidence key of the number of answers it was measured on
    threshold: str                        # the VerdictParams field the rate is compared with
    measured: str                         # what the rate is, in words ("... of correct answers ...")
    yes: str                              # what a rate at or above the threshold means
    no: str                               # ... below it
    extra_evidence: tuple[str, ...] = ()  # other evidence keys it reports (controls, notes)
    details: tuple[str, str] | None = None  # detail words when mediated / not (the lens: visible / invisible)
    context: Callable[[Mapping[str, Any]], str] = _no_extra   # extra words after the rate (a control)

    @property
    def tag(self) -> str:
        """The run tag that stores this criterion's label."""
        return LABEL_TAG_PREFIX + self.name

    @property
    def column(self) -> str:
        """The phase map's column of this criterion's label."""
        return f"label_{self.name}"

    @property
    def evidence_keys(self) -> tuple[str, ...]:
        return (self.rate, self.n, *self.extra_evidence)

    def judge(self, ev: Mapping[str, Any], p: "VerdictParams") -> Judgement:
        """Mediated or not, from ``ev`` (checked evidence: absent keys mean "not measured")."""
        value, n = ev.get(self.rate), ev.get(self.n)
        bar = getattr(p, self.threshold)
        if value is None:
            note = ev.get(f"{self.name}_note") or f"no {self.name} measurement"
            return Judgement(None, None, 0.5, f"{self.name}: {note}")
        if n is not None and n < p.min_evidence_n:
            return Judgement(None, None, 0.5, f"{self.name}: insufficient: measured on {n} correct answers "
                                              f"(< {p.min_evidence_n})")
        mediated = value >= bar
        over = f" over {n} correct answers" if n is not None else ""
        words = f"{self.name} {value:.2f} {'>=' if mediated else '<'} {bar:g}{over}{self.context(ev)}: " \
                f"{self.yes if mediated else self.no}"
        detail = None if self.details is None else self.details[0 if mediated else 1]
        return Judgement(mediated, float(value), rate_confidence(value, bar, n, p.acc_scale), words, detail)


def _interchange_control(ev: Mapping[str, Any]) -> str:
    c = ev.get("interchange_control")
    return "" if c is None else f", same-bridge control keeps {c:.2f}"


INTERCHANGE = Criterion(
    name="interchange",
    summary="the bridge interchange test: swap the bridge state, does the answer follow? (grokray's rule)",
    rate="interchange", n="interchange_n", threshold="interchange_min",
    measured="share of correct answers that follow a swapped bridge (best depth and positions)",
    yes="swapping the bridge swaps the answer", no="the answers do not follow the bridge at any depth searched",
    extra_evidence=("interchange_control", "interchange_note"), context=_interchange_control)

CARRY = Criterion(
    name="carry",
    summary="the bridge-carry test: does a correct answer's own hop-1 state hold its bridge, in a form another "
            "query's second hop reads? (grokray's rule; the trained negative control fails it, as it should)",
    rate="carry", n="carry_n", threshold="carry_min",
    measured="share of correct answers whose hop-1 state, put into another query, makes it answer with their bridge",
    yes="the answer's own hop-1 state holds its bridge", no="the answer's hop-1 state holds no bridge the second "
    "hop reads: answered without composing", extra_evidence=("carry_note",))

LENS = Criterion(
    name="lens",
    summary="the logit lens reads the bridge at an intermediate state (He et al.'s measurement; "
            "threshold and conditioning on correct answers are grokray's)",
    rate="bridge_given_correct", n="lens_n_correct", threshold="circuit_bridge",
    measured="share of correct answers whose bridge the logit lens decodes at an intermediate state",
    yes="the lens reads the bridge (lens-visible)", no="the lens does not read the bridge (lens-invisible)",
    details=("lens-visible", "lens-invisible"))

#: Every label criterion, by name; the first is the default.
REGISTRY: dict[str, Criterion] = {c.name: c for c in (INTERCHANGE, CARRY, LENS)}
#: Criterion names, in registry order.
CRITERIA: tuple[str, ...] = tuple(REGISTRY)
DEFAULT_CRITERION = CRITERIA[0]


def judge_all(ev: Mapping[str, Any], p: "VerdictParams") -> dict[str, Judgement]:
    """Every criterion's judgement. A model with no intermediate state is never mediated."""
    if ev.get("n_intermediate") == 0:
        why = ("no intermediate state (one block application): the answers cannot be mediated by a bridge "
               "state")
        return {name: Judgement(False, None, 1.0, f"{name}: {why}", c.details[1] if c.details else None)
                for name, c in REGISTRY.items()}
    return {name: c.judge(ev, p) for name, c in REGISTRY.items()}


def criterion_evidence_keys() -> tuple[str, ...]:
    """Every evidence key some criterion reads, in registry order, without repeats."""
    return tuple(dict.fromkeys(k for c in REGISTRY.values() for k in c.evidence_keys))


def labels_from_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """``{criterion: label}`` from a run's tags (criteria the run was not labelled by are left out)."""
    return {name: tags[c.tag] for name, c in REGISTRY.items() if tags.get(c.tag) is not None}
