"""API tokens: shown once, stored hashed, bound to one tenant and a role no higher than their creator's."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from tenants.models import ApiToken, Membership, Role
from tenants.services.tokens import hash_token
from tests.factories import add_member, make_tenant

pytestmark = pytest.mark.django_db


def create_token(client: APIClient, tenant: str, **body: object) -> dict:
    response = client.post(f"/api/v1/tenants/{tenant}/tokens/", {"name": "ci", **body}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def bearer(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


@pytest.fixture
def world() -> dict:
    a, b = make_tenant("tenant-a"), make_tenant("tenant-b")
    owner = add_member(a, role=Role.OWNER)
    member = add_member(a, role=Role.MEMBER)
    add_member(b, member, Role.OWNER)  # the same user owns B: a token of A must still not reach B
    return {"a": a, "b": b, "owner": owner, "member": member}


def test_token_is_shown_once_and_only_its_hash_is_stored(world: dict) -> None:
    client = APIClient()
    client.force_authenticate(world["member"])
    data = create_token(client, "tenant-a", role="member")
    raw = data["token"]
    assert raw.startswith("nubis_")
    stored = ApiToken.objects.for_tenant(world["a"]).get(pk=data["id"])
    assert stored.key_hash == hash_token(raw)
    assert raw not in {getattr(stored, f.attname) for f in ApiToken._meta.fields}
    listed = client.get("/api/v1/tenants/tenant-a/tokens/").json()["results"]
    assert "token" not in listed[0]
    assert listed[0]["prefix"] == raw[:12]


def test_token_authenticates_and_records_last_use(world: dict) -> None:
    client = APIClient()
    client.force_authenticate(world["member"])
    raw = create_token(client, "tenant-a", role="viewer")["token"]
    response = bearer(raw).get("/api/v1/tenants/tenant-a/quota/")
    assert response.status_code == 200
    assert ApiToken.objects.for_tenant(world["a"]).get().last_used_at is not None
    # A viewer token cannot do what its member creator could.
    assert (
        bearer(raw).post("/api/v1/tenants/tenant-a/tokens/", {"name": "x"}, format="json").status_code == 403
    )


def test_token_of_a_used_on_b_gets_404(world: dict) -> None:
    client = APIClient()
    client.force_authenticate(world["member"])
    raw = create_token(client, "tenant-a", role="member")["token"]
    b_token = ApiToken.objects.create(
        tenant=world["b"],
        name="b",
        prefix="nubis_x",
        key_hash="0" * 64,
        role=Role.VIEWER,
        created_by=world["member"],
    )
    api = bearer(raw)
    for path in (
        "/api/v1/tenants/tenant-b/",
        "/api/v1/tenants/tenant-b/quota/",
        "/api/v1/tenants/tenant-b/members/",
        f"/api/v1/tenants/tenant-b/tokens/{b_token.pk}/",
    ):
        response = api.get(path)
        assert response.status_code == 404, path
        assert response["Content-Type"] == "application/problem+json"
    assert api.delete(f"/api/v1/tenants/tenant-b/tokens/{b_token.pk}/").status_code == 404
    assert [t["slug"] for t in api.get("/api/v1/tenants/").json()["results"]] == ["tenant-a"]


@pytest.mark.parametrize("how", ["revoked", "expired", "garbage"])
def test_unusable_tokens_get_401(world: dict, how: str) -> None:
    client = APIClient()
    client.force_authenticate(world["member"])
    data = create_token(client, "tenant-a", role="member")
    token = ApiToken.objects.for_tenant(world["a"]).get(pk=data["id"])
    raw = data["token"]
    if how == "revoked":
        assert client.delete(f"/api/v1/tenants/tenant-a/tokens/{token.pk}/").json()["state"] == "revoked"
    elif how == "expired":
        ApiToken.objects.for_tenant(world["a"]).filter(pk=token.pk).update(
            expires_at=timezone.now() - timedelta(seconds=1)
        )
    else:
        raw = "nubis_" + "x" * 43
    response = bearer(raw).get("/api/v1/tenants/tenant-a/")
    assert response.status_code == 401
    body = response.json()
    assert body["status"] == 401
    assert {"revoked": "token revoked", "expired": "token expired", "garbage": "invalid token"}[how] in body[
        "detail"
    ]
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_token_stops_working_when_its_creator_leaves(world: dict) -> None:
    client = APIClient()
    client.force_authenticate(world["member"])
    raw = create_token(client, "tenant-a", role="member")["token"]
    Membership.objects.filter(tenant=world["a"], user=world["member"]).delete()
    assert bearer(raw).get("/api/v1/tenants/tenant-a/").status_code == 401


def test_token_role_is_capped_by_the_creators_current_role(world: dict) -> None:
    owner_client = APIClient()
    owner_client.force_authenticate(world["owner"])
    raw = create_token(owner_client, "tenant-a", role="owner")["token"]
    assert bearer(raw).get("/api/v1/tenants/tenant-a/audit/").status_code == 200
    Membership.objects.filter(tenant=world["a"], user=world["owner"]).update(role=Role.VIEWER)
    assert bearer(raw).get("/api/v1/tenants/tenant-a/audit/").status_code == 403
    assert bearer(raw).get("/api/v1/tenants/tenant-a/").json()["role"] == "viewer"


def test_member_cannot_create_an_owner_token(world: dict) -> None:
    client = APIClient()
    client.force_authenticate(world["member"])
    response = client.post("/api/v1/tenants/tenant-a/tokens/", {"name": "x", "role": "owner"}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["errors"] == [
        {
            "field": "role",
            "rule": "max_role",
            "message": "a token's role cannot be higher than your own: you are member",
        }
    ]
    assert ApiToken.objects.for_tenant(world["a"]).count() == 0


def test_expiry_in_the_past_is_refused(world: dict) -> None:
    client = APIClient()
    client.force_authenticate(world["member"])
    past = (timezone.now() - timedelta(hours=1)).isoformat()
    response = client.post(
        "/api/v1/tenants/tenant-a/tokens/", {"name": "x", "expires_at": past}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "expires_at"


def test_members_see_their_own_tokens_owners_see_all(world: dict) -> None:
    member, owner = APIClient(), APIClient()
    member.force_authenticate(world["member"])
    owner.force_authenticate(world["owner"])
    create_token(member, "tenant-a", name="mine")
    create_token(owner, "tenant-a", name="owners")
    assert [t["name"] for t in member.get("/api/v1/tenants/tenant-a/tokens/").json()["results"]] == ["mine"]
    assert sorted(t["name"] for t in owner.get("/api/v1/tenants/tenant-a/tokens/").json()["results"]) == [
        "mine",
        "owners",
    ]
