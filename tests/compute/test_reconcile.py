"""The reconciler, the libvirt event listener, and recovery from an agent killed mid-create."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from compute.models import Host, HostState, Instance, InstanceState, OperationState, Volume, VolumeState
from compute.services.instances import instance_create, instance_delete
from compute.services.reconcile import reconcile_host
from compute.services.usage import real_usage
from compute.tasks import local_driver
from security.audit import Actor
from security.models import AuditRecord
from tenants.models import Role
from tenants.services.quotas import quota_drift, usage_of
from tests.compute.conftest import (
    domains,
    instance_dir_of,
    libvirt_conn,
    start_agent,
    wait_for,
    wait_marker,
    wait_operation,
)
from tests.factories import add_member, make_tenant

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def ctx():
    tenant = make_tenant("acme")
    user = add_member(tenant, role=Role.MEMBER)
    return tenant, Actor(user.username, "api", user.pk)


def stray_domain(name: str, directory: Path) -> None:
    """A domain nobody asked Nubis for, named like one of ours."""
    directory.mkdir(parents=True, exist_ok=True)
    xml = (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
    )
    conn = libvirt_conn()
    try:
        conn.defineXML(xml)
    finally:
        conn.close()


def test_orphans_are_reported_then_removed_after_the_grace_period(host: Host, settings) -> None:
    orphan_uuid = str(uuid.uuid4())
    name = f"{settings.NUBIS_DOMAIN_PREFIX}{orphan_uuid}"
    stray_domain(name, Path(settings.NUBIS_INSTANCE_DIR) / orphan_uuid)
    stray_disk = Path(settings.NUBIS_INSTANCE_DIR) / str(uuid.uuid4())
    stray_disk.mkdir()
    (stray_disk / "disk.qcow2").write_bytes(b"x")
    settings.NUBIS_ORPHAN_GRACE = 3600
    first = reconcile_host(host, local_driver())
    assert f"domain:{name}" in first.orphans_seen
    assert f"disk:{stray_disk.name}" in first.orphans_seen
    assert name in domains()
    assert stray_disk.exists()
    assert AuditRecord.objects.filter(action="host.orphan", target_id=name).count() == 1
    settings.NUBIS_ORPHAN_GRACE = 0
    second = reconcile_host(host, local_driver())
    assert f"domain:{name}" in second.orphans_removed
    assert f"disk:{stray_disk.name}" in second.orphans_removed
    assert name not in domains()
    assert not stray_disk.exists()


def test_volume_files_no_volume_owns_are_removed_after_the_grace_period(host: Host, ctx, settings) -> None:
    """A crash between a volume's file work and its record leaves files: a deleted volume's, one
    never recorded, and a half-made one whose volume is no longer being created. The files of live
    volumes, a volume still being made, and files not named like volumes stay."""
    tenant, _ = ctx
    directory = Path(settings.NUBIS_INSTANCE_DIR) / "volumes"
    directory.mkdir(exist_ok=True)

    def volume(state: str) -> Volume:
        return Volume.objects.create(tenant=tenant, name=f"v-{state}", size_gib=1, state=state)

    live, making, deleted = (
        volume(VolumeState.AVAILABLE),
        volume(VolumeState.CREATING),
        volume(VolumeState.DELETED),
    )
    kept = [f"{live.uuid}.qcow2", f"{making.uuid}.partial", f"{making.uuid}.qcow2", "README"]
    orphans = [f"{deleted.uuid}.qcow2", f"{uuid.uuid4()}.qcow2", f"{live.uuid}.partial"]
    for name in kept + orphans:
        (directory / name).write_bytes(b"x")
    try:
        settings.NUBIS_ORPHAN_GRACE = 3600
        reconcile_host(host, local_driver())
        # Reported (by this pass, or by the session agent's own if it came first), none removed.
        # (Only this test's files count: another test's leftover would be reported too.)
        reported = AuditRecord.objects.filter(action="host.orphan", target_type="volume")
        assert set(reported.values_list("target_id", flat=True)) & set(kept + orphans) == set(orphans)
        assert all((directory / name).exists() for name in kept + orphans)
        settings.NUBIS_ORPHAN_GRACE = 0
        second = reconcile_host(host, local_driver())
        assert set(second.orphans_removed) & {f"volume:{n}" for n in kept + orphans} == {
            f"volume:{n}" for n in orphans
        }
        assert [name for name in kept + orphans if (directory / name).exists()] == kept
    finally:
        for name in kept + orphans:
            (directory / name).unlink(missing_ok=True)


def test_probe_guests_left_by_a_dead_agent_are_removed(host: Host) -> None:
    from compute.drivers.libvirt import PROBE_PREFIX

    stale = f"{PROBE_PREFIX}{int(time.time()) - 3600}-abcdef"
    fresh = f"{PROBE_PREFIX}{int(time.time())}-abcdef"
    directory = Path(settings.NUBIS_INSTANCE_DIR) / stale
    for name in (stale, fresh):
        stray_domain(name, Path(settings.NUBIS_INSTANCE_DIR) / name)
    os.utime(directory, (time.time() - 3600, time.time() - 3600))
    try:
        report = reconcile_host(host, local_driver())
        assert f"probe:{stale}" in report.orphans_removed
        assert f"probe-disk:{stale}" in report.orphans_removed
        assert stale not in local_driver().list_guests(PROBE_PREFIX)
        assert fresh in local_driver().list_guests(PROBE_PREFIX)  # may still be probing
        assert not directory.exists()
    finally:
        local_driver().undefine(fresh)
        local_driver().remove_files(str(Path(settings.NUBIS_INSTANCE_DIR) / fresh))


def test_stuck_instance_without_a_domain_goes_to_error_and_frees_its_quota(ctx, host, image, flavors) -> None:
    tenant, actor = ctx
    Host.objects.filter(pk=host.pk).update(state=HostState.DISABLED)  # keep the agent from building it
    other = Host.objects.create(
        name=f"idle-{uuid.uuid4().hex[:6]}",
        uri="qemu:///system",
        cpus=8,
        ram_mib=8192,
        disk_gib=100,
        heartbeat_at=timezone.now(),
    )
    try:
        op = instance_create(actor=actor, tenant=tenant, name="stuck", flavor="t.virtio", image=image.name)
        instance = Instance.objects.for_tenant(tenant).get(pk=op.instance_id)
        assert instance.host == other
        Instance.objects.for_tenant(tenant).filter(pk=instance.pk).update(
            state=InstanceState.BUILDING, state_deadline=timezone.now() - timedelta(seconds=1)
        )
        report = reconcile_host(other, local_driver())
        assert report.failed == ["stuck"]
        instance.refresh_from_db()
        assert instance.state == InstanceState.ERROR
        assert "stuck in building past its deadline" in instance.fault
        assert usage_of(tenant)["instances"] == 0
    finally:
        Host.objects.filter(pk=host.pk).update(state=HostState.ENABLED)


def test_guest_powering_off_by_itself_is_noticed(ctx, host, image, flavors, no_leftovers) -> None:
    tenant, actor = ctx
    op = wait_operation(
        instance_create(actor=actor, tenant=tenant, name="ev", flavor="t.virtio", image=image.name)
    )
    instance = Instance.objects.for_tenant(tenant).get(pk=op.instance_id)
    wait_marker(instance, "NUBIS-READY")
    subprocess.run(
        ["virsh", "-c", settings.LIBVIRT_URI, "destroy", instance.domain_name],
        check=True,
        capture_output=True,
    )
    wait_for(
        lambda: Instance.objects.for_tenant(tenant).get(pk=instance.pk).state == InstanceState.STOPPED,
        "the agent to notice the domain stopped",
        timeout=20,
    )
    assert wait_operation(instance_delete(actor=actor, instance=instance)).state == OperationState.SUCCEEDED


@pytest.mark.parametrize("step", ["claim", "disk", "define", "start"])
def test_agent_killed_mid_create_recovers(
    ctx, agent, host, image, flavors, tmp_path, step, no_leftovers
) -> None:
    tenant, actor = ctx
    Host.objects.filter(pk=host.pk).update(state=HostState.DISABLED)  # everything goes to the crash host
    name = f"crash-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "agent.log"
    proc = start_agent(name, log, NUBIS_FAULT_CRASH_AFTER=step)
    try:
        wait_for(lambda: "ready." in log.read_text(errors="replace"), "the crash agent to start", timeout=60)
        op = instance_create(actor=actor, tenant=tenant, name="victim", flavor="t.virtio", image=image.name)
        instance = Instance.objects.for_tenant(tenant).get(pk=op.instance_id)
        assert instance.host is not None
        assert instance.host.name == name
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, log.read_text()[-2000:]
        # A new agent for the same host, without the fault: it resumes the create and reconciles.
        proc = start_agent(name, log)
        op = wait_operation(op)
        instance.refresh_from_db()
        assert instance.state == InstanceState.RUNNING, (instance.state, instance.fault, op.error)
        wait_marker(instance, "NUBIS-READY")
        # Exactly one domain and one disk directory for it, and quota equal to what exists.
        assert sorted(d for d in domains() if d == instance.domain_name) == [instance.domain_name]
        assert instance_dir_of(instance).exists()
        assert usage_of(tenant) == {**usage_of(tenant), **real_usage(tenant)}
        assert quota_drift(tenant) == []
        assert (
            wait_operation(instance_delete(actor=actor, instance=instance)).state == OperationState.SUCCEEDED
        )
        assert instance.domain_name not in domains()
        assert not instance_dir_of(instance).exists()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        Host.objects.filter(pk=host.pk).update(state=HostState.ENABLED)
