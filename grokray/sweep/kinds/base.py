"""What a sweep kind is: the one protocol the driver and the Tune trainable talk to.

A sweep of kind ``trial`` trains fresh models from a base trial config; a sweep of kind
``finetune`` fine-tunes the labelled runs of other sweeps. Everything that differs between
them lives behind :class:`SweepKind`; the driver picks the kind once (``spec.kind``) and
never asks which one it has.

The life of a sweep, and the kind's part in it::

    spec.yaml --parse--> SweepSpec (kind section parsed by ``kind.parse``)
    driver:  kind.prepare(spec, uri)            before anything is created (resolve sources, build data)
             kind.search_space(spec, prepared)  Tune search-space entries besides the spec's parameters
             kind.log_prepared(...)             what the parent run records about the preparation
    parse:   kind.check(spec)                   checks of the whole parsed spec (one-line ConfigError)
    trial:   kind.build(spec, config, ...)      the Trainer, its callbacks, the run's tags and name
    report:  kind.map_name                      which report (phase map / transfer map) the CLI draws
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Protocol

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from grokray.sweep.params import Parameter
    from grokray.sweep.spec import SweepSpec


@dataclass
class Built:
    """What a kind builds for one trial: the trainer, its callbacks (after the MLflow logger,
    before the Tune reporter), extra run tags and, optionally, a better run name."""
    trainer: Any
    callbacks: list = field(default_factory=list)
    tags: dict = field(default_factory=dict)
    run_name: str | None = None


class SweepKind(Protocol):
    #: The spec's ``kind:`` value, and the ``grokray.kind`` tag of its trial runs.
    name: str
    #: Top-level spec keys this kind reads besides the common ones.
    spec_keys: tuple[str, ...]
    #: The report drawn over its runs: its folder on the parent run (``phase_map`` | ``transfer_map``,
    #: :mod:`grokray.contract`); the CLI looks up what to draw by it (:mod:`grokray.cli.maps`).
    map_name: str
    #: Metrics every Tune result carries (the progress table and schedulers read them).
    reported: tuple[str, ...]
    #: Test columns of the terminal progress table: (header, metric).
    progress_columns: tuple[tuple[str, str], ...]
    #: Whether the classifier actor labels its runs.
    labelled: bool
    #: Whether its trials may be packed (``resources.pack``: K trials trained as one batched model).
    packable: bool

    def parse(self, raw: Mapping[str, Any], parameters: "list[Parameter]") -> Any:
        """The kind's own spec section (None if it has none); one-line ConfigError on bad input."""

    def check(self, spec: "SweepSpec") -> None:
        """Checks that need the whole parsed spec (the base config, every parameter); one-line
        ConfigError. Runs once, at parse time, before anything is created."""

    def owns(self, key: str) -> bool:
        """Parameters the kind validates and consumes (not trial-config keys)."""

    def trial_keys(self, spec: "SweepSpec") -> list[str]:
        """The keys whose values name a trial (and go in its ``grokray.swept`` tag)."""

    def n_trials_note(self, spec: "SweepSpec") -> str:
        """A phrase for ``validate`` about trials the grid alone does not show ('' if none)."""

    def prepare(self, spec: "SweepSpec", tracking_uri: str) -> Any:
        """Work done before the sweep creates anything; what it returns goes to the next two."""

    def search_space(self, spec: "SweepSpec", prepared: Any) -> dict[str, Any]:
        """Tune search-space entries besides the spec's parameters."""

    def log_prepared(self, client: "MlflowClient", parent_run_id: str, prepared: Any) -> list[str]:
        """Record the preparation on the parent run; lines to print."""

    def build(self, spec: "SweepSpec", config: Mapping[str, Any], client: "MlflowClient", run_id: str,
              work_dir: str) -> Built:
        """The trainer for one trial and what goes with it (``config``: Tune's values)."""

    def view_columns(self, spec: "SweepSpec") -> list[str]:
        """The MLflow UI columns of the sweep's saved view before the swept params (search syntax:
        ``tags.`grokray.label```, ``metrics.`verdict/...```)."""

    def reading(self, spec: "SweepSpec", link: str) -> str:
        """The parent run's description after the sweep's own: how to read its runs (``link``: the view)."""
