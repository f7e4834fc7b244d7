"""``cluster.yaml`` and the cluster path, as far as a machine without a cloud can take them.

1. ``cluster.yaml`` passes Ray's own launcher validation offline (private APIs of the
   pinned Ray 2.60.0) and keeps its security promises.
2. Ray's ``fake_multinode`` provider: a sweep asking ``{cpu: 1, gpu: 0.5}`` per trial makes
   the autoscaler launch a fake GPU node, and both trials share its one GPU (slow).
3. A real ``ray up`` with the ``local`` provider against an sshd on a loopback address,
   built from ``cluster.yaml``'s own file mounts, venv/PATH and token commands and
   ``mlflow/server.sh``; then ``grokray sweep submit`` / ``status`` / ``logs``, the runs and
   the phase map in the head's MLflow server, and ``ray down`` (slow).

Isolation from other Ray instances on the machine (2 and 3): the cluster's processes run
in their own PID and mount namespaces (``unshare``), with a private ``/tmp/ray`` and (3) a
private home directory. So ``ray stop`` -- which ``ray down`` runs -- only sees them, the
token files of other clusters are untouched, and killing the namespace's first process
ends every process the test started, even on failure. Ports are picked free, so the
background GCS on another port never conflicts (the fake provider's ``gcs_address`` lets
fake nodes join on any port, not only 6379).
"""
from __future__ import annotations

import contextlib
import copy
import getpass
import hashlib
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from grokray import tracking
from grokray.server import free_port

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
BASE = ROOT / "tests" / "specs" / "tiny_base.yaml"
RAY = str(Path(sys.executable).with_name("ray"))
NS_ARGS = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "--propagation", "private"]


def load_cluster_yaml() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


# --------------------------------------------------------------------------- 1. offline validation

