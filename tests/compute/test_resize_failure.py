"""A resize the host refuses leaves the database saying what the guest really has.

Real agent, real guests: a VM stopped and resized to more vCPUs than QEMU's `pc` machine takes
(libvirt refuses the definition), and a running container whose memory is shrunk below what its
processes hold (the kernel refuses the cgroup limit). Afterwards the instance's size, its quota
claim and what it holds on its host are the old ones, the failure is on the operation and is the
instance's fault, and the instance is back in the state it was in.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.db import transaction

from compute.drivers.oci import RUNC_ROOT
from compute.models import Host, Image, Instance, InstanceState, OperationState
from compute.services import host_rpc
from compute.services.instances import instance_action, instance_create, instance_delete
from compute.services.resize import instance_resize
from scheduler.hosts import host_rows
from security.audit import Actor
from tenants.models import Quota, Role, Tenant
from tenants.services.quotas import quota_drift, usage_of
from tests.compute.conftest import libvirt_conn, wait_marker, wait_operation
from tests.factories import add_member, make_tenant

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# QEMU's `pc` machine (i440fx) takes at most 255 vCPUs: libvirt refuses to define more.
TOO_MANY_VCPUS = 300
CGROUP = Path("/sys/fs/cgroup")


@pytest.fixture
def ctx(host: Host) -> tuple[Tenant, Actor]:
    # Quota and host both have room for the request: only the hypervisor refuses it.
    tenant = make_tenant("resizer", vcpus=1000, ram_mib=100_000)
    Host.objects.filter(pk=host.pk).update(cpu_ratio=1000.0)
    user = add_member(tenant, role=Role.MEMBER)
    return tenant, Actor(user.username, "api", user.pk)


def held_on(host: Host) -> tuple[float, float]:
    """What the host's capacity table says its instances hold: (vCPUs, RAM MiB)."""
    row = host_rows(Host.objects.filter(pk=host.pk))[0]
    return row.used_vcpus, row.used_ram_mib


def _act(actor: Actor, instance: Instance, kind: str) -> None:
    op = wait_operation(instance_action(actor=actor, instance=instance, kind=kind))
    assert op.state == OperationState.SUCCEEDED, op.error


def _delete(actor: Actor, instance: Instance) -> None:
    instance.refresh_from_db()
    if instance.state != InstanceState.DELETED:
        op = wait_operation(instance_delete(actor=actor, instance=instance), timeout=90)
        assert op.state == OperationState.SUCCEEDED, op.error


def test_failed_offline_resize_of_a_vm_keeps_its_old_size(
    ctx, host: Host, image: Image, flavors, no_leftovers
) -> None:
    tenant, actor = ctx
    op = wait_operation(
        instance_create(actor=actor, tenant=tenant, name="big", flavor="t.virtio", image=image.name)
    )
    assert op.state == OperationState.SUCCEEDED, op.error
    instance = Instance.objects.for_tenant(tenant).get(pk=op.instance_id)
    try:
        _act(actor, instance, "stop")
        before = {"vcpus": 1, "ram_mib": 192}
        assert (usage_of(tenant)["vcpus"], usage_of(tenant)["ram_mib"]) == (1, 192)
        assert held_on(host) == (1, 192)

        op = wait_operation(
            instance_resize(actor=actor, instance=instance, vcpus=TOO_MANY_VCPUS, ram_mib=256)
        )

        assert op.state == OperationState.FAILED
        assert "255" in op.error, op.error  # libvirt's own reason: the machine type's limit
        instance.refresh_from_db()
        assert instance.state == InstanceState.STOPPED
        assert {"vcpus": instance.vcpus, "ram_mib": instance.ram_mib} == before
        assert instance.current_ram_mib == 192
        assert "255" in instance.fault, instance.fault
        assert "resize" in instance.fault, instance.fault
        # The guest's definition is the old one, and the database agrees with it.
        conn = libvirt_conn()
        try:
            dom = conn.lookupByName(instance.domain_name)
            assert (dom.vcpusFlags(0), dom.maxMemory()) == (1, 192 * 1024)
        finally:
            conn.close()
        usage = usage_of(tenant)
        assert (usage["vcpus"], usage["ram_mib"], usage["instances"]) == (1, 192, 1)
        assert quota_drift(tenant) == []
        assert held_on(host) == (1, 192)

        # It is in a state that works: it starts with its old size, and a resize that fits still works.
        _act(actor, instance, "start")
        wait_marker(instance, "NUBIS-READY", 2)
        _act(actor, instance, "stop")
        op = wait_operation(instance_resize(actor=actor, instance=instance, vcpus=2, ram_mib=256))
        assert op.state == OperationState.SUCCEEDED, op.error
        instance.refresh_from_db()
        assert (instance.vcpus, instance.ram_mib) == (2, 256)
        assert (usage_of(tenant)["vcpus"], usage_of(tenant)["ram_mib"]) == (2, 256)
    finally:
        _delete(actor, instance)


