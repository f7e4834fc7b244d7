"""The sweep's progress table shows the test columns of the sweep's kind."""
import io
import pytest

from grokray.sweep.kinds import KINDS
from grokray.sweep.progress import TRIAL_COLUMNS, ProgressTable

FINETUNE_COLUMNS = KINDS["finetune"].progress_columns


class FakeTrial:
    """Stands for a Tune trial only as far as the table reads one (name, status, last result)."""

    def __init__(self, name, status, result):
        self.name, self.status, self.last_result = name, status, result

    def __str__(self):
        return self.name


@pytest.mark.parametrize("columns, result, expected", [
    (TRIAL_COLUMNS, {"step": 900, "acc/train": 0.99, "acc/test_inferred_id": 0.25, "acc/test_inferred_ood": 0.125},
     ["ID", "OOD", "0.990", "0.250", "0.125", "900/"]),
    (FINETUNE_COLUMNS, {"step": 300, "acc/train": 1.0, "acc/test_new_old": 0.5, "acc/test_old_new": 0.0},
     ["new+old", "old+new", "1.000", "0.500", "0.000", "300/"]),
])
def test_table_shows_the_kind_s_columns(columns, result, expected):
    table = ProgressTable(4000, columns=columns).table([FakeTrial("t_00000", "RUNNING", result)])
    for text in expected:
        assert text in table, (text, table)
    assert "  -  " not in table.splitlines()[-1]   # every column of the row has its value


def test_finished_line_names_the_columns():
    out = io.StringIO()
    ProgressTable(4000, stream=out, columns=FINETUNE_COLUMNS).on_trial_complete(
        0, [], FakeTrial("t_00001", "TERMINATED", {"step": 800, "stop_reason": "max_steps", "acc/train": 1.0,
                                                   "acc/test_new_old": 0.75, "acc/test_old_new": 0.0}))
    assert out.getvalue().strip() == ("[grokray] finished t_00001 at step 800 (max_steps): train 1.000, "
                                      "new+old 0.750, old+new 0.000")


def test_unpickled_old_table_gets_the_trial_columns():
    table = ProgressTable(100)
    state = table.__getstate__()
    del state["columns"]
    restored = ProgressTable.__new__(ProgressTable)
    restored.__setstate__(state)
    assert restored.columns == TRIAL_COLUMNS
