"""Private copies of the real parts that the fault tests stop, flush or restart.

A test that stops Redis or PostgreSQL must never touch the session's own (every other test and the
session's agent use them): it starts its own redis-server on a free loopback port (PrivateRedis)
and points the processes it starts at it; the PostgreSQL tests do the same with a cluster of
their own (tests.outages_pg).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import ROOT, celery_worker_command, free_port, stop_process

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class PrivateRedis:
    """A redis-server of the test's own on 127.0.0.1:<port>, without persistence (as the session's)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="nubis-redis-"))
        self.log = self.dir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url(db), socket_connect_timeout=2, socket_timeout=5)

    def start(self) -> None:
        """Start (or start again, on the same port): returns once it answers PING."""
        assert self.process is None or self.process.poll() is not None, "already running"
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    REDIS_SERVER,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.dir),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(redis.RedisError):
                if self.client().ping():
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"redis-server on port {self.port} did not start:\n{self.log.read_text()[-2000:]}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop it like a crash of the broker: SIGKILL, and everything it held is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def flush(self) -> None:
        """FLUSHALL: every database of this server loses its data (the server keeps running)."""
        self.client().flushall()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    try:
        server.start()
        yield server
    finally:
        server.close()


def start_control_worker(log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The control worker as production runs it (`celery -A portal worker -Q control`, threads),
    with the operations dispatcher it starts; ``env`` comes from subprocess_env()."""
    with log.open("ab") as out:
        return subprocess.Popen(
            celery_worker_command(
                "control", f"control-{free_port()}@pytest", "--pool", "threads", "--concurrency", "2"
            ),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


__all__ = ["PrivateRedis", "private_redis", "start_control_worker", "stop_process"]
