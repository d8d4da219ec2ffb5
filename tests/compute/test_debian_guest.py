"""A real Debian 12 cloud guest: the image, its config drive (NoCloud seed) and qemu-guest-agent.

One Debian VM, made through the services and the session's real compute agent with a key pair and a
user-data script, boots once under TCG (about a minute and a half) and is shared by the tests of
this module, which look inside it through the guest agent (no SSH needed). The module's data is
committed outside the tests' transactions, so the tests here use no database fixture of their own;
the module flushes the database at its end, as a transactional test would. (pytest-django makes the
test database only for a session holding a test marked django_db: the last two tests here are, and
only roll back.)
"""

from __future__ import annotations

import io
import json
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from pytest_django import DjangoDbBlocker

from compute.drivers.base import GuestSpec
from compute.drivers.domain_xml import domain_xml
from compute.drivers.libvirt import LibvirtDriver
from compute.drivers.seed import SEED_NAME, read_seed_file
from compute.guest.debian import DebianImage, build_debian_image
from compute.models import CpuMode, Flavor, Host, Instance, InstanceState, IoModel, OperationState
from compute.services.guests import seed_contents
from compute.services.images import image_register_debian
from compute.services.instances import instance_action, instance_create, instance_delete
from compute.services.keypairs import keypair_generate
from security.audit import Actor
from tenants.models import Role, Tenant
from tests.compute.conftest import Agent, domains, instance_dir_of, serial_text, wait_for, wait_operation
from tests.factories import add_member, make_tenant

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

# seconds: under TCG a boot to cloud-init's end takes about 80 s idle, 300 s on a loaded 2-core machine
BOOT_TIMEOUT = 600.0
USER_DATA = """#!/bin/sh
# Nubis test: runs once per instance (cloud-init's scripts-user), so one line whatever the reboots.
echo "user-data ran" >> /var/lib/nubis-user-data.txt
"""


@dataclass
class DebianVm:
    instance: Instance
    tenant: Tenant
    actor: Actor
    public_key: str
    driver: LibvirtDriver

    def run(self, *argv: str, timeout: float = 60.0) -> str:
        code, out, err = self.driver.guest_exec(self.instance.domain_name, list(argv), timeout)
        assert code == 0, f"{argv} exited {code}: {err or out}"
        return out


@pytest.fixture(scope="module")
def debian_image() -> DebianImage:
    """The Debian cloud image, built once (about 3 minutes) and cached in NUBIS_IMAGE_DIR."""
    return build_debian_image(Path(settings.NUBIS_IMAGE_DIR), log=lambda _: None)


def _agent_ready(driver: LibvirtDriver, name: str) -> bool:
    try:
        return driver.guest_exec(name, ["/bin/true"], 20)[0] == 0
    except Exception:  # not up yet, whatever the reason
        return False


def _cloud_init_done(driver: LibvirtDriver, name: str) -> bool:
    try:
        _code, out, _ = driver.guest_exec(name, ["/usr/bin/cloud-init", "status"], 30)
    except Exception:  # the agent restarts with the guest
        return False
    return "status: done" in out or "status: error" in out


@pytest.fixture(scope="module")
def vm(
    django_db_setup: None, django_db_blocker: DjangoDbBlocker, agent: Agent, debian_image: DebianImage
) -> Iterator[DebianVm]:
    driver = LibvirtDriver(settings.LIBVIRT_URI)
    with django_db_blocker.unblock():
        if "compute_host" not in connection.introspection.table_names():
            pytest.fail(
                "no test database: pytest-django makes it only for a session with a django_db test "
                "(this module's last two tests are; do not deselect both)"
            )
        host = wait_for(lambda: Host.objects.filter(name=agent.name).first(), f"agent {agent.name}", 30)
        assert host
        tenant = make_tenant(f"deb-{uuid.uuid4().hex[:6]}")
        user = add_member(tenant, role=Role.MEMBER)
        actor = Actor(user.username, "api", user.pk)
        image = image_register_debian(debian_image)
        Flavor.objects.create(
            name="t.debian",
            vcpus=1,
            ram_mib=1024,
            disk_gib=3,
            cpu_mode=CpuMode.EMULATED,
            io_model=IoModel.VIRTIO,
        )
        keypair, _private = keypair_generate(actor=actor, tenant=tenant, name="laptop")
        op = instance_create(
            actor=actor,
            tenant=tenant,
            name="deb-1",
            flavor="t.debian",
            image=image.name,
            key_pairs=["laptop"],
            user_data=USER_DATA,
        )
        instance = Instance.objects.for_tenant(tenant).get(pk=op.instance_id)
        vm = DebianVm(instance, tenant, actor, keypair.public_key.strip(), driver)
        try:
            op = wait_operation(op, 180)
            assert op.state == OperationState.SUCCEEDED, op.error
            wait_for(lambda: _agent_ready(driver, instance.domain_name), "the guest agent", BOOT_TIMEOUT)
            wait_for(lambda: _cloud_init_done(driver, instance.domain_name), "cloud-init", BOOT_TIMEOUT)
            yield vm
        finally:
            instance.refresh_from_db()
            if instance.state != InstanceState.DELETED:
                delete = instance_delete(actor=actor, instance=instance)
                wait_operation(delete, 120)
            call_command("flush", interactive=False, stdout=io.StringIO())
            driver.close()


