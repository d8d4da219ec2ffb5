"""The audit trail: one record per mutating action, append-only, and a hash chain that exposes tampering."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from security.audit import Actor, audit_log, verify_chain
from security.models import AppendOnlyError, AuditRecord, Outcome
from tenants.models import Role
from tests.factories import PASSWORD, add_member, make_tenant, make_user

pytestmark = pytest.mark.django_db


def records_since(seq: int) -> list[AuditRecord]:
    return list(AuditRecord.objects.filter(seq__gt=seq).order_by("seq"))


def last_seq() -> int:
    record = AuditRecord.objects.order_by("-seq").first()
    return record.seq if record else 0


def test_records_chain_and_verify() -> None:
    actor = Actor.system("test")
    first = audit_log(actor=actor, action="x.one")
    second = audit_log(actor=actor, action="x.two")
    assert second.prev_hash == first.hash
    assert second.seq == first.seq + 1
    checked, problems = verify_chain()
    assert checked >= 2
    assert problems == []


def test_records_cannot_be_changed_or_deleted_through_the_orm() -> None:
    record = audit_log(actor=Actor.system("test"), action="x")
    record.action = "y"
    with pytest.raises(AppendOnlyError):
        record.save()
    with pytest.raises(AppendOnlyError):
        record.delete()
    with pytest.raises(AppendOnlyError):
        AuditRecord.objects.filter(pk=record.pk).update(action="y")
    with pytest.raises(AppendOnlyError):
        AuditRecord.objects.filter(pk=record.pk).delete()


def test_editing_a_record_in_the_database_is_detected_and_named(capsys: pytest.CaptureFixture[str]) -> None:
    actor = Actor.system("test")
    records = [audit_log(actor=actor, action=f"x.{i}") for i in range(5)]
    call_command("audit_verify")
    assert "audit chain intact" in capsys.readouterr().out
    victim = records[2]
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE security_auditrecord SET actor_name = %s WHERE id = %s", ["mallory", victim.pk]
        )
    with pytest.raises(CommandError, match="audit chain broken"):
        call_command("audit_verify")
    err = capsys.readouterr().err
    assert f"audit record seq {victim.seq} (id {victim.pk}): contents do not match its hash (altered)" in err
    assert err.count("audit record") == 1


def test_deleting_a_record_in_the_database_is_detected() -> None:
    actor = Actor.system("test")
    records = [audit_log(actor=actor, action=f"x.{i}") for i in range(3)]
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM security_auditrecord WHERE id = %s", [records[1].pk])
    _, problems = verify_chain()
    messages = [str(p) for p in problems]
    assert any(f"seq {records[2].seq}" in m and "sequence gap" in m for m in messages)


def test_api_action_records_actor_tenant_target_ip_and_outcome() -> None:
    tenant = make_tenant("tenant-a")
    owner = add_member(tenant, role=Role.OWNER)
    make_user("bob")
    client = APIClient(REMOTE_ADDR="127.0.0.9")
    client.force_authenticate(owner)
    before = last_seq()
    client.post("/api/v1/tenants/tenant-a/members/", {"username": "bob"}, format="json")
    [record] = records_since(before)
    assert (record.actor_name, record.tenant_slug, record.action, record.source) == (
        owner.username,
        "tenant-a",
        "member.add",
        "api",
    )
    assert record.target_type == "tenants.membership"
    assert record.source_ip == "127.0.0.9"
    assert record.outcome == Outcome.SUCCESS


def test_refused_and_failed_mutations_leave_one_record_each() -> None:
    tenant = make_tenant("tenant-a")
    owner = add_member(tenant, role=Role.OWNER)
    viewer = add_member(tenant, role=Role.VIEWER)
    client = APIClient()
    client.force_authenticate(viewer)
    before = last_seq()
    assert (
        client.post("/api/v1/tenants/tenant-a/members/", {"username": "x"}, format="json").status_code == 403
    )
    [denied] = records_since(before)
    assert (denied.action, denied.outcome, denied.actor_name) == (
        "http.api-members",
        "denied",
        viewer.username,
    )
    client.force_authenticate(owner)
    before = last_seq()
    assert (
        client.post("/api/v1/tenants/tenant-a/members/", {"username": "ghost"}, format="json").status_code
        == 400
    )
    [invalid] = records_since(before)
    assert invalid.outcome == "invalid"


def test_login_success_and_failure_are_recorded() -> None:
    user = make_user("alice")
    client = Client()
    before = last_seq()
    client.post("/login/", {"username": "alice", "password": "wrong"})
    client.post("/login/", {"username": "alice", "password": PASSWORD})
    failed, ok = records_since(before)
    assert (failed.action, failed.outcome, failed.target_repr) == ("auth.login", "denied", "alice")
    assert (ok.action, ok.outcome, ok.actor_id) == ("auth.login", "success", user.pk)


def test_admin_change_is_recorded_once(admin_client: Client) -> None:
    tenant = make_tenant("tenant-a")
    before = last_seq()
    response = admin_client.post(
        f"/admin/tenants/tenant/{tenant.pk}/change/",
        {
            "name": "Renamed",
            "slug": "tenant-a",
            "active": "on",
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
            "memberships-MIN_NUM_FORMS": "0",
            "memberships-MAX_NUM_FORMS": "1000",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    [record] = records_since(before)
    assert (record.action, record.source, record.tenant_slug, record.target_repr) == (
        "admin.tenant.change",
        "admin",
        "tenant-a",
        "Renamed",
    )


def test_owner_reads_the_trail_others_do_not() -> None:
    tenant = make_tenant("tenant-a")
    other = make_tenant("tenant-b")
    owner = add_member(tenant, role=Role.OWNER)
    member = add_member(tenant)
    audit_log(actor=Actor.system("t"), action="a.thing", tenant=tenant)
    audit_log(actor=Actor.system("t"), action="b.thing", tenant=other)
    client = APIClient()
    client.force_authenticate(owner)
    actions = [r["action"] for r in client.get("/api/v1/tenants/tenant-a/audit/").json()["results"]]
    assert "a.thing" in actions
    assert "b.thing" not in actions
    client.force_authenticate(member)
    assert client.get("/api/v1/tenants/tenant-a/audit/").status_code == 403
