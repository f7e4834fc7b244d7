"""What a researcher sees: the MLflow UI over a finished sweep, loaded in a real (headless) chromium.

A tiny two-trial sweep runs as a user runs it (``grokray sweep run``), ``mlflow server`` serves
its store, and chromium renders three pages of the single-page app (``--dump-dom``): the runs
table through the link in the parent run's description (grokray's saved view: the trials with
label, detail, confidence and the ``verdict/*`` columns, in the model-training view), one
trial's page (its verdict, tags and metrics) and the parent's ``phase_map/`` artifacts. The
assertions are on the text a user reads there.

``GROKRAY_UPDATE_SCREENSHOTS=1`` also writes ``docs/screenshots/runs_table.png`` and
``child_run.png`` (1400 x 900); without it the test writes nothing outside its temp folder.
Skipped where chromium is not installed (``apt-get install -y chromium``).

The browser reaches the server as ``grokray.test`` (mapped to 127.0.0.1 by chromium): on a
localhost name MLflow 3.17 opens its Assistant panel over a quarter of the page on a first
visit, which a screenshot for the docs does not want. The server allows that host and origin.
"""
from __future__ import annotations

import html.parser
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from grokray import tracking
from grokray.server import free_port, start_server
from sweep_helpers import ROOT, child_runs, grokray, parent_run, write_spec

CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")

HOST = "grokray.test"
SWEEP = "ui"
SCREENSHOTS = ROOT / "docs" / "screenshots"
#: Virtual milliseconds the page may run before it is dumped (virtual time stands still while a
#: request is pending, so this is what the app's own timers get; a page settles in ~2 s of it).
BUDGET_MS = 60000
#: The verdict metrics the saved view shows (a column appears once some trial has the metric).
VERDICT_COLUMNS = ("final_target_level", "shortcut_best", "interchange", "t_memorize", "t_generalize",
                   "delay_ratio")
#: Navigation items of MLflow's GenAI view that its model-training view does not have.
GENAI_ONLY = ("Sessions", "Judges", "Prompts & versions", "Agent versions")


class _Page(html.parser.HTMLParser):
    """The visible text of a dumped DOM (one string per text node), its links and images, and the
    runs table's column headers: ``{column id: (left, width)}`` in px (ag-grid places cells
    absolutely: DOM order is not the order on screen)."""

    def __init__(self, dom: str):
        super().__init__()
        self.texts: list[str] = []
        self.links: list[str] = []
        self.images: list[str] = []
        self.columns: dict[str, tuple[float, float]] = {}
        self.title = ""
        self._skip = 0
        self._in_title = False
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "style", "noscript"):
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])
        elif tag == "img":
            self.images.append(a.get("alt") or "")
        if "ag-header-cell" in (a.get("class") or "").split() and a.get("col-id"):
            box = dict(re.findall(r"(left|width):\s*([\d.]+)px", a.get("style") or ""))
            self.columns[a["col-id"]] = (float(box.get("left", "nan")), float(box.get("width", "nan")))

    def handle_endtag(self, tag):
        if tag in ("script", "style", "noscript"):
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        elif not self._skip and data.strip():
            self.texts.append(data.strip())

    @property
    def text(self) -> str:
        return " | ".join(self.texts)


