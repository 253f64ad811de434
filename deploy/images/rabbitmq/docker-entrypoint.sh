#!/bin/bash
# The official image's entrypoint, reduced to what this image needs: started as root, give
# the data directory to `rabbitmq` and run the command as that user (setpriv stands in for
# gosu); a hostname with dots needs long node names.
set -euo pipefail

if [[ "${1:-}" == rabbitmq* ]] && [ "$(id -u)" = 0 ]; then
    if [ "$1" = rabbitmq-server ]; then
        # The node's cookie, made now by its owner: a CLI tool run as root (the health
        # check's `docker exec`) would otherwise create a root-only one first when it wins
        # the race, and the node would fail to read it (eacces). RABBITMQ_ERLANG_COOKIE,
        # when set, is the cookie (the node and the tools use the variable too).
        cookie=/var/lib/rabbitmq/.erlang.cookie
        if [ ! -e "$cookie" ]; then
            (umask 077; printf '%s' "${RABBITMQ_ERLANG_COOKIE:-$(head -c 30 /dev/urandom | base64 | tr -dc A-Za-z0-9)}" >"$cookie")
        fi
        chmod 0400 "$cookie"
        find /var/lib/rabbitmq \! -user rabbitmq -exec chown rabbitmq '{}' +
    fi
    exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "$BASH_SOURCE" "$@"
fi

host="$(cat /proc/sys/kernel/hostname)"
if [ -z "${RABBITMQ_USE_LONGNAME:-}" ] && [ "$host" != "${host%%.*}" ]; then
    export RABBITMQ_USE_LONGNAME=true
fi

exec "$@"