def cgroup(instance: Instance, controller: str, filename: str) -> str:
    return (CGROUP / controller / "nubis" / instance.domain_name / filename).read_text().strip()


def test_failed_resize_of_a_running_container_keeps_its_old_limits(
    ctx, host: Host, rootfs_image: Image, cflavors, no_leftovers
) -> None:
    tenant, actor = ctx
    op = wait_operation(
        instance_create(
            actor=actor,
            tenant=tenant,
            name="full",
            flavor="c.medium",
            image=rootfs_image.name,
            kind="container",
        ),
        timeout=60,
    )
    assert op.state == OperationState.SUCCEEDED, op.error
    instance = Instance.objects.for_tenant(tenant).get(pk=op.instance_id)
    try:
        # 80 MiB in its /tmp (a tmpfs charged to its memory cgroup; there is no swap to push it to).
        code, _out, err = host_rpc.container_exec(
            instance, ["sh", "-c", "head -c 83886080 /dev/zero > /tmp/fill"], 30
        )
        assert code == 0, err
        assert int(cgroup(instance, "memory", "memory.usage_in_bytes")) > 80 << 20

        # 2 vCPUs and 32 MiB: the kernel cannot shrink the limit below what is in use. Meanwhile
        # (before the agent runs it) the tenant's RAM limit is lowered below the old size.
        with transaction.atomic():
            op = instance_resize(actor=actor, instance=instance, vcpus=2, ram_mib=32)
            Quota.objects.for_tenant(tenant).update(max_ram_mib=64)
        op = wait_operation(op, timeout=60)

        assert op.state == OperationState.FAILED
        assert op.error, op
        instance.refresh_from_db()
        assert instance.state == InstanceState.RUNNING  # as it was
        assert (instance.vcpus, instance.ram_mib, instance.current_ram_mib) == (1, 128, 128)
        assert "resize" in instance.fault, instance.fault
        # The container's cgroups hold the old limits, whatever runc changed before it failed.
        assert int(cgroup(instance, "memory", "memory.limit_in_bytes")) == 128 << 20
        assert cgroup(instance, "cpu", "cpu.shares") == "1024"
        # And runc's own record of them, which a failed `runc update` leaves saying the refused ones.
        state = json.loads((RUNC_ROOT / instance.domain_name / "state.json").read_text())
        limits = state["config"]["cgroups"]
        assert (limits["memory"], limits["cpu_shares"]) == (128 << 20, 1024), limits
        # The old size is claimed back even over the lowered limit: the container holds it.
        usage = usage_of(tenant)
        assert (usage["vcpus"], usage["ram_mib"], usage["containers"]) == (1, 128, 1)
        assert quota_drift(tenant) == []
        assert held_on(host) == (1, 128)
    finally:
        _delete(actor, instance)
