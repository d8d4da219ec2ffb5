"""Tenant-owned models refuse unscoped queries; scoped ones see only their tenant's rows."""

from __future__ import annotations

import pytest

from tenants.models import ApiToken, Quota, QuotaClaim, Role
from tenants.scoping import UnscopedQueryError
from tenants.services.quotas import quota_claim
from tests.factories import add_member, make_tenant, make_user

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "query",
    [
        lambda: list(QuotaClaim.objects.all()),
        lambda: QuotaClaim.objects.count(),
        lambda: QuotaClaim.objects.exists(),
        lambda: QuotaClaim.objects.filter(reason="x").first(),
        lambda: QuotaClaim.objects.get(pk=1),
        lambda: QuotaClaim.objects.filter(reason="x").update(reason="y"),
        lambda: QuotaClaim.objects.all().delete(),
        lambda: QuotaClaim.objects.aggregate(
            n=__import__("django.db.models", fromlist=["Count"]).Count("id")
        ),
        lambda: list(QuotaClaim.objects.all().iterator()),
        lambda: list(Quota.objects.values_list("id", flat=True)),
        lambda: list(ApiToken.objects.order_by("name")),
    ],
)
def test_unscoped_queries_are_refused(query) -> None:
    with pytest.raises(UnscopedQueryError, match="tenant-owned"):
        query()


def test_for_tenant_sees_only_that_tenants_rows() -> None:
    a, b = make_tenant("a"), make_tenant("b")
    quota_claim(a, {"vcpus": 1}, "a1")
    quota_claim(b, {"vcpus": 2}, "b1")
    assert [c.reason for c in QuotaClaim.objects.for_tenant(a)] == ["a1"]
    assert [c.reason for c in QuotaClaim.objects.for_tenant(b.pk)] == ["b1"]
    assert QuotaClaim.objects.unscoped().count() == 2


def test_visible_to_follows_memberships() -> None:
    a, b, c = make_tenant("a"), make_tenant("b"), make_tenant("c")
    user = add_member(a)
    add_member(b, user, Role.VIEWER)
    for tenant in (a, b, c):
        quota_claim(tenant, {"instances": 1}, tenant.slug)
    assert sorted(q.reason for q in QuotaClaim.objects.visible_to(user)) == ["a", "b"]
    assert list(QuotaClaim.objects.visible_to(make_user())) == []


def test_related_managers_and_none_are_scoped() -> None:
    a = make_tenant("a")
    quota_claim(a, {"vcpus": 1}, "x")
    assert a.quotaclaims.count() == 1
    assert list(QuotaClaim.objects.none()) == []


def test_scope_survives_chaining() -> None:
    a = make_tenant("a")
    quota_claim(a, {"vcpus": 3}, "x")
    qs = QuotaClaim.objects.for_tenant(a).exclude(reason="y").order_by("-created").select_related("tenant")
    assert [c.vcpus for c in qs] == [3]
