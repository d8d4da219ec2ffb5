"""Admin keeps the same rules as the services: a tenant never loses its last owner."""

from __future__ import annotations

import pytest
from django.test import Client

from tenants.models import Membership, Role
from tests.factories import add_member, make_tenant

pytestmark = pytest.mark.django_db


def test_admin_cannot_demote_the_last_owner(admin_client: Client) -> None:
    tenant = make_tenant("alpha")
    owner = add_member(tenant, role=Role.OWNER)
    membership = Membership.objects.get(user=owner)
    response = admin_client.post(
        f"/admin/tenants/membership/{membership.pk}/change/",
        {"user": owner.pk, "tenant": tenant.pk, "role": "member"},
    )
    assert response.status_code == 200
    assert "last owner" in response.content.decode()
    membership.refresh_from_db()
    assert membership.role == Role.OWNER


def test_admin_cannot_delete_the_last_owner(admin_client: Client) -> None:
    tenant = make_tenant("alpha")
    membership = Membership.objects.get(user=add_member(tenant, role=Role.OWNER))
    assert (
        admin_client.post(f"/admin/tenants/membership/{membership.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert Membership.objects.filter(pk=membership.pk).exists()


def test_admin_rejects_an_invalid_slug(admin_client: Client) -> None:
    response = admin_client.post(
        "/admin/tenants/tenant/add/",
        {
            "name": "New",
            "slug": "Not A Slug",
            "active": "on",
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
            "memberships-MIN_NUM_FORMS": "0",
            "memberships-MAX_NUM_FORMS": "1000",
        },
    )
    assert response.status_code == 200
    assert (
        "A slug is 1-50 lowercase letters" in response.content.decode()
        or "valid “slug”" in response.content.decode()
    )
