"""A real Debian 12 cloud guest: the image, its config drive (NoCloud seed), qemu-guest-agent, SSH
from the lab's outside to its floating address, a volume written over SSH, and a login on its
serial console in the browser.

One Debian VM, asked for through the API with a key pair and a user-data script (which also gives
the ``debian`` user a password, for the serial console), run by the session's real compute agent,
given a floating address from a pool on a lab "outside" (tests/compute/outside.py) once it runs,
boots once under TCG
(about a minute and a half) and is shared by the tests of this module: they look inside it through
the guest agent and over SSH. The last test deletes it. The module's data is committed outside the
tests' transactions, so the tests here use no database fixture of their own; the module flushes the
database at its end, as a transactional test would. (pytest-django makes the test database only for
a session holding a test marked django_db: the last two tests here are, and only roll back.)
"""

from __future__ import annotations

import io
import ipaddress
import json
import re
import secrets
import subprocess
import uuid
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection, connections
from playwright.sync_api import Browser, Page, expect
from pytest_django import DjangoDbBlocker
from rest_framework.test import APIClient

from compute.drivers.base import GuestSpec
from compute.drivers.domain_xml import domain_xml
from compute.drivers.libvirt import LibvirtDriver
from compute.drivers.seed import SEED_NAME, read_seed_file
from compute.guest.builder import GuestImage
from compute.guest.debian import DebianImage, build_debian_image
from compute.models import (
    CpuMode,
    Flavor,
    FloatingPool,
    Host,
    HostState,
    Instance,
    InstanceState,
    IoModel,
    Operation,
    OperationState,
    SecurityGroup,
    VolumeState,
)
from compute.services.guests import seed_contents
from compute.services.images import image_register, image_register_debian
from compute.services.instances import instance_action, instance_create, instance_delete
from compute.services.keypairs import keypair_generate
from compute.services.networks import group_create, instance_groups_set, network_create, rule_create
from compute.services.ports import chain_owner
from security.audit import Actor
from tenants.models import Role, Tenant
from tests.compute.conftest import Agent, domains, instance_dir_of, serial_text, wait_for, wait_operation
from tests.compute.netlab import sh
from tests.compute.outside import Outside
from tests.compute.test_volumes import Member as VolumeClient
from tests.compute.test_volumes import guest_blocks, guest_ip, guest_sh, shell_image_of, volume_file
from tests.conftest import flush_retrying_deadlocks
from tests.e2e.conftest import ARTIFACTS, log_in, screenshot
from tests.e2e.conftest import browser as browser
from tests.e2e.conftest import no_csp_violations as no_csp_violations
from tests.e2e.conftest import portal_url as portal_url
from tests.factories import PASSWORD as PORTAL_PASSWORD
from tests.factories import add_member, make_tenant

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

# seconds: under TCG a boot to cloud-init's end takes about 80 s idle, 300 s on a loaded 2-core machine
BOOT_TIMEOUT = 600.0
GIB = 1 << 30
# The debian user's password for the serial console login (the image has none; SSH takes keys only).
LOGIN_PASSWORD = secrets.token_hex(8)
USER_DATA = f"""#!/bin/sh
# Nubis test: runs once per instance (cloud-init's scripts-user), so one line whatever the reboots.
echo "user-data ran" >> /var/lib/nubis-user-data.txt
echo 'debian:{LOGIN_PASSWORD}' | chpasswd
"""
VOLUME_MARK = "NUBIS-DEBIAN-VOLUME-42"


