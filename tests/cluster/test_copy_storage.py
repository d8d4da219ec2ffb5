"""Live migration without a shared store: a lab of two hosts, each with an instance store of its
own (``lab up --private-store``: a directory of the host's mounted at NUBIS_INSTANCE_DIR, as a
host's local disk), so a move copies the VM's disk along (libvirt's copy-storage). The copy is
checked from the guest itself: after the move it boots again from the target's disk and counts
the boot it made on the source."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db.models import ProtectedError
from pytest_django import DjangoDbBlocker

from compute.models import Host, Image, Instance, InstanceState, OperationState
from compute.services.instances import instance_action, instance_create
from compute.services.migration import instance_migrate
from security.audit import Actor
from tests.cluster.conftest import LabControl, Placement, lab_env, new_lab, wait_registered
from tests.compute_fixtures import wait_for, wait_operation
from tests.factories import add_member, make_tenant

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def private_lab(
    django_db_setup: None,
    django_db_blocker: DjangoDbBlocker,
    tmp_path_factory: pytest.TempPathFactory,
    transactional_db: None,
) -> Iterator[LabControl]:
    control = new_lab(tmp_path_factory.mktemp("private-lab"), lab_env(django_db_blocker))
    try:
        control.up(2, "--private-store")
        wait_registered([h.name for h in control.hosts])
        yield control
    finally:
        control.command("down", check=False)
        with contextlib.suppress(ProtectedError):
            Instance.objects.unscoped().filter(host__name__startswith=control.prefix).delete()
            Host.objects.filter(name__startswith=control.prefix).delete()


def store_of(lab: LabControl, host: str) -> Path:
    """The host's own instance store, seen from this machine (its directory in the lab)."""
    return lab.directory / "hosts" / host / "store"


def log_on(lab: LabControl, host: str, instance: Instance) -> str:
    path = store_of(lab, host) / str(instance.uuid) / "serial.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_a_vm_moves_live_with_its_disk_copied_when_the_store_is_not_shared(
    private_lab: LabControl, placement: Placement, image: Image, flavors: Any, settings: Any
) -> None:
    settings.NUBIS_SHARED_INSTANCE_STORE = False
    h1, h2 = (h.name for h in private_lab.hosts)
    tenant = make_tenant("copy")
    user = add_member(tenant)
    actor = Actor(user.username, "api", user.pk)
    placement.only(h1)
    op = instance_create(
        actor=actor, tenant=tenant, name="local", flavor="t.virtio", image=image.name, network=None
    )
    assert wait_operation(op).state == OperationState.SUCCEEDED
    vm = Instance.objects.for_tenant(tenant).get(pk=op.instance_id)
    wait_for(lambda: "boots=1" in log_on(private_lab, h1, vm), "the first boot on the source", 120)
    # Its disk is on the source's own store only.
    assert (store_of(private_lab, h1) / str(vm.uuid) / "disk.qcow2").exists()
    assert not (store_of(private_lab, h2) / str(vm.uuid)).exists()

    placement.only(h1, h2)
    moved = wait_operation(instance_migrate(actor=Actor("ops", "api", None), instance=vm, target=h2), 180)
    assert moved.state == OperationState.SUCCEEDED, moved.error
    vm.refresh_from_db()
    assert vm.host is not None
    assert (vm.host.name, vm.state) == (h2, InstanceState.RUNNING)
    # The disk came along (more was sent than the guest's memory alone), and the source's copy went.
    assert (store_of(private_lab, h2) / str(vm.uuid) / "disk.qcow2").exists()
    assert not (store_of(private_lab, h1) / str(vm.uuid)).exists()
    assert moved.result["data_bytes"] > 0
    time.sleep(2)
    assert "NUBIS-BOOT" not in log_on(private_lab, h2, vm)  # no reboot in the move

    # The copy holds what the guest wrote on the source: its next boot, on the target, is its second.
    reboot = wait_operation(instance_action(actor=actor, instance=vm, kind="reboot"))
    assert reboot.state == OperationState.SUCCEEDED, reboot.error
    wait_for(lambda: "boots=2" in log_on(private_lab, h2, vm), "the second boot, on the target", 120)
