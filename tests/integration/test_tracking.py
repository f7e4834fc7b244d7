"""A trial logged to a real local MLflow store holds the expected params, metrics, tags and artifacts."""
import json

from helpers import tiny_config
from grokray import tracking
from grokray.train import Trainer


def run_logged(uri, tmp_path, cfg):
    client = tracking.get_client(uri)
    exp = tracking.get_or_create_experiment(client, "unit")
    run_id = tracking.start_run(client, exp, tracking.trial_run_name(cfg))
    trainer = Trainer(cfg, work_dir=tmp_path / "work")
    result = trainer.run([tracking.RunLogger(client, run_id)])
    client.set_terminated(run_id)
    return client, run_id, result


def test_trial_run_holds_params_metrics_and_artifacts(mlflow_uri, tmp_path):
    cfg = tiny_config("train.max_steps=60", "train.checkpoint_steps=[10]")
    client, run_id, result = run_logged(mlflow_uri, tmp_path, cfg)
    run = client.get_run(run_id)
    p = run.data.params
    assert p["data.phi"] == "2.0" and p["model.n_loops"] == "2" and p["train.betas"] == "[0.9, 0.98]"
    assert p["data.augmentation"] == "none" and int(p["model.n_params"]) > 1000
    tags = run.data.tags
    assert tags["grokray.dataset"].startswith("ds-") and tags["grokray.version"]
    assert tags["grokray.stop_reason"] == "max_steps" and tags["grokray.steps_run"] == "60"
    assert run.info.status == "FINISHED" and run.info.run_name == "phi2-none-L1x2-wd0.1-s0"
    # Every evaluation step once per metric, with the trainer's values.
    hist = client.get_metric_history(run_id, "acc/train")
    assert [m.step for m in hist] == [h["step"] for h in result.history]
    assert [m.value for m in hist] == [h["acc/train"] for h in result.history]
    assert run.data.metrics["acc/train"] == result.history[-1]["acc/train"]
    assert "lens/ood/bridge_found" in run.data.metrics and "param_norm" in run.data.metrics
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"curves.png", "history.json", "history.csv", "dataset.json", "trial.yaml", "checkpoints"} <= names
    ckpts = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert ckpts == {"checkpoints/step_0000010.pt", "checkpoints/step_0000060.pt"}
    png = client.download_artifacts(run_id, "curves.png", str(tmp_path))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    ds = json.load(open(client.download_artifacts(run_id, "dataset.json", str(tmp_path))))
    assert ds["name"] == tags["grokray.dataset"]


def test_one_log_batch_per_evaluation(mlflow_uri, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    calls = []
    real = MlflowClient.log_batch

    def counting(self, run_id, metrics=(), params=(), tags=(), **kw):
        if metrics:
            calls.append(len(metrics))
        return real(self, run_id, metrics=metrics, params=params, tags=tags, **kw)

    monkeypatch.setattr(MlflowClient, "log_batch", counting)
    _, _, result = run_logged(mlflow_uri, tmp_path, tiny_config("train.max_steps=20"))
    # one batch with the dataset's shortcut baselines (5 rules x 2 test splits), then one per evaluation
    assert calls[0] == 10 and len(calls) == 1 + len(result.history)
    assert min(calls[1:]) > 20


def test_restarted_logger_skips_already_logged_steps(mlflow_uri, tmp_path):
    cfg = tiny_config("train.max_steps=30")
    client, run_id, result = run_logged(mlflow_uri, tmp_path, cfg)
    # A second attempt of the same trial (e.g. after a crash) replays the same evaluations.
    Trainer(cfg).run([tracking.RunLogger(client, run_id)])
    steps = [m.step for m in client.get_metric_history(run_id, "acc/train")]
    assert steps == [h["step"] for h in result.history]


def test_params_are_capped():
    long = {"x": "a" * 2000, "y": [1, 2]}
    out = tracking.flat_params(long)
    assert len(out["x"]) == 500 and out["y"] == "[1, 2]"


def test_experiment_is_created_once(mlflow_uri):
    client = tracking.get_client(mlflow_uri)
    a = tracking.get_or_create_experiment(client, "same")
    assert tracking.get_or_create_experiment(client, "same") == a
    assert client.get_experiment(a).artifact_location.endswith("/mlruns/same")
