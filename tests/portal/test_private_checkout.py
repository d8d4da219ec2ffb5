"""A checkout in a directory other users cannot enter still runs VMs and containers.

QEMU runs as libvirt-qemu and a container's root is a mapped uid: neither can enter /root (mode
0700), nor a ``mktemp -d``. This copies the project into such a directory and runs its own
manage.py there with the default data directory (its ``var/``), as the quick start does from a
clone in /root: the product decides where the stores go, its compute agent runs from there, and
a VM and a container made through the services must both reach running.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from compute.guest.builder import GuestImage
from compute.models import Host, HostState, Image, Instance, InstanceState, OperationState
from compute.services.instances import instance_create, instance_delete
from portal import stores
from security.audit import Actor
from tenants.models import Role
from tests.compute.conftest import containers, domains, wait_for, wait_operation
from tests.conftest import ROOT, subprocess_env
from tests.factories import add_member, make_tenant

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# The stores' variables are left unset: the clone decides them itself.
STORE_VARIABLES = ("NUBIS_DATA_DIR", "NUBIS_IMAGE_DIR", "NUBIS_INSTANCE_DIR", "NUBIS_ROOTFS_DIR")


def copy_checkout(dest: Path) -> None:
    """The project as it is now (committed or not), without what git ignores (var/, .venv/)."""
    listing = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listing.decode().split("\0")):
        source = ROOT / name
        if not source.is_file():
            continue  # deleted in the working tree
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


class Clone:
    """A copy of the project in a private directory, run with the test's database and Redis."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = subprocess_env(PYTHONPATH=str(root))
        for name in STORE_VARIABLES:
            self.env.pop(name, None)

    def manage(self, *args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, f"manage.py {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def settings(self) -> dict[str, str]:
        code = (
            "import json, portal; from django.conf import settings as s; print(json.dumps({"
            "'package': portal.__file__, 'data': str(s.DATA_DIR), 'images': str(s.NUBIS_IMAGE_DIR), "
            "'instances': str(s.NUBIS_INSTANCE_DIR), 'rootfs': str(s.NUBIS_ROOTFS_DIR)}))"
        )
        return dict(json.loads(self.manage("shell", "-c", code).strip().splitlines()[-1]))


@pytest.fixture
def clone() -> Iterator[Clone]:
    private = Path(tempfile.mkdtemp(prefix="nubis-private-"))  # mode 0700, like /root
    system_existed = stores.SYSTEM_STORES.exists()
    home = stores.system_home(private / "nubis" / "var")
    try:
        copy_checkout(private / "nubis")
        yield Clone(private / "nubis")
    finally:
        shutil.rmtree(private, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
        if not system_existed and stores.SYSTEM_STORES.exists() and not any(stores.SYSTEM_STORES.iterdir()):
            stores.SYSTEM_STORES.rmdir()


def seed_images(image_dir: Path) -> None:
    """Put the cached guest and busybox builds where the clone keeps its images, as a first
    `manage.py build_guest_image` there would have (without downloading the kernel again)."""
    from compute.guest.builder import build_guest_image

    cached = build_guest_image(Path(settings.NUBIS_IMAGE_DIR), log=lambda _: None)
    target = image_dir / cached.name
    # Plain copies: copy2 would carry libvirt's trusted.libvirt.security.* attributes, and a
    # VM of this run booting from the cached kernel meanwhile makes the copy look in use by it.
    shutil.copytree(cached.directory, target, copy_function=shutil.copy)
    manifest = json.loads((target / "manifest.json").read_text())
    for key in ("directory", "kernel", "initrd", "disk"):
        manifest[key] = manifest[key].replace(str(cached.directory), str(target))
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    assert GuestImage.load(target) is not None
    shutil.copytree(
        Path(settings.NUBIS_IMAGE_DIR) / "busybox-rootfs",
        image_dir / "busybox-rootfs",
        copy_function=shutil.copy,
    )


def test_vm_and_container_run_from_a_checkout_in_a_private_directory(
    clone: Clone, rootfs_image: Image, flavors, cflavors, no_leftovers
) -> None:
    assert stat.S_IMODE(clone.root.parent.stat().st_mode) == 0o700
    where = clone.settings()
    assert where["package"].startswith(str(clone.root)), where  # the clone's own code decides
    assert where["data"] == str(clone.root / "var")
    images, instances = Path(where["images"]), Path(where["instances"])
    seed_images(images)
    clone.manage("build_guest_image")
    clone.manage("build_container_image")
    guest, box_image = Image.objects.get(name="nubis-tiny"), Image.objects.get(name="busybox")
    assert Path(guest.disk_path).parent.parent == images
    assert Path(box_image.disk_path).parent.parent == images

    tenant = make_tenant(f"private-{uuid.uuid4().hex[:6]}")
    user = add_member(tenant, role=Role.MEMBER)
    actor = Actor(user.username, "api", user.pk)
    name = f"private-{uuid.uuid4().hex[:6]}"
    log = clone.root.parent / "agent.log"
    agent_env = {**clone.env, "NUBIS_HOST_HEARTBEAT_SECONDS": "1", "NUBIS_RECONCILE_SECONDS": "2"}
    with log.open("ab") as out:
        agent = subprocess.Popen(
            [sys.executable, "manage.py", "compute_agent", "--name", name, "--kvm-probe", "never"],
            cwd=clone.root,
            env=agent_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    made: list[Instance] = []
    try:
        wait_for(lambda: "ready." in log.read_text(errors="replace"), "the clone's agent to start", 90)
        # Everything goes to the clone's host (the session's agent may be up too).
        Host.objects.exclude(name=name).update(state=HostState.DISABLED)
        ops = [
            instance_create(
                actor=actor, tenant=tenant, name="vm", flavor="t.virtio", image="nubis-tiny", network=None
            ),
            instance_create(
                actor=actor,
                tenant=tenant,
                name="box",
                flavor="c.small",
                image="busybox",
                kind="container",
                network=None,
            ),
        ]
        made += [Instance.objects.for_tenant(tenant).get(pk=op.instance_id) for op in ops]
        outcomes = []
        for op in ops:
            done = wait_operation(op, timeout=180)
            instance = Instance.objects.for_tenant(tenant).get(pk=op.instance_id)
            host_name = instance.host.name if instance.host else None
            outcomes.append((instance.kind, done.state, instance.state, host_name, instance.fault))
        assert [o[:4] for o in outcomes] == [
            ("vm", OperationState.SUCCEEDED, InstanceState.RUNNING, name),
            ("container", OperationState.SUCCEEDED, InstanceState.RUNNING, name),
        ], outcomes
        vm, box = made
        serial = instances / str(vm.uuid) / "serial.log"
        wait_for(
            lambda: serial.exists() and "NUBIS-READY" in serial.read_text(errors="replace"),
            "the VM to boot from its disk",
            120,
        )
        assert box.domain_name in containers()

        # The stores guests read are out of the private directory; var/ records where they went.
        for path in (images, instances, Path(where["rootfs"])):
            assert not path.is_relative_to(clone.root.parent), path
            assert stores.unreachable(path, stores.guest_users()) is None, path
        assert (clone.root / "var" / "images").resolve() == images
        assert (clone.root / "var" / "instances").resolve() == instances
        assert "stores: ok" in clone.manage("preflight", "--only", "stores")

        for instance in made:
            assert (
                wait_operation(instance_delete(actor=actor, instance=instance)).state
                == OperationState.SUCCEEDED
            )
            assert not (instances / str(instance.uuid)).exists()
        assert vm.domain_name not in domains()
        assert box.domain_name not in containers()
    finally:
        for instance in made:
            instance.refresh_from_db()
            if instance.state not in (InstanceState.DELETED, InstanceState.DELETING):
                # Cleaning up after a failure: no_leftovers reports what stays.
                with contextlib.suppress(Exception):
                    wait_operation(instance_delete(actor=actor, instance=instance), timeout=60)
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        Host.objects.exclude(name=name).update(state=HostState.ENABLED)


def test_preflight_names_a_data_dir_guests_cannot_reach() -> None:
    """A data directory chosen by NUBIS_DATA_DIR is not moved: the stores check refuses it in one
    line that names the directory in the way and the fix."""
    private = Path(tempfile.mkdtemp(prefix="nubis-private-"))  # mode 0700
    try:
        env = {k: v for k, v in subprocess_env().items() if k not in STORE_VARIABLES}
        env["NUBIS_DATA_DIR"] = str(private / "var")
        proc = subprocess.run(
            [sys.executable, "manage.py", "preflight", "--only", "stores"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 1, proc.stdout + proc.stderr
        (line,) = proc.stdout.splitlines()
        assert line.startswith(f"stores: FAIL (NUBIS_IMAGE_DIR {private}/var/images cannot be reached by "), (
            line
        )
        assert f"{private} is mode 0700 (root:root); run chmod o+x {private}, or set NUBIS_IMAGE_DIR" in line
        assert "NUBIS_IMAGE_DIR: stores unreachable" in proc.stderr
        assert not stores.system_home(private / "var").exists()
    finally:
        shutil.rmtree(private, ignore_errors=True)