@dataclass
class DebianVm:
    instance: Instance
    tenant: Tenant
    actor: Actor
    username: str
    public_key: str
    private_key: Path
    driver: LibvirtDriver
    world: Outside
    address: str  # its floating address, on the outside's subnet

    def run(self, *argv: str, timeout: float = 60.0) -> str:
        code, out, err = self.driver.guest_exec(self.instance.domain_name, list(argv), timeout)
        assert code == 0, f"{argv} exited {code}: {err or out}"
        return out

    def ssh(
        self, command: str, key: Path | None = None, connect_timeout: int = 10, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """``ssh -i KEY debian@FLOATING COMMAND`` from the outside namespace (keys only, no prompt)."""
        argv = ["ip", "netns", "exec", self.world.netns, "ssh", "-F", "/dev/null"]
        argv += ["-i", str(key or self.private_key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
        argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        argv += ["-o", f"ConnectTimeout={connect_timeout}", "-o", "LogLevel=ERROR"]
        argv += [f"{self.instance.image.login_user}@{self.address}", command]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def ssh_ok(self, command: str, timeout: float = 120.0) -> str:
        done = self.ssh(command, timeout=timeout)
        assert done.returncode == 0, f"{command!r} exited {done.returncode}: {done.stderr or done.stdout}"
        return done.stdout


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
def world() -> Iterator[Outside]:
    """The lab's outside for this module: 198.19.<40 + worker>.0/24 (NUBIS_NETWORK_POOL 10.<100+N>...),
    not the floating address tests' subnet, so the two never meet."""
    worker = int(str(settings.NUBIS_NETWORK_POOL).split(".")[1]) % 100
    outside = Outside(f"d{secrets.token_hex(3)}", f"198.19.{40 + worker}.0/24").up()
    try:
        yield outside
    finally:
        outside.down()


@pytest.fixture(scope="module")
def vm(
    django_db_setup: None,
    django_db_blocker: DjangoDbBlocker,
    agent: Agent,
    debian_image: DebianImage,
    world: Outside,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DebianVm]:
    driver = LibvirtDriver(settings.LIBVIRT_URI)
    keys = tmp_path_factory.mktemp("ssh-keys")
    with django_db_blocker.unblock():
        if "compute_host" not in connection.introspection.table_names():
            pytest.fail(
                "no test database: pytest-django makes it only for a session with a django_db test "
                "(this module's last two tests are; do not deselect both)"
            )
        host = wait_for(lambda: Host.objects.filter(name=agent.name).first(), f"agent {agent.name}", 30)
        assert host
        # Only the session's agent may take the VM: a host row an earlier test's agent left behind
        # (registered again after the last flush, its heartbeat still fresh) has no one behind it.
        Host.objects.exclude(name=agent.name).update(state=HostState.DISABLED)
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
        keypair, private = keypair_generate(actor=actor, tenant=tenant, name="laptop")
        private_key = keys / "laptop"
        private_key.touch(mode=0o600)
        private_key.write_text(private if private.endswith("\n") else private + "\n")
        hosts = list(world.subnet.hosts())
        FloatingPool.objects.create(
            name="ext",
            cidr=str(world.subnet),
            interface=world.bridge,
            range_start=str(hosts[99]),
            range_end=str(hosts[99]),
            gateway=world.address,
        )
        # Its own network (the pool's 55th /24), and a security group that lets SSH in.
        cidr = list(ipaddress.IPv4Network(settings.NUBIS_NETWORK_POOL).subnets(new_prefix=24))[54]
        network_create(actor=actor, tenant=tenant, name="lan", cidr=str(cidr))
        ssh_group = group_create(actor=actor, tenant=tenant, name="ssh")
        rule_create(actor=actor, group=ssh_group, protocol="tcp", cidr="0.0.0.0/0", port_min=22)
        # Through the API, as a tenant's script would; the floating address comes once it runs.
        api = APIClient()
        api.force_authenticate(user)
        base = f"/api/v1/tenants/{tenant.slug}"
        body = {
            "name": "deb-1",
            "flavor": "t.debian",
            "image": image.name,
            "key_pairs": ["laptop"],
            "user_data": USER_DATA,
            "network": "lan",
            "security_groups": ["ssh"],
        }
        answer = api.post(f"{base}/instances/", body, format="json")
        assert answer.status_code == 202, answer.content
        op = Operation.objects.for_tenant(tenant).get(uuid=answer.json()["id"])
        instance = Instance.objects.for_tenant(tenant).get(pk=op.instance_id)
        vm = DebianVm(
            instance,
            tenant,
            actor,
            user.username,
            keypair.public_key.strip(),
            private_key,
            driver,
            world,
            "",
        )
        try:
            op = wait_operation(op, 180)
            assert op.state == OperationState.SUCCEEDED, op.error
            # Associated with the running VM: DHCP gave it its default route at boot, so the
            # address answers at once (no lease renewal, no reboot).
            fip = api.post(f"{base}/floating-ips/", {}, format="json")
            assert fip.status_code == 201, fip.content
            done = api.post(
                f"{base}/floating-ips/{fip.json()['id']}/associate/",
                {"instance": str(instance.uuid)},
                format="json",
            )
            assert done.status_code == 200, done.content
            vm.address = fip.json()["address"]
            wait_for(lambda: _agent_ready(driver, instance.domain_name), "the guest agent", BOOT_TIMEOUT)
            wait_for(lambda: _cloud_init_done(driver, instance.domain_name), "cloud-init", BOOT_TIMEOUT)
            yield vm
        finally:
            instance.refresh_from_db()
            if instance.state != InstanceState.DELETED:
                delete = instance_delete(actor=actor, instance=instance)
                wait_operation(delete, 120)
            flush_retrying_deadlocks(lambda: call_command("flush", interactive=False, stdout=io.StringIO()))
            driver.close()


@pytest.fixture(autouse=True)
def _database(django_db_blocker: DjangoDbBlocker) -> Iterator[None]:
    """The module's rows are committed (see the module's docstring): reach them as the fixture does.

    While the browser is open (Playwright's event loop set in this thread), Django keeps its
    connections per context, so the tests then open another one: closed after each test, or it
    outlives the module and the test database cannot be dropped at the session's end."""
    with django_db_blocker.unblock():
        yield
        connections.close_all()


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


def test_ssh_with_the_key_pair_from_the_outside(vm: DebianVm, tmp_path: Path) -> None:
    """The acceptance line: from the lab's outside, ``ssh -i <key> debian@<floating>`` runs
    ``uname -a`` and ``hostname`` (the instance's name); another key is refused."""
    out = wait_for(
        lambda: (done := vm.ssh("uname -a; hostname")).returncode == 0 and done.stdout,
        "SSH at the floating address",
        60,
    )
    lines = str(out).splitlines()
    assert lines[0].startswith(f"Linux {vm.instance.name} "), lines
    assert "GNU/Linux" in lines[0], lines
    assert lines[1] == vm.instance.name
    # Another key (not one of the instance's): refused by the guest's sshd, so the path is open and
    # the key is what decides.
    other = tmp_path / "other"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "other", "-f", str(other))
    refused = vm.ssh("hostname", key=other)
    assert refused.returncode == 255, refused
    # ... and keys are all it offers: no password login over SSH, even with a password set for the
    # serial console (the image's ssh_pwauth: false).
    assert "Permission denied (publickey)." in refused.stderr, refused.stderr
    assert refused.stdout == ""


def test_ssh_only_while_a_security_group_allows_tcp_22(vm: DebianVm) -> None:
    """The acceptance line: with a security group that does not allow tcp/22 SSH fails (its packets
    are dropped: the connection times out); the group that allows it lets SSH in again."""
    web = group_create(actor=vm.actor, tenant=vm.tenant, name="web")
    rule_create(actor=vm.actor, group=web, protocol="tcp", cidr="0.0.0.0/0", port_min=80)
    try:
        instance_groups_set(actor=vm.actor, instance=vm.instance, groups=[web])
        # The host's agent applies it (a networks_sync task): the packets are dropped, so the
        # connection times out (not refused).
        wait_for(lambda: vm.ssh("true", connect_timeout=2).returncode == 255, "SSH shut out", 30)
        shut = vm.ssh("hostname", connect_timeout=3)
        assert shut.returncode == 255, shut
        assert "timed out" in shut.stderr, shut.stderr
        assert shut.stdout == ""
    finally:
        ssh_group = SecurityGroup.objects.for_tenant(vm.tenant).get(name="ssh")
        instance_groups_set(actor=vm.actor, instance=vm.instance, groups=[ssh_group])
    out = wait_for(
        lambda: (done := vm.ssh("hostname", connect_timeout=3)).returncode == 0 and done.stdout,
        "SSH let in again",
        30,
    )
    assert str(out).strip() == vm.instance.name


def _screen_pixels(data: bytes) -> tuple[int, int, int, bytes]:
    """A screenshot libvirt took (PNG, or PPM from an older QEMU): width, height, bytes per pixel
    and the pixels (the few PNG forms QEMU writes: 8-bit RGB or RGBA, not interlaced)."""
    if data.startswith(b"P6"):
        header = re.match(rb"P6\s+(\d+)\s+(\d+)\s+255\s", data)
        assert header, data[:20]
        return int(header.group(1)), int(header.group(2)), 3, data[header.end() :]
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), data[:20]
    pos, ihdr, idat = 8, b"", b""
    while pos < len(data):
        length, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        if kind == b"IHDR":
            ihdr = data[pos + 8 : pos + 8 + length]
        elif kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    width, height = int.from_bytes(ihdr[0:4], "big"), int.from_bytes(ihdr[4:8], "big")
    assert (ihdr[8], ihdr[12]) == (8, 0), ihdr  # 8 bits a sample, not interlaced
    assert ihdr[9] in (2, 6), ihdr  # RGB or RGBA
    bpp = 3 if ihdr[9] == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    out, prev = bytearray(), bytearray(stride)
    for y in range(height):
        kind_, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride) if kind_ else ():
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind_ == 1:
                predictor = a
            elif kind_ == 2:
                predictor = b
            elif kind_ == 3:
                predictor = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                predictor = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            line[i] = (line[i] + predictor) & 0xFF
        out += line
        prev = line
    return width, height, bpp, bytes(out)


