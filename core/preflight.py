"""Checks that a service a Nubis process depends on answers: the database and Redis, which every
process needs, and the way to refuse to start with one clear line when one does not.

Each floor adds the checks of what it alone touches (portal.preflight: the stores;
compute.services.preflight: libvirt), so a process loads only what it checks: the web process never
loads libvirt.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from django.db import connection

from core.redaction import redact


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one dependency check."""

    name: str
    setting: str
    ok: bool
    detail: str
    millis: float

    def line(self) -> str:
        status = "ok" if self.ok else "FAIL"
        return f"{self.name}: {status} ({self.detail}; {self.millis:.0f} ms)"


Check = Callable[[], CheckResult]


def timed(name: str, setting: str, probe: Callable[[], str]) -> CheckResult:
    """Run ``probe`` (it returns a detail line or raises) as the check ``name`` of ``setting``."""
    started = time.perf_counter()
    try:
        detail = probe()
        ok = True
    except Exception as exc:  # any failure of a dependency is reported, not raised
        text = str(exc).strip()
        detail = f"{type(exc).__name__}: {text.splitlines()[0] if text else repr(exc)}"
        ok = False
    return CheckResult(name, setting, ok, detail, (time.perf_counter() - started) * 1000)


def check_database() -> CheckResult:
    """Run a trivial query on the default database."""

    def probe() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        name = settings.DATABASES["default"]["NAME"]
        return f"{connection.vendor} {name}"

    return timed("database", "DATABASE_URL", probe)


def check_redis() -> CheckResult:
    """PING the Redis that Celery, Channels and the cache share."""

    def probe() -> str:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
            info: dict[str, Any] = client.info("server")  # type: ignore[assignment]
            version = info.get("redis_version", "?")
        finally:
            client.close()
        return f"redis {version} at {redact(settings.REDIS_URL)}"

    return timed("redis", "REDIS_URL", probe)


def require(checks: Iterable[Check]) -> None:
    """Exit with one clear line naming the first failed dependency's setting (and the others' after
    it); used before a server, worker or agent starts."""
    failures = [result for result in (check() for check in checks) if not result.ok]
    if failures:
        first = failures[0]
        others = "".join(f"; also {f.setting}: {f.detail}" for f in failures[1:])
        print(  # noqa: T201
            f"nubis: {first.setting}: cannot reach the {first.name}: {first.detail}{others}", file=sys.stderr
        )
        raise SystemExit(2)
