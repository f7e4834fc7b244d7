"""The sweep's terminal progress: a compact summary that reads the same at 4 trials and at 500.

Tune's own output prints every metric of every result, and a table of every trial stops
being readable long before a sweep of hundreds of trials ends. What a researcher watches is a
summary (:meth:`SweepProgress.summary`):

    [grokray] 12m30s | trials: 40 done, 2 running, 158 pending, 0 failed | labels: true 5, fake 2, no 33 | ETA 48m10s
      running  phi=7.2,augmentation=none_00041   step 1,200/4,000  train 0.981  ID 0.120  OOD 0.031
      finished phi=3.6,augmentation=hop2_00039  at 4,000 (max_steps)  train 1.000  ID 0.950  OOD 0.030
      labelled phi=3.6,augmentation=hop2_00038  no_grokking (memorization, 0.71)  run 9f1c2a...

* attached to a terminal, the summary is redrawn in place every ``every_s`` seconds (a few
  lines, whatever the size of the sweep);
* not attached (CI, a Ray Job's log, ``> file``), the status line and the running trials are
  printed as plain lines every ``every_s`` seconds (30 by default), and every trial that
  finishes, fails or is labelled gets one line of its own, so the log holds each trial once;
* the full table is one command away: ``grokray sweep status NAME``;
* the same lines (the summary every 30 s) go to ``log_path`` (``progress.log`` in the sweep's state
  folder) however the driver was started, so ``grokray sweep logs NAME`` and ``grokray sweep status
  NAME --follow`` follow a sweep started in another terminal or in the background.

Labels arrive from the classifier callback (:class:`grokray.sweep.classifier.ClassifierCallback`),
which records them on the shared :class:`SweepBoard` this display reads.
"""
from __future__ import annotations

import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback

from grokray.fmt import duration

#: Default test columns: (header, metric); a sweep kind brings its own.
TRIAL_COLUMNS = (("ID", "acc/test_inferred_id"), ("OOD", "acc/test_inferred_ood"))
#: How many running / finished / labelled trials the summary names.
SHOWN = 3
#: Set by a resuming driver: the progress log a restored display writes to when it had none.
RESUME_LOG_ENV = "GROKRAY_PROGRESS_LOG"
#: Seconds between two summaries in the progress log file.
LOG_EVERY_S = 30.0
#: Seconds of a trial's reports before its pace is trusted for the ETA (:meth:`SweepProgress._eta`).
MIN_PACE_S = 30.0


def _search_note(trial: Any) -> str:
    """``  [7/60 refine]`` for a trial the boundary search chose (``method: boundary``), else ``""``.

    >>> class T: config = {"_boundary_reason": "trial 7/60: refine: corners of a 2-step cell"}
    >>> _search_note(T())
    '  [7/60 refine]'
    """
    from grokray.sweep.boundary import REASON_KEY

    why = (getattr(trial, "config", None) or {}).get(REASON_KEY)
    if not why:
        return ""
    head, _, rest = str(why).partition(": ")
    return f"  [{head.removeprefix('trial ')} {rest.split(':', 1)[0].strip()}]"


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "  -  "


@dataclass
class SweepBoard:
    """What the driver knows of a sweep beyond Tune's trials: labels as they arrive."""
    labels: dict[str, int] = field(default_factory=dict)      # label -> count
    labelled: list[str] = field(default_factory=list)         # recent "name  label (detail, conf)" lines

    def record_label(self, text: str, label: str) -> None:
        self.labels[label] = self.labels.get(label, 0) + 1
        self.labelled = (self.labelled + [text])[-SHOWN:]

    def count_stored(self, labels: list[str]) -> None:
        """Start the counts from labels a store already holds (a resumed sweep's earlier trials).

        >>> board = SweepBoard(); board.count_stored(["no_grokking", "true_grokking", "no_grokking"])
        >>> board.labels
        {'no_grokking': 2, 'true_grokking': 1}
        """
        self.labels = dict(Counter(labels))


