#!/usr/bin/env bash
# The container half of `make test`, after the private-node suite:
#   1. a Docker engine: the one that answers, or (START_DOCKER=1, as .ci/run sets) install
#      docker.io and Compose v2 and start dockerd, stopped again at the end whatever happens;
#   2. the images, built here without a registry (deploy/images/build-local.sh; cached);
#   3. the integration suite on RabbitMQ 4 in a container, and the compose end-to-end tests.
# Without an engine (and without START_DOCKER=1) it says so in one line and succeeds.
# MESSENGER_LOCAL_IMAGES=0 skips step 2 and uses compose.yaml's official images instead.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON="${PYTHON:-.venv/bin/python}"
ENGINE=deploy/images/engine.sh

skip() {
    echo "container tests skipped: $*"
    exit 0
}
answers() { command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; }
took() { echo "[timing] $1: $(($(date +%s) - $2)) s"; }

if ! answers || ! docker compose version >/dev/null 2>&1; then
    if [ "${START_DOCKER:-0}" != 1 ]; then
        answers || skip "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-default}); \`make test START_DOCKER=1\` (as root) installs and starts one, as .ci/run does"
        skip "Docker Compose v2 is not installed; \`make test START_DOCKER=1\` (as root) installs it"
    fi
    t=$(date +%s)
    bash "$ENGINE" install
    took "engine and compose install" "$t"
fi

state="$(mktemp -t messenger-engine.XXXXXX)"
trap 'bash "$ENGINE" stop "$state"; rm -f "$state"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if ! answers; then
    t=$(date +%s)
    bash "$ENGINE" start "$state"
    took "engine start" "$t"
fi

if [ "${MESSENGER_LOCAL_IMAGES:-1}" != 0 ]; then
    t=$(date +%s)
    bash deploy/images/build-local.sh
    took "local images" "$t"
    set -a
    # shellcheck source=/dev/null
    . deploy/images/local.env
    set +a
fi

# The suite's cluster tests and `make run`'s tests start private 3.10 nodes of their own,
# not the fixture's broker: the private-node run has them already.
t=$(date +%s)
MESSENGER_TEST_BROKER=container "$PYTHON" -m pytest tests/integration tests/containers \
    --ignore=tests/integration/test_cluster_failover.py \
    --ignore=tests/integration/test_cluster_nodes.py \
    --ignore=tests/integration/test_make_run.py \
    -p no:cacheprovider
took "container suites (integration on RabbitMQ 4 + compose end-to-end)" "$t"
