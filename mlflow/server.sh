#!/usr/bin/env bash
# Start / stop / check grokray's MLflow tracking server (see mlflow/README.md).
#
#   mlflow/server.sh start     # sqlite store + artifacts under $MLFLOW_DATA_DIR, 127.0.0.1:5000
#   mlflow/server.sh status    # exit 0 if running and healthy
#   mlflow/server.sh stop      # ends the server's whole process group
#
# Settings (environment; MLFLOW_HOST/PORT/WORKERS/BACKEND_STORE_URI/ARTIFACTS_DESTINATION
# are also the names `mlflow server` itself reads):
#   MLFLOW_DATA_DIR               ~/grokray-mlflow   (db, artifacts, pid file, log)
#   MLFLOW_BACKEND_STORE_URI      sqlite:///$MLFLOW_DATA_DIR/mlflow.db   (cluster: postgresql://...)
#   MLFLOW_ARTIFACTS_DESTINATION  $MLFLOW_DATA_DIR/artifacts             (cluster: s3://bucket/prefix or NFS)
#   MLFLOW_HOST                   127.0.0.1  (cluster head: its private IP, never 0.0.0.0)
#   MLFLOW_PORT                   5000
#   MLFLOW_WORKERS                1          (defaults of mlflow: 4 workers, ~2 GB)
#   MLFLOW_ALLOWED_HOSTS          unset: MLflow's default (localhost + private IPs) host-header check
#   MLFLOW_PID_FILE               $MLFLOW_DATA_DIR/server.pid
#   MLFLOW_LOG_FILE               $MLFLOW_DATA_DIR/server.log
#   MLFLOW_URL_FILE               $MLFLOW_DATA_DIR/server.url (the running server's URL, for clients)
#   MLFLOW_START_TIMEOUT          120 (seconds to wait for /health)
#   MLFLOW_BIN                    mlflow (first on PATH)
#
# Why a process group: `mlflow server` forks uvicorn (and a job runner with huey
# consumers unless MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false, the default here); a plain
# SIGTERM to the first process left workers running. The server is started with setsid
# (its pid is its process group id) and `stop` signals the whole group.
set -euo pipefail

DATA_DIR="${MLFLOW_DATA_DIR:-$HOME/grokray-mlflow}"
HOST="${MLFLOW_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-5000}"
WORKERS="${MLFLOW_WORKERS:-1}"
BACKEND="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$DATA_DIR/mlflow.db}"
ARTIFACTS="${MLFLOW_ARTIFACTS_DESTINATION:-$DATA_DIR/artifacts}"
PID_FILE="${MLFLOW_PID_FILE:-$DATA_DIR/server.pid}"
LOG_FILE="${MLFLOW_LOG_FILE:-$DATA_DIR/server.log}"
URL_FILE="${MLFLOW_URL_FILE:-$DATA_DIR/server.url}"
TIMEOUT="${MLFLOW_START_TIMEOUT:-120}"
BIN="${MLFLOW_BIN:-mlflow}"
URL_HOST="$HOST"
[[ "$HOST" == *:* ]] && URL_HOST="[$HOST]"
URL="http://$URL_HOST:$PORT"

die() { echo "mlflow/server.sh: $*" >&2; exit 1; }

healthy() {
    if command -v curl >/dev/null 2>&1; then
        [[ "$(curl -fsS --max-time 2 "$URL/health" 2>/dev/null)" == OK ]]
    else
        python3 - "$URL/health" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).read().strip() == b"OK" else 1)
EOF
    fi
}

# The group id in the pid file, if that group is alive and is an mlflow server.
running_pgid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pgid
    pgid="$(cat "$PID_FILE")"
    [[ "$pgid" =~ ^[0-9]+$ ]] || return 1
    kill -0 -- "-$pgid" 2>/dev/null || return 1
    # A recycled pid must not make us kill someone else's processes.
    grep -qa mlflow "/proc/$pgid/cmdline" 2>/dev/null || pgrep -g "$pgid" -f mlflow >/dev/null 2>&1 || return 1
    echo "$pgid"
}

group_alive() {  # live (non-zombie) members of group $1
    [[ -n "$(ps -o stat= -g "$1" 2>/dev/null | grep -v '^Z' || true)" ]]
}

