# Production image for the portal, workers and the compute agent (see docker-compose.yml).
FROM debian:bookworm-slim
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 NUBIS_DATA_DIR=/var/lib/nubis
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc pkg-config libvirt-dev \
      libvirt-clients qemu-utils runc busybox-static cpio iproute2 dnsmasq-base tini \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY portal portal
COPY tenants tenants
COPY compute compute
COPY scheduler scheduler
COPY security security
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir .
COPY manage.py ./
COPY templates templates
COPY static static
ENV PATH=/opt/venv/bin:$PATH
RUN mkdir -p /var/lib/nubis && SECRET_KEY=build-only-collectstatic-key-not-used-at-runtime \
    python manage.py collectstatic --noinput -v 0
ENTRYPOINT ["tini", "--"]
CMD ["python", "manage.py", "serve", "--bind", "0.0.0.0", "--port", "8000"]
