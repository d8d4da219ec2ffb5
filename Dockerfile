# Production image for the portal, workers and the compute agent (see docker-compose.yml).
# BASE: the Debian bookworm image to build on. The official one by default; docker/build-base
# makes an equivalent locally (debootstrap) for machines that reach no image registry.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
# PIP_SOURCE: "index" installs the Python packages from the package index; "wheels" installs only
# the wheels in docker/wheels/ (see docker/wheels/README.md), with --no-index.
ARG PIP_SOURCE=index
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH \
    NUBIS_DATA_DIR=/var/lib/nubis NUBIS_STATIC_ROOT=/app/staticfiles
# The agent's tools: libvirt client, qemu-img, runc, busybox (guest and container images),
# iproute2, iptables, dnsmasq and kmod (tenant networks, br_netfilter). The libvirt binding is
# Debian's (python3-libvirt, seen by the virtual environment), so no compiler is needed.
RUN set -eu; case "$PIP_SOURCE" in index|wheels) ;; *) echo "PIP_SOURCE must be index or wheels" >&2; exit 2;; esac; \
    apt-get update; \
    apt-get install -y --no-install-recommends python3 python3-venv python3-libvirt libvirt-clients qemu-utils \
      runc busybox-static cpio iproute2 iptables kmod dnsmasq-base tini ca-certificates openssh-client genisoimage; \
    rm -rf /var/lib/apt/lists/*
# The dependencies first, in a layer of their own that a change of the code leaves cached: those
# pyproject.toml names (libvirt-python is met by python3-libvirt).
COPY pyproject.toml /app/
COPY docker/wheels /app/docker/wheels
WORKDIR /app
RUN set -eu; python3 -m venv --system-site-packages /opt/venv; \
    if [ "$PIP_SOURCE" = wheels ]; then set -- --no-index --find-links docker/wheels; else set --; fi; \
    python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /tmp/requirements.txt; \
    pip install --no-cache-dir --disable-pip-version-check "$@" -r /tmp/requirements.txt; \
    rm /tmp/requirements.txt
# Then the project (the build context is an allow-list, .dockerignore): code, templates, assets.
COPY . /app
RUN set -eu; \
    if [ "$PIP_SOURCE" = wheels ]; then set -- --no-index --find-links docker/wheels; else set --; fi; \
    pip install --no-cache-dir --disable-pip-version-check --no-deps "$@" .; \
    rm -rf docker build ./*.egg-info; \
    SECRET_KEY=build-only-collectstatic-key-not-used-at-runtime NUBIS_DATA_DIR=/tmp/nubis-build \
      python manage.py collectstatic --noinput -v 0; \
    rm -rf /tmp/nubis-build
# -s: reap orphans even when not PID 1 (the compute agent shares the host's PID namespace).
ENTRYPOINT ["tini", "-s", "--"]
CMD ["python", "manage.py", "serve", "--bind", "0.0.0.0", "--port", "8000"]
