# A stand-in for the official `python:3.11-slim`, for machines that reach Debian's packages
# but no container registry: Debian 12's own Python 3.11 on a debootstrapped bookworm base
# (deploy/images/build-local.sh imports the base and builds this). deploy/Dockerfile needs
# `python` on PATH with `venv` and pip, as the official image gives.
ARG BASE_IMAGE=messenger-base:bookworm
FROM ${BASE_IMAGE}
ENV LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends \
        ca-certificates python3 python3-venv python-is-python3 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
# The certificates this machine trusts (an HTTPS proxy's own CA, say), so that pip inside a
# build reaches PyPI the way pip on the host does. Only what the host already trusts.
COPY host-ca-certificates.crt /usr/local/share/ca-certificates/host-ca-certificates.crt
RUN update-ca-certificates --fresh >/dev/null
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