@pytest.fixture(autouse=True)
def _database(django_db_blocker: DjangoDbBlocker) -> Iterator[None]:
    """The module's rows are committed (see the module's docstring): reach them as the fixture does."""
    with django_db_blocker.unblock():
        yield


def test_debian_vm_runs_and_cloud_init_finishes(vm: DebianVm) -> None:
    vm.instance.refresh_from_db()
    assert vm.instance.state == InstanceState.RUNNING
    assert vm.instance.image.cloud_init
    assert vm.instance.image.login_user == "debian"
    status = vm.run("/usr/bin/cloud-init", "status", "--long")
    assert "status: done" in status, status
    assert "DataSourceNoCloud" in status, status
    vm.run("/usr/bin/test", "-f", "/var/lib/cloud/instance/boot-finished")
    assert "login:" in serial_text(vm.instance), "no login prompt on the serial console"


def test_hostname_is_the_instance_name(vm: DebianVm) -> None:
    assert vm.run("/usr/bin/hostname").strip() == vm.instance.name
    assert vm.instance.name in vm.run("/usr/bin/cat", "/etc/hosts")  # manage_etc_hosts


def test_key_pair_is_the_login_users(vm: DebianVm) -> None:
    keys = vm.run("/usr/bin/cat", "/home/debian/.ssh/authorized_keys")
    assert vm.public_key in keys
    # The user-data was a script, not a #cloud-config: the key came from meta-data.
    assert vm.instance.user_data == USER_DATA


def test_metadata_names_instance_and_tenant(vm: DebianVm) -> None:
    data = json.loads(vm.run("/usr/bin/cat", "/run/cloud-init/instance-data.json"))
    meta = data["ds"]["meta_data"]
    assert meta["instance-id"] == str(vm.instance.uuid)
    assert meta["instance-name"] == vm.instance.name
    assert meta["tenant"] == vm.tenant.slug
    assert data["v1"]["instance_id"] == str(vm.instance.uuid)


def test_guest_agent_reports_the_address(vm: DebianVm) -> None:
    addresses = vm.driver.guest_addresses(vm.instance.domain_name)
    vm.instance.refresh_from_db()
    assert vm.instance.ip_address, "the instance has no address on its network"
    assert vm.instance.ip_address in addresses, addresses


def test_root_filesystem_grew_to_the_instance_disk(vm: DebianVm) -> None:
    size = int(vm.run("/usr/bin/df", "--output=size", "-B1", "/").split()[-1])
    assert size > 2.5 * 2**30, f"root is {size} bytes; the instance's disk is 3 GiB"


def test_user_data_runs_once_across_a_reboot(vm: DebianVm) -> None:
    assert vm.run("/usr/bin/cat", "/var/lib/nubis-user-data.txt") == "user-data ran\n"
    boot_id = vm.run("/usr/bin/cat", "/proc/sys/kernel/random/boot_id")
    vm.run("/usr/bin/sync")  # the reboot is a reset: what cloud-init wrote must be on disk
    prompts = serial_text(vm.instance).count("login:")
    op = wait_operation(instance_action(actor=vm.actor, instance=vm.instance, kind="reboot"), 180)
    assert op.state == OperationState.SUCCEEDED, op.error
    name = vm.instance.domain_name

    def rebooted() -> bool:
        try:
            now = vm.driver.guest_exec(name, ["/usr/bin/cat", "/proc/sys/kernel/random/boot_id"], 20)[1]
        except Exception:  # the agent is down during the reboot
            return False
        return now not in ("", boot_id)

    wait_for(rebooted, "the guest to boot again", BOOT_TIMEOUT)
    wait_for(lambda: _cloud_init_done(vm.driver, name), "cloud-init after the reboot", BOOT_TIMEOUT)
    assert vm.run("/usr/bin/cat", "/var/lib/nubis-user-data.txt") == "user-data ran\n"
    wait_for(lambda: serial_text(vm.instance).count("login:") > prompts, "a second login prompt", 120)


