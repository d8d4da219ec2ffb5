"""Persistent volumes end to end: a real agent makes the files (qemu-img), real VMs hot plug them,
the guest writes on them, and the data outlives the VM. The guest is reached on its shell port
(nubis.shell) at its address on libvirt's own NAT bridge of this machine.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from compute.guest.builder import GuestImage
from compute.models import (
    Host,
    Image,
    Instance,
    InstanceState,
    Operation,
    OperationState,
    Volume,
    VolumeState,
)
from compute.services.instances import instance_action, instance_create, instance_delete
from security.audit import Actor
from tenants.models import Role, Tenant
from tests.compute.conftest import libvirt_conn, wait_for, wait_marker, wait_operation
from tests.factories import add_member, make_tenant

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SHELL_PORT = 2323
GIB = 1 << 30
MARK = "NUBIS-VOLUME-DATA-42"
OFFSET_BLOCKS = 4096  # 512-byte blocks into the disk: 2 MiB


@pytest.fixture
def shell_image(built_image: GuestImage, image: Image) -> Image:
    """The test guest with a shell on TCP 2323 (nubis.shell)."""
    return shell_image_of(image)


def shell_image_of(image: Image) -> Image:
    """A copy of the registered tiny image ``image`` whose guest opens a shell on SHELL_PORT."""
    return Image.objects.create(
        name="tiny-shell",
        kind=image.kind,
        os_name=image.os_name,
        kernel_path=image.kernel_path,
        initrd_path=image.initrd_path,
        disk_path=image.disk_path,
        cmdline=f"{image.cmdline} nubis.shell={SHELL_PORT}",
        sha256=image.sha256,
        size_bytes=image.size_bytes,
        virtual_size_bytes=image.virtual_size_bytes,
    )


class Member:
    def __init__(self, tenant: Tenant, role: Role = Role.MEMBER) -> None:
        self.tenant = tenant
        self.user = add_member(tenant, role=role)
        self.actor = Actor(self.user.username, "api", self.user.pk)
        self.client = APIClient()
        self.client.force_authenticate(self.user)

    def url(self, rest: str = "") -> str:
        return f"/api/v1/tenants/{self.tenant.slug}/volumes/{rest}"

    def vm(self, name: str, image: Image) -> Instance:
        op = instance_create(
            actor=self.actor, tenant=self.tenant, name=name, flavor="t.virtio", image=image.name
        )
        done = wait_operation(op)
        instance = Instance.objects.for_tenant(self.tenant).get(pk=op.instance_id)
        assert done.state == OperationState.SUCCEEDED, (done.error, instance.fault)
        return instance

    def create(self, **body: object) -> dict:
        response = self.client.post(self.url(), body, format="json")
        assert response.status_code == 201, response.content
        return response.json()

    def op(self, volume: dict, action: str, **body: object) -> Operation:
        response = self.client.post(self.url(f"{volume['id']}/{action}/"), body, format="json")
        assert response.status_code == 202, response.content
        return wait_operation(Operation.objects.for_tenant(self.tenant).get(uuid=response.json()["id"]))

    def get(self, volume: dict) -> dict:
        response = self.client.get(self.url(f"{volume['id']}/"))
        assert response.status_code == 200, response.content
        return response.json()


def fields(response: Any) -> list[str]:
    """The fields an error answer names (problem+json ``errors``)."""
    return [e["field"] for e in response.json().get("errors", [])]


def volume_file(volume: dict) -> Path:
    return Path(settings.NUBIS_INSTANCE_DIR) / "volumes" / f"{volume['id']}.qcow2"


def virtual_size(path: Path) -> int:
    out = subprocess.run(
        ["qemu-img", "info", "-U", "-f", "qcow2", "--output=json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(re.search(r'"virtual-size":\s*(\d+)', out).group(1))  # type: ignore[union-attr]


def qemu_io(path: Path, command: str) -> str:
    proc = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(path)], capture_output=True, text=True, check=False
    )
    return proc.stdout + proc.stderr


def disks(instance: Instance, inactive: bool = False) -> dict[str, str]:
    """The domain's disks: target device -> source file (live, or its definition)."""
    conn = libvirt_conn()
    try:
        dom = conn.lookupByName(instance.domain_name)
        flags = 2 if inactive else 0  # VIR_DOMAIN_XML_INACTIVE
        root = ET.fromstring(dom.XMLDesc(flags))  # noqa: S314 - our own daemon's XML
    finally:
        conn.close()
    found = {}
    for disk in root.findall("./devices/disk"):
        target, source = disk.find("target"), disk.find("source")
        if target is not None:
            found[target.get("dev", "")] = source.get("file", "") if source is not None else ""
    return found


def guest_ip(instance: Instance) -> str:
    text = wait_marker(instance, "NUBIS-READY")
    ips = re.findall(r"NUBIS-READY name=\S+ ip=(\S+)", text)
    assert ips, text[-2000:]
    assert ips[-1] != "none", text[-2000:]
    return ips[-1]


