"""Ballooning, offline resize and snapshots on real guests."""

from __future__ import annotations

import re

import pytest

from compute.models import Instance, InstanceState, OperationState, Snapshot
from compute.services.instances import (
    instance_action,
    instance_create,
    instance_delete,
)
from compute.services.resize import instance_resize, instance_set_memory
from compute.services.snapshots import snapshot_create, snapshot_delete, snapshot_revert
from compute.tasks import local_driver
from core.errors import Conflict, ServiceError
from security.audit import Actor
from tenants.models import Role
from tenants.services.quotas import usage_of
from tests.compute.conftest import domains, libvirt_conn, serial_text, wait_for, wait_marker, wait_operation
from tests.factories import add_member, make_tenant

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def running(host, image, flavors):
    tenant = make_tenant("acme")
    user = add_member(tenant, role=Role.MEMBER)
    actor = Actor(user.username, "api", user.pk)
    op = wait_operation(
        instance_create(actor=actor, tenant=tenant, name="mem", flavor="t.virtio", image=image.name)
    )
    assert op.state == OperationState.SUCCEEDED, op.error
    instance = Instance.objects.for_tenant(tenant).get(pk=op.instance_id)
    wait_marker(instance, "NUBIS-READY")
    yield tenant, actor, instance
    instance.refresh_from_db()
    if instance.state != InstanceState.DELETED:
        assert (
            wait_operation(instance_delete(actor=actor, instance=instance)).state == OperationState.SUCCEEDED
        )


def guest_mem_kib(text: str) -> int:
    return int(re.findall(r"mem_kib=(\d+)", text)[-1])


def test_balloon_lowers_memory_seen_by_libvirt_and_the_guest(no_leftovers, running) -> None:
    _, actor, instance = running
    before = guest_mem_kib(serial_text(instance))
    with pytest.raises(ServiceError, match="between 96 and 192 MiB"):
        instance_set_memory(actor=actor, instance=instance, memory_mib=64)
    op = wait_operation(instance_set_memory(actor=actor, instance=instance, memory_mib=112))
    assert op.state == OperationState.SUCCEEDED, op.error
    instance.refresh_from_db()
    assert (instance.state, instance.current_ram_mib) == (InstanceState.RUNNING, 112)
    wait_for(
        lambda: local_driver().memory_stats(instance.domain_name).get("actual") == 112 * 1024,
        "dommemstat actual to reach 112 MiB",
    )
    wait_marker(instance, "NUBIS-MEM")
    after = guest_mem_kib(serial_text(instance))
    assert before - after >= 70 * 1024, (before, after)  # MemTotal in the guest dropped by about 80 MiB


def test_offline_resize_changes_vcpus_and_ram(no_leftovers, running) -> None:
    tenant, actor, instance = running
    with pytest.raises(Conflict, match="stop the instance before resizing"):
        instance_resize(actor=actor, instance=instance, vcpus=2, ram_mib=256)
    assert wait_operation(instance_action(actor=actor, instance=instance, kind="stop")).state == "succeeded"
    op = wait_operation(instance_resize(actor=actor, instance=instance, vcpus=2, ram_mib=256))
    assert op.state == OperationState.SUCCEEDED, op.error
    conn = libvirt_conn()
    try:
        dom = conn.lookupByName(instance.domain_name)
        assert dom.maxMemory() == 256 * 1024
        assert dom.vcpusFlags(0) == 2
    finally:
        conn.close()
    assert (usage_of(tenant)["vcpus"], usage_of(tenant)["ram_mib"]) == (2, 256)
    assert wait_operation(instance_action(actor=actor, instance=instance, kind="start")).state == "succeeded"
    text = wait_marker(instance, "NUBIS-READY", 2)
    assert guest_mem_kib(text) > 200 * 1024


def test_snapshot_revert_and_delete(no_leftovers, running) -> None:
    tenant, actor, instance = running
    op = wait_operation(snapshot_create(actor=actor, instance=instance, name="before"))
    assert op.state == OperationState.SUCCEEDED, op.error
    assert local_driver().snapshot_names(instance.domain_name) == ["before"]
    assert usage_of(tenant)["snapshots"] == 1
    # Two reboots write boots=2, boots=3 to the guest's disk.
    for n in (2, 3):
        assert (
            wait_operation(instance_action(actor=actor, instance=instance, kind="reboot")).state
            == "succeeded"
        )
        wait_marker(instance, "NUBIS-READY", n)
    snap = Snapshot.objects.for_tenant(tenant).get(instance=instance)
    op = wait_operation(snapshot_revert(actor=actor, snapshot=snap))
    assert op.state == OperationState.SUCCEEDED, op.error
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING  # the snapshot was taken running, with its memory
    # The disk went back to boots=1, so the next boot counts 2 again.
    assert wait_operation(instance_action(actor=actor, instance=instance, kind="reboot")).state == "succeeded"
    text = wait_marker(instance, "NUBIS-READY", 4)
    readies = [line for line in text.splitlines() if line.startswith("NUBIS-READY")]
    assert readies[-1].endswith("boots=2"), readies
    assert wait_operation(snapshot_delete(actor=actor, snapshot=snap)).state == OperationState.SUCCEEDED
    assert local_driver().snapshot_names(instance.domain_name) == []
    assert usage_of(tenant)["snapshots"] == 0
    assert not Snapshot.objects.for_tenant(tenant).exists()


def test_delete_removes_snapshots_too(no_leftovers, running) -> None:
    tenant, actor, instance = running
    assert wait_operation(snapshot_create(actor=actor, instance=instance, name="s1")).state == "succeeded"
    assert wait_operation(instance_delete(actor=actor, instance=instance)).state == "succeeded"
    assert instance.domain_name not in domains()
    assert not Snapshot.objects.for_tenant(tenant).exists()
    assert usage_of(tenant) == dict.fromkeys(usage_of(tenant), 0)
