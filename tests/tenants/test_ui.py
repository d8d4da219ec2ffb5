"""Tenant pages: switcher, quota bars, settings with inline errors, tokens shown once, audit page."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from tenants.models import ApiToken, Membership, Role
from tenants.services.quotas import quota_claim
from tenants.services.tokens import hash_token
from tenants.signals import OPERATORS_GROUP
from tests.factories import add_member, make_tenant, make_user

pytestmark = pytest.mark.django_db


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_switcher_lists_only_my_tenants_and_remembers_the_last() -> None:
    a, b = make_tenant("alpha"), make_tenant("beta")
    make_tenant("gamma")
    user = add_member(a)
    add_member(b, user, Role.VIEWER)
    client = logged_in(user)
    page = client.get("/t/beta/").content.decode()
    assert 'href="/t/alpha/"' in page
    assert 'href="/t/beta/" aria-current="true"' in page
    assert "gamma" not in page
    assert client.get("/")["Location"] == "/t/beta/"


def test_quota_page_shows_usage_bars() -> None:
    tenant = make_tenant("alpha", vcpus=10)
    quota_claim(tenant, {"vcpus": 4}, "vm")
    page = logged_in(add_member(tenant, role=Role.VIEWER)).get("/t/alpha/quota/").content.decode()
    assert '<meter min="0" max="10" value="4"' in page
    assert 'aria-label="vcpus: 4 of 10"' in page


def test_adding_a_missing_user_shows_the_error_inline() -> None:
    tenant = make_tenant("alpha")
    client = logged_in(add_member(tenant, role=Role.OWNER))
    response = client.post("/t/alpha/members/add/", {"username": "ghost", "role": "member"})
    assert response.status_code == 400
    page = response.content.decode()
    assert 'data-field="username" data-rule="exists"' in page
    assert "no active user named &#x27;ghost&#x27;" in page


def test_owner_adds_a_member_and_sees_them_listed() -> None:
    tenant = make_tenant("alpha")
    make_user("bob")
    client = logged_in(add_member(tenant, role=Role.OWNER))
    response = client.post("/t/alpha/members/add/", {"username": "bob", "role": "viewer"}, follow=True)
    assert response.status_code == 200
    assert "Added bob as viewer." in response.content.decode()
    assert Membership.objects.get(tenant=tenant, user__username="bob").role == Role.VIEWER


def test_demoting_the_last_owner_in_the_ui_is_refused() -> None:
    tenant = make_tenant("alpha")
    owner = add_member(tenant, role=Role.OWNER)
    pk = Membership.objects.get(user=owner).pk
    response = logged_in(owner).post(f"/t/alpha/members/{pk}/role/", {"role": "member"})
    assert response.status_code == 409
    assert 'data-rule="last_owner"' in response.content.decode()


def test_token_is_shown_once_in_the_ui() -> None:
    tenant = make_tenant("alpha")
    client = logged_in(add_member(tenant, role=Role.MEMBER))
    response = client.post("/t/alpha/tokens/create/", {"name": "ci", "role": "viewer"})
    assert response.status_code == 201
    raw = re.search(r'<code class="secret" id="new-token">(nubis_[^<]+)</code>', response.content.decode())
    assert raw is not None
    token = ApiToken.objects.for_tenant(tenant).get()
    assert token.key_hash == hash_token(raw.group(1))
    assert raw.group(1) not in client.get("/t/alpha/settings/").content.decode()


def test_member_cannot_create_an_owner_token_in_the_ui() -> None:
    tenant = make_tenant("alpha")
    client = logged_in(add_member(tenant, role=Role.MEMBER))
    response = client.post("/t/alpha/tokens/create/", {"name": "ci", "role": "owner"})
    assert response.status_code == 400
    assert 'data-field="role" data-rule="max_role"' in response.content.decode()
    assert ApiToken.objects.for_tenant(tenant).count() == 0


def test_viewer_sees_members_but_no_token_or_management_forms() -> None:
    tenant = make_tenant("alpha")
    page = logged_in(add_member(tenant, role=Role.VIEWER)).get("/t/alpha/settings/").content.decode()
    assert "Members" in page
    assert "API tokens" not in page
    assert "Add member" not in page


def test_audit_page_lists_the_tenants_records() -> None:
    tenant = make_tenant("alpha")
    owner = add_member(tenant, role=Role.OWNER)
    make_user("bob")
    client = logged_in(owner)
    client.post("/t/alpha/members/add/", {"username": "bob", "role": "viewer"})
    page = client.get("/t/alpha/audit/").content.decode()
    assert "<code>member.add</code>" in page


def test_operators_group_reads_everything_and_edits_quotas() -> None:
    group = Group.objects.get(name=OPERATORS_GROUP)
    codenames = set(group.permissions.values_list("codename", flat=True))
    assert {"view_tenant", "view_quota", "view_auditrecord", "view_periodictask", "change_quota"} <= codenames
    assert "delete_tenant" not in codenames
