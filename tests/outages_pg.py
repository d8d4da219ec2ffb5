"""A PostgreSQL cluster of the test's own, for the tests that stop or restart the database.

The session's PostgreSQL (on 5432) serves every other test and the session's agent: it is never
stopped. A test that takes the database away points the processes it starts at a cluster of its
own instead: Debian's PostgreSQL 15 binaries, a data directory in a fresh temporary directory (the
server runs as the ``postgres`` user: initdb refuses root), a free loopback port, its Unix socket
in that directory, fsync off. The cluster and a migrated template database are made once per
session (migrating takes most of the time); each test gets a fresh database copied from the
template (``private_database``), and the cluster is removed at the end of the session.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import ROOT, free_port, subprocess_env


def _server_binaries() -> Path:
    """Debian's newest PostgreSQL server programs (/usr/lib/postgresql/<major>/bin, as ./scripts/test
    picks them), or NUBIS_TEST_PG_BIN."""
    if "NUBIS_TEST_PG_BIN" in os.environ:
        return Path(os.environ["NUBIS_TEST_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _server_binaries()
ROLE, PASSWORD = "nubis", "nubis"
TEMPLATE = "nubis_template"
# Fast to make, and nothing to keep: the cluster is thrown away with its temporary directory.
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "100",
    "logging_collector": "off",
    "log_min_messages": "warning",
}


class PrivatePostgres:
    """A PostgreSQL cluster on 127.0.0.1:<port>, owned by the ``postgres`` user, for one session."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            pytest.fail(f"no PostgreSQL server in {PG_BIN}: apt-get install postgresql (./scripts/test does)")
        self.owner = pwd.getpwnam("postgres")  # the package made it
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="nubis-pg-"))
        os.chown(self.dir, self.owner.pw_uid, self.owner.pw_gid)
        self.dir.chmod(0o755)
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self._names = itertools.count(1)

    def _pg(self, *argv: str, timeout: float = 60) -> str:
        """Run one of the server's programs as the postgres user; fail the test with its output."""
        command = ["runuser", "-u", "postgres", "--", str(PG_BIN / argv[0]), *argv[1:]]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            pytest.fail(f"{' '.join(argv[:2])} failed ({done.returncode}): {done.stderr}{done.stdout}\n{log}")
        return done.stdout

    def init(self) -> None:
        """initdb, then start the server and add the role Nubis connects as."""
        self._pg(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        settings = {**SERVER_SETTINGS, "port": str(self.port), "unix_socket_directories": f"'{self.dir}'"}
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        self.start()
        self.execute(f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{PASSWORD}'")

    def ctl(self, action: str) -> list[str]:
        """The command that starts, stops (fast: open sessions are ended, as an operator's restart
        does) or restarts the server, as the postgres user; each returns once it is done."""
        common = ["-D", str(self.data), "-l", str(self.log), "-w", "-t", "30"]
        mode = ["-m", "fast"] if action in ("stop", "restart") else []
        return ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), *common, *mode, action]

    def _ctl(self, action: str) -> None:
        done = subprocess.run(self.ctl(action), capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            pytest.fail(f"pg_ctl {action} failed ({done.returncode}): {done.stderr}{done.stdout}\n{log}")

    def start(self) -> None:
        """Start the server; returns once it accepts connections."""
        self._ctl("start")

    def stop(self) -> None:
        """Stop it, fast."""
        self._ctl("stop")

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut, and the server is back when it returns."""
        self._ctl("restart")

    def running(self) -> bool:
        command = ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.data), "status"]
        return subprocess.run(command, capture_output=True, check=False).returncode == 0

    def url(self, database: str) -> str:
        """DATABASE_URL of one of its databases, over TCP with the nubis role (as Nubis connects)."""
        return f"postgres://{ROLE}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
        """A superuser connection through the cluster's socket (autocommit)."""
        return psycopg.connect(
            host=str(self.dir), port=self.port, user="postgres", dbname=database, autocommit=True, **kwargs
        )

    def execute(self, sql: str, database: str = "postgres") -> None:
        with self.connect(database) as conn:
            conn.execute(sql.encode())

    def query(self, sql: str, database: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of one query (a fresh connection each time: the server may have restarted since)."""
        with self.connect(database, connect_timeout=3) as conn:
            return conn.execute(sql.encode(), params).fetchall()

    def migrate_template(self) -> None:
        """Create the template database and run every migration into it (`manage.py migrate`)."""
        self.execute(f"CREATE DATABASE {TEMPLATE} OWNER {ROLE}")
        done = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=subprocess_env(DATABASE_URL=self.url(TEMPLATE)),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(
                f"migrate into the private cluster failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
            )

    def create_database(self) -> str:
        """A fresh, migrated database copied from the template; returns its name."""
        name = f"nubis_{next(self._names)}"
        self.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE} OWNER {ROLE}")
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def close(self) -> None:
        """Stop the server at once and remove everything it had."""
        if self.data.exists() and self.running():
            command = [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"]
            subprocess.run(["runuser", "-u", "postgres", "--", *command], capture_output=True, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


_shared: PrivatePostgres | None = None


def shared_cluster(config: pytest.Config) -> PrivatePostgres:
    """The session's private cluster with its migrated template, made on first use and removed at
    the end of the session; started again if a test left it stopped."""
    global _shared
    if _shared is None:
        cluster = PrivatePostgres()
        config.add_cleanup(cluster.close)
        started = time.monotonic()
        cluster.init()
        cluster.migrate_template()
        took = time.monotonic() - started
        sys.stderr.write(f"private PostgreSQL on port {cluster.port}, made and migrated in {took:.1f} s\n")
        _shared = cluster
    elif not _shared.running():
        _shared.start()
    return _shared


class PrivateDatabase:
    """One migrated database of the private cluster: its URL, and the cluster to stop or restart."""

    def __init__(self, cluster: PrivatePostgres, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.url = cluster.url(name)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return self.cluster.query(sql, self.name, *params)

    def scalar(self, sql: str, *params: Any) -> Any:
        rows = self.query(sql, *params)
        return rows[0][0] if rows else None

    def manage(self, *argv: str, timeout: float = 120, **env: str) -> str:
        """Run `manage.py <argv>` on this database; returns its standard output."""
        done = subprocess.run(
            [sys.executable, "manage.py", *argv],
            cwd=ROOT,
            env=subprocess_env(DATABASE_URL=self.url, **env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(
                f"manage.py {argv[0]} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
            )
        return done.stdout


SEED_SCRIPT = """
from django.contrib.auth import get_user_model
from django.test import Client
from security.audit import Actor
from tenants.models import Membership, Role, Tenant
from tenants.services.tokens import token_create
user = get_user_model().objects.create_user("{user}", password="{password}")
tenant = Tenant.objects.create(name="{tenant}".title(), slug="{tenant}")
Membership.objects.create(tenant=tenant, user=user, role=Role.OWNER)
_, raw = token_create(actor=Actor.system("pytest"), tenant=tenant, creator_id=user.pk,
                      creator_role=Role.OWNER, name="pytest", role="member")
browser = Client()
browser.force_login(user)
print("TOKEN=" + raw)
print("SESSION=" + browser.cookies["sessionid"].value)
"""


class Seeded:
    """What ``seed_tenant`` made: a tenant, its owner with a browser session, and a member token."""

    def __init__(self, tenant: str, user: str, token: str, session: str) -> None:
        self.tenant = tenant
        self.user = user
        self.token = token
        self.session = session


def seed_tenant(database: PrivateDatabase, tenant: str = "acme", user: str = "alice") -> Seeded:
    """A tenant with an owner and a member API token, made by `manage.py shell` in the database."""
    script = SEED_SCRIPT.format(user=user, password="pw-for-tests-only-9d1f", tenant=tenant)
    out = database.manage("shell", "-c", script)
    found = dict(line.split("=", 1) for line in out.splitlines() if line.startswith(("TOKEN=", "SESSION=")))
    return Seeded(tenant, user, found["TOKEN"], found["SESSION"])


class Answer:
    """One HTTP answer: status, headers (lower-cased names), the text, and its JSON when it is."""

    def __init__(self, status: int, headers: dict[str, str], text: str) -> None:
        self.status = status
        self.headers = headers
        self.text = text

    @property
    def json(self) -> Any:
        return json.loads(self.text)

    def __repr__(self) -> str:
        return f"<{self.status} {self.headers.get('content-type', '')} {self.text[:500]!r}>"


def ask(
    port: int,
    method: str,
    path: str,
    *,
    token: str = "",
    session: str = "",
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> Answer:
    """One request to a portal on 127.0.0.1:<port>, with a Bearer token or a session cookie."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    sent = {"Host": "localhost", **(headers or {})}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    if token:
        sent["Authorization"] = f"Bearer {token}"
    if session:
        sent["Cookie"] = f"sessionid={session}"
    try:
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, text)
    finally:
        conn.close()


@contextlib.contextmanager
def private_database(config: pytest.Config) -> Iterator[PrivateDatabase]:
    """A fresh database on the session's private cluster, dropped afterwards (the cluster is
    started again first if the test left it stopped)."""
    cluster = shared_cluster(config)
    database = PrivateDatabase(cluster, cluster.create_database())
    try:
        yield database
    finally:
        if not cluster.running():
            cluster.start()
        cluster.drop_database(database.name)


__all__ = [
    "Answer",
    "PrivateDatabase",
    "PrivatePostgres",
    "Seeded",
    "ask",
    "private_database",
    "seed_tenant",
    "shared_cluster",
]
