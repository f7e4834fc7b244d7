"""The sweep's progress: a summary whose size does not grow with the sweep, the kind's columns,
plain lines off a terminal, in-place redraws on one."""
import io
import pickle

import pytest

from grokray.sweep.kinds import KINDS
from grokray.sweep.progress import SHOWN, TRIAL_COLUMNS, SweepProgress

FINETUNE_COLUMNS = KINDS["finetune"].progress_columns


class FakeTrial:
    """Stands for a Tune trial only as far as the display reads one (name, status, last result)."""

    def __init__(self, name, status, result=None):
        self.name, self.status, self.last_result = name, status, result or {}

    def __str__(self):
        return self.name


def sweep(n_done: int, n_running: int, n_pending: int) -> list:
    trials = [FakeTrial(f"t_{i:05d}", "TERMINATED", {"step": 4000}) for i in range(n_done)]
    trials += [FakeTrial(f"t_{i:05d}", "RUNNING", {"step": 900, "acc/train": 0.99, "acc/test_inferred_id": 0.25,
                                                   "acc/test_inferred_ood": 0.125})
               for i in range(n_done, n_done + n_running)]
    return trials + [FakeTrial(f"t_{i:05d}", "PENDING") for i in range(n_pending)]


@pytest.mark.parametrize("n", [4, 60, 500])
def test_the_summary_has_the_same_size_at_any_sweep_size(n):
    prog = SweepProgress(4000, n_trials=n, interactive=False, stream=io.StringIO())
    text = prog.summary(sweep(n // 2, 2, n - n // 2 - 2))
    first = text.splitlines()[0]
    assert f"{n // 2} done, 2 running, {n - n // 2 - 2} pending, 0 failed" in first
    assert len(text.splitlines()) <= 1 + 3 * SHOWN + 1


def test_running_rows_show_the_kind_s_columns_and_counts_labels():
    prog = SweepProgress(4000, columns=FINETUNE_COLUMNS, interactive=False, stream=io.StringIO())
    prog.label({"run_id": "abc123", "run_name": "seed=0", "label": "true_grokking", "detail": "grokking",
                "confidence": 0.9, "line": "seed=0 (abc123)  true_grokking ..."})
    prog.label({"run_id": "def456", "run_name": "seed=1", "label": "no_grokking", "detail": "censored",
                "confidence": 0.5, "line": "seed=1 (def456)  no_grokking ..."})
    trial = FakeTrial("t_00000", "RUNNING", {"step": 300, "acc/train": 1.0, "acc/test_new_old": 0.5,
                                              "acc/test_old_new": 0.0})
    text = prog.summary([trial], recent=True)
    assert "labels: no 1, true 1" in text
    for needle in ("new+old 0.500", "old+new 0.000", "step    300/4000", "labelled seed=1  no_grokking (censored"):
        assert needle in text, (needle, text)
    assert "run def456" in text                                 # names and run ids together


def test_off_a_terminal_each_finished_trial_is_one_line():
    out = io.StringIO()
    prog = SweepProgress(4000, stream=out, columns=FINETUNE_COLUMNS, interactive=False)
    prog.on_trial_complete(0, [], FakeTrial("t_00001", "TERMINATED", {"step": 800, "stop_reason": "max_steps",
                                                                       "acc/train": 1.0, "acc/test_new_old": 0.75,
                                                                       "acc/test_old_new": 0.0}))
    assert out.getvalue() == ("[grokray] finished t_00001 at step 800 (max_steps): train 1.000, "
                              "new+old 0.750, old+new 0.000\n")
    assert "\x1b[" not in out.getvalue()


def test_off_a_terminal_the_log_holds_each_finished_and_labelled_trial_once():
    out = io.StringIO()
    prog = SweepProgress(4000, n_trials=4, stream=out, interactive=False, every_s=0.0)
    prog.on_trial_complete(0, [], FakeTrial("t_00000", "TERMINATED", {"step": 4000, "stop_reason": "max_steps"}))
    prog.label({"run_id": "r0", "run_name": "t_00000", "label": "no_grokking", "detail": "censored",
                "confidence": 0.5, "line": "t_00000 (r0)  no_grokking"})
    for i in range(5):                                          # five periodic summaries afterwards
        prog.on_step_end(i, sweep(1, 2, 1))
    text = out.getvalue()
    assert text.count("t_00000") == 2, text                     # its finished line and its label line
    assert text.count("labels: no 1") == 5 and text.count("  running  ") == 10


def test_on_a_terminal_the_summary_is_redrawn_in_place():
    out = io.StringIO()
    prog = SweepProgress(4000, n_trials=10, stream=out, interactive=True, every_s=0.0)
    prog.on_step_end(0, sweep(1, 2, 7))
    first = out.getvalue()
    prog.on_step_end(1, sweep(2, 2, 6))
    second = out.getvalue()[len(first):]
    n_lines = first.count("\n")
    assert second.startswith(f"\x1b[{n_lines}F\x1b[J") and "2 done" in second     # cursor up, clear, redraw
    prog.label({"run_id": "r", "run_name": "n", "label": "no_grokking", "detail": "censored", "confidence": 0.4,
                "line": "n (r)  no_grokking"})
    assert out.getvalue().endswith("[grokray] label: n (r)  no_grokking\n")  # a kept line, printed above


def test_a_resumed_driver_gets_fresh_clocks_and_keeps_labels():
    prog = SweepProgress(100, interactive=False)
    prog.board.record_label("x", "true_grokking")
    restored = pickle.loads(pickle.dumps(prog))
    assert restored.board.labels == {"true_grokking": 1} and restored._drawn == 0 and restored.columns == TRIAL_COLUMNS


@pytest.mark.parametrize("running, durations, pending, eta", [
    # running trials as (first reported step, seconds since then, step now); finished durations; pending
    ([(0, 60.0, 1000)], [], 0, "3m00s"),                 # 3,000 steps left at 16.7 steps/s
    ([(0, 60.0, 3000)], [37.0], 0, "20s"),                 # a short finished trial does not shorten a long one
    ([(0, 60.0, 2000), (0, 60.0, 2000)], [120.0], 2, "3m00s"),   # (60 + 60 + 2 x 120) / 2 slots
    ([(0, 60.0, 2000)], [], 1, "3m00s"),                 # before any finished: the running trial's pace
    ([(0, 60.0, 400), (0, 60.0, 3600)], [], 0, "9m00s"),   # never less than the longest trial left (540 s)
    ([(3000, 60.0, 3600)], [], 0, "40s"),                  # restored at 3,000: pace from there, 400 left
    ([(500, 5.0, 500)], [], 3, "-"),                       # one report only: no pace yet
    ([(0, 10.0, 40)], [], 0, "-"),                         # 10 s of reports: too young to trust its pace
    ([(0, 10.0, 40), (0, 60.0, 3700)], [390.0], 0, "6m30s"),   # the young one as a whole trial (quickstart, 6.5 min)
    ([], [], 0, "0s"),
])
def test_eta_reads_the_pace_of_the_running_trials(running, durations, pending, eta):
    prog = SweepProgress(4000, interactive=False, stream=io.StringIO())
    trials = []
    for i, (first, age, step) in enumerate(running):
        trials.append(FakeTrial(f"t_{i}", "RUNNING", {"step": step}))
        prog._first[f"t_{i}"] = (1000.0 - age, first)
    prog._durations = list(durations)
    assert prog._eta(trials, pending, now=1000.0) == eta


def test_a_trial_with_its_own_budget_is_measured_against_it():
    prog = SweepProgress(12000, interactive=False, stream=io.StringIO())
    t = FakeTrial("t_0", "RUNNING", {"step": 15000})
    t.config = {"train.max_steps": 20000}
    prog._first["t_0"] = (940.0, 14000)                    # 1,000 steps in 60 s
    assert "step  15000/20000" in prog.summary([t]) and prog._eta([t], 0, now=1000.0) == "5m00s"


def test_progress_lines_go_to_the_log_file_and_a_restored_display_finds_its_log(tmp_path, monkeypatch):
    log = tmp_path / "progress.log"
    p = SweepProgress(100, 2, stream=io.StringIO(), interactive=False, log_path=str(log))
    p._write("[grokray] finished a")
    p._draw("[grokray] 0s | trials: 0 done", final=True)
    assert log.read_text().splitlines() == ["[grokray] finished a", "[grokray] 0s | trials: 0 done"]
    # a display pickled by a driver that kept no log (older grokray) gets the one the resuming driver names
    old = SweepProgress(100, 2, stream=io.StringIO(), interactive=False)
    state = old.__getstate__()
    state.pop("log_path")
    monkeypatch.setenv("GROKRAY_PROGRESS_LOG", str(tmp_path / "resumed.log"))
    restored = SweepProgress.__new__(SweepProgress)
    restored.__setstate__(state)
    restored._write("[grokray] label: x")
    assert (tmp_path / "resumed.log").read_text() == "[grokray] label: x\n"
    assert pickle.loads(pickle.dumps(p)).log_path == str(log)


@pytest.mark.parametrize("first_step, last_step, seconds, counted", [
    (100, 12000, 300.0, 300.0),        # started here: as measured
    (6000, 12000, 150.0, 300.0),       # restored half-way: half the steps in this process
    (9000, 9000, 5.0, 5.0),            # restored and stopped at once: no steps to scale by
])
def test_a_restored_trial_counts_as_a_whole_trial_for_the_eta(first_step, last_step, seconds, counted, monkeypatch):
    import grokray.sweep.progress as progress
    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    prog = SweepProgress(12000, interactive=False, stream=io.StringIO())
    t = FakeTrial("t_0", "RUNNING", {"step": first_step})
    prog.on_trial_start(0, [t], t)
    prog.on_trial_result(0, [t], t, {"step": first_step})
    now[0] += seconds
    t.last_result = {"step": last_step}
    prog.on_trial_complete(0, [t], t)
    assert prog._durations == [pytest.approx(counted)]