def test_cluster_yaml_passes_ray_validation_and_keeps_its_promises():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw_text = CLUSTER_YAML.read_text()
    raw = load_cluster_yaml()
    cfg = prepare_config(copy.deepcopy(raw))  # what `ray up` does before validating
    validate_config(cfg)

    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    # Nothing bound to or opened for 0.0.0.0, also after Ray merged its AWS defaults
    # (whose head command has --dashboard-host=0.0.0.0).
    any_address = re.compile(r"(?<![\d.])0\.0\.0\.0(?![\d.])|\[::\]")
    assert not any_address.search(raw_text) and not any_address.search(json.dumps(cfg))
    assert any_address.search("--dashboard-host=0.0.0.0") and not any_address.search("10.0.0.0/8")
    for rule in cfg["provider"].get("security_group", {}).get("IpPermissions", []):
        assert (rule.get("FromPort"), rule.get("ToPort")) == (22, 22), f"extra ingress rule {rule}"
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start

    # Token authentication: never disabled, on in every `ray start`, created on the head, shipped to workers.
    assert "RAY_AUTH_MODE=disabled" not in raw_text and "RAY_AUTH_MODE=disabled" not in json.dumps(cfg)
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token ray start" in c for c in starts)
    assert "RAY_OVERRIDE_JOB_RUNTIME_ENV=1" in head_start  # grokray sweep submit's driver needs it (see report)
    assert any("ray get-auth-token --generate" in c for c in cfg["head_setup_commands"])
    assert cfg["cluster_synced_files"] == ["~/.ray/auth_token"]

    # Every node installs CUDA torch and grokray from the synced checkout, with the venv on PATH.
    assert raw["file_mounts"] == {"~/grokray": "."}
    for cmds in (cfg["head_setup_commands"], cfg["worker_setup_commands"]):  # setup_commands merged into both
        joined = "\n".join(cmds)
        assert "pip install --quiet -c ~/grokray/constraints.txt torch==2.13.0" in joined
        assert "download.pytorch.org/whl/cpu" not in joined  # plain PyPI torch = the CUDA build
        assert "pip install --quiet -c ~/grokray/constraints.txt ~/grokray" in joined
        assert 'export PATH="$HOME/venv/bin:$PATH"' in joined
    assert (ROOT / "constraints.txt").exists() and "ray==2.60.0" in (ROOT / "constraints.txt").read_text()

    # A CPU head that runs no trial but the MLflow server (on its private address), GPU workers from zero.
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0} and "GPU" not in head["resources"]
    assert "server.sh start" in head_start and "MLFLOW_HOST=\"$(hostname -I" in head_start
    # Nothing job-specific in ~/.bashrc: Ray's `bash -c` worker launches re-read it on SSH-started
    # nodes and it would override a job's runtime_env (a submitted --tracking-uri).
    exported = [c for c in cfg["head_setup_commands"] + cfg["worker_setup_commands"] if "bashrc" in c and "echo" in c]
    assert [re.search(r"export (\w+)=", c).group(1) for c in exported] == ["PATH", "RAY_AUTH_MODE"] * 2
    assert os.access(ROOT / "mlflow" / "server.sh", os.X_OK)
    gpu_types = {k: v for k, v in types.items() if v.get("resources", {}).get("GPU", 0) >= 1}
    assert gpu_types and all(v["node_config"]["InstanceType"].startswith("g5.") for v in gpu_types.values())
    assert all(v["min_workers"] == 0 < v["max_workers"] <= cfg["max_workers"] for v in gpu_types.values())
    assert any(v["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
               for v in gpu_types.values())
    assert all(v["node_config"]["ImageId"] for v in types.values())  # Ray's default AMI is Ubuntu 18.04


def test_ray_validation_is_live():
    """The validator used above does reject broken configs (so passing it means something)."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = load_cluster_yaml()
    bad["head_node_typ"] = bad.pop("head_node_type")
    with pytest.raises((jsonschema.ValidationError, KeyError)):
        validate_config(prepare_config(bad))
    bad = load_cluster_yaml()
    bad["available_node_types"]["gpu"]["resources"] = "one GPU"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


# --------------------------------------------------------------------------- namespaces

def namespaces_unusable() -> str | None:
    """Why this machine cannot run the isolated cluster tests, or None."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    try:
        out = subprocess.run([*NS_ARGS, "true"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "unshare hung"
    if out.returncode != 0:
        return f"cannot create PID/mount namespaces (needs root): {out.stderr.strip()[:200]}"
    return None


def _stat(pid: int) -> list[str] | None:
    try:
        s = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return s[s.rindex(")") + 2:].split()


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _pid_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class Namespace:
    """Processes in their own PID + mount namespace with a private ``/tmp/ray``.

    ``ray stop`` inside sees only them; :meth:`kill` SIGKILLs the namespace's first
    process, on which the kernel kills every other process in it.
    """

    def __init__(self, root: Path):
        self.root = root
        self.ray_tmp = root / "ray-tmp"
        self.ray_tmp.mkdir(parents=True)
        self.proc: subprocess.Popen | None = None
        self.init_pid: int | None = None
        self.ns: str | None = None

    def start(self, argv: list[str], env: dict, log: Path, home: Path | None = None,
              keep_in_home: tuple[str, ...] = ()) -> None:
        """Run ``argv`` in the namespace; with ``home``, it replaces the user's home directory there
        (``keep_in_home``: paths under the real home, e.g. the Python install, bound back in)."""
        os.makedirs("/tmp/ray", exist_ok=True)  # the mount point
        lines = ["set -euo pipefail", f"mount --bind {shlex.quote(str(self.ray_tmp))} /tmp/ray"]
        if home is not None:
            real_home = pwd.getpwuid(os.getuid()).pw_dir
            for path in keep_in_home:
                rel = os.path.relpath(path, real_home)
                target = home / rel
                target.mkdir(parents=True, exist_ok=True)
                lines.append(f"mount --rbind {shlex.quote(path)} {shlex.quote(str(target))}")
            lines.append(f"mount --rbind {shlex.quote(str(home))} {shlex.quote(real_home)}")
        lines.append('exec "$@"')
        script = self.root / "enter.sh"
        script.write_text("\n".join(lines) + "\n")
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([*NS_ARGS, "bash", str(script), *argv], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        end = time.monotonic() + 20
        while time.monotonic() < end and self.ns is None:
            for pid in _pids():
                st = _stat(pid)
                if st and int(st[1]) == self.proc.pid:
                    self.init_pid, self.ns = pid, _pid_ns(pid)
                    break
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if self.ns is None:
            self.kill()
            raise AssertionError(f"namespace did not start:\n{log.read_text()[-2000:]}")

    def pids(self) -> list[int]:
        return [p for p in _pids() if self.ns is not None and _pid_ns(p) == self.ns]

    def ray_processes(self) -> list[str]:
        return [c for c in map(_comm, self.pids()) if c in ("raylet", "gcs_server") or c.startswith("ray::")]

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.init_pid is not None and _pid_ns(self.init_pid) == self.ns:
            try:
                os.kill(self.init_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        end = time.monotonic() + 30
        while self.pids() and time.monotonic() < end:
            time.sleep(0.1)
        assert not self.pids(), f"processes left in the namespace: {self.pids()}"


@contextlib.contextmanager
def decoy_raylet(tmp: Path):
    """A process named ``raylet`` outside the namespace: ``ray stop`` kills every process of that
    name it can see, so it is alive afterwards only if the namespace hid it."""
    exe = tmp / "raylet"
    shutil.copy(shutil.which("sleep"), exe)
    proc = subprocess.Popen([str(exe), "3600"], start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def results_of(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


def trial_runs(uri: str, sweep: str) -> list:
    client = tracking.get_client(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    flt = f"tags.`grokray.sweep` = '{sweep}' and tags.`grokray.kind` = 'trial'"
    return list(tracking.iter_runs(client, exps, flt))


def parent_runs(uri: str, sweep: str) -> list:
    client = tracking.get_client(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, f"tags.`grokray.sweep` = '{sweep}' and tags.`grokray.kind` = 'sweep'")


# --------------------------------------------------------------------------- 2. fake GPU nodes

FAKE_SCENARIO = r"""
set -uo pipefail
cd "$WORK"
ray get-auth-token --generate >/dev/null        # token auth ON, as on a real cluster
RAY_FAKE_CLUSTER=1 ray start --head --port="$GCS_PORT" --num-cpus=1 --num-gpus=0 \
    --dashboard-host=127.0.0.1 --dashboard-port="$DASH_PORT" --dashboard-agent-listen-port="$AGENT_PORT" \
    --ray-client-server-port="$CLIENT_PORT" --autoscaling-config="$WORK/fake_cluster.yaml" \
    --disable-usage-stats || exit 90
python "$WORK/state.py" >"$WORK/state.json" 2>"$WORK/state.err" &
python -m grokray sweep run "$WORK/fakegpu.yaml" --address "$RAY_ADDRESS" --no-map >"$WORK/driver.log" 2>&1
echo $? >"$WORK/driver.rc"
wait
ray stop >/dev/null 2>&1
"""

STATE_PY = r"""
# Watches the cluster while the sweep runs (finished jobs' actors leave the state API):
# every trial actor seen with its node, then the nodes.
import dataclasses, json, os, sys, time
import ray
from ray.util.state import list_actors, list_nodes
ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, logging_level="ERROR")
d = lambda x: x if isinstance(x, dict) else dataclasses.asdict(x)
seen = {}
while True:
    done = os.path.exists(os.path.join(os.environ["WORK"], "driver.rc"))
    for a in map(d, list_actors(detail=True, limit=1000)):
        if "ImplicitFunc" in (a["class_name"] or "") and a["node_id"]:
            seen.setdefault(a["actor_id"], {"node_id": a["node_id"], "pid": a["pid"], "states": []})
            seen[a["actor_id"]]["states"].append(a["state"])
    if done:
        break
    time.sleep(1)
nodes = [d(n) for n in list_nodes(detail=True)]
print(json.dumps({"nodes": [{k: n[k] for k in ("node_id", "is_head_node", "state", "resources_total")} for n in nodes],
                  "actors": list(seen.values())}))
"""


@pytest.mark.slow
def test_fractional_gpu_trials_run_on_fake_gpu_nodes(tmp_path, mlflow_uri):
    reason = namespaces_unusable()
    if reason:
        pytest.skip(reason)
    import ray._private.services

    node_ip = ray._private.services.get_node_ip_address()
    gcs_port = free_port()
    fake = {
        "cluster_name": "grokray-fake-gpu", "max_workers": 2, "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
        # gcs_address: fake nodes join this GCS instead of <node ip>:6379 (taken or not).
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"{node_ip}:{gcs_port}"},
        "auth": {},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            # One GPU: two trials of 0.5 GPU fit only by sharing it. min_workers 0: launched on demand.
            "gpu_node": {"resources": {"CPU": 2, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 1},
        },
        "head_node_type": "ray.head.default",
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [],
        "rsync_filter": [], "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }
    work = tmp_path / "work"
    work.mkdir()
    (work / "fake_cluster.yaml").write_text(yaml.safe_dump(fake))
    spec = {"name": "fakegpu", "base": str(BASE), "storage": str(tmp_path / "results"),
            "parameters": {"seed": {"values": [0, 1]}}, "max_concurrent": 2,
            "resources": {"cpu": 1, "gpu": 0.5}, "classifier": {"enabled": False}}
    (work / "fakegpu.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (work / "state.py").write_text(STATE_PY)
    (work / "scenario.sh").write_text(FAKE_SCENARIO)
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "WORK": str(work), "RAY_AUTH_MODE": "token",
           "GCS_PORT": str(gcs_port), "DASH_PORT": str(free_port()), "AGENT_PORT": str(free_port()),
           "CLIENT_PORT": str(free_port()), "AUTOSCALER_METRIC_PORT": str(free_port()),
           "DASHBOARD_METRIC_PORT": str(free_port()), "RAY_ADDRESS": f"{node_ip}:{gcs_port}",
           "MLFLOW_TRACKING_URI": mlflow_uri, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1"}
    ns = Namespace(tmp_path / "ns")
    log = tmp_path / "scenario.log"
    with decoy_raylet(tmp_path) as decoy:
        try:
            ns.start(["bash", str(work / "scenario.sh")], env, log)
            rc = ns.wait(timeout=900)
            driver = (work / "driver.log").read_text() if (work / "driver.log").exists() else ""
            assert rc == 0 and (work / "driver.rc").read_text().strip() == "0", \
                f"scenario rc {rc}\n{log.read_text()[-3000:]}\n--- driver\n{driver[-3000:]}"
            assert ns.ray_processes() == []  # the scenario's `ray stop` stopped the namespace's Ray ...
            assert decoy.poll() is None  # ... and nothing outside it
        finally:
            ns.kill()

    state = json.loads((work / "state.json").read_text())
    nodes = {n["node_id"]: n for n in state["nodes"]}
    heads = [n for n in nodes.values() if n["is_head_node"]]
    gpu_nodes = [n for n in nodes.values() if n["resources_total"].get("GPU", 0) > 0]
    assert len(heads) == 1 and "GPU" not in heads[0]["resources_total"]
    # The autoscaler launched exactly one fake GPU node (min_workers 0: on demand).
    assert len(gpu_nodes) == 1 and not gpu_nodes[0]["is_head_node"]
    assert gpu_nodes[0]["resources_total"]["GPU"] == 1 and gpu_nodes[0]["node_id"].startswith("fffff")
    # Both trial actors ran there, i.e. two 0.5-GPU trials on one GPU.
    trials = state["actors"]
    assert len(trials) == 2 and all("ALIVE" in a["states"] for a in trials), trials
    assert {a["node_id"] for a in trials} == {gpu_nodes[0]["node_id"]}
    # ... at the same time.
    dirs = [p for p in (tmp_path / "results" / "fakegpu").iterdir() if (p / "result.json").exists()]
    spans = []
    for d in dirs:
        res = results_of(d)
        assert res[-1]["step"] == 200
        spans.append((res[0]["timestamp"] - res[0]["time_total_s"], res[-1]["timestamp"]))
    assert len(spans) == 2 and max(s for s, _ in spans) < min(e for _, e in spans), f"trials did not overlap: {spans}"
    # MLflow: two finished trial runs that trained on CPU (the fake GPU has no CUDA behind it).
    runs = trial_runs(mlflow_uri, "fakegpu")
    assert len(runs) == 2
    assert all(r.info.status == "FINISHED" and r.data.tags["grokray.steps_run"] == "200" for r in runs)
    assert {r.data.tags["grokray.device"] for r in runs} == {"cpu"}
    parent = parent_runs(mlflow_uri, "fakegpu")[0]
    assert parent.data.params["sweep.resources"] == "1.0cpu,0.5gpu" and parent.info.status == "FINISHED"


# --------------------------------------------------------------------------- 3. ray up over ssh

def sshd_unusable() -> str | None:
    missing = [t for t in ("ssh", "ssh-keygen", "rsync") if shutil.which(t) is None]
    if not (shutil.which("sshd") or os.path.exists("/usr/sbin/sshd")):
        missing.append("sshd")
    if missing:
        return (f"{', '.join(missing)} not installed (Debian: apt-get install -y openssh-server rsync; "
                "see docs/cluster.md)")
    if os.geteuid() != 0:
        return "needs root (sshd with its own config, namespaces, root login on a loopback address)"
    return namespaces_unusable()


def pick_loopback() -> str | None:
    """A loopback address whose port 22 is free (the local provider ssh-es to port 22)."""
    for last in range(2, 30):
        addr = f"127.0.0.{last}"
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((addr, 22))
                return addr
            except OSError:
                continue
    return None


def run(cmd: list[str], env: dict, cwd: Path = ROOT, timeout: float = 300, log: Path | None = None):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    if log is not None:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n{out.stdout}\n{out.stderr}\n")
    return out


def kill_ssh_masters(cluster_name: str) -> None:
    """Ray's ssh ControlMaster processes (ControlPersist=10s) of this cluster, and their socket dir."""
    tag = hashlib.sha256(cluster_name.encode()).hexdigest()[:10]
    control = Path("/tmp") / f"ray_ssh_{hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]}" / tag
    for pid in _pids():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(control) in cmd:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    shutil.rmtree(control, ignore_errors=True)
    try:
        control.parent.rmdir()  # only if no other cluster uses it
    except OSError:
        pass


def job_state(status_stdout: str) -> str | None:
    first = status_stdout.splitlines()[0] if status_stdout else ""
    return first.split(":")[-1].strip() if first.startswith("job ") else None


@pytest.mark.slow
def test_ray_up_local_provider_submit_sweep_and_ray_down(tmp_path):
    reason = sshd_unusable()
    if reason:
        pytest.skip(reason)
    addr = pick_loopback()
    if addr is None:
        pytest.skip("port 22 is taken on every loopback address 127.0.0.2-29")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir (what ssh.service makes)
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    t = tmp_path
    client_tmp = t / "client-tmp"
    client_tmp.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(t / "id_ed25519")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(t / "host_key")], check=True)
    shutil.copy(t / "id_ed25519.pub", t / "authorized_keys")
    (t / "sshd_config").write_text(f"""ListenAddress {addr}:22
HostKey {t / 'host_key'}
PidFile {t / 'sshd.pid'}
AuthorizedKeysFile {t / 'authorized_keys'}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
Subsystem sftp internal-sftp
""")
    # The node's home: private (its ~/.ray token, ~/.bashrc, ~/grokray, ~/grokray-mlflow), with this
    # Python bound back in and ~/venv -> this venv (what cluster.yaml's `uv venv ~/venv` makes on AWS).
    home = t / "node-home"
    home.mkdir()
    (home / ".bashrc").write_text("# node ~/.bashrc\n")
    (home / "venv").symlink_to(sys.prefix)
    real_home = pwd.getpwuid(os.getuid()).pw_dir
    keep = tuple(sorted({p for p in (sys.base_prefix, sys.prefix, str(ROOT))
                         if p.startswith(real_home.rstrip("/") + "/")}))

    base = load_cluster_yaml()
    ports = {k: free_port() for k in ("gcs", "agent", "client", "mlflow", "am", "dm")}
    with socket.socket() as s:
        dash = 8265 if s.connect_ex((addr, 8265)) != 0 else free_port()
    name = f"grokray-test-{uuid.uuid4().hex[:6]}"
    local = {
        "cluster_name": name,
        "provider": {"type": "local", "head_ip": addr, "worker_ips": []},
        "auth": {"ssh_user": pwd.getpwuid(os.getuid()).pw_name, "ssh_private_key": str(t / "id_ed25519")},
        "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
        # From cluster.yaml: the synced checkout, its excludes, the token copy to workers, ...
        "file_mounts": base["file_mounts"], "rsync_exclude": base["rsync_exclude"],
        "rsync_filter": base["rsync_filter"], "cluster_synced_files": base["cluster_synced_files"],
        "initialization_commands": [],
        # ... its venv + PATH commands (the downloads and pip installs cannot run offline) ...
        "setup_commands": [c for c in base["setup_commands"] if "pip install" not in c and "curl " not in c],
        # ... and its token generation.
        "head_setup_commands": [c for c in base["head_setup_commands"] if "get-auth-token" in c],
        "worker_setup_commands": [],
        "head_start_ray_commands": [
            "ray stop",
            f"AUTOSCALER_METRIC_PORT={ports['am']} DASHBOARD_METRIC_PORT={ports['dm']} "
            "RAY_OVERRIDE_JOB_RUNTIME_ENV=1 RAY_AUTH_MODE=token "
            f"ray start --head --node-ip-address={addr} --port={ports['gcs']} --dashboard-host={addr} "
            f"--dashboard-port={dash} --dashboard-agent-listen-port={ports['agent']} "
            f"--ray-client-server-port={ports['client']} --autoscaling-config=~/ray_bootstrap_config.yaml "
            "--num-cpus=2 --disable-usage-stats",
            f"MLFLOW_HOST={addr} MLFLOW_PORT={ports['mlflow']} MLFLOW_ALLOWED_HOSTS='{addr},{addr}:*' "
            'MLFLOW_DATA_DIR="$HOME/grokray-mlflow" ~/grokray/mlflow/server.sh start',
        ],
        "worker_start_ray_commands": [],
    }
    assert len(local["setup_commands"]) == 3 and len(local["head_setup_commands"]) == 1
    config = t / "local.yaml"
    config.write_text(yaml.safe_dump(local, sort_keys=False))

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "MLFLOW_TRACKING_URI"}
    env.update(RAY_TMPDIR=str(client_tmp), TMPDIR=str(client_tmp), PYTHONUNBUFFERED="1",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    log = t / "ray.log"
    url = f"http://{addr}:{dash}"
    mlflow_url = f"http://{addr}:{ports['mlflow']}"
    ns = Namespace(t / "ns")
    timings = {}
    decoys = contextlib.ExitStack()
    decoy = decoys.enter_context(decoy_raylet(t))
    try:
        (t / "client").mkdir()
        ns.start([sshd, "-D", "-e", "-f", str(t / "sshd_config")], env, t / "sshd.log", home=home, keep_in_home=keep)
        ssh = ["ssh", "-i", str(t / "id_ed25519"), "-o", "StrictHostKeyChecking=no", "-o",
               "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=2",
               f"{local['auth']['ssh_user']}@{addr}", "true"]
        end = time.monotonic() + 30
        while run(ssh, env, timeout=30).returncode != 0:
            assert time.monotonic() < end, f"sshd on {addr}:22 not reachable:\n{(t / 'sshd.log').read_text()}"
            time.sleep(0.5)

        t0 = time.monotonic()
        up = run([RAY, "up", "-y", "--no-config-cache", str(config)], env, timeout=600, log=log)
        timings["ray up"] = time.monotonic() - t0
        assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-3000:]
        # Synced from the checkout, minus the excludes (.git is not shipped).
        assert (home / "grokray" / "mlflow" / "server.sh").exists() and not (home / "grokray" / ".git").exists()
        token = (home / ".ray" / "auth_token").read_text().strip()
        assert len(token) >= 32

        # The venv is on the login shell's PATH of the node (the job's `python`, `ray down`'s `ray stop`).
        which = run([RAY, "exec", str(config), "command -v python; command -v ray"], env, log=log)
        assert which.returncode == 0 and f"{real_home}/venv/bin/python" in which.stdout \
            and f"{real_home}/venv/bin/ray" in which.stdout, which.stdout[-2000:]

        # On the node, Ray commands use the token (RAY_AUTH_MODE=token in ~/.bashrc) ...
        st = run([RAY, "exec", str(config), "ray status"], env, log=log)
        assert st.returncode == 0 and "Active:" in st.stdout and "0.0/2.0 CPU" in st.stdout, st.stdout[-2000:]
        # ... and the client learns the MLflow URL as seen from the cluster like docs/cluster.md does.
        url_file = t / "client" / "server.url"
        got = run([RAY, "rsync-down", str(config), "~/grokray-mlflow/server.url", str(url_file)], env, log=log)
        assert got.returncode == 0 and url_file.read_text().strip() == mlflow_url

        # Token auth is on: the job API refuses a client without it.
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"{url}/api/jobs/", timeout=10)
        assert denied.value.code in (401, 403)
        req = urllib.request.Request(f"{url}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
        assert urllib.request.urlopen(req, timeout=10).status == 200

        # The client fetches the token (docs/cluster.md): rsync-down gives the exact file ...
        client_token = t / "client" / "auth_token"
        down = run([RAY, "rsync-down", str(config), "~/.ray/auth_token", str(client_token)], env, log=log)
        assert down.returncode == 0 and client_token.read_text().strip() == token
        # ... while `ray exec ... 'ray get-auth-token' > file` would also write Ray's log lines into the
        # file: the docs filter its stdout with `grep -xE '[0-9a-f]{64}'`.
        shown = run([RAY, "exec", str(config), "ray get-auth-token"], env, log=log)
        assert shown.returncode == 0 and shown.stdout.strip() != token
        assert [ln.strip() for ln in shown.stdout.splitlines() if re.fullmatch(r"[0-9a-f]{64}", ln.strip())] == [token]

        # A tiny sweep submitted as a Ray Job, from a directory holding only its spec.
        sub = t / "submit"
        sub.mkdir()
        spec = {"name": "localup", "base": str(BASE), "storage": str(t / "results"),
                "parameters": {"seed": {"values": [0, 1]}}, "max_concurrent": 2,
                "classifier": {"enabled": True, "patching_queries": 20}}
        (sub / "localup.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        cenv = {**env, "RAY_AUTH_TOKEN_PATH": str(client_token), "RAY_AUTH_MODE": "token"}
        grok = [sys.executable, "-m", "grokray"]

        def submit_and_wait(sweep: str) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
            """Submit ``<sweep>.yaml`` as a Ray job, poll ``sweep status`` until the job ends; (status, logs)."""
            t0 = time.monotonic()
            out = run([*grok, "sweep", "submit", f"{sweep}.yaml", "--address", url, "--tracking-uri", mlflow_url],
                      cenv, cwd=sub, log=log)
            assert out.returncode == 0 and f"as Ray job grokray-{sweep}" in out.stdout, out.stdout + out.stderr
            status_cmd = [*grok, "sweep", "status", sweep, "--address", url, "--tracking-uri", mlflow_url,
                          "--storage", str(t / "results")]
            end = time.monotonic() + 600
            while True:
                st = run(status_cmd, cenv, cwd=sub)
                state = job_state(st.stdout)
                if state in ("SUCCEEDED", "FAILED", "STOPPED") or time.monotonic() > end:
                    break
                time.sleep(5)
            timings[f"{sweep} job"] = time.monotonic() - t0
            logs = run([*grok, "sweep", "logs", sweep, "--address", url], cenv, cwd=sub, log=log)
            assert state == "SUCCEEDED", f"job {state}\n{st.stdout}\n{st.stderr}\n--- job log\n{logs.stdout[-4000:]}"
            return st, logs

        st, logs = submit_and_wait("localup")
        assert "[grokray] sweep 'localup' done: 2 trial(s), 0 failed" in logs.stdout
        assert "finished 2" in st.stdout and st.stdout.count("_grokking") == 2, st.stdout

        # The runs live in the head's MLflow server, artifacts under its destination on the head.
        runs = trial_runs(mlflow_url, "localup")
        (parent,) = parent_runs(mlflow_url, "localup")
        assert len(runs) == 2 and parent.info.status == "FINISHED"
        assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
        client = tracking.get_client(mlflow_url)
        store = home / "grokray-mlflow" / "artifacts"
        for r in runs:
            assert r.info.status == "FINISHED" and r.data.tags["grokray.steps_run"] == "200"
            assert r.data.tags["grokray.label"] in ("true_grokking", "fake_grokking", "no_grokking")
            assert (store / r.info.experiment_id / r.info.run_id / "artifacts" / "curves.png").stat().st_size > 1000
        assert {a.path for a in client.list_artifacts(parent.info.run_id, "phase_map")} >= {
            "phase_map/phase_map.png", "phase_map/phase_map.csv"}

        # The last step of docs/cluster.md: the phase map, read through the head's MLflow server.
        pm = run([*grok, "phase-map", "localup", "--tracking-uri", mlflow_url, "--png", str(t / "pm.png")], cenv,
                 cwd=sub, log=log)
        assert pm.returncode == 0 and "localup: 2 run(s), 2 labelled" in pm.stdout, pm.stdout + pm.stderr
        assert (t / "pm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # Issue 21: method boundary on the cluster. The searcher runs in the job's driver on the head; every
        # run says why it was chosen, and the search's whole map is read back through the head's server.
        bnd = {**spec, "name": "localbnd", "method": "boundary", "num_samples": 3, "boundary": {"min_coarse": 2},
               "parameters": {"train.weight_decay": {"values": [0.1, 0.3, 1.0]}},
               "classifier": {"enabled": False}}
        (sub / "localbnd.yaml").write_text(yaml.safe_dump(bnd, sort_keys=False))
        st, logs = submit_and_wait("localbnd")
        assert "[grokray] sweep 'localbnd' done: 2 trial(s), 0 failed" in logs.stdout, logs.stdout[-3000:]
        bruns = trial_runs(mlflow_url, "localbnd")
        # 3 values, min_coarse 2: the coarse design is the two ends; both memorize in 200 steps, so the
        # middle is inside an agreeing cell and the search ends under its budget
        assert sorted(float(r.data.params["train.weight_decay"]) for r in bruns) == [0.1, 1.0]
        assert all(re.fullmatch(r"trial [12]/3: coarse design", r.data.tags["grokray.search_reason"]) for r in bruns)
        sm = run([*grok, "phase-map", "localbnd", "--search", "--tracking-uri", mlflow_url, "--csv",
                  str(t / "search.csv")], cenv, cwd=sub, log=log)
        assert sm.returncode == 0 and "3 grid point(s): 2 from runs, 1 inside agreeing cells" in sm.stdout, \
            sm.stdout + sm.stderr

        t0 = time.monotonic()
        down = run([RAY, "down", "-y", str(config)], env, log=log)
        timings["ray down"] = time.monotonic() - t0
        assert down.returncode == 0, down.stdout[-3000:] + down.stderr[-2000:]
        end = time.monotonic() + 30
        while ns.ray_processes() and time.monotonic() < end:
            time.sleep(0.5)
        assert ns.ray_processes() == [], "ray down left Ray processes on the node"
        assert decoy.poll() is None, "ray down's `ray stop` reached a process outside the node"
    finally:
        ns.kill()  # sshd, the MLflow server and anything else on the "node"
        kill_ssh_masters(name)
        decoys.close()
        print(f"timings: {timings}")