def chromium(url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """One headless chromium run over ``url`` with a fresh profile and no background networking
    (the closed network refuses those connections)."""
    with tempfile.TemporaryDirectory(prefix="grokray-chromium-") as profile:
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--host-resolver-rules=MAP {HOST} 127.0.0.1",
               f"--virtual-time-budget={BUDGET_MS}", *args, url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def dump(url: str, ready: str, width: int = 2600) -> _Page:
    """The rendered page; once more if ``ready`` (text that shows the data arrived) is missing. A
    wide window: the runs table only renders the columns that fit (column virtualization)."""
    for attempt in range(2):
        out = chromium(url, "--dump-dom", f"--window-size={width},1000")
        assert out.returncode == 0, out.stderr[-2000:]
        page = _Page(out.stdout)
        if ready in page.text:
            return page
    return page


def screenshot(url: str, name: str, tmp: Path) -> None:
    """``docs/screenshots/<name>`` at 1400 x 900, written only when GROKRAY_UPDATE_SCREENSHOTS=1."""
    if os.environ.get("GROKRAY_UPDATE_SCREENSHOTS") != "1":
        return
    png = tmp / name
    out = chromium(url, f"--screenshot={png}", "--window-size=1400,900")
    assert out.returncode == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", out.stderr[-2000:]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(png, SCREENSHOTS / name)


@pytest.fixture(scope="module")
def ui(tmp_path_factory, _migrated_store):
    """A finished two-trial sweep and an MLflow server over its store."""
    t0 = time.monotonic()
    tmp = tmp_path_factory.mktemp("browser")
    db = tmp / "mlflow.db"
    src, dst = sqlite3.connect(_migrated_store), sqlite3.connect(db)   # an already-migrated empty store
    src.backup(dst)
    src.close()
    dst.close()
    uri = f"sqlite:///{db}"
    spec = write_spec(tmp, SWEEP, parameters={"data.augmentation": {"values": ["none", "both_full"]}},
                      max_concurrent=2)
    out = grokray("sweep", "run", str(spec), uri=uri, cwd=tmp)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    swept = time.monotonic()
    port = free_port()
    server = start_server(uri, str(tmp / "artifacts"), port=port, workers=1, log_path=tmp / "server.log",
                          allowed_hosts=[f"{HOST}:{port}", f"127.0.0.1:{port}"],
                          env={"MLFLOW_SERVER_CORS_ALLOWED_ORIGINS": f"http://{HOST}:{port}"})
    try:
        yield {"uri": uri, "url": f"http://{HOST}:{port}", "tmp": tmp, "parent": parent_run(uri, SWEEP),
               "runs": sorted(child_runs(uri, SWEEP), key=lambda r: r.info.run_name)}
    finally:
        server.stop()
        print(f"\nsweep {swept - t0:.0f} s, server + browser {time.monotonic() - swept:.0f} s")


def test_runs_table_opens_in_model_training_view_with_grokray_columns(ui):
    parent, runs = ui["parent"], ui["runs"]
    exp_id = parent.info.experiment_id
    # The link the parent's description gives (Markdown, relative to the UI's address).
    links = re.findall(r"\]\((#/experiments/[^)\s]+)\)", parent.data.tags[tracking.Tag.NOTE])
    assert len(links) == 1 and "viewStateShareKey=" in links[0] and "workflowType=machine_learning" in links[0]
    url = ui["url"] + "/" + links[0]
    page = dump(url, ready="matching runs")
    text = page.text
    assert page.title.startswith(f"Runs - Experiment {exp_id}"), page.title
    assert "Model training" in text and "Model registry" in text                   # the model-training view ...
    assert not [w for w in GENAI_ONLY if w in page.texts], text[:3000]              # ... not the GenAI one
    assert f"grokray: {SWEEP}" in page.texts                                        # the saved view is active
    assert re.search(rf"\b{len(runs)} \| matching runs", text), text[-1500:]      # the trials, not the parent
    for r in runs:
        assert r.info.run_name in page.texts
        tags = r.data.tags
        for value in (tags["grokray.label"], tags["grokray.detail"], tags["grokray.confidence"]):
            assert value in page.texts, (value, text[:4000])
    assert {r.data.tags["grokray.label"] for r in runs} <= {"true_grokking", "fake_grokking", "no_grokking"}
    headers = ["grokray.label", "grokray.detail", "grokray.confidence", "data.augmentation"]
    headers += [f"verdict/{k}" for k in VERDICT_COLUMNS if any(f"verdict/{k}" in r.data.metrics for r in runs)]
    assert "verdict/final_target_level" in headers and "verdict/t_memorize" in headers
    missing = [h for h in headers if h not in page.texts]
    assert not missing, (missing, text[:4000])
    # on screen: grokray's label first, then the verdict numbers, then the params (the view's columnOrder),
    # headers wide enough to read (its columnWidths; the default 100 px cuts "verdict/final_target_level")
    left = {c: page.columns[c][0] for c in ("tags.`grokray.label`", "metrics.`verdict/final_target_level`",
                                            "params.`data.augmentation`")}
    assert list(left.values()) == sorted(left.values()), page.columns
    assert page.columns["metrics.`verdict/final_target_level`"][1] >= 7 * len("verdict/final_target_level")
    screenshot(url, "runs_table.png", ui["tmp"])


def test_a_trial_page_shows_its_verdict_and_evidence(ui):
    parent, run = ui["parent"], ui["runs"][0]
    url = f"{ui['url']}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"
    page = dump(url, ready="grokray.label", width=1400)
    text = page.text
    assert page.title.startswith(f"Run {run.info.run_id}"), page.title
    assert run.info.run_name in page.texts and "Description" in page.texts
    verdict = run.data.tags[tracking.Tag.NOTE]
    assert verdict.startswith(run.data.tags["grokray.label"])
    assert verdict[:60] in text                                                     # the verdict and its reasons
    assert "Parent run" in page.texts and parent.info.run_name in page.texts
    for key in ("grokray.label", "grokray.detail", "grokray.confidence", "verdict/confidence",
                "verdict/final_target_level", "verdict/t_memorize", "data.augmentation"):
        assert key in page.texts, (key, text[:3000])
    assert f"grokray.label | : {run.data.tags['grokray.label']}" in text            # the tag and its value
    assert not [w for w in GENAI_ONLY if w in page.texts]
    screenshot(url, "child_run.png", ui["tmp"])


def test_the_parent_holds_the_phase_map(ui):
    parent = ui["parent"]
    url = (f"{ui['url']}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}"
           "/artifacts/phase_map/phase_map.png?workflowType=machine_learning")
    page = dump(url, ready="phase_map.png", width=1400)
    assert {"phase_map", "phase_map.csv", "phase_map.png", "phase_map.txt"} <= set(page.texts), page.text[:3000]
    assert "phase_map/phase_map.png" in page.images                                  # the picture is shown
    assert "sweep.yaml" in page.texts
