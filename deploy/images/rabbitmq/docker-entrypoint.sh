#!/bin/bash
# The official image's entrypoint, reduced to what this image needs: started as root, give
# the data directory to `rabbitmq` and run the command as that user (setpriv stands in for
# gosu); a hostname with dots needs long node names.
set -euo pipefail

if [[ "${1:-}" == rabbitmq* ]] && [ "$(id -u)" = 0 ]; then
    if [ "$1" = rabbitmq-server ]; then
        find /var/lib/rabbitmq \! -user rabbitmq -exec chown rabbitmq '{}' +
    fi
    exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "$BASH_SOURCE" "$@"
fi

host="$(cat /proc/sys/kernel/hostname)"
if [ -z "${RABBITMQ_USE_LONGNAME:-}" ] && [ "$host" != "${host%%.*}" ]; then
    export RABBITMQ_USE_LONGNAME=true
fi

exec "$@"
