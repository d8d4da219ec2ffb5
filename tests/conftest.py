"""Shared fixtures: real PostgreSQL (pytest-django), real Redis, real Celery workers."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.core.management.base import CommandError
from django.db import OperationalError, connection
from django.test import TransactionTestCase
from pytest_django import DjangoDbBlocker

ROOT = Path(__file__).resolve().parent.parent
# The compute fixtures (one compute agent for the whole session, guest images, flavors) serve the
# compute, scheduler and browser tests alike.
pytest_plugins = ["tests.compute_fixtures"]


_flush_tables = TransactionTestCase._fixture_teardown  # type: ignore[attr-defined]


def flush_retrying_deadlocks(flush: Callable[[], object]) -> None:
    """Run ``flush`` (Django's flush command); again if PostgreSQL aborted it in a deadlock.

    The session's compute agent and Celery workers write to the test database while a test's
    teardown truncates it. TRUNCATE locks its tables one after another, so a background transaction
    that holds one of them and waits for another can deadlock with it (seen in a CI run: the server
    aborted the TRUNCATE). The transaction rolled back whole, so running it again is safe.
    """
    for attempt in range(5):
        try:
            flush()
            return
        except CommandError as exc:
            deadlock = isinstance(exc.__cause__, OperationalError) and "deadlock" in str(exc.__cause__)
            if attempt == 4 or not deadlock:
                raise
            time.sleep(0.2 * (attempt + 1))


def _flush_tables_retrying_deadlocks(self: TransactionTestCase) -> None:
    """Empty the tables after a transactional test (see flush_retrying_deadlocks)."""
    flush_retrying_deadlocks(lambda: _flush_tables(self))


TransactionTestCase._fixture_teardown = _flush_tables_retrying_deadlocks  # type: ignore[attr-defined]


def test_database_url() -> str:
    """DATABASE_URL of the test database pytest-django created, for subprocesses."""
    cfg = connection.settings_dict
    if cfg["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{cfg['NAME']}"
    auth = quote(cfg["USER"] or "", safe="")
    if cfg["PASSWORD"]:
        auth += ":" + quote(cfg["PASSWORD"], safe="")
    host = cfg["HOST"] or "127.0.0.1"
    port = f":{cfg['PORT']}" if cfg["PORT"] else ""
    return f"postgres://{auth}@{host}{port}/{quote(cfg['NAME'], safe='')}"


test_database_url.__test__ = False  # type: ignore[attr-defined]


def subprocess_env(**overrides: str) -> dict[str, str]:
    """The environment of a Nubis subprocess (manage.py, celery), pointed at the test database."""
    env = dict(os.environ)
    env["DATABASE_URL"] = test_database_url()
    env["REDIS_URL"] = settings.REDIS_URL
    env["NUBIS_DATA_DIR"] = str(settings.DATA_DIR)
    env.update(overrides)
    return env


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM ``process``, and SIGKILL it if it has not exited within ``grace`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def serve_portal(log: Path, env: dict[str, str]) -> Iterator[int]:
    """`manage.py serve` (daphne, as in production) on a free loopback port; yields the port once it
    accepts connections, and stops the server afterwards. ``env`` comes from subprocess_env()."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--bind", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"the portal exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the portal did not listen within 60 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
        yield port
    finally:
        stop_process(process, 20)


def celery_worker_command(queue: str, node: str, *options: str) -> list[str]:
    """`celery -A portal worker` on ``queue`` as node ``node``, with ``options`` (its pool)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "portal",
        "worker",
        "-Q",
        queue,
        "-n",
        node,
        *options,
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        "INFO",
    ]


class CeleryWorker:
    """A real `celery worker` subprocess consuming one private queue of the real Redis."""

    def __init__(self, queue: str, node: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.queue = queue
        self.node = node
        self.process = process
        self.log = log


@pytest.fixture(scope="session")
def celery_worker(
    django_db_setup: None, django_db_blocker: DjangoDbBlocker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CeleryWorker]:
    """Start a real Celery worker (solo pool) on a queue private to this test session."""
    from portal.celery import app

    with django_db_blocker.unblock():
        env = subprocess_env()
    queue = f"test-{uuid.uuid4().hex[:8]}"
    node = f"{queue}@pytest"
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            celery_worker_command(queue, node, "--pool", "solo"),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"celery worker exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            if app.control.ping(destination=[node], timeout=0.5):
                break
        else:
            pytest.fail(f"celery worker did not answer a ping in 60 s:\n{log.read_text()[-3000:]}")
        yield CeleryWorker(queue, node, process, log)
    finally:
        stop_process(process, 20)
