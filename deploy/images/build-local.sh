#!/usr/bin/env bash
# Build every image compose.yaml and the container tests use, on a machine that reaches
# Debian's packages and PyPI but no container registry (nothing is pulled):
#
#   deploy/images/build-local.sh [--refresh]
#
#   messenger-base:bookworm   debootstrap --variant=minbase bookworm, `docker import`ed
#   messenger-base:trixie     the same for Debian 13
#   messenger-python:3.11     python.Dockerfile on bookworm: stands in for python:3.11-slim
#   messenger-rabbitmq:4.0    rabbitmq.Dockerfile on trixie (rabbitmq-server 4.0.5, Erlang 27):
#                             stands in for the official rabbitmq:4.x
#   messenger:local           deploy/Dockerfile on messenger-python:3.11 (what compose builds)
#
# and writes deploy/images/local.env, the compose variables that name these images:
#
#   docker compose --env-file deploy/images/local.env up --build --wait
#
# The debootstrap tarballs are cached outside the clone, in $MESSENGER_IMAGE_CACHE (default
# ~/.cache/messenger/images), so every clone on the machine reuses them; Docker's layer cache
# does the rest. A second run takes seconds. --refresh debootstraps again and rebuilds every
# layer (newer Debian packages). Needs root for debootstrap (first run only) and a Docker
# engine that answers (deploy/images/engine.sh starts one).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
IMAGES="$REPO/deploy/images"
CACHE="${MESSENGER_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/messenger/images}"

BASE_REPO=messenger-base
PYTHON_IMAGE=messenger-python:3.11
RABBITMQ_IMAGE=messenger-rabbitmq:4.0
MESSENGER_IMAGE=messenger:local
SUITES=(bookworm trixie)

refresh=0
case "${1:-}" in
    "") ;;
    --refresh) refresh=1 ;;
    -h | --help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-local.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
esac

say() { printf 'build-local: %s\n' "$*"; }
die() { printf 'build-local: %s\n' "$*" >&2; exit 1; }
now() { date +%s; }

# The Debian archive this machine's apt uses (one-line or deb822 sources), unless given.
debian_mirror() {
    if [ -n "${MESSENGER_DEBIAN_MIRROR:-}" ]; then
        echo "$MESSENGER_DEBIAN_MIRROR"
        return
    fi
    local uri
    uri="$(
        { grep -hsE '^\s*deb\s' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
            sed -E 's/^\s*deb\s+(\[[^]]*\]\s+)?(\S+).*/\2/'
          grep -hsiE '^\s*URIs:' /etc/apt/sources.list.d/*.sources | sed -E 's/^\s*URIs:\s*//I' |
            tr ' ' '\n'; } | grep -E '://[^ ]*/debian/?$' | head -n 1
    )"
    echo "${uri:-http://deb.debian.org/debian}"
}

# A minimal Debian root file system as a tarball in the cache (made once).
rootfs_tarball() {
    local suite="$1" tarball="$CACHE/debian-$1-minbase.tar"
    if [ -s "$tarball" ] && [ "$refresh" = 0 ]; then
        return
    fi
    [ "$(id -u)" = 0 ] || die "debootstrap needs root (or a cached $tarball)"
    if ! command -v debootstrap >/dev/null; then
        say "installing debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            debootstrap >/dev/null || { apt-get update -q >/dev/null &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
                debootstrap >/dev/null; }
    fi
    local root="$CACHE/rootfs-$suite.tmp" started
    started="$(now)"
    rm -rf "$root"
    say "debootstrap $suite from $(debian_mirror) ..."
    if ! debootstrap --variant=minbase "$suite" "$root" "$(debian_mirror)" \
        >"$CACHE/debootstrap-$suite.log" 2>&1; then
        rm -rf "$root"
        die "debootstrap $suite failed; see $CACHE/debootstrap-$suite.log"
    fi
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
    say "debootstrap $suite: $(($(now) - started)) s, $(du -h "$tarball" | cut -f1)"
}

