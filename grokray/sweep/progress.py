"""The sweep's terminal progress: a compact trial table every few seconds, a line per event.

Tune's own output prints every metric of every result; a grokking sweep needs a few
columns: where each trial is (step / budget), train / ID / OOD accuracy, and why it
stopped. Labels arrive from the classifier callback as ``[grokray] label: ...`` lines.
"""
from __future__ import annotations

import sys
import time
from typing import Any

from ray.tune import Callback


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "  -  "


#: Default test columns of the table: (header, metric); a sweep kind brings its own.
TRIAL_COLUMNS = (("ID", "acc/test_inferred_id"), ("OOD", "acc/test_inferred_ood"))


class ProgressTable(Callback):
    """Tune callback printing the table.

    Example:
        >>> ProgressTable(12000).columns == TRIAL_COLUMNS
        True
    """

    def __init__(self, max_steps: int, every_s: float = 30.0, stream: Any = None,
                 columns: tuple = TRIAL_COLUMNS):
        self.max_steps, self.every_s = max_steps, every_s
        self.columns = tuple(columns)
        self.stream = stream
        self._last_print = 0.0
        self._t0 = time.monotonic()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["stream"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        # Restored by a resumed driver: clocks of the old process mean nothing here.
        self.__dict__.update(state, _last_print=0.0, _t0=time.monotonic())
        self.__dict__.setdefault("columns", TRIAL_COLUMNS)  # pickled before columns existed

    def _out(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def _cells(self, r: dict) -> str:
        return "  ".join(f"{_fmt(r.get(metric)):<{max(5, len(head))}}" for head, metric in self.columns)

    def table(self, trials: list) -> str:
        counts: dict[str, int] = {}
        rows = []
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
            r = t.last_result or {}
            step = r.get("step")
            rows.append(f"  {str(t)[:46]:<46} {t.status:<10} {str(step) if step is not None else '-':>7}/"
                        f"{self.max_steps:<7} {_fmt(r.get('acc/train'))}  {self._cells(r)}  {r.get('stop_reason', '')}")
        elapsed = time.monotonic() - self._t0
        heads = "  ".join(f"{head:<{max(5, len(head))}}" for head, _ in self.columns)
        head = (f"[grokray] {elapsed / 60:.1f} min: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
                + f"\n  {'trial':<46} {'status':<10} {'step':>15}  train  {heads}  stop")
        return "\n".join([head, *rows])

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self._last_print >= self.every_s:
            self._last_print = time.monotonic()
            self._out(self.table(trials))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._out(f"[grokray] started {trial}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = trial.last_result or {}
        tests = ", ".join(f"{head} {_fmt(r.get(metric))}" for head, metric in self.columns)
        self._out(f"[grokray] finished {trial} at step {r.get('step')} ({r.get('stop_reason', '?')}): "
                  f"train {_fmt(r.get('acc/train'))}, {tests}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        where = getattr(trial, "error_file", None) or getattr(trial, "path", "")
        self._out(f"[grokray] trial {trial} FAILED (see {where})")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._out(f"[grokray] trial {trial} failed; restarting from its last checkpoint")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._out(self.table(trials))
