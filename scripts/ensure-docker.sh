#!/usr/bin/env bash
# Make sure a Docker engine answers, installing and starting one if needed. Idempotent: when
# `docker info` already answers, it only checks the static busybox the test images are built from.
#
# The engine is started without a bridge and without iptables rules: jobline's containers run
# with networking disabled, and the machines this runs on may not allow changing the firewall.
#
# Environment: DOCKERD_LOG (default /tmp/dockerd.log), DOCKER_WAIT_SECONDS (default 60).
set -euo pipefail

DOCKERD_LOG="${DOCKERD_LOG:-/tmp/dockerd.log}"
DOCKER_WAIT_SECONDS="${DOCKER_WAIT_SECONDS:-60}"

log() { echo "ensure-docker: $*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

apt_install() {
    log "installing $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

static_busybox() {
    for candidate in /bin/busybox /usr/bin/busybox; do
        if [ -x "$candidate" ] && { ! command -v file >/dev/null \
            || file -L "$candidate" | grep -q 'statically linked'; }; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

engine_answers() { docker info >/dev/null 2>&1; }

if ! command -v dockerd >/dev/null 2>&1; then
    apt_install docker.io busybox-static
fi
if ! static_busybox >/dev/null; then
    apt_install busybox-static
fi
static_busybox >/dev/null || { log "no statically linked busybox after installing busybox-static"; exit 1; }

if engine_answers; then
    log "engine already answers"
    exit 0
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
    log "starting dockerd (log: $DOCKERD_LOG)"
    # setsid: the engine must outlive the shell (and its process group) that started it.
    as_root sh -c "setsid nohup dockerd --bridge=none --iptables=false >>'$DOCKERD_LOG' 2>&1 < /dev/null &"
fi

for _ in $(seq 1 "$DOCKER_WAIT_SECONDS"); do
    if engine_answers; then
        log "engine answers"
        exit 0
    fi
    sleep 1
done

log "the Docker engine did not answer 'docker info' within ${DOCKER_WAIT_SECONDS} s;" \
    "last lines of $DOCKERD_LOG:"
tail -n 20 "$DOCKERD_LOG" >&2 || true
exit 1