def test_vnc_screen_is_not_blank(vm: DebianVm, tmp_path: Path) -> None:
    """The VNC screen (the guest's VGA console, tty1 with console=tty0) shows text: a screenshot
    through libvirt has more than one colour, and some lit pixels, but not mostly."""
    shot = tmp_path / "screen"
    sh("virsh", "-c", settings.LIBVIRT_URI, "screenshot", vm.instance.domain_name, str(shot))
    data = shot.read_bytes()
    width, height, bpp, pixels = _screen_pixels(data)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / ("debian-vnc.png" if data.startswith(b"\x89PNG") else "debian-vnc.ppm")).write_bytes(data)
    assert len(pixels) == width * height * bpp
    assert width >= 640, (width, height)
    assert height >= 400, (width, height)
    first = pixels[0:3]
    lit = sum(1 for i in range(0, len(pixels), bpp) if pixels[i : i + 3] != first)
    assert 0.001 < lit / (width * height) < 0.5, f"{lit} of {width * height} pixels differ from the first"


def _terminal_row(page: Page, text: str) -> Any:
    """The terminal's rows that hold exactly ``text`` (what the guest printed, not what was typed)."""
    return page.locator("#terminal .xterm-rows > div").filter(
        has_text=re.compile(rf"^\s*{re.escape(text)}\s*$")
    )