def guest_sh(ip: str, script: str, timeout: float = 30.0) -> str:
    """Run ``script`` in the guest's shell (its TCP port) and return what it printed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection((ip, SHELL_PORT), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    with sock:
        sock.settimeout(timeout)
        sock.sendall(f"{script}; echo __END__\n".encode())
        out = b""
        while b"__END__" not in out:
            chunk = sock.recv(4096)
            if not chunk:
                break
            out += chunk
    return out.decode(errors="replace").split("__END__")[0]


def guest_blocks(ip: str) -> set[str]:
    return set(guest_sh(ip, "ls /sys/block").split())


def test_a_volume_is_hot_plugged_written_in_the_guest_and_outlives_its_vm(
    host: Host, shell_image: Image, flavors, no_leftovers
) -> None:
    a = Member(make_tenant("vol-a"))
    vm1 = a.vm("vm1", shell_image)
    ip1 = guest_ip(vm1)
    assert "vdb" not in guest_blocks(ip1)

    created = a.create(name="data", size_gib=1)
    assert created["state"] == VolumeState.AVAILABLE
    assert created["host"] == host.name
    assert virtual_size(volume_file(created)) == GIB

    # A volume whose file vanished: the attach fails, the VM keeps running without it, and the
    # volume stays available with the reason.
    broken = a.create(name="broken", size_gib=1)
    volume_file(broken).unlink()
    failed = a.op(broken, "attach", instance=str(vm1.uuid))
    assert failed.state == OperationState.FAILED
    broken = a.get(broken)
    assert broken["state"] == VolumeState.AVAILABLE
    assert broken["instance_id"] is None
    assert "attach to vm1 failed" in broken["fault"]
    assert set(disks(vm1)) == {"vda"}
    assert set(disks(vm1, inactive=True)) == {"vda"}
    vm1.refresh_from_db()
    assert vm1.state == InstanceState.RUNNING
    assert not vm1.fault

    # Hot plug: the guest sees a new virtio disk, and writes on it.
    done = a.op(created, "attach", instance=str(vm1.uuid))
    assert done.state == OperationState.SUCCEEDED, done.error
    vol = a.get(created)
    assert (vol["state"], vol["device"], vol["instance_id"]) == (VolumeState.IN_USE, "vdb", str(vm1.uuid))
    assert disks(vm1)["vdb"] == str(volume_file(created))
    assert disks(vm1, inactive=True)["vdb"] == str(volume_file(created))
    wait_for(lambda: "vdb" in guest_blocks(ip1), "the guest to see vdb", 60)
    guest_sh(ip1, f"printf {MARK} | dd of=/dev/vdb bs=512 seek={OFFSET_BLOCKS} conv=fsync 2>/dev/null")
    assert MARK in guest_sh(ip1, f"dd if=/dev/vdb bs=512 skip={OFFSET_BLOCKS} count=1 2>/dev/null")
    detail = a.client.get(f"/api/v1/tenants/{a.tenant.slug}/instances/{vm1.uuid}/").json()
    assert [v["name"] for v in detail["volumes"]] == ["data"]

    # Attached: it cannot be deleted, resized or snapshotted.
    refused = a.client.delete(a.url(f"{created['id']}/"))
    assert refused.status_code == 409, refused.content
    assert "state" in fields(refused), refused.content
    assert "attached to vm1" in refused.json()["detail"]
    assert a.client.post(a.url(f"{created['id']}/resize/"), {"size_gib": 2}, format="json").status_code == 409

    # Hot unplug: the guest lets go, the definition forgets it.
    done = a.op(created, "detach")
    assert done.state == OperationState.SUCCEEDED, done.error
    assert a.get(created)["state"] == VolumeState.AVAILABLE
    assert "vdb" not in disks(vm1)
    assert "vdb" not in disks(vm1, inactive=True)
    wait_for(lambda: "vdb" not in guest_blocks(ip1), "the guest to lose vdb", 30)

    # The VM goes; the volume stays, and its data is there on another VM.
    wait_operation(instance_delete(actor=a.actor, instance=vm1))
    assert volume_file(created).exists()
    vm2 = a.vm("vm2", shell_image)
    ip2 = guest_ip(vm2)
    assert a.op(created, "attach", instance=str(vm2.uuid)).state == OperationState.SUCCEEDED
    wait_for(lambda: "vdb" in guest_blocks(ip2), "vm2 to see vdb", 60)
    assert MARK in guest_sh(ip2, f"dd if=/dev/vdb bs=512 skip={OFFSET_BLOCKS} count=1 2>/dev/null")

    # A stop and a start keep it attached: the guest finds it at boot.
    wait_operation(instance_action(actor=a.actor, instance=vm2, kind="stop"))
    assert disks(vm2, inactive=True)["vdb"] == str(volume_file(created))
    wait_operation(instance_action(actor=a.actor, instance=vm2, kind="start"))
    text = wait_marker(vm2, "NUBIS-READY", count=2)
    assert re.findall(r"NUBIS-DEVICES net=\S+ disks=(\S+)", text)[-1] == "vda,vdb"
    assert a.get(created)["state"] == VolumeState.IN_USE

    # Deleting the VM detaches its volumes: available again, never deleted with it.
    wait_operation(instance_delete(actor=a.actor, instance=vm2))
    vol = a.get(created)
    assert (vol["state"], vol["instance_id"], vol["device"]) == (VolumeState.AVAILABLE, None, "")

    for leftover in (created, broken):
        assert a.client.delete(a.url(f"{leftover['id']}/")).status_code == 204
    assert not volume_file(created).exists()
    assert a.client.get(a.url(f"{created['id']}/")).status_code == 404


def test_volume_quota_resize_snapshots_and_isolation(host: Host, image: Image, flavors) -> None:
    a = Member(make_tenant("vq-a", disk_gib=4, snapshots=1))
    b = Member(make_tenant("vq-b"))
    viewer = Member(a.tenant, Role.VIEWER)

    # Over the disk quota: refused naming it, nothing made.
    over = a.client.post(a.url(), {"name": "big", "size_gib": 5}, format="json")
    assert over.status_code == 409, over.content
    assert "disk_gib" in fields(over), over.content
    assert not Volume.objects.for_tenant(a.tenant).exists()
    bad = a.client.post(a.url(), {"name": "x"}, format="json")
    assert bad.status_code == 400, bad.content
    assert "size_gib" in fields(bad), bad.content
    assert viewer.client.post(a.url(), {"name": "v", "size_gib": 1}, format="json").status_code == 403

    vol = a.create(name="data", size_gib=1)
    path = volume_file(vol)
    assert "wrote" in qemu_io(path, "write -P 0x41 0 64k")

    # Resize: grows the file; never shrinks; claims the difference.
    grown = a.client.post(a.url(f"{vol['id']}/resize/"), {"size_gib": 2}, format="json")
    assert grown.status_code == 200, grown.content
    assert grown.json()["size_gib"] == 2, grown.content
    assert virtual_size(path) == 2 * GIB
    shrink = a.client.post(a.url(f"{vol['id']}/resize/"), {"size_gib": 1}, format="json")
    assert shrink.status_code == 400
    assert "size_gib" in fields(shrink)
    over = a.client.post(a.url(f"{vol['id']}/resize/"), {"size_gib": 5}, format="json")
    assert over.status_code == 409
    assert "disk_gib" in fields(over)
    assert virtual_size(path) == 2 * GIB

    # A snapshot keeps the data of its time; a volume made from it has that data.
    snap = a.client.post(a.url(f"{vol['id']}/snapshots/"), {"name": "before"}, format="json")
    assert snap.status_code == 201, snap.content
    assert "wrote" in qemu_io(path, "write -P 0x42 0 64k")
    second = a.client.post(a.url(f"{vol['id']}/snapshots/"), {"name": "two"}, format="json")
    assert second.status_code == 409, second.content
    assert "snapshots" in fields(second), second.content
    copy = a.create(name="copy", snapshot=snap.json()["id"])
    assert copy["size_gib"] == 2
    assert "Pattern verification failed" not in qemu_io(volume_file(copy), "read -P 0x41 0 64k")
    assert "Pattern verification failed" not in qemu_io(path, "read -P 0x42 0 64k")
    listed = a.client.get(a.url(f"{vol['id']}/snapshots/")).json()["results"]
    assert [s["name"] for s in listed] == ["before"]

    # Another tenant sees none of it, cannot attach A's volume, nor A's volume to its VM.
    for method, rest in (("get", ""), ("delete", ""), ("post", "detach/"), ("get", "snapshots/")):
        assert getattr(b.client, method)(b.url(f"{vol['id']}/{rest}")).status_code == 404
    assert b.client.get(b.url()).json()["results"] == []
    mine = b.create(name="mine", size_gib=1)
    a_vm = Instance.objects.create(
        tenant=a.tenant,
        name="avm",
        flavor=flavors["virtio"],
        image=image,
        state=InstanceState.STOPPED,
        host=host,
    )
    unknown = b.client.post(b.url(f"{mine['id']}/attach/"), {"instance": str(a_vm.uuid)}, format="json")
    assert unknown.status_code == 400, unknown.content
    assert "instance" in fields(unknown), unknown.content
    box = Instance.objects.create(
        tenant=a.tenant, name="box", kind="container", flavor=flavors["virtio"], image=image, host=host
    )
    refused = a.client.post(a.url(f"{vol['id']}/attach/"), {"instance": str(box.uuid)}, format="json")
    assert refused.status_code == 400
    assert "instance" in fields(refused)
    assert "container" in refused.json()["detail"]

    # Snapshots go, then the volumes; their files and their quota with them.
    assert a.client.delete(a.url(f"{vol['id']}/snapshots/{snap.json()['id']}/")).status_code == 204
    for v in (vol, copy):
        assert a.client.delete(a.url(f"{v['id']}/")).status_code == 204
        assert not volume_file(v).exists()
    assert b.client.delete(b.url(f"{mine['id']}/")).status_code == 204
    assert a.create(name="again", size_gib=4)["state"] == VolumeState.AVAILABLE
    a.client.delete(a.url(f"{Volume.objects.for_tenant(a.tenant).get(name='again', deleted_at=None).uuid}/"))
