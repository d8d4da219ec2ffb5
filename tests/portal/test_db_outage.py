"""Requests while the database is down: 503 with Retry-After naming it, never a 500 or a traceback.

A real web process (`manage.py serve`) runs on a PostgreSQL cluster and a Redis of the test's own
(tests.outages_pg, tests.outages). The test stops PostgreSQL, asks the API (reads and writes, by
token and by session), a page and /readyz, then starts it again and sees the same process answer
normally within 10 s (CONN_HEALTH_CHECKS drops the dead connections; nothing restarts).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.db import OperationalError
from django.http import HttpResponse
from django.test import RequestFactory

from portal.api_errors import server_error
from tests.conftest import serve_portal, subprocess_env
from tests.outages import private_redis
from tests.outages_pg import Answer, PrivateDatabase, ask, private_database, seed_tenant

BACK_WITHIN = 10.0  # seconds after PostgreSQL is back by which every request must succeed again


@pytest.fixture
def database(request: pytest.FixtureRequest) -> Iterator[PrivateDatabase]:
    with private_database(request.config) as db:
        yield db


def assert_database_outage(answer: Answer) -> None:
    """A 503 problem+json naming the database, with Retry-After, and nothing of a traceback."""
    assert answer.status == 503, answer
    assert answer.headers["content-type"] == "application/problem+json", answer
    assert int(answer.headers["retry-after"]) > 0, answer
    problem = answer.json
    assert problem["status"] == 503
    assert [e["field"] for e in problem["errors"]] == ["database"], problem
    assert "Traceback" not in answer.text
    assert "psycopg" not in answer.text


def wait_until(what: str, ask: object, expected: int, since: float) -> float:
    """Repeat ``ask()`` until it answers ``expected``; returns the seconds since ``since``."""
    assert callable(ask)
    while True:
        answer = ask()
        assert answer.status in (expected, 503), f"{what}: {answer}"  # never a 500 on the way
        if answer.status == expected:
            return time.monotonic() - since
        assert time.monotonic() - since < BACK_WITHIN, f"{what} still answers {answer} after {BACK_WITHIN} s"
        time.sleep(0.1)


@pytest.mark.slow
def test_requests_during_a_database_outage_get_503_and_succeed_once_it_is_back(
    database: PrivateDatabase, tmp_path: Path
) -> None:
    seeded = seed_tenant(database)
    instances = f"/api/v1/tenants/{seeded.tenant}/instances/"
    groups = f"/api/v1/tenants/{seeded.tenant}/server-groups/"
    with private_redis() as broker:
        env = subprocess_env(DATABASE_URL=database.url, REDIS_URL=broker.url(0))
        with serve_portal(tmp_path / "web.log", env) as port:

            def get_list() -> Answer:
                return ask(port, "GET", instances, token=seeded.token)

            def post_group(name: str) -> Answer:
                return ask(
                    port, "POST", groups, token=seeded.token, body={"name": name, "policy": "affinity"}
                )

            def get_page() -> Answer:
                return ask(port, "GET", f"/t/{seeded.tenant}/", session=seeded.session)

            def readyz() -> Answer:
                return ask(port, "GET", "/readyz?format=json")

            assert get_list().status == 200
            assert post_group("before").status == 201
            assert get_page().status == 200

            database.cluster.stop()
            assert_database_outage(get_list())
            # A write: the view fails, then the audit middleware's own record fails too.
            assert_database_outage(post_group("during"))
            # By session: the session and the user are read in the middleware and DRF's authentication.
            assert_database_outage(ask(port, "GET", "/api/v1/tenants/", session=seeded.session))
            # An Idempotency-Key'd write goes through the idempotency middleware first.
            keyed = ask(
                port,
                "POST",
                groups,
                token=seeded.token,
                body={"name": "keyed", "policy": "affinity"},
                headers={"Idempotency-Key": "outage-1"},
            )
            assert_database_outage(keyed)
            page = get_page()
            assert page.status == 503, page
            assert page.headers["content-type"].startswith("text/html")
            assert int(page.headers["retry-after"]) > 0
            assert "database" in page.text
            assert "Traceback" not in page.text
            ready = readyz()
            assert ready.status == 503, ready
            assert ready.json["checks"]["database"]["ok"] is False
            assert ready.json["checks"]["redis"]["ok"] is True

            database.cluster.start()
            back = time.monotonic()
            figures = {
                "api read": wait_until("GET instances", get_list, 200, back),
                "api write": wait_until(
                    "POST server group", lambda: post_group(f"after-{time.time_ns()}"), 201, back
                ),
                "page": wait_until("the tenant page", get_page, 200, back),
                "readyz": wait_until("/readyz", readyz, 200, back),
            }
            keyed_again = ask(
                port,
                "POST",
                groups,
                token=seeded.token,
                body={"name": "keyed", "policy": "affinity"},
                headers={"Idempotency-Key": "outage-1"},
            )
            # The 503 was not kept as the key's answer: the retry runs, once.
            assert keyed_again.status == 201, keyed_again
            sys.stderr.write(f"served again after PostgreSQL was back (s): {figures}\n")
        log = (tmp_path / "web.log").read_text(errors="replace")
    assert "Internal Server Error" not in log, log[-3000:]
    names = {row[0] for row in database.query("SELECT name FROM compute_servergroup")}
    assert "during" not in names
    assert {"before", "keyed"} <= names


def raised(exc: BaseException, path: str) -> HttpResponse:
    """What Django's 500 handler answers for ``exc``, called as Django calls it: inside the except."""
    try:
        raise exc
    except BaseException:
        return server_error(RequestFactory().get(path))


def test_the_error_handler_names_the_dependency_that_is_down() -> None:
    db = raised(OperationalError("connection refused"), "/api/v1/tenants/")
    assert db.status_code == 503
    assert db["Retry-After"] == "5"
    assert db["Content-Type"] == "application/problem+json"
    assert b'"field": "database"' in db.content
    # Redis, also when it comes wrapped (kombu's errors carry Redis's as their cause).
    try:
        try:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379")
        except redis.ConnectionError as inner:
            raise RuntimeError("could not send") from inner
    except RuntimeError as wrapped:
        broker = raised(wrapped, "/api/v1/tenants/")
    assert broker.status_code == 503
    assert b'"field": "redis"' in broker.content
    # A page gets a page; /readyz's JSON gets JSON.
    page = raised(OperationalError("gone"), "/t/acme/")
    assert page.status_code == 503
    assert page["Content-Type"].startswith("text/html")
    ready = raised(OperationalError("gone"), "/readyz?format=json")
    assert ready.status_code == 503
    assert ready["Content-Type"] == "application/problem+json"
    # Anything else is still the server's own failure.
    other = raised(ValueError("bug"), "/api/v1/tenants/")
    assert other.status_code == 500