# True once noVNC's canvas holds a screen with some light pixels (text) on it.
VNC_TEXT_SHOWN = """() => {
  const canvas = document.querySelector("#screen canvas");
  if (!canvas || canvas.width < 100 || canvas.height < 100) return false;
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let lit = 0;
  for (let i = 0; i < pixels.length; i += 4) if (pixels[i] > 96 && pixels[i + 1] > 96) lit++;
  return lit > 100;
}"""


def test_a_member_logs_in_on_the_serial_console_in_the_browser(
    vm: DebianVm, browser: Browser, portal_url: str
) -> None:
    """The acceptance line: the browser test types into the serial console of the Debian VM (login,
    password, a command) and sees its output."""
    page = log_in(browser, portal_url, vm.username, PORTAL_PASSWORD)
    rows = page.locator("#terminal .xterm-rows")
    try:
        page.goto(f"/t/{vm.tenant.slug}/instances/{vm.instance.uuid}/console/")
        expect(page.locator("#terminal-status")).to_have_text("connected", timeout=30_000)
        page.locator("#terminal").click()  # focus: xterm.js takes keys from its hidden textarea
        page.keyboard.press("Enter")  # getty prints its prompt again
        expect(rows).to_contain_text(f"{vm.instance.name} login:", timeout=60_000)
        page.keyboard.type(vm.instance.image.login_user)
        page.keyboard.press("Enter")
        expect(rows).to_contain_text("Password:", timeout=60_000)
        page.keyboard.type(LOGIN_PASSWORD)
        page.keyboard.press("Enter")
        expect(rows).to_contain_text(f"debian@{vm.instance.name}:~$", timeout=90_000)
        page.keyboard.type("echo $((6*7)); hostname")
        page.keyboard.press("Enter")
        expect(_terminal_row(page, "42")).to_have_count(1, timeout=60_000)
        expect(_terminal_row(page, vm.instance.name)).to_have_count(1, timeout=30_000)
        # The VNC screen (noVNC, above the terminal) shows the guest's VGA console: its canvas has
        # text on it (light pixels), not only the black of an empty screen.
        expect(page.locator("#vnc-status")).to_have_text("connected", timeout=30_000)
        page.wait_for_function(VNC_TEXT_SHOWN, timeout=60_000)
        screenshot(page, "debian-serial-login")
        page.keyboard.type("exit")
        page.keyboard.press("Enter")
        expect(rows).to_contain_text(f"{vm.instance.name} login:", timeout=60_000)
    finally:
        page.context.close()


