"""PostgreSQL and Redis over TLS, as the README's settings say: a throwaway PostgreSQL that accepts
TLS connections only and a redis-server with a TLS port only, both with a certificate from a CA
made here. A fresh portal process on ``DATABASE_URL=…?sslmode=verify-full&sslrootcert=…`` and
``REDIS_URL=rediss://…?ssl_cert_reqs=required&ssl_ca_certs=…`` uses every client over TLS: the
database, Django's cache, the rate limiter, the Celery broker, the channel layer and the agent
RPC's Redis. Plaintext is refused; so is a server whose certificate the CA did not sign."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import asyncio, json, django
django.setup()
from django.core.cache import cache
from django.db import connection
from channels.layers import get_channel_layer
from core.redis import redis_client
from compute.services.host_rpc import _client
from portal.celery import app
from portal.throttling import spend

seen = {}
with connection.cursor() as cursor:
    cursor.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    seen["db_ssl"] = cursor.fetchone()[0]
cache.set("tls-probe", "ok", 30)
seen["cache"] = cache.get("tls-probe")
client = redis_client()
seen["redis"] = client.ping()
seen["redis_ssl"] = type(client.connection_pool.get_connection("PING")).__name__
seen["rpc_redis"] = _client().ping()
seen["rate_limit"] = spend("user", "tls-probe", "5/minute")[0]
with app.connection_for_write() as conn:
    conn.ensure_connection(max_retries=1)
    seen["celery"] = conn.connected

async def layer():
    channels = get_channel_layer()
    name = await channels.new_channel()
    await channels.group_add("tls-probe", name)
    await channels.group_send("tls-probe", {"type": "probe", "text": "over tls"})
    return (await channels.receive(name))["text"]

seen["channels"] = asyncio.run(layer())
print(json.dumps(seen))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def certificates(directory: Path, ca_name: str = "nubis test CA") -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signs for 127.0.0.1: (CA file, certificate, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name))
        .issuer_name(_name(ca_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = (directory / "ca.pem", directory / "server.pem", directory / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    paths[2].chmod(0o600)
    return paths


def _wait_port(port: int, what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.monotonic() < deadline, f"{what} did not listen on {port}: {log.read_text()[-2000:]}"
        time.sleep(0.1)


@pytest.fixture
def tls_services() -> Iterator[dict[str, str]]:
    """A PostgreSQL taking TLS connections only, and a Redis with a TLS port only (in a directory
    of /tmp the postgres user can reach: pytest's own are root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="nubis-tls-"))
    pg_bin = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
    data, pg_log = base / "pg", base / "pglog" / "pg.log"
    pg_ctl = ["runuser", "-u", "postgres", "--", str(pg_bin / "pg_ctl"), "-D", str(data)]
    redis: subprocess.Popen[bytes] | None = None
    try:  # whatever fails half-way, the servers are stopped and the directory removed
        base.chmod(0o755)
        ca, cert, key = certificates(base / "certs")
        data.mkdir()
        pg_log.parent.mkdir()
        for path in (data, pg_log.parent, cert, key, base / "certs"):
            shutil.chown(path, "postgres")
        initdb = ["runuser", "-u", "postgres", "--", str(pg_bin / "initdb")]
        subprocess.run(
            [*initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], check=True, capture_output=True
        )
        # TLS connections only: a plaintext one from loopback is rejected by pg_hba.
        (data / "pg_hba.conf").write_text(
            "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\nlocal all all trust\n"
        )
        pg_port, redis_port = free_port(), free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -p {pg_port} -k {data} -c fsync=off -c ssl=on "
            f"-c ssl_cert_file={cert} -c ssl_key_file={key}"
        )
        started = subprocess.run(
            [*pg_ctl, "-l", str(pg_log), "-w", "-o", options, "start"],
            check=False,
            capture_output=True,
            text=True,
        )
        assert started.returncode == 0, started.stderr + (
            pg_log.read_text()[-2000:] if pg_log.exists() else ""
        )
        redis_log = base / "redis.log"
        redis = subprocess.Popen(
            ["redis-server", "--port", "0", "--tls-port", str(redis_port), "--bind", "127.0.0.1",
             "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
             "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--logfile", str(redis_log)],
        )  # fmt: skip
        _wait_port(redis_port, "redis-server", redis_log)
        ca_q = quote(str(ca), safe="")
        yield {
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:{pg_port}/postgres?sslmode=verify-full&sslrootcert={ca}",
            "REDIS_URL": f"rediss://127.0.0.1:{redis_port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca_q}",
            "plain_database": f"postgres://postgres@127.0.0.1:{pg_port}/postgres?sslmode=disable",
            "plain_redis": f"redis://127.0.0.1:{redis_port}/0",
            "dir": str(base),
        }
    finally:
        if redis is not None:
            redis.terminate()
            redis.wait(10)
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def probe(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "NUBIS_DATA_DIR": str(tmp_path / "data"),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_client_of_the_portal_talks_tls_to_postgresql_and_redis(
    tmp_path: Path, tls_services: dict[str, str]
) -> None:
    done = probe(tmp_path, DATABASE_URL=tls_services["DATABASE_URL"], REDIS_URL=tls_services["REDIS_URL"])
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {
        "db_ssl": True,
        "cache": "ok",
        "redis": True,
        "redis_ssl": "SSLConnection",
        "rpc_redis": True,
        "rate_limit": True,
        "celery": True,
        "channels": "over tls",
    }


def test_plaintext_and_an_unknown_ca_are_refused(tmp_path: Path, tls_services: dict[str, str]) -> None:
    plain_db = probe(
        tmp_path, DATABASE_URL=tls_services["plain_database"], REDIS_URL=tls_services["REDIS_URL"]
    )
    assert plain_db.returncode != 0
    assert "no encryption" in plain_db.stderr or "rejects connection" in plain_db.stderr, plain_db.stderr[
        -2000:
    ]
    plain_redis = probe(
        tmp_path, DATABASE_URL=tls_services["DATABASE_URL"], REDIS_URL=tls_services["plain_redis"]
    )
    assert plain_redis.returncode != 0  # the TLS port does not speak plaintext, and no other listens
    assert "Connection" in plain_redis.stderr, plain_redis.stderr[-2000:]
    other_ca, _cert, _key = certificates(Path(tls_services["dir"]) / "other", "someone else's CA")
    forged = (
        tls_services["REDIS_URL"].split("&ssl_ca_certs=")[0]
        + "&ssl_ca_certs="
        + quote(str(other_ca), safe="")
    )
    wrong = probe(tmp_path, DATABASE_URL=tls_services["DATABASE_URL"], REDIS_URL=forged)
    assert wrong.returncode != 0
    assert "certificate verify failed" in wrong.stderr, wrong.stderr[-2000:]