def test_seed_holds_meta_data_and_user_data(vm: DebianVm) -> None:
    seed = instance_dir_of(vm.instance) / SEED_NAME
    meta = json.loads(read_seed_file(seed, "meta-data"))
    assert meta["instance-id"] == str(vm.instance.uuid)
    assert meta["local-hostname"] == vm.instance.name
    assert meta["public-keys"] == [vm.public_key]
    assert read_seed_file(seed, "user-data") == USER_DATA
    # The domain carries it as a read-only CD-ROM, and the guest agent's channel.
    xml = ET.fromstring(vm.driver.conn().lookupByName(vm.instance.domain_name).XMLDesc(0))  # noqa: S314
    cdrom = xml.find("./devices/disk[@device='cdrom']")
    assert cdrom is not None
    assert cdrom.find("readonly") is not None
    assert cdrom.find("source").get("file") == str(seed)  # type: ignore[union-attr]
    assert xml.find("./devices/channel/target[@name='org.qemu.guest_agent.0']") is not None


def test_delete_removes_the_seed_with_the_instance(vm: DebianVm) -> None:
    directory = instance_dir_of(vm.instance)
    assert (directory / SEED_NAME).exists()
    op = instance_delete(actor=vm.actor, instance=vm.instance)
    op = wait_operation(op, 120)
    assert op.state == OperationState.SUCCEEDED, op.error
    assert not directory.exists()
    assert vm.instance.domain_name not in domains()


@pytest.mark.django_db  # with the next one, it makes pytest-django create the test database
def test_seed_contents_without_user_data() -> None:
    """Without user-data the seed's own #cloud-config sets the hostname, /etc/hosts and the keys."""
    tenant = Tenant(slug="acme", name="Acme")
    instance = Instance(
        tenant=tenant,
        name="web-1",
        ssh_keys=[{"name": "k", "fingerprint": "SHA256:x", "public_key": "ssh-ed25519 AAAA k"}],
    )
    meta_text, user_data = seed_contents(instance)
    meta = json.loads(meta_text)
    assert meta == {
        "instance-id": str(instance.uuid),
        "local-hostname": "web-1",
        "instance-name": "web-1",
        "tenant": "acme",
        "public-keys": ["ssh-ed25519 AAAA k"],
    }
    assert user_data.startswith("#cloud-config\n")
    config = json.loads(user_data.removeprefix("#cloud-config\n"))
    assert config == {
        "hostname": "web-1",
        "manage_etc_hosts": True,
        "ssh_authorized_keys": ["ssh-ed25519 AAAA k"],
    }


@pytest.mark.django_db
def test_domain_xml_seed_and_agent_channel_only_for_cloud_images() -> None:
    common: dict[str, Any] = {
        "name": "n",
        "uuid": str(uuid.uuid4()),
        "vcpus": 1,
        "ram_mib": 256,
        "current_ram_mib": 256,
        "cpu_mode": CpuMode.EMULATED,
        "io_model": IoModel.VIRTIO,
        "balloon": False,
        "disk_path": "/x/disk.qcow2",
        "serial_log": "/x/serial.log",
        "network": "default",
        "vnc_password": "p",
    }
    plain = ET.fromstring(domain_xml(GuestSpec(**common)))  # noqa: S314
    assert plain.find("./devices/disk[@device='cdrom']") is None
    assert plain.find("./devices/channel") is None
    assert plain.find("./os/boot").get("dev") == "hd"  # type: ignore[union-attr]
    cloud = ET.fromstring(  # noqa: S314
        domain_xml(GuestSpec(**common, seed_path="/x/seed.iso", guest_agent=True))
    )
    cdrom = cloud.find("./devices/disk[@device='cdrom']")
    assert cdrom is not None
    assert cdrom.find("source").get("file") == "/x/seed.iso"  # type: ignore[union-attr]
    assert cdrom.find("driver").get("type") == "raw"  # type: ignore[union-attr]
    assert cloud.find("./devices/channel[@type='unix']/target").get("name") == "org.qemu.guest_agent.0"  # type: ignore[union-attr]
