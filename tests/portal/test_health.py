"""/healthz answers while the process is up; /readyz reports each real dependency of the web process
(the database and Redis; libvirt is each compute agent's) on its own line."""

from __future__ import annotations

import pytest
from django.test import Client
from pytest_django import Settings as SettingsWrapper


def test_healthz_answers_without_touching_dependencies(client: Client, settings: SettingsWrapper) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.content == b"ok\n"


@pytest.mark.django_db
def test_readyz_reports_database_and_redis_as_ok(client: Client) -> None:
    response = client.get("/readyz")
    body = response.content.decode()
    assert response.status_code == 200, body
    lines = body.splitlines()
    names = [line.split(":", 1)[0] for line in lines]
    assert names == ["database", "redis", "operations waiting for delivery"]
    assert all(": ok (" in line for line in lines[:2]), body
    assert "postgresql" in lines[0]
    assert "redis " in lines[1]
    assert lines[2] == "operations waiting for delivery: 0"


@pytest.mark.django_db
def test_readyz_fails_with_503_naming_the_broken_dependency(
    client: Client, settings: SettingsWrapper
) -> None:
    settings.REDIS_URL = settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    settings.LIBVIRT_URI = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"  # not the web's to ask
    response = client.get("/readyz")
    lines = response.content.decode().splitlines()
    assert response.status_code == 503
    assert len(lines) == 4, lines
    assert lines[0].startswith("database: ok")
    assert lines[1].startswith("redis: FAIL (ConnectionError")
    # Redis is the broker: new operations are still accepted, and wait for it.
    assert lines[2].startswith("broker: down (redis://127.0.0.1:1/0): new operations are accepted")
    assert lines[3] == "operations waiting for delivery: 0"


@pytest.mark.django_db
def test_readyz_speaks_json_on_request(client: Client) -> None:
    response = client.get("/readyz", HTTP_ACCEPT="application/json")
    data = response.json()
    assert data["ready"] is True
    assert set(data["checks"]) == {"database", "redis"}
    assert all(check["ok"] for check in data["checks"].values())
    assert data["broker"]["ok"] is True
    assert data["operations_waiting"] == {"count": 0, "oldest_age_s": 0.0}
