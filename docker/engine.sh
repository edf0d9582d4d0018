#!/usr/bin/env bash
# Start/stop a local Docker engine for Stylize's container tests and builds.
#
#   docker/engine.sh start    install docker.io if dockerd is missing, start dockerd (overlay2, or
#                             vfs where overlay2 cannot start) unless an engine already answers,
#                             wait until `docker info` works
#   docker/engine.sh stop     stop the engine *this script* started (pidfile); never any other engine
#   docker/engine.sh status   say whether an engine answers and whether this script started it
#
# Idempotent. Used by .ci/run and by users who opt in; `make test` never runs it.
# Settings (env): STYLIZE_DOCKERD_PIDFILE (/tmp/stylize-dockerd.pid), STYLIZE_DOCKERD_LOG
# (/tmp/stylize-dockerd.log), STYLIZE_DOCKERD_WAIT (seconds to wait for the engine, 90),
# STYLIZE_DOCKERD_ARGS (extra dockerd arguments), STYLIZE_DOCKERD_STORAGE_DRIVER (only this driver;
# default: overlay2, then vfs if dockerd exits with overlay2). Why overlay2 first: vfs copies the
# whole image at every layer; the serving image built in 1037 s with vfs and 155 s with overlay2
# on a 2-core AMD EPYC here. vfs works everywhere (an overlay root filesystem refuses overlay2).
set -euo pipefail

PIDFILE=${STYLIZE_DOCKERD_PIDFILE:-/tmp/stylize-dockerd.pid}
LOG=${STYLIZE_DOCKERD_LOG:-/tmp/stylize-dockerd.log}
WAIT=${STYLIZE_DOCKERD_WAIT:-90}
STORAGE_DRIVERS=${STYLIZE_DOCKERD_STORAGE_DRIVER:-overlay2 vfs}

log() { echo "[engine] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

engine_answers() { docker info >/dev/null 2>&1; }

our_pid() {
    # Print the pid from our pidfile if that process is alive and is a dockerd.
    [[ -f $PIDFILE ]] || return 1
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    grep -q dockerd "/proc/$pid/cmdline" 2>/dev/null || return 1
    echo "$pid"
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root for: $*"
    fi
}

install_engine() {
    log "dockerd not found: installing docker.io with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        docker.io ca-certificates iptables
    command -v dockerd >/dev/null || die "docker.io installed but dockerd is still not on PATH"
    command -v docker >/dev/null || die "no docker CLI on PATH"
}

start() {
    if engine_answers; then
        if pid=$(our_pid); then
            log "engine already running (started by this script, pid $pid)"
        else
            log "an engine already answers (not started by this script); leaving it alone"
        fi
        return 0
    fi
    if pid=$(our_pid); then
        log "dockerd pid $pid (ours) is alive but does not answer yet; waiting for it"
        wait_for "$pid" || die "could not start the Docker engine"
        return 0
    fi
    command -v dockerd >/dev/null || install_engine
    [[ $(id -u) -eq 0 ]] || die "dockerd must be started as root (try: sudo $0 start)"
    local driver
    for driver in $STORAGE_DRIVERS; do
        rm -f "$PIDFILE"
        log "starting dockerd --storage-driver=$driver (log: $LOG)"
        # setsid: the engine outlives the shell that started it; `stop` ends it by pid.
        # shellcheck disable=SC2086
        setsid dockerd --storage-driver="$driver" --host=unix:///var/run/docker.sock \
            ${STYLIZE_DOCKERD_ARGS:-} >>"$LOG" 2>&1 </dev/null &
        pid=$!
        echo "$pid" >"$PIDFILE"
        if wait_for "$pid"; then
            return 0
        fi
        log "dockerd did not start with --storage-driver=$driver"
    done
    die "could not start the Docker engine"
}

wait_for() {  # wait_for PID: 0 once `docker info` answers; 1 if PID exits first
    local pid=$1 waited=0
    until engine_answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PIDFILE"
            log "dockerd exited before answering; last lines of $LOG:"
            tail -n 30 "$LOG" >&2 || true
            return 1
        fi
        if (( waited >= WAIT )); then
            log "last lines of $LOG:"
            tail -n 30 "$LOG" >&2 || true
            die "Docker engine (pid $pid) did not answer 'docker info' within ${WAIT}s (it is left running; '$0 stop' ends it)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    log "engine ready after ${waited}s (pid $pid, server $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'), storage $(docker info --format '{{.Driver}}' 2>/dev/null || echo '?'))"
}

stop() {
    local pid
    if ! pid=$(our_pid); then
        rm -f "$PIDFILE"
        log "no engine started by this script is running; nothing to stop"
        return 0
    fi
    log "stopping dockerd pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    local waited=0
    while kill -0 "$pid" 2>/dev/null; do
        if (( waited >= 30 )); then
            log "dockerd pid $pid ignored SIGTERM for 30s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 1
        waited=$((waited + 1))
    done
    rm -f "$PIDFILE"
    log "engine stopped"
}

status() {
    if engine_answers; then
        if pid=$(our_pid); then log "engine answers (started by this script, pid $pid)"
        else log "engine answers (not started by this script)"
        fi
    else
        log "no engine answers"
        return 1
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
