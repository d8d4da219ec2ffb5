"""Members and roles: clear 4xx errors naming the rule; a tenant always keeps an owner."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from tenants.models import Membership, Role, Tenant
from tests.factories import add_member, make_tenant, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner_api() -> tuple[APIClient, Tenant, User]:
    tenant = make_tenant("tenant-a")
    owner = add_member(tenant, role=Role.OWNER)
    client = APIClient()
    client.force_authenticate(owner)
    return client, tenant, owner


def only_error(response) -> dict:
    body = response.json()
    assert response["Content-Type"] == "application/problem+json"
    assert len(body["errors"]) == 1, body
    return body["errors"][0]


def test_owner_adds_changes_and_removes_a_member(owner_api) -> None:
    client, tenant, _ = owner_api
    make_user("bob")
    added = client.post(
        "/api/v1/tenants/tenant-a/members/", {"username": "bob", "role": "viewer"}, format="json"
    )
    assert added.status_code == 201
    pk = added.json()["id"]
    assert (
        client.patch(f"/api/v1/tenants/tenant-a/members/{pk}/", {"role": "member"}, format="json").json()[
            "role"
        ]
        == "member"
    )
    assert client.delete(f"/api/v1/tenants/tenant-a/members/{pk}/").status_code == 204
    assert not Membership.objects.filter(tenant=tenant, user__username="bob").exists()


def test_adding_a_user_who_does_not_exist(owner_api) -> None:
    client, _, _ = owner_api
    response = client.post("/api/v1/tenants/tenant-a/members/", {"username": "ghost"}, format="json")
    assert response.status_code == 400
    assert only_error(response) == {
        "field": "username",
        "rule": "exists",
        "message": "no active user named 'ghost'",
    }


def test_adding_an_existing_member_again(owner_api) -> None:
    client, tenant, _ = owner_api
    add_member(tenant, make_user("bob"))
    response = client.post("/api/v1/tenants/tenant-a/members/", {"username": "bob"}, format="json")
    assert response.status_code == 409
    assert only_error(response)["rule"] == "unique"


def test_unknown_role_names_the_field(owner_api) -> None:
    client, _, _ = owner_api
    make_user("bob")
    response = client.post(
        "/api/v1/tenants/tenant-a/members/", {"username": "bob", "role": "god"}, format="json"
    )
    assert response.status_code == 400
    assert only_error(response)["field"] == "role"


def test_last_owner_cannot_be_demoted_or_removed(owner_api) -> None:
    client, tenant, owner = owner_api
    pk = Membership.objects.get(tenant=tenant, user=owner).pk
    demote = client.patch(f"/api/v1/tenants/tenant-a/members/{pk}/", {"role": "member"}, format="json")
    assert demote.status_code == 409
    assert only_error(demote)["rule"] == "last_owner"
    assert "last owner" in demote.json()["detail"]
    remove = client.delete(f"/api/v1/tenants/tenant-a/members/{pk}/")
    assert remove.status_code == 409
    assert only_error(remove)["rule"] == "last_owner"
    assert Membership.objects.get(pk=pk).role == Role.OWNER
    # With a second owner, the first may step down.
    add_member(tenant, make_user("carol"), Role.OWNER)
    assert (
        client.patch(f"/api/v1/tenants/tenant-a/members/{pk}/", {"role": "member"}, format="json").status_code
        == 200
    )


def test_members_and_viewers_cannot_manage_members() -> None:
    tenant = make_tenant("tenant-a")
    member = add_member(tenant, role=Role.MEMBER)
    viewer = add_member(tenant, role=Role.VIEWER)
    make_user("bob")
    for user in (member, viewer):
        client = APIClient()
        client.force_authenticate(user)
        response = client.post("/api/v1/tenants/tenant-a/members/", {"username": "bob"}, format="json")
        assert response.status_code == 403
        assert "needs the owner role" in response.json()["detail"]


@pytest.mark.parametrize("slug", ["Bad Slug", "-leading", "trailing-", "UPPER", "x" * 51, "under_score", ""])
def test_staff_creating_a_tenant_with_an_invalid_slug(slug: str) -> None:
    staff = make_user("ops", is_staff=True)
    client = APIClient()
    client.force_authenticate(staff)
    response = client.post("/api/v1/admin/tenants/", {"name": "New", "slug": slug}, format="json")
    assert response.status_code == 400
    error = only_error(response)
    assert error["field"] == "slug"
    assert not Tenant.objects.filter(name="New").exists()


def test_staff_creates_a_tenant_with_an_owner() -> None:
    staff = make_user("ops", is_staff=True)
    make_user("alice")
    client = APIClient()
    client.force_authenticate(staff)
    response = client.post(
        "/api/v1/admin/tenants/", {"name": "New Co", "slug": "new-co", "owner": "alice"}, format="json"
    )
    assert response.status_code == 201
    tenant = Tenant.objects.get(slug="new-co")
    assert Membership.objects.get(tenant=tenant).role == Role.OWNER
    missing = client.post(
        "/api/v1/admin/tenants/", {"name": "Other", "slug": "other", "owner": "ghost"}, format="json"
    )
    assert missing.status_code == 400
    assert only_error(missing)["field"] == "owner"
