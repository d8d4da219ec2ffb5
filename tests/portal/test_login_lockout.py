"""Brute force on the login forms: lockout per account and per client address (django-axes).

Both the portal's /login/ and the admin's /admin/login/ are covered; a locked login is refused
even with the right password, on a page that says what is locked and until when; staff unlock
in the admin; API tokens are not logins and are never locked.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from axes.models import AccessAttempt
from django.contrib.auth.models import Permission, User
from django.db import connections
from django.test import AsyncClient, Client, override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from security.models import AuditRecord
from tenants.models import Role
from tests.factories import PASSWORD, add_member, make_tenant, make_token, make_user

LIMIT = 3
COOL_OFF = timedelta(minutes=15)
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _lockout_settings() -> Iterator[None]:
    with override_settings(AXES_FAILURE_LIMIT=LIMIT, AXES_COOLOFF_TIME=COOL_OFF):
        yield


def attempt(path: str, username: str, password: str, ip: str = "10.9.0.1") -> tuple[Client, Any]:
    client = Client(REMOTE_ADDR=ip)
    response = client.post(path, {"username": username, "password": password})
    return client, response


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


@pytest.mark.parametrize("path", ["/login/", "/admin/login/"])
def test_an_account_locks_after_the_limit_and_refuses_even_the_right_password(path: str) -> None:
    make_user("admin", is_staff=True, is_superuser=True)
    # Each failure from another address: only the account's own count can lock it.
    for i in range(LIMIT - 1):
        _, response = attempt(path, "admin", "wrong", ip=f"10.9.0.{i + 1}")
        assert response.status_code == 200  # the form again, with its error
        assert "Login locked" not in response.content.decode()
    _, response = attempt(path, "admin", "wrong", ip="10.9.0.50")
    assert response.status_code == 429
    client, response = attempt(path, "admin", PASSWORD, ip="10.9.0.99")
    assert response.status_code == 429
    assert not logged_in(client)
    html = response.content.decode()
    assert "Login locked" in html
    assert 'data-lock="account"' in html
    assert "The account <strong>admin</strong> is locked after 3 failed logins" in html
    assert 'data-lock="address"' not in html  # 10.9.0.99 itself failed nothing
    assert "Try again in about <strong>15 minutes</strong>" in html
    assert "An administrator can unlock it sooner" in html
    assert 880 <= int(response["Retry-After"]) <= 900
    assert response["Content-Type"].startswith("text/html")
    # Other accounts are untouched.
    make_user("other", is_staff=True)
    client, response = attempt(path, "other", PASSWORD, ip="10.9.0.98")
    assert response.status_code == 302
    assert logged_in(client)


@pytest.mark.parametrize("path", ["/login/", "/admin/login/"])
def test_an_address_locks_after_failures_for_different_usernames(path: str) -> None:
    victim = make_user("victim", is_staff=True)
    for i in range(LIMIT):
        _, response = attempt(path, f"guess{i}", "wrong", ip="10.1.2.3")
    assert response.status_code == 429
    client, response = attempt(path, victim.username, PASSWORD, ip="10.1.2.3")
    assert response.status_code == 429
    assert not logged_in(client)
    html = response.content.decode()
    assert "Your address <strong>10.1.2.3</strong> is locked" in html
    assert 'data-lock="account"' not in html
    # The same account from another address logs in: the lock was the address's.
    client, response = attempt(path, victim.username, PASSWORD, ip="10.1.2.4")
    assert response.status_code == 302
    assert logged_in(client)


def test_the_lock_ends_after_the_cool_off() -> None:
    make_user("admin")
    for _ in range(LIMIT):
        attempt("/login/", "admin", "wrong")
    assert attempt("/login/", "admin", PASSWORD)[1].status_code == 429
    # A refused login during the lock did not extend it: moving the failures back past the
    # cool-off ends it.
    AccessAttempt.objects.update(attempt_time=timezone.now() - COOL_OFF - timedelta(seconds=1))
    client, response = attempt("/login/", "admin", PASSWORD)
    assert response.status_code == 302
    assert logged_in(client)


def test_with_no_cool_off_only_a_staff_unlock_ends_the_lock() -> None:
    """NUBIS_LOGIN_LOCKOUT_SECONDS=0: the page says so, and sends no Retry-After."""
    make_user("admin")
    with override_settings(AXES_COOLOFF_TIME=None):
        for _ in range(LIMIT):
            attempt("/login/", "admin", "wrong")
        AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(days=30))
        client, response = attempt("/login/", "admin", PASSWORD)
    assert response.status_code == 429
    assert not logged_in(client)
    html = response.content.decode()
    assert "The lock holds until an administrator lifts it." in html
    assert "Try again in" not in html
    assert "Retry-After" not in response


def test_a_correct_login_below_the_limit_is_let_in() -> None:
    make_user("careless")
    for _ in range(LIMIT - 1):
        attempt("/login/", "careless", "typo")
    client, response = attempt("/login/", "careless", PASSWORD)
    assert response.status_code == 302
    assert logged_in(client)


def _lock(username: str, ip: str = "10.9.0.1") -> None:
    for _ in range(LIMIT):
        attempt("/login/", username, "wrong", ip=ip)
    assert attempt("/login/", username, PASSWORD, ip=ip)[1].status_code == 429


def test_staff_with_the_delete_permission_unlock_in_the_admin_and_it_is_audited() -> None:
    make_user("locked-out")
    _lock("locked-out")
    operator = make_user("operator", is_staff=True)
    operator.user_permissions.set(
        Permission.objects.filter(codename__in=["view_accessattempt", "delete_accessattempt"])
    )
    admin = Client(REMOTE_ADDR="10.0.0.5")
    admin.force_login(operator)
    changelist = admin.get("/admin/axes/accessattempt/")
    assert changelist.status_code == 200
    assert "locked-out" in changelist.content.decode()
    assert "Unlock: forget these failed logins" in changelist.content.decode()
    ids = list(AccessAttempt.objects.values_list("pk", flat=True))
    response = admin.post(
        "/admin/axes/accessattempt/", {"action": "unlock", "_selected_action": ids}, follow=True
    )
    assert response.status_code == 200
    assert "Unlocked: accounts locked-out; addresses 10.9.0.1." in response.content.decode()
    assert not AccessAttempt.objects.exists()
    record = AuditRecord.objects.get(action="auth.unlock")
    assert record.actor_name == "operator"
    assert record.detail["unlocked"][0]["username"] == "locked-out"
    client, response = attempt("/login/", "locked-out", PASSWORD)
    assert response.status_code == 302
    assert logged_in(client)


def test_staff_who_may_only_view_cannot_unlock() -> None:
    make_user("still-locked")
    _lock("still-locked")
    viewer = make_user("viewer-op", is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename="view_accessattempt"))
    admin = Client()
    admin.force_login(viewer)
    page = admin.get("/admin/axes/accessattempt/").content.decode()
    assert "still-locked" in page
    assert "Unlock: forget these failed logins" not in page
    ids = list(AccessAttempt.objects.values_list("pk", flat=True))
    admin.post("/admin/axes/accessattempt/", {"action": "unlock", "_selected_action": ids})
    assert AccessAttempt.objects.count() == len(ids)
    assert attempt("/login/", "still-locked", PASSWORD)[1].status_code == 429


def test_failed_refused_and_lockout_logins_are_audited() -> None:
    make_user("audited")
    for _ in range(LIMIT):
        attempt("/login/", "audited", "wrong")
    attempt("/login/", "audited", PASSWORD)  # refused while locked
    denied = AuditRecord.objects.filter(action="auth.login", outcome="denied", target_repr="audited")
    assert denied.count() == LIMIT + 1
    lockout = AuditRecord.objects.get(action="auth.lockout")
    assert lockout.source_ip == "10.9.0.1"
    assert lockout.detail["username"] == "audited"
    assert lockout.detail["failures"] == LIMIT
    assert lockout.detail["locked"] == ["account", "address"]
    assert not AuditRecord.objects.filter(action="auth.login", outcome="success").exists()


def test_a_successful_login_is_still_audited() -> None:
    user = make_user("fine")
    attempt("/login/", "fine", PASSWORD)
    assert AuditRecord.objects.filter(action="auth.login", outcome="success", target_id=str(user.pk)).exists()


def test_api_tokens_and_sessions_are_not_logins_and_never_locked() -> None:
    tenant = make_tenant("locks")
    owner = add_member(tenant, make_user("token-owner"), Role.OWNER)
    secret = make_token(tenant, owner, Role.MEMBER, "ci")
    session = Client(REMOTE_ADDR="10.9.0.1")
    session.force_login(owner)
    _lock("token-owner")  # the account and the address 10.9.0.1 are locked now
    api = APIClient(REMOTE_ADDR="10.9.0.1")
    response = api.get(f"/api/v1/tenants/{tenant.slug}/quota/", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 200, response.content
    # A session opened before the lock goes on working: only logins are refused.
    assert session.get(f"/t/{tenant.slug}/").status_code == 200
    # A bad token is a 401, and counts no login failure.
    before = AccessAttempt.objects.count()
    response = api.get(f"/api/v1/tenants/{tenant.slug}/quota/", HTTP_AUTHORIZATION="Bearer nubis_nope")
    assert response.status_code == 401
    assert AccessAttempt.objects.count() == before


@pytest.mark.django_db(transaction=True)
def test_the_lockout_page_under_asgi() -> None:
    """Daphne serves the portal through Django's asynchronous middleware chain, where django-axes
    hands the lockout page different arguments: the page must say the same."""
    make_user("async-admin")

    async def run() -> Any:
        client = AsyncClient()  # the ASGI scope's client: 127.0.0.1
        for _ in range(LIMIT):
            await client.post("/login/", {"username": "async-admin", "password": "wrong"})
        try:
            return await client.post("/login/", {"username": "async-admin", "password": PASSWORD})
        finally:
            # The views ran in asgiref's shared thread: close its connection, or the test
            # database cannot be dropped at the end of the session.
            await sync_to_async(connections.close_all)()

    response = asyncio.run(run())
    assert response.status_code == 429
    html = response.content.decode()
    assert "The account <strong>async-admin</strong> is locked" in html
    assert "Your address <strong>127.0.0.1</strong> is locked" in html


def test_the_limits_come_from_the_environment(tmp_path: Path) -> None:
    script = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.AXES_FAILURE_LIMIT, int(settings.AXES_COOLOFF_TIME.total_seconds()))"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "NUBIS_DATA_DIR": str(tmp_path),
        "NUBIS_LOGIN_FAILURES": "4",
        "NUBIS_LOGIN_LOCKOUT_SECONDS": "120",
    }
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert run.stdout.split() == ["4", "120"], run.stderr
    env["NUBIS_LOGIN_FAILURES"] = "0"
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert run.returncode != 0
    assert "nubis: configuration error: NUBIS_LOGIN_FAILURES: must be at least 1, got 0" in run.stderr


def test_a_deleted_user_is_no_different_from_an_unknown_name() -> None:
    """Any name locks, existing or not: the lockout page tells nothing about which accounts exist."""
    for name in ("ghost", "real"):
        if name == "real":
            User.objects.create_user("real", password=PASSWORD)
        for i in range(LIMIT):
            _, response = attempt("/login/", name, "wrong", ip=f"10.{len(name)}.0.{i}")
        assert response.status_code == 429


def _guesses_through_serve(log: Path, trust_proxy: bool) -> list[int]:
    """Four wrong logins on a real `manage.py serve`, each for another account and each claiming
    another client address in X-Forwarded-For; the statuses."""
    import re

    import requests

    from tests.conftest import serve_portal, subprocess_env

    env = subprocess_env(NUBIS_LOGIN_FAILURES=str(LIMIT), NUBIS_TRUST_PROXY_HEADERS=str(int(trust_proxy)))
    statuses = []
    with serve_portal(log, env) as port:
        url = f"http://127.0.0.1:{port}/login/"
        for n in range(LIMIT + 1):
            session = requests.Session()
            form = session.get(url, timeout=30).text
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
            assert token is not None, form[:500]
            answer = session.post(
                url,
                data={"csrfmiddlewaretoken": token[1], "username": f"guess-{n}", "password": "wrong"},
                headers={"X-Forwarded-For": f"198.51.100.{n + 1}", "Referer": url},
                timeout=30,
            )
            statuses.append(answer.status_code)
    return statuses


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_client_cannot_name_its_own_address_to_dodge_the_address_lock(tmp_path: Path) -> None:
    # Out of the box the server ignores X-Forwarded-For: the guesses all come from 127.0.0.1,
    # and the address locks at the LIMIT-th of them (refused from then on), whatever each claims.
    statuses = _guesses_through_serve(tmp_path / "web.log", trust_proxy=False)
    assert statuses == [200] * (LIMIT - 1) + [429, 429]
    AccessAttempt.objects.all().delete()
    # Behind a proxy the operator trusts (NUBIS_TRUST_PROXY_HEADERS=1) the header names the client,
    # so the same four guesses are four addresses with one failure each: none is locked.
    assert _guesses_through_serve(tmp_path / "web2.log", trust_proxy=True) == [200] * (LIMIT + 1)