port_taken() {
    python3 - "$HOST" "$PORT" <<'EOF'
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((host, port))
except OSError:
    sys.exit(0)
sys.exit(1)
EOF
}

stop_group() {
    local pgid="$1" i
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for i in $(seq 1 100); do group_alive "$pgid" || return 0; sleep 0.1; done
    kill -KILL -- "-$pgid" 2>/dev/null || true
    for i in $(seq 1 100); do group_alive "$pgid" || return 0; sleep 0.1; done
    return 1
}

start() {
    local pgid pid i
    if pgid="$(running_pgid)"; then
        echo "MLflow server already running (process group $pgid) at $(cat "$URL_FILE" 2>/dev/null || echo "$URL")"
        return 0
    fi
    rm -f "$PID_FILE" "$URL_FILE"
    command -v "$BIN" >/dev/null 2>&1 || die "'$BIN' not found (activate the venv that has mlflow)"
    port_taken && die "$HOST:$PORT is already in use (another server? set MLFLOW_PORT)"
    mkdir -p "$DATA_DIR" "$(dirname "$PID_FILE")" "$(dirname "$LOG_FILE")"
    if [[ "$BACKEND" == sqlite:///* ]]; then mkdir -p "$(dirname "${BACKEND#sqlite:///}")"; fi
    if [[ "$ARTIFACTS" != *://* ]]; then mkdir -p "$ARTIFACTS"; ARTIFACTS="$(cd "$ARTIFACTS" && pwd)"; fi
    local extra=()
    [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]] && extra+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
    # No job control in a script: the background child is not a group leader, so setsid
    # does not fork and $! is the new session's (and group's) leader.
    MLFLOW_DISABLE_TELEMETRY="${MLFLOW_DISABLE_TELEMETRY:-true}" \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}" \
        setsid "$BIN" server --backend-store-uri "$BACKEND" --serve-artifacts --artifacts-destination "$ARTIFACTS" \
        --host "$HOST" --port "$PORT" --workers "$WORKERS" "${extra[@]}" </dev/null >>"$LOG_FILE" 2>&1 &
    pid=$!
    for i in $(seq 1 50); do  # until setsid has made it a group leader
        pgid="$(ps -o pgid= -p "$pid" | tr -d ' ')"
        [[ "$pgid" == "$pid" ]] && break
        sleep 0.1
    done
    [[ "$pgid" == "$pid" ]] || { kill -TERM "$pid" 2>/dev/null; die "could not start mlflow in its own process group"; }
    echo "$pgid" >"$PID_FILE"
    local deadline=$((SECONDS + TIMEOUT))
    until healthy; do
        if ! kill -0 "$pid" 2>/dev/null; then
            stop_group "$pgid" || true
            rm -f "$PID_FILE"
            die "mlflow server exited before it was healthy; last lines of $LOG_FILE:
$(tail -n 15 "$LOG_FILE")"
        fi
        if ((SECONDS >= deadline)); then
            stop_group "$pgid" || true
            rm -f "$PID_FILE"
            die "mlflow server not healthy after ${TIMEOUT}s (log: $LOG_FILE)"
        fi
        sleep 0.5
    done
    echo "$URL" >"$URL_FILE"
    echo "MLflow server running at $URL (process group $pgid, store $BACKEND, artifacts $ARTIFACTS, log $LOG_FILE)"
}

stop() {
    local pgid
    if ! pgid="$(running_pgid)"; then
        rm -f "$PID_FILE" "$URL_FILE"
        echo "MLflow server not running"
        return 0
    fi
    stop_group "$pgid" || die "process group $pgid survived SIGKILL"
    rm -f "$PID_FILE" "$URL_FILE"
    echo "MLflow server stopped (process group $pgid)"
}

status() {
    local pgid
    if pgid="$(running_pgid)"; then
        [[ -f "$URL_FILE" ]] && URL="$(cat "$URL_FILE")"  # where it was started, whatever this shell's settings
        if healthy; then
            echo "MLflow server running at $URL (process group $pgid)"
            return 0
        fi
        echo "MLflow server process group $pgid is running but $URL/health does not answer"
        return 1
    fi
    echo "MLflow server not running"
    return 3
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    restart) stop; start ;;
    *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
esac