def test_a_volume_written_over_ssh_outlives_the_vm(
    vm: DebianVm, built_image: GuestImage, tmp_path: Path
) -> None:
    """The acceptance line, and the module's last test (it deletes the Debian VM): a 1 GiB volume
    hot plugged into the running VM gets a filesystem and a file over SSH, is detached, the VM is
    deleted (its seed, directory, domain and NAT go with it), and a tiny VM reads the file."""
    client = VolumeClient(vm.tenant)
    created = client.create(name="data", size_gib=1)
    done = client.op(created, "attach", instance=str(vm.instance.uuid))
    assert done.state == OperationState.SUCCEEDED, done.error
    device = client.get(created)["device"]
    assert device == "vdb", client.get(created)

    def disk_of_a_gib() -> str | None:
        out = vm.ssh_ok("lsblk -dnb -o NAME,SIZE,TYPE")
        found = [line.split()[0] for line in out.splitlines() if line.split()[1:] == [str(GIB), "disk"]]
        return found[0] if found else None

    assert wait_for(disk_of_a_gib, "the guest to see the volume", 60) == device
    script = (
        f"sudo mkfs.ext4 -q -L nubis-data /dev/{device} && sudo mount /dev/{device} /mnt && "
        f"echo {VOLUME_MARK} | sudo tee /mnt/mark.txt && sudo umount /mnt && sync"
    )
    assert vm.ssh_ok(script, timeout=300).strip() == VOLUME_MARK
    done = client.op(created, "detach")
    assert done.state == OperationState.SUCCEEDED, done.error
    assert client.get(created)["state"] == VolumeState.AVAILABLE
    wait_for(lambda: disk_of_a_gib() is None, "the guest to let the volume go", 60)

    # The Debian VM goes: its seed and directory, its domain, its floating address's NAT.
    directory = instance_dir_of(vm.instance)
    assert (directory / SEED_NAME).exists()
    op = wait_operation(instance_delete(actor=vm.actor, instance=vm.instance), 120)
    assert op.state == OperationState.SUCCEEDED, op.error
    assert not directory.exists()
    assert vm.instance.domain_name not in domains()
    assert f"{vm.address}/32" not in sh("ip", "-4", "addr", "show", "dev", vm.world.bridge).stdout
    assert f"-{chain_owner()}-{vm.instance.port_name}" not in sh("iptables", "-w", "-t", "nat", "-S").stdout
    assert client.get(created)["state"] == VolumeState.AVAILABLE

    # A tiny VM (a shell on a TCP port, on the host's NAT network) mounts it and finds the file.
    shell_image = shell_image_of(image_register(built_image))
    Flavor.objects.create(
        name="t.virtio",
        vcpus=1,
        ram_mib=192,
        disk_gib=1,
        cpu_mode=CpuMode.EMULATED,
        io_model=IoModel.VIRTIO,
    )
    op = instance_create(
        actor=vm.actor,
        tenant=vm.tenant,
        name="reader",
        flavor="t.virtio",
        image=shell_image.name,
        network=None,
    )
    reader = Instance.objects.for_tenant(vm.tenant).get(pk=op.instance_id)
    try:
        assert wait_operation(op).state == OperationState.SUCCEEDED, op.error
        ip = guest_ip(reader)
        done = client.op(created, "attach", instance=str(reader.uuid))
        assert done.state == OperationState.SUCCEEDED, done.error
        wait_for(lambda: "vdb" in guest_blocks(ip), "the tiny VM to see the volume", 60)
        out = guest_sh(ip, "mkdir -p /v && mount -o ro -t ext4 /dev/vdb /v && cat /v/mark.txt; umount /v")
        assert VOLUME_MARK in out, out
    finally:
        reader.refresh_from_db()
        if reader.state != InstanceState.DELETED:
            wait_operation(instance_delete(actor=vm.actor, instance=reader), 120)
        deleted = client.client.delete(client.url(f"{created['id']}/"))  # detached with its VM
    assert reader.domain_name not in domains()
    assert deleted.status_code == 204, deleted.content
    assert not volume_file(created).exists()


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