# `docker import` the tarball, unless the image already holds this very tarball.
import_base() {
    local suite="$1" tarball="$CACHE/debian-$1-minbase.tar" key have
    key="$(stat -c '%s-%Y' "$tarball")"
    have="$(docker image inspect -f '{{index .Config.Labels "org.messenger.rootfs"}}' \
        "$BASE_REPO:$suite" 2>/dev/null || true)"
    if [ "$have" = "$key" ]; then
        say "$BASE_REPO:$suite is up to date"
        return
    fi
    docker import --change "LABEL org.messenger.rootfs=$key" --change 'CMD ["bash"]' \
        "$tarball" "$BASE_REPO:$suite" >/dev/null
    say "imported $BASE_REPO:$suite"
}

# `docker build ARGS` (or any command given after --), quietly; on failure its whole output.
build() {
    local tag="$1" started log
    shift
    started="$(now)"
    log="$(mktemp)"
    local command=(docker build "${no_cache[@]}" -t "$tag" "$@")
    [ "${1:-}" = -- ] && command=("${@:2}")
    if ! "${command[@]}" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "building $tag failed"
    fi
    rm -f "$log"
    say "built $tag ($(($(now) - started)) s)"
}

main() {
    local started
    started="$(now)"
    docker info >/dev/null 2>&1 || die "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-default})"
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock 9  # one build at a time per cache

    # Both debootstraps at once: each waits on the network as much as on the CPU.
    local pids=() suite failed=0
    for suite in "${SUITES[@]}"; do
        rootfs_tarball "$suite" &
        pids+=("$!")
    done
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    [ "$failed" = 0 ] || exit 1
    for suite in "${SUITES[@]}"; do import_base "$suite"; done

    no_cache=()
    [ "$refresh" = 1 ] && no_cache=(--no-cache)

    # The host's trusted certificates go into the Python base (pip inside the build must
    # trust what pip on this machine trusts, an HTTPS proxy's CA included).
    context="$(mktemp -d)"
    trap 'rm -rf "$context"' EXIT
    cp "$IMAGES/python.Dockerfile" "$context/Dockerfile"
    cp /etc/ssl/certs/ca-certificates.crt "$context/host-ca-certificates.crt" 2>/dev/null ||
        : >"$context/host-ca-certificates.crt"
    # The broker's image beside the Python base and ours (which needs that base).
    build "$RABBITMQ_IMAGE" --build-arg "BASE_IMAGE=$BASE_REPO:trixie" \
        -f "$IMAGES/rabbitmq.Dockerfile" "$IMAGES" &
    local rabbitmq=$!
    build "$PYTHON_IMAGE" --build-arg "BASE_IMAGE=$BASE_REPO:bookworm" "$context"
    if docker compose version >/dev/null 2>&1; then
        # Through compose, as `docker compose up --build` builds it: the same builder, so
        # that build finds every layer cached (the classic builder keeps a cache of its own).
        build "$MESSENGER_IMAGE" -- env MESSENGER_PYTHON_IMAGE="$PYTHON_IMAGE" \
            MESSENGER_IMAGE="$MESSENGER_IMAGE" docker compose --project-directory "$REPO" \
            -f "$REPO/compose.yaml" build "${no_cache[@]}" auth
    else
        build "$MESSENGER_IMAGE" --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" \
            -f "$REPO/deploy/Dockerfile" "$REPO"
    fi
    wait "$rabbitmq" || die "building $RABBITMQ_IMAGE failed"

    cat >"$IMAGES/local.env" <<ENV
# Written by deploy/images/build-local.sh: compose.yaml's images, built on this machine.
MESSENGER_RABBITMQ_IMAGE=$RABBITMQ_IMAGE
MESSENGER_PYTHON_IMAGE=$PYTHON_IMAGE
MESSENGER_IMAGE=$MESSENGER_IMAGE
ENV
    say "images ready in $(($(now) - started)) s; compose variables in deploy/images/local.env"
}

main
