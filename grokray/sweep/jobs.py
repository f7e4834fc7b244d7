"""Hand a sweep to a Ray cluster as a Ray Job, and follow it.

``grokray sweep submit SPEC --address http://HEAD:8265`` submits
``python -m grokray sweep run SPEC --name NAME`` as job ``grokray-NAME``: the driver
runs on the head, so the laptop may disconnect. The current directory is shipped as
the job's working directory (so ``sweeps/`` and, if the nodes do not have grokray
installed, the ``grokray/`` package travel with it).

Ray >= 2.59 turns token authentication on for clusters. The client reads the token
from ``$RAY_AUTH_TOKEN``, the file ``$RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``,
with ``RAY_AUTH_MODE=token``; fetch it once from the head with
``ray rsync-down cluster.yaml '~/.ray/auth_token' ~/.ray/auth_token`` (docs/cluster.md).
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from grokray.errors import first_line
from grokray import tracking

#: Never shipped with the job (large, local, or secret).
EXCLUDES = [".git", ".venv", "venv", "**/__pycache__", "mlruns", "mlartifacts", "mlflow.db*", "*.pt",
            "benchmarks/results", "experiments/results", "*.egg-info", ".pytest_cache", "runs"]


def job_id(name: str) -> str:
    return f"grokray-{name}"


def _client(address: str):
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or token_file.exists()):
        os.environ["RAY_AUTH_MODE"] = "token"  # a token is at hand: use it (Ray >= 2.59 clusters require it)
        if "ray" in sys.modules:  # Ray reads the mode when imported: make an earlier import see it
            from ray._raylet import Config

            Config.initialize("")
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:
        msg = first_line(e)
        hint = ""
        if "auth" in msg.lower() or "401" in msg or "403" in msg:
            hint = ("; the cluster wants its token: ray rsync-down cluster.yaml '~/.ray/auth_token' "
                    "~/.ray/auth_token")
        raise ConnectionError(f"cannot reach the Ray job server at {address}: {msg}{hint}") from None


def submit(spec_path: str, name: str, address: str, working_dir: str = ".", tracking_uri: str | None = None,
           pip_install: bool = False) -> str:
    """Submit the sweep driver as a Ray Job; returns the job's submission id."""
    wd = Path(working_dir).resolve()
    spec = Path(spec_path).resolve()
    try:
        rel = spec.relative_to(wd)
    except ValueError:
        raise ValueError(f"{spec_path}: the spec must lie inside the shipped working directory {wd}") from None
    env = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    runtime_env: dict = {"working_dir": str(wd), "excludes": EXCLUDES, "env_vars": env}
    if pip_install:
        runtime_env["pip"] = ["-e", "."]
    client = _client(address)
    entrypoint = f"python -m grokray sweep run {shlex.quote(rel.as_posix())} --name {shlex.quote(name)}"
    if tracking_uri:  # beats the spec's tracking.uri, as the option says
        entrypoint += f" --tracking-uri {shlex.quote(tracking_uri)}"
    return client.submit_job(entrypoint=entrypoint,
                             submission_id=job_id(name), runtime_env=runtime_env,
                             metadata={tracking.Tag.SWEEP: name})


def status(name: str, address: str) -> str:
    info = _client(address).get_job_info(job_id(name))
    return str(info.status)


def logs(name: str, address: str) -> str:
    return _client(address).get_job_logs(job_id(name))


def follow_logs(name: str, address: str, write) -> None:
    """Stream the job's log to ``write`` until the job ends."""
    import asyncio

    client = _client(address)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id(name)):
            write(chunk)

    asyncio.run(tail())
