# A stand-in for the official `rabbitmq:4.x` image, for machines that reach Debian's packages
# but no container registry: Debian 13's rabbitmq-server 4.0.5 (Erlang 27) on a
# debootstrapped trixie base (deploy/images/build-local.sh imports the base and builds this).
#
# It behaves like the official image for everything compose.yaml and the test fixture use:
# /etc/rabbitmq/rabbitmq.conf, /etc/rabbitmq/conf.d/*.conf (10-defaults.conf as the official
# one), /etc/rabbitmq/enabled_plugins, the node's data in /var/lib/rabbitmq (a volume) owned
# by uid 999, the CLI tools (rabbitmqctl, rabbitmq-diagnostics, rabbitmq-queues) on PATH and
# usable by `docker exec` as root, RABBITMQ_ERLANG_COOKIE and RABBITMQ_DEFAULT_USER/PASS/
# VHOST, node name rabbit@<hostname>, logs on stdout, `rabbitmq-server` in the foreground.
ARG BASE_IMAGE=messenger-base:trixie
FROM ${BASE_IMAGE}
ENV LANG=C.UTF-8 \
    LC_ALL=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive
# uid/gid 999 as in the official image, created before the package would pick its own.
# policy-rc.d: the package must not try to start a broker inside the build. ca-certificates as
# in the official image: Erlang 27's httpc looks up the OS's CA store even for a plain
# http:// request, and without one every login through the HTTP auth backend fails
# ("function_clause ... pubkey_os_cacerts ... no_cacerts_found").
RUN groupadd --system --gid 999 rabbitmq \
 && useradd --system --uid 999 --gid rabbitmq --home-dir /var/lib/rabbitmq --no-create-home \
        --shell /usr/sbin/nologin rabbitmq \
 && printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d \
 && apt-get update -q \
 && apt-get install -y -q --no-install-recommends rabbitmq-server ca-certificates \
 && rm -f /usr/sbin/policy-rc.d \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 # the package's postinst made a cookie: every container of the image would share it
 && rm -f /var/lib/rabbitmq/.erlang.cookie \
 && install -d -o rabbitmq -g rabbitmq -m 0755 /etc/rabbitmq/conf.d \
 && install -d -o rabbitmq -g rabbitmq -m 0755 /var/lib/rabbitmq /var/log/rabbitmq \
 && ln -sf /var/lib/rabbitmq/.erlang.cookie /root/.erlang.cookie
COPY --chown=rabbitmq:rabbitmq rabbitmq/10-defaults.conf /etc/rabbitmq/conf.d/10-defaults.conf
COPY rabbitmq/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
# The plain scripts (not Debian's /usr/sbin wrappers, which send the server's output to a
# file): root's CLI calls find the node's cookie through HOME, as in the official image.
ENV PATH=/usr/lib/rabbitmq/bin:$PATH \
    HOME=/var/lib/rabbitmq \
    RABBITMQ_DATA_DIR=/var/lib/rabbitmq
VOLUME /var/lib/rabbitmq
EXPOSE 4369 5671 5672 15691 15692 25672
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["rabbitmq-server"]
