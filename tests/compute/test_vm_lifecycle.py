"""Real guests through the service layer and a real agent: create, stop, start, reboot, delete.

The guests boot under QEMU TCG (software emulation): the KVM probe fails on these machines.
"""

from __future__ import annotations

import re
import subprocess

import libvirt
import pytest
from django.contrib.auth.models import User

from compute.models import Flavor, Host, Image, Instance, InstanceState, OperationState
from compute.services.instances import instance_action, instance_create, instance_delete
from compute.services.reconcile import reconcile_host
from compute.tasks import local_driver, run_operation
from security.audit import Actor
from tenants.models import Role, Tenant
from tenants.services.quotas import usage_of
from tests.compute.conftest import (
    domains,
    libvirt_conn,
    serial_log,
    wait_marker,
    wait_operation,
)
from tests.factories import add_member, make_tenant

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def owner() -> tuple[Tenant, User, Actor]:
    tenant = make_tenant("acme")
    user = add_member(tenant, role=Role.MEMBER)
    return tenant, user, Actor(user.username, "api", user.pk)


def domain_xml(instance: Instance) -> str:
    conn = libvirt_conn()
    try:
        return conn.lookupByName(instance.domain_name).XMLDesc(0)
    finally:
        conn.close()


def ready_line(text: str, nth: int = -1) -> dict[str, str]:
    lines = [line for line in text.splitlines() if line.startswith("NUBIS-READY")]
    return dict(part.split("=", 1) for part in lines[nth].split()[1:])


def test_vm_lifecycle_end_to_end(
    owner, host: Host, image: Image, flavors: dict[str, Flavor], no_leftovers
) -> None:
    tenant, _, actor = owner
    op = instance_create(actor=actor, tenant=tenant, name="web-1", flavor="t.virtio", image=image.name)
    instance = Instance.objects.for_tenant(tenant).get(pk=op.instance_id)
    assert instance.host == host
    assert usage_of(tenant)["instances"] == 1
    op = wait_operation(op)
    assert op.state == OperationState.SUCCEEDED, op.error
    assert op.step == "start"
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING
    assert instance.vnc_port is not None
    assert instance.vnc_port >= 5900

    text = wait_marker(instance, "NUBIS-READY")
    ready = ready_line(text)
    assert ready["name"] == instance.domain_name
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", ready["ip"]), ready
    assert ready["boots"] == "1"
    reconcile_host(host, local_driver())  # learns the DHCP address
    instance.refresh_from_db()
    assert instance.ip_address == ready["ip"]
    ping = subprocess.run(["ping", "-c", "1", "-W", "2", ready["ip"]], capture_output=True, check=False)
    assert ping.returncode == 0, ping.stdout

    # Stop: the guest powers off on the ACPI button, before the timeout.
    op = wait_operation(instance_action(actor=actor, instance=instance, kind="stop"))
    assert (op.state, op.step) == (OperationState.SUCCEEDED, "shutdown"), op.error
    instance.refresh_from_db()
    assert instance.state == InstanceState.STOPPED
    assert "reboot: Power down" in serial_log(instance).read_text()

    op = wait_operation(instance_action(actor=actor, instance=instance, kind="start"))
    assert op.state == OperationState.SUCCEEDED, op.error
    assert ready_line(wait_marker(instance, "NUBIS-READY", 2))["boots"] == "2"  # the disk kept its data

    op = wait_operation(instance_action(actor=actor, instance=instance, kind="reboot"))
    assert op.state == OperationState.SUCCEEDED, op.error
    assert ready_line(wait_marker(instance, "NUBIS-READY", 3))["boots"] == "3"

    op = wait_operation(instance_delete(actor=actor, instance=instance))
    assert op.state == OperationState.SUCCEEDED, op.error
    instance.refresh_from_db()
    assert instance.state == InstanceState.DELETED
    assert instance.domain_name not in domains()
    assert not serial_log(instance).parent.exists()
    assert usage_of(tenant) == dict.fromkeys(usage_of(tenant), 0)


def test_device_models_follow_the_flavor(owner, host: Host, image: Image, flavors, no_leftovers) -> None:
    tenant, _, actor = owner
    ops = {
        kind: instance_create(
            actor=actor, tenant=tenant, name=f"vm-{kind}", flavor=f"t.{kind}", image=image.name
        )
        for kind in ("virtio", "emulated")
    }
    instances = {}
    for kind, op in ops.items():
        assert wait_operation(op).state == OperationState.SUCCEEDED
        instances[kind] = Instance.objects.for_tenant(tenant).get(pk=op.instance_id)
    virtio_xml, emulated_xml = domain_xml(instances["virtio"]), domain_xml(instances["emulated"])
    assert "<model type='virtio'/>" in virtio_xml
    assert "bus='virtio'" in virtio_xml
    assert "<model type='e1000'/>" in emulated_xml
    assert "bus='sata'" in emulated_xml
    assert "<model fallback='forbid'>qemu64</model>" in virtio_xml  # emulated CPU mode: TCG
    assert "type='qemu'" in virtio_xml.splitlines()[0]

    guest_virtio = wait_marker(instances["virtio"], "NUBIS-READY")
    guest_emulated = wait_marker(instances["emulated"], "NUBIS-READY")
    assert "NUBIS-DEVICES net=virtio_net disks=vda disk_bus=virtio" in guest_virtio
    assert "NUBIS-DEVICES net=e1000 disks=sda disk_bus=sata" in guest_emulated
    for instance in instances.values():
        assert (
            wait_operation(instance_delete(actor=actor, instance=instance)).state == OperationState.SUCCEEDED
        )


def test_duplicate_delivery_creates_one_domain(
    owner, host: Host, image: Image, flavors, no_leftovers
) -> None:
    tenant, _, actor = owner
    op = instance_create(actor=actor, tenant=tenant, name="twice", flavor="t.virtio", image=image.name)
    run_operation.apply_async(args=(op.pk,), queue=host.queue)  # the same task, delivered again
    run_operation.apply_async(args=(op.pk,), queue=host.queue)
    assert wait_operation(op).state == OperationState.SUCCEEDED
    instance = Instance.objects.for_tenant(tenant).get(pk=op.instance_id)
    conn = libvirt_conn()
    try:
        matching = [d for d in conn.listAllDomains(0) if d.UUIDString() == str(instance.uuid)]
        assert len(matching) == 1
        assert matching[0].state()[0] == libvirt.VIR_DOMAIN_RUNNING
    finally:
        conn.close()
    assert wait_operation(instance_delete(actor=actor, instance=instance)).state == OperationState.SUCCEEDED
