"""Start and stop an MLflow tracking server from code and tests (``mlflow/server.sh`` from a shell).

A server is what every node of a cluster can reach: trials on worker nodes log
through it, and ``--serve-artifacts`` proxies their artifact uploads to
``artifacts_destination`` (a directory on the server's machine, NFS or S3), so the
workers need neither the database nor the artifact store mounted.

What the machines taught us (``/work/shared/reference/infra.md``):

* ``mlflow server`` forks a uvicorn server (and, unless disabled, a job runner with
  seven huey consumers); a SIGTERM to the first process leaves the others running.
  The server is started as the leader of its own session and process group, and
  :meth:`ServerHandle.stop` signals the whole group and waits until it is empty.
* ``--workers 1`` is healthy in 5-9 s and ~0.5 GB; the defaults take ~17 s and ~2 GB.
  MLflow's job execution (GenAI judges, scheduled trace jobs) is off: grokray does not
  use it (set ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true`` in ``env`` to get it back).
* The server binds 127.0.0.1 unless told otherwise; MLflow's host-header check
  accepts localhost and private addresses (10.*, 172.16-31.*, 192.168.*) by default,
  ``allowed_hosts`` widens it (e.g. for 127.0.0.2).

Example:
    >>> # with start_server("sqlite:////tmp/m/mlflow.db", "/tmp/m/artifacts", port=5001) as server:
    >>> #     client = grokray.tracking.get_client(server.url)
"""
from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from grokray import tracking

#: Environment every server gets unless the caller's ``env`` says otherwise.
SERVER_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


class ServerError(RuntimeError):
    """The server could not start (port taken, bad store, not healthy in time): one line."""


def _mlflow_command() -> list[str]:
    """``mlflow`` of this interpreter's environment (not whatever ``mlflow`` is first on PATH)."""
    exe = Path(sys.executable).with_name("mlflow")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]


def port_in_use(host: str, port: int) -> bool:
    """True if ``host:port`` cannot be bound (uvicorn binds with SO_REUSEADDR too)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``, read from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces and parentheses).
        fields = stat[stat.rindex(")") + 2:].split()
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in ("Z", "X"):
            pids.append(int(entry))
    return pids


def health(url: str, timeout: float = 2.0) -> bool:
    """True if ``url/health`` answers 200 OK."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as r:
            return r.status == 200 and r.read().strip() == b"OK"
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _local_path(uri: str) -> Path | None:
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    if "://" not in uri and ":" not in uri.split("/")[0]:
        return Path(uri)
    return None


@dataclass
class ServerHandle:
    """A running ``mlflow server``; :meth:`stop` ends its whole process group."""
    proc: subprocess.Popen
    host: str
    port: int
    backend_uri: str
    artifacts_destination: str
    log_path: Path
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def pgid(self) -> int:
        return self.proc.pid  # started as a session (and group) leader

    def alive(self) -> bool:
        return self.proc.poll() is None and health(self.url)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``grace_s``; wait until it is empty."""
        if self._stopped:
            return
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
            if self._wait_group_empty(wait_s):
                break
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent
            pass
        if group_members(self.pgid):
            raise ServerError(f"MLflow server group {self.pgid} survived SIGKILL: {group_members(self.pgid)}")
        self._stopped = True

    def _wait_group_empty(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.proc.poll()  # reap our own child; the others are reaped by init
            if not group_members(self.pgid):
                return True
            time.sleep(0.1)
        return False

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(backend_uri: str, artifacts_destination: str, host: str = "127.0.0.1", port: int = 5000,
                 workers: int = 1, timeout: float = 120.0, log_path: str | os.PathLike | None = None,
                 allowed_hosts: list[str] | None = None, env: dict[str, str] | None = None) -> ServerHandle:
    """Start ``mlflow server`` with proxied artifacts and wait until ``/health`` answers.

    ``backend_uri``: ``sqlite:////abs/mlflow.db`` on one machine, ``postgresql://...`` on a
    cluster; ``artifacts_destination``: a directory, ``file://`` or ``s3://`` URI. Raises
    :class:`ServerError` (one line) if the port is taken, the server dies, or it is not
    healthy within ``timeout`` seconds (then nothing of it is left running).
    """
    if port_in_use(host, port):
        raise ServerError(f"cannot start the MLflow server: {host}:{port} is already in use "
                          "(a server already running there? pick another port)")
    if backend_uri.startswith("sqlite:///"):
        db = Path(backend_uri[len("sqlite:///"):]).expanduser().resolve()
        backend_uri = f"sqlite:///{db}"
        # Create and migrate the store first, under grokray's store lock and in WAL mode (readers such
        # as phase maps then do not block the server), instead of racing the server's own migration.
        tracking.get_client(backend_uri)
    local = _local_path(artifacts_destination)
    if local is not None:
        local = local.expanduser().resolve()
        local.mkdir(parents=True, exist_ok=True)
        artifacts_destination = str(local)
    if log_path is None:
        fd, log_path = tempfile.mkstemp(prefix=f"grokray-mlflow-{port}-", suffix=".log")
        os.close(fd)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [*_mlflow_command(), "server", "--backend-store-uri", backend_uri, "--serve-artifacts",
           "--artifacts-destination", artifacts_destination, "--host", host, "--port", str(port),
           "--workers", str(workers)]
    if allowed_hosts:
        cmd += ["--allowed-hosts", ",".join(allowed_hosts)]
    full_env = {**os.environ, **SERVER_ENV, **(env or {})}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                start_new_session=True)
    handle = ServerHandle(proc=proc, host=host, port=port, backend_uri=backend_uri,
                          artifacts_destination=artifacts_destination, log_path=log_path)
    end = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                last = next((ln.strip() for ln in reversed(handle.log_tail(30).splitlines()) if ln.strip()), "")
                raise ServerError(f"MLflow server on {host}:{port} exited with code {proc.returncode} before it "
                                  f"was healthy: {last[:300]} (log {log_path})")
            if health(handle.url, timeout=1.0):
                return handle
            if time.monotonic() > end:
                raise ServerError(f"MLflow server on {host}:{port} not healthy after {timeout:g} s "
                                  f"(log {log_path})")
            time.sleep(0.2)
    except BaseException:
        handle.stop(grace_s=2.0)
        raise


__all__ = ["ServerError", "ServerHandle", "start_server", "port_in_use", "free_port", "group_members", "health"]
