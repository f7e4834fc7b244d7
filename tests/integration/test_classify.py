"""The classifier service against a real MLflow store: label once per classifier version,
relabel when the version changes, write the evidence, and answer bad input in one line."""
import json
import os
import subprocess
import sys

import pytest

from helpers import TINY
from grokray import tracking
from grokray.classify import CLASSIFIER_VERSION, classify_experiment, classify_run
from grokray.verdict import GENERALIZED, LABELS

GROKRAY = [sys.executable, "-m", "grokray"]


def grokray(*args, cwd):
    return subprocess.run([*GROKRAY, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}, timeout=600)


@pytest.fixture
def trained_run(tmp_path, mlflow_uri):
    """One tiny trial trained and logged by `grokray train`, as a user does it."""
    sets = [a for o in TINY for a in ("--set", o)]
    out = grokray("train", *sets, "--set", "train.max_steps=300", "--experiment", "cls",
                  "--tracking-uri", mlflow_uri, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    client = tracking.get_client(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cls").experiment_id])
    return client, run.info.run_id


def test_label_once_then_unchanged_then_relabelled_on_a_new_version(trained_run, mlflow_uri):
    client, run_id = trained_run
    first = classify_run(run_id, mlflow_uri, evidence="always")   # a 300-step run: auto would skip the checkpoint
    assert first.action == "labelled" and first.verdict.label in LABELS
    tags = client.get_run(run_id).data.tags
    assert tags["grokray.label"] == first.verdict.label
    assert tags["grokray.detail"] == first.verdict.detail
    assert tags["grokray.classifier_version"] == CLASSIFIER_VERSION
    assert 0.0 <= float(tags["grokray.confidence"]) <= 1.0
    artifacts = {f.path for f in client.list_artifacts(run_id, "verdict")}
    assert {"verdict/verdict.json", "verdict/curves.png"} <= artifacts
    metrics = client.get_run(run_id).data.metrics
    assert metrics["verdict/true_grokking"] == float(first.verdict.label == "true_grokking")
    assert metrics["verdict/censored"] == float(first.verdict.censored)

    again = classify_run(run_id, mlflow_uri)
    assert again.action == "unchanged" and again.verdict.to_dict() == first.verdict.to_dict()

    client.set_tag(run_id, "grokray.classifier_version", "0")   # labelled by an older classifier
    client.set_tag(run_id, "grokray.label", "fake_grokking" if first.verdict.label != "fake_grokking" else "no_grokking")
    third = classify_run(run_id, mlflow_uri, evidence="always")
    assert third.action == "relabelled" and third.previous.classifier_version == "0"
    assert client.get_run(run_id).data.tags["grokray.classifier_version"] == CLASSIFIER_VERSION
    assert third.verdict.label == first.verdict.label            # same data, same rules, same label
    # a relabelling says what changed
    assert third.changes().startswith(f"v0 -> v{CLASSIFIER_VERSION}, label ") and "[relabelled]" in third.line()
    # both criteria are on the run, with the evidence the verdict rests on
    tags = client.get_run(run_id).data.tags
    assert tags["grokray.label_lens"] in LABELS and tags["grokray.label_interchange"] in LABELS
    assert tags["grokray.criterion"] == "interchange" and tags["mlflow.note.content"].startswith(first.verdict.label)
    assert {"verdict/README.md", "verdict/interchange.png", "verdict/evidence.json"} <= {
        f.path for f in client.list_artifacts(run_id, "verdict")}
    metrics = client.get_run(run_id).data.metrics
    assert 0.0 <= metrics["shortcut/best/ood"] <= 1.0 and metrics["verdict/shortcut_best"] == metrics["shortcut/best/ood"]
    # the lens criterion relabels (another criterion is another labelling)
    fourth = classify_run(run_id, mlflow_uri, criterion="lens", evidence="always")
    assert fourth.action == "relabelled" and fourth.verdict.label == fourth.verdict.labels["lens"]
    tags = client.get_run(run_id).data.tags
    assert tags["grokray.phase"] == fourth.verdict.phase and tags["grokray.determined"] in ("true", "false")


def test_classify_experiment_and_cli(trained_run, mlflow_uri, tmp_path):
    client, run_id = trained_run
    outcomes = classify_experiment("cls", mlflow_uri)
    assert [o.run_id for o in outcomes] == [run_id] and outcomes[0].action == "labelled"

    out = grokray("classify", run_id, "--tracking-uri", mlflow_uri, "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["run_id"] == run_id and line["action"] == "unchanged" and line["label"] == outcomes[0].verdict.label


def test_evidence_auto_reads_the_checkpoint_only_for_runs_that_generalized(trained_run, mlflow_uri, tmp_path):
    """A 300-step tiny run does not generalize: under ``auto`` it is labelled from its curves and
    the logged shortcut baseline, without the checkpoint; asking for the evidence later relabels
    it (no --force needed: the stored verdict lacks what was asked for); a relabelling without
    the checkpoint leaves no stale evidence number current."""
    import math

    client, run_id = trained_run
    auto = classify_run(run_id, mlflow_uri)
    assert auto.verdict.behaviour not in GENERALIZED and auto.verdict.label == "no_grokking"
    run = client.get_run(run_id)
    assert auto.verdict.shortcut_best == run.data.metrics["shortcut/best/ood"]
    assert run.data.tags["grokray.evidence"] == "curves"
    artifacts = {f.path for f in client.list_artifacts(run_id, "verdict")}
    assert "verdict/verdict.json" in artifacts and "verdict/evidence.json" not in artifacts
    assert auto.verdict.n_target and auto.verdict.n_target > 0   # the OOD probe's size, from dataset.json

    out = grokray("classify", run_id, "--evidence", "always", "--tracking-uri", mlflow_uri, "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1])["action"] == "relabelled"
    artifacts = {f.path for f in client.list_artifacts(run_id, "verdict")}
    assert {"verdict/evidence.json", "verdict/interchange.png"} <= artifacts
    run = client.get_run(run_id)
    assert run.data.tags["grokray.evidence"] == "checkpoint" and run.data.tags["grokray.label"] == auto.verdict.label
    assert math.isfinite(run.data.metrics["verdict/interchange_n"])
    assert classify_run(run_id, mlflow_uri).action == "unchanged"           # auto is content with that

    never = classify_run(run_id, mlflow_uri, evidence="never", force=True)
    assert never.verdict.confidence == auto.verdict.confidence              # same numbers without the checkpoint
    run = client.get_run(run_id)
    assert run.data.tags["grokray.evidence"] == "curves" and math.isnan(run.data.metrics["verdict/interchange_n"])

    out = grokray("classify", run_id, "--evidence", "sometimes", "--tracking-uri", mlflow_uri, cwd=tmp_path)
    assert out.returncode == 2 and "--evidence" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("args, message", [
    (["classify", "0123456789abcdef", "--tracking-uri", "{uri}"], "grokray: error: no run '0123456789abcdef'"),
    (["classify", "--experiment", "nope", "--tracking-uri", "{uri}"], "grokray: error: --experiment: no experiment named 'nope'"),
    (["classify", "--tracking-uri", "{uri}"], "grokray: error: give RUN_ID(s) or --experiment NAME"),
])
def test_bad_input_is_one_line(args, message, mlflow_uri, tmp_path):
    out = grokray(*[a.format(uri=mlflow_uri) for a in args], cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith(message), out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_evidence_is_computed_in_the_precision_the_trial_trained_in(tmp_path, mlflow_uri, monkeypatch):
    """Issue 25: a bf16 trial (the trainer's default) is examined in bf16, an fp32 one in fp32."""
    import grokray.classify as classify

    seen = []
    real = classify.circuit_evidence
    monkeypatch.setattr(classify, "circuit_evidence", lambda *a, **kw: seen.append(kw["precision"]) or real(*a, **kw))
    sets = [a for o in TINY for a in ("--set", o)]
    for precision in ("bf16", "fp32"):
        out = grokray("train", *sets, "--set", "train.max_steps=60", "--set", f"train.precision={precision}",
                      "--experiment", f"prec-{precision}", "--tracking-uri", mlflow_uri, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        assert [o.action for o in classify_experiment(f"prec-{precision}", mlflow_uri, evidence="always")] == [
            "labelled"]
    assert seen == ["bf16", "fp32"]
