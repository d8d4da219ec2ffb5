"""The staff API: hosts with their figures, maintenance, the queue, quotas with usage and their
changes; a tenant-bound token never carries staff rights."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient

from compute.models import Host, HostState
from security.models import AuditRecord
from tenants.models import Quota, Role
from tenants.services.quotas import quota_claim
from tests.factories import add_member, make_tenant, make_token, make_user
from tests.scheduler.test_placement import make_host, make_instance

pytestmark = pytest.mark.django_db


def staff(*permissions: str) -> APIClient:
    user = make_user(is_staff=True)
    for codename in permissions:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_hosts_show_capacity_after_overcommit_and_what_is_used() -> None:
    tenant = make_tenant("adm")
    host = make_host("adm-1", cpus=4, ram_mib=8192, cpu_ratio=2.0)
    instance = make_instance(tenant, "x", vcpus=3, ram_mib=1024)
    type(instance).objects.unscoped().filter(pk=instance.pk).update(host=host)
    body = staff().get("/api/v1/admin/hosts/").json()["results"]
    shown = next(h for h in body if h["name"] == "adm-1")
    assert shown["capacity"]["vcpus"] == {"capacity": 8.0, "used": 3.0}
    assert shown["capacity"]["ram_mib"] == {"capacity": 8192.0, "used": 1024.0}
    assert shown["paging"] == "none"


def test_maintenance_needs_the_permission_and_is_audited() -> None:
    host = make_host("adm-2")
    url = f"/api/v1/admin/hosts/{host.pk}/maintenance/"
    refused = staff().post(url, {"on": True}, format="json")
    assert refused.status_code == 403
    assert "compute.change_host" in refused.json()["detail"]
    done = staff("change_host").post(url, {"on": True}, format="json")
    assert done.status_code == 200, done.content
    assert done.json()["state"] == HostState.MAINTENANCE
    assert Host.objects.get(pk=host.pk).state == HostState.MAINTENANCE
    assert AuditRecord.objects.filter(action="host.maintenance").count() == 1
    bad = staff("change_host").post(url, {"on": "perhaps"}, format="json")
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["field"] == "on"


def test_quotas_show_usage_and_change_with_the_fields_named() -> None:
    tenant = make_tenant("adm-q", vcpus=10)
    quota_claim(tenant, {"vcpus": 4}, "test")
    listed = staff().get("/api/v1/admin/quotas/?tenant=adm-q").json()["results"]
    (row,) = listed
    assert row["resources"]["vcpus"]["used"] == 4
    assert row["resources"]["vcpus"]["limit"] == 10
    url = f"/api/v1/admin/tenants/{tenant.slug}/quota/"
    assert staff().patch(url, {"limits": {"vcpus": 2}}, format="json").status_code == 403
    editor = staff("change_quota")
    changed = editor.patch(url, {"limits": {"vcpus": 2}, "max_priority": 3}, format="json")
    assert changed.status_code == 200, changed.content
    # Below what is in use: it stands; new claims are refused until usage falls under it.
    assert changed.json()["resources"]["vcpus"] == {"limit": 2, "used": 4, "available": 0}
    assert Quota.objects.for_tenant(tenant).get().max_priority == 3
    unknown = editor.patch(url, {"limits": {"gpus": 1}}, format="json")
    assert unknown.status_code == 400
    assert unknown.json()["errors"][0]["field"] == "gpus"
    negative = editor.patch(url, {"limits": {"vcpus": -1}}, format="json")
    assert negative.status_code == 400
    assert negative.json()["errors"][0]["field"] == "limits.vcpus"
    record = AuditRecord.objects.filter(action="quota.update").get()
    assert record.detail["to"]["vcpus"] == 2


def test_a_tenant_token_of_a_staff_user_has_no_staff_rights() -> None:
    tenant = make_tenant("adm-t")
    user = make_user(is_staff=True)
    add_member(tenant, user, Role.OWNER)
    secret = make_token(tenant, user, Role.OWNER, "t")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get(f"/api/v1/tenants/{tenant.slug}/").status_code == 200  # the token works
    for path in ("/api/v1/admin/hosts/", "/api/v1/admin/queue/", "/api/v1/admin/quotas/"):
        assert client.get(path).status_code == 403, path
