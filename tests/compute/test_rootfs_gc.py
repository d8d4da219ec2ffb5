"""Unpacked container root filesystems are collected once no container uses them, and only then.

The session's compute agent runs the reconciler every 2 s and keeps an unused tree for
ROOTFS_GRACE (3) seconds (tests/compute_fixtures.py); every tree here is a real one, unpacked by
the agent for a real runc container.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from functools import partial
from pathlib import Path

import pytest
from django.db import connection
from django.test import override_settings

from compute.models import Host, Image, Instance, InstanceState, OperationState
from compute.services.containers import (
    prepared_rootfs,
    rootfs_collect,
    rootfs_home,
    rootfs_name,
    uid_base_for,
)
from compute.services.instances import instance_action, instance_create, instance_delete
from security.audit import Actor
from tenants.models import Role, Tenant
from tests.compute.conftest import Agent, wait_for, wait_operation
from tests.compute_fixtures import ROOTFS_GRACE
from tests.factories import add_member, make_tenant

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

GRACE = float(ROOTFS_GRACE)


def tree_of(instance: Instance) -> Path:
    return rootfs_home() / rootfs_name(instance.image.sha256, uid_base_for(instance.tenant_id))


def stray_entries(home: Path) -> list[str]:
    """Partial unpacks and half-deleted trees (hidden names) left in a home."""
    return sorted(p.name for p in home.iterdir() if p.name.startswith(".") and p.name != ".lock")


def gone(path: Path) -> bool:
    return not path.exists()


def running(actor: Actor, tenant: Tenant, name: str) -> Instance:
    op = instance_create(
        actor=actor,
        tenant=tenant,
        name=name,
        flavor="c.small",
        image="busybox",
        kind="container",
        network=None,
    )
    op = wait_operation(op, timeout=60)
    instance = Instance.objects.for_tenant(tenant).get(pk=op.instance_id)
    assert op.state == OperationState.SUCCEEDED, (op.error, instance.fault)
    assert instance.state == InstanceState.RUNNING
    return instance


def act(actor: Actor, instance: Instance, kind: str) -> None:
    op = wait_operation(instance_action(actor=actor, instance=instance, kind=kind), timeout=60)
    assert op.state == OperationState.SUCCEEDED, op.error


def deleted(actor: Actor, instance: Instance) -> None:
    op = wait_operation(instance_delete(actor=actor, instance=instance), timeout=60)
    assert op.state == OperationState.SUCCEEDED, op.error


@pytest.fixture
def actor_tenant() -> tuple[Actor, Tenant]:
    tenant = make_tenant(f"gc-{uuid.uuid4().hex[:6]}")
    user = add_member(tenant, role=Role.MEMBER)
    return Actor(user.username, "api", user.pk), tenant


def test_unused_tree_is_collected_after_the_grace_and_used_or_foreign_ones_are_kept(
    agent: Agent, host: Host, rootfs_image: Image, cflavors, actor_tenant, no_leftovers
) -> None:
    actor, tenant = actor_tenant
    box = running(actor, tenant, "gc-box")
    tree = tree_of(box)
    assert tree.is_dir()
    assert tree.stat().st_uid == uid_base_for(tenant.pk)  # the tree the agent unpacked for it

    # Another deployment on this machine (its own domain prefix and database) sharing
    # NUBIS_ROOTFS_DIR, whose tenant has the same id: its tree has the very same name.
    foreign_prefix = f"{host.name}-other-"
    with override_settings(NUBIS_DOMAIN_PREFIX=foreign_prefix):
        foreign = prepared_rootfs(box)
        foreign_home = rootfs_home()
    try:
        assert foreign.name == tree.name
        assert foreign != tree

        # A stopped container keeps its tree, well past the grace: its next start needs it.
        act(actor, box, "stop")
        time.sleep(GRACE + 2 * 2 + 1)  # the grace and two reconciler passes
        assert tree.is_dir()
        act(actor, box, "start")
        assert Instance.objects.for_tenant(tenant).get(pk=box.pk).state == InstanceState.RUNNING

        deleted(actor, box)
        gone_since = time.monotonic()
        assert tree.is_dir(), "removed at once, without a grace"
        wait_for(lambda: not tree.exists(), "the reconciler to remove the unused tree", timeout=30)
        waited = time.monotonic() - gone_since
        # The first pass that sees it unused starts the grace; the operation's end was seen
        # within a poll (0.25 s) of the row's change.
        assert waited >= GRACE - 0.5, f"removed {waited:.1f} s after its container, before the grace"
        wait_for(lambda: f"rootfs:{tree.name}" in agent.text(), "the reconciler to report it", timeout=10)
        assert stray_entries(rootfs_home()) == []

        # The other deployment's tree of the same name is still whole, passes later.
        time.sleep(2 * 2 + 1)
        assert (foreign / "sbin" / "nubis-init").exists()
    finally:
        shutil.rmtree(foreign_home, ignore_errors=True)


def test_creates_racing_the_collector_never_fail(
    host: Host, rootfs_image: Image, cflavors, actor_tenant, no_leftovers
) -> None:
    """A collector with no grace, in a tight loop, removes the tree as soon as each container is
    gone; every next create unpacks it again while the collector runs, and none fails."""
    actor, tenant = actor_tenant
    stop = threading.Event()
    removed: list[str] = []
    errors: list[BaseException] = []

    def collector() -> None:
        try:
            while not stop.is_set():
                removed.extend(rootfs_collect(host.name, grace=0))
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=collector, daemon=True)
    thread.start()
    try:
        for n in range(4):
            box = running(actor, tenant, f"race-{n}")
            assert tree_of(box).is_dir()
            deleted(actor, box)
            wait_for(partial(gone, tree_of(box)), "the collector to remove the tree", timeout=10)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert errors == []
    assert removed.count(tree_of(box).name) >= 3
    assert stray_entries(rootfs_home()) == []