class SweepProgress(Callback):
    """Tune callback: the summary (module docstring), in place on a terminal, as lines otherwise."""

    def __init__(self, max_steps: int, n_trials: int | None = None, every_s: float | None = None,
                 stream: Any = None, columns: tuple = TRIAL_COLUMNS, board: SweepBoard | None = None,
                 interactive: bool | None = None, log_path: str | None = None):
        self.max_steps, self.n_trials = max_steps, n_trials
        self.log_path = log_path
        self.columns = tuple(columns)
        self.stream = stream
        self.board = board if board is not None else SweepBoard()
        self._interactive = interactive
        self.every_s = every_s if every_s is not None else (2.0 if self.interactive else 30.0)
        self._reset_clocks()

    def _reset_clocks(self) -> None:
        self._last_print = 0.0
        self._t0 = time.monotonic()
        self._drawn = 0                # lines of the summary currently on screen (terminal mode)
        self._last_logged = 0.0        # when the summary last went to log_path
        self._finished: list[str] = []
        self._durations: list[float] = []
        self._started: dict[str, float] = {}
        self._first: dict[str, tuple[float, int]] = {}   # trial -> (time, step) of its first report here

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["stream"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        # Restored by a resumed driver: clocks and screen of the old process mean nothing here. A sweep
        # started before progress logs existed gets the one the resuming driver names.
        self.__dict__.update(state)
        if not self.__dict__.get("log_path"):
            self.log_path = os.environ.get(RESUME_LOG_ENV) or None
        self._reset_clocks()

    # ------------------------------------------------------------------ output
    @property
    def out(self):
        return self.stream or sys.stdout

    @property
    def interactive(self) -> bool:
        if self._interactive is not None:
            return self._interactive
        return bool(getattr(self.out, "isatty", lambda: False)())

    def _log(self, text: str, summary: bool = False) -> None:
        """Append to ``log_path`` (a summary at most every LOG_EVERY_S); a log that cannot be written is
        dropped silently: the terminal output is what the driver owes its user."""
        if not self.log_path:
            return
        now = time.monotonic()
        if summary and now - self._last_logged < LOG_EVERY_S:
            return
        if summary:
            self._last_logged = now
        try:
            with open(self.log_path, "a") as fh:
                fh.write(text + "\n")
        except OSError:
            self.log_path = None

    def _write(self, text: str) -> None:
        """A line (or block) that stays: in terminal mode, printed above the live summary."""
        self._log(text)
        if self.interactive and self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")   # up to the summary's first line, clear below
            self._drawn = 0
        print(text, file=self.out, flush=True)

    def _draw(self, text: str, final: bool = False) -> None:
        self._log(text, summary=not final)
        if not self.interactive:
            print(text, file=self.out, flush=True)
            return
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")
        self.out.write(text + "\n")
        self.out.flush()
        self._drawn = text.count("\n") + 1

    # ------------------------------------------------------------------ the summary
    def _cells(self, r: dict) -> str:
        return "  ".join(f"{head} {_fmt(r.get(metric))}" for head, metric in self.columns)

    def _budget(self, trial: Any) -> int:
        """The trial's own step budget (``train.max_steps`` may be swept), else the sweep's."""
        own = (getattr(trial, "config", None) or {}).get("train.max_steps")
        return int(own) if isinstance(own, (int, float)) and own > 0 else self.max_steps

    def _eta(self, running: list, pending: int, now: float | None = None) -> str:
        """Time left: each running trial's steps left at its own pace (steps since its first
        report in this process over the time since: a restored trial counts from where it
        resumed, start-up is not counted), to its budget (a trial that stops early makes it
        shorter); then the pending ones at the mean duration of the finished trials (before any
        finished: a running trial's projected whole run), shared among the running slots; and
        never less than the longest running trial's time left. A pace measured over less than
        :data:`MIN_PACE_S` is not trusted (evaluations are log-spaced, so a trial's first steps
        are its slowest: the quickstart's third trial read "ETA 59 min" a minute before the end);
        such a trial counts as a whole finished trial's mean duration while one is known.
        ``-`` until a pace is known."""
        now = time.monotonic() if now is None else now
        left, whole, young = [], [], 0
        for t in running:
            first = self._first.get(str(t))
            step = (t.last_result or {}).get("step")
            if first is None or not step or step <= first[1] or now - first[0] < MIN_PACE_S:
                young += 1
                continue
            pace = (step - first[1]) / (now - first[0])          # steps per second
            budget = self._budget(t)
            left.append(max(0, budget - step) / pace)
            whole.append(budget / pace)
        if not running and not pending:
            return "0s"
        per_trial = (sum(self._durations) / len(self._durations) if self._durations else
                     sum(whole) / len(whole) if whole else None)
        if self._durations:
            left += [per_trial] * young
        if per_trial is None or (running and not left):
            return "-"
        slots = max(len(running), 1)
        return duration(max(max(left, default=0.0), (sum(left) + pending * per_trial) / slots))

    def summary(self, trials: list, recent: bool | None = None) -> str:
        """The status line and the running trials; with ``recent`` (default: on a terminal) also the
        last trials finished and labelled. Off a terminal those already have a line of their own
        in the log, and repeating them at every tick would flood it."""
        recent = self.interactive if recent is None else recent
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        done, running = counts.get("TERMINATED", 0), counts.get("RUNNING", 0)
        failed = counts.get("ERROR", 0)
        known = len(trials)
        pending = counts.get("PENDING", 0) + max(0, (self.n_trials or known) - known)
        labels = ", ".join(f"{k.replace('_grokking', '')} {v}" for k, v in sorted(self.board.labels.items())) or "-"
        lines = [f"[grokray] {duration(time.monotonic() - self._t0)} | trials: {done} done, {running} running, "
                 f"{pending} pending, {failed} failed | labels: {labels} | "
                 f"ETA {self._eta([t for t in trials if t.status == 'RUNNING'], pending)}"]
        shown = [t for t in trials if t.status == "RUNNING"][:SHOWN]
        width = max([len(str(t)) for t in shown] + [10])
        for t in shown:
            r = t.last_result or {}
            step = r.get("step")
            lines.append(f"  running  {str(t):<{width}}  step {step if step is not None else '-':>6}/{self._budget(t)}"
                         f"  train {_fmt(r.get('acc/train'))}  {self._cells(r)}{_search_note(t)}")
        if len(shown) < running:
            lines.append(f"  ... and {running - len(shown)} more running (grokray sweep status NAME: every trial)")
        if recent:
            lines += [f"  finished {line}" for line in self._finished[-SHOWN:]]
            lines += [f"  labelled {line}" for line in self.board.labelled[-SHOWN:]]
        return "\n".join(lines)

    # ------------------------------------------------------------------ Tune events
    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self._last_print >= self.every_s:
            self._last_print = time.monotonic()
            self._draw(self.summary(trials))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._started[str(trial)] = time.monotonic()
        self._first.pop(str(trial), None)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "step" in result and str(trial) not in self._first:
            self._first[str(trial)] = (time.monotonic(), int(result["step"]))

    def _whole_duration(self, trial: Any, seconds: float) -> float:
        """What the trial would have taken from step 0: a trial restored from a checkpoint at step
        s0 ran only its steps after s0 in this process, and counted as it is, its short stay made
        the pending trials look short (a resumed phase-map sweep read "ETA 20 min" with 89 trials
        of ~5 min to go). Its time is scaled by steps run / steps run here; a trial that started
        here (first report within its first tenth) counts as measured."""
        first = self._first.get(str(trial))
        step = (trial.last_result or {}).get("step")
        if first is None or not step or first[1] <= 0.1 * step or step <= first[1]:
            return seconds
        return seconds * step / (step - first[1])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = trial.last_result or {}
        line = (f"{trial} at step {r.get('step')} ({r.get('stop_reason', '?')}): train {_fmt(r.get('acc/train'))}, "
                + ", ".join(f"{head} {_fmt(r.get(metric))}" for head, metric in self.columns))
        self._finished = (self._finished + [line])[-SHOWN:]
        if str(trial) in self._started:
            self._durations.append(self._whole_duration(trial, time.monotonic() - self._started.pop(str(trial))))
        self._write(f"[grokray] finished {line}")

    def label(self, summary: dict) -> None:
        """A label from the classifier: counted, named in the summary, printed once as a line."""
        name = summary.get("run_name") or summary["run_id"]
        self.board.record_label(f"{name}  {summary['label']} ({summary['detail']}, {summary['confidence']:.2f})  "
                                f"run {summary['run_id']}", summary["label"])
        self._write(f"[grokray] label: {summary['line']}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        where = getattr(trial, "error_file", None) or getattr(trial, "path", "")
        self._write(f"[grokray] trial {trial} FAILED (see {where})")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(f"[grokray] trial {trial} failed; restarting from its last checkpoint")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._drawn = self._drawn if self.interactive else 0
        self._draw(self.summary(trials), final=True)
        self._drawn = 0
