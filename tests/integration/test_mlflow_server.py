"""A real ``mlflow server`` started by grokray: health, a trial logged through it (artifacts
proxied to the server's destination), loopback-only binding, and a stop that leaves no
process of its group behind. The same for ``mlflow/server.sh``.

The server gets a copy of the session's migrated sqlite store (``mlflow_uri``), so it is
healthy in seconds instead of spending ~7 s on schema migrations.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import tiny_config
from grokray import tracking
from grokray.server import ServerError, free_port, group_members, health, port_in_use, start_server
from grokray.train import Trainer

ROOT = Path(__file__).resolve().parents[2]
SERVER_SH = ROOT / "mlflow" / "server.sh"


def group_gone(pgid: int, timeout: float = 10.0) -> bool:
    """True once ``killpg(pgid, 0)`` raises ProcessLookupError (zombies reaped too)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def listening_addresses(port: int) -> list[str]:
    """Local addresses with a LISTEN socket on ``port``, from /proc/net/tcp and tcp6."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A = LISTEN
                continue
            if len(addr_hex) == 8:
                out.append(socket.inet_ntoa(bytes.fromhex(addr_hex)[::-1]))
            else:
                words = [bytes.fromhex(addr_hex[i:i + 8])[::-1] for i in range(0, 32, 8)]
                out.append(socket.inet_ntop(socket.AF_INET6, b"".join(words)))
    return out


def refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def test_server_logs_a_trial_with_proxied_artifacts_and_stops_its_whole_group(mlflow_uri, tmp_path):
    artifacts = tmp_path / "artifacts"
    port = free_port()
    server = start_server(mlflow_uri, str(artifacts), port=port, log_path=tmp_path / "server.log")
    try:
        assert server.url == f"http://127.0.0.1:{port}" and health(server.url)
        pgid = server.pgid
        # `mlflow server` + its uvicorn worker: why a plain SIGTERM to one pid is not enough.
        assert len(group_members(pgid)) >= 2, group_members(pgid)

        # Bound to loopback only: the listening socket is 127.0.0.1, another local address is refused.
        assert listening_addresses(port) == ["127.0.0.1"]
        assert refused("127.0.0.2", port)

        # A tiny trial logged through the server, as trials on other nodes do.
        client = tracking.get_client(server.url)
        exp_id = tracking.get_or_create_experiment(client, "server-test")
        assert client.get_experiment(exp_id).artifact_location.startswith("mlflow-artifacts:")
        cfg = tiny_config("train.max_steps=30", "train.checkpoint_steps=[10]")
        run_id = tracking.start_run(client, exp_id, tracking.trial_run_name(cfg))
        result = Trainer(cfg, work_dir=tmp_path / "work").run([tracking.RunLogger(client, run_id)])
        client.set_terminated(run_id)

        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["grokray.steps_run"] == "30"
        assert run.data.params["data.phi"] == "2.0"
        hist = client.get_metric_history(run_id, "acc/train")
        assert [m.step for m in hist] == [h["step"] for h in result.history]
        names = {a.path for a in client.list_artifacts(run_id)}
        assert {"curves.png", "history.json", "dataset.json", "trial.yaml", "checkpoints"} <= names
        # The bytes went through the server into its artifacts destination ...
        stored = artifacts / exp_id / run_id / "artifacts"
        assert (stored / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert sorted(p.name for p in (stored / "checkpoints").iterdir()) == ["step_0000010.pt", "step_0000030.pt"]
        # ... and come back through it.
        png = client.download_artifacts(run_id, "curves.png", str(tmp_path / "dl"))
        assert Path(png).read_bytes() == (stored / "curves.png").read_bytes()
        # The backend is the sqlite file we gave it.
        assert tracking.get_client(mlflow_uri).get_run(run_id).info.status == "FINISHED"
    finally:
        server.stop()
    assert group_members(pgid) == []
    assert group_gone(pgid), "a process of the server's group is still alive"
    assert not health(server.url) and not port_in_use("127.0.0.1", port)
    server.stop()  # idempotent

    # The store is portable (docs/cluster.md: `ray rsync-down` the head's data dir before `ray down`):
    # a copy of the db files and the artifacts directory serves the same run and artifact bytes.
    restored = tmp_path / "restored"
    shutil.copytree(artifacts, restored / "artifacts")
    db = Path(mlflow_uri[len("sqlite:///"):])
    for f in db.parent.glob(db.name + "*"):
        shutil.copy(f, restored / f.name)
    with start_server(f"sqlite:///{restored / db.name}", str(restored / "artifacts"), port=free_port()) as copy:
        client = tracking.get_client(copy.url)
        assert client.get_run(run_id).data.tags["grokray.steps_run"] == "30"
        png = client.download_artifacts(run_id, "curves.png", str(tmp_path / "dl2"))
        assert Path(png).read_bytes() == (stored / "curves.png").read_bytes()
    assert group_gone(copy.pgid)


def test_port_taken_is_a_one_line_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServerError) as e:
            start_server(f"sqlite:///{tmp_path / 'm.db'}", str(tmp_path / "a"), port=port)
    msg = str(e.value)
    assert "\n" not in msg and f"127.0.0.1:{port} is already in use" in msg
    assert not (tmp_path / "m.db").exists()  # refused before touching anything


def test_server_that_dies_at_startup_is_reported_and_leaves_nothing(tmp_path):
    with pytest.raises(ServerError) as e:
        start_server("bogus://nowhere", str(tmp_path / "a"), port=free_port(), log_path=tmp_path / "s.log",
                     timeout=90)
    msg = str(e.value)
    assert "\n" not in msg and "exited with code" in msg and str(tmp_path / "s.log") in msg


# --------------------------------------------------------------------------- mlflow/server.sh

def sh(*args: str, env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SERVER_SH), *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_server_sh_start_status_stop(mlflow_uri, tmp_path):
    port = free_port()
    data = tmp_path / "data"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "MLFLOW_DATA_DIR": str(data),
           "MLFLOW_PORT": str(port), "MLFLOW_BACKEND_STORE_URI": mlflow_uri}
    for k in ("MLFLOW_HOST", "MLFLOW_ARTIFACTS_DESTINATION", "MLFLOW_PID_FILE", "MLFLOW_ALLOWED_HOSTS"):
        env.pop(k, None)
    pid_file = data / "server.pid"
    try:
        out = sh("start", env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"running at http://127.0.0.1:{port}" in out.stdout
        pgid = int(pid_file.read_text())
        assert (data / "server.url").read_text().strip() == f"http://127.0.0.1:{port}"
        assert health(f"http://127.0.0.1:{port}") and listening_addresses(port) == ["127.0.0.1"]
        assert os.getpgid(pgid) == pgid and len(group_members(pgid)) >= 2

        st = sh("status", env=env)
        assert st.returncode == 0 and f"process group {pgid}" in st.stdout
        # status finds the server from its URL file, without the settings it was started with
        st = sh("status", env={k: v for k, v in env.items() if k != "MLFLOW_PORT"})
        assert st.returncode == 0 and f"running at http://127.0.0.1:{port}" in st.stdout
        again = sh("start", env=env)
        assert again.returncode == 0 and "already running" in again.stdout and int(pid_file.read_text()) == pgid
        taken = sh("start", env={**env, "MLFLOW_PID_FILE": str(tmp_path / "other.pid")})
        assert taken.returncode == 1 and f"127.0.0.1:{port} is already in use" in taken.stderr

        # Artifacts land in the default destination under MLFLOW_DATA_DIR.
        client = tracking.get_client(f"http://127.0.0.1:{port}")
        exp_id = tracking.get_or_create_experiment(client, "sh")
        run_id = client.create_run(exp_id).info.run_id
        (tmp_path / "note.txt").write_text("hello")
        client.log_artifact(run_id, str(tmp_path / "note.txt"))
        assert (data / "artifacts" / exp_id / run_id / "artifacts" / "note.txt").read_text() == "hello"

        stop = sh("stop", env=env)
        assert stop.returncode == 0 and f"stopped (process group {pgid})" in stop.stdout
        assert group_gone(pgid), "a process of the server's group is still alive"
        assert not pid_file.exists() and not (data / "server.url").exists() and not health(f"http://127.0.0.1:{port}")
        st = sh("status", env=env)
        assert st.returncode == 3 and "not running" in st.stdout
    finally:
        if pid_file.exists():
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
