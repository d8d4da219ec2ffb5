"""Every API list: cursor pages, orderings, filters, and SQL queries per page that do not grow with it.

The table CASES names every list endpoint; test_every_list_endpoint_is_covered reads the OpenAPI
schema and fails on a GET that answers a bare array (a list without pagination) or a paginated
list missing from the table.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from html import unescape
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.db.models import Q, QuerySet
from django.test.utils import CaptureQueriesContext
from django.urls import resolve
from django.utils import timezone
from rest_framework.test import APIClient

from compute.api.views import admin as api_admin
from compute.api.views import catalog, groups, images, instances, networks, operations, snapshots
from compute.api.views import drs as drs_api
from compute.api.views import floating as floating_api
from compute.api.views import keypairs as keypairs_api
from compute.api.views import volumes as volumes_api
from compute.models import (
    CpuMode,
    Flavor,
    FloatingIP,
    FloatingPool,
    GroupPolicy,
    Host,
    HostState,
    Image,
    ImageKind,
    Instance,
    InstanceKind,
    InstanceState,
    IoModel,
    KeyPair,
    Network,
    Operation,
    OperationKind,
    OperationState,
    SecurityGroup,
    SecurityRule,
    ServerGroup,
    Snapshot,
    Volume,
    VolumeSnapshot,
    VolumeState,
)
from compute.selectors import flavors_for, images_for, networks_for
from core.pagination import MAX_PAGE_SIZE, PAGE_SIZE, ListSpec
from scheduler.models import (
    DrsPass,
    DrsPassKind,
    DrsPlacement,
    DrsRecommendation,
    PlacementState,
    QueueEntry,
    QueueState,
    RecommendationState,
)
from security.audit import Actor, audit_log
from security.models import AuditRecord, Outcome
from tenants.api import views as tenant_api
from tenants.models import ApiToken, Membership, Role, Tenant
from tests.factories import add_member, make_tenant, make_user

_seq = itertools.count(1)
BIG = 120  # rows for the query counts (at least 100, so page_size=100 is a full page)
SMALL = 23  # rows for the walks (pages of 4: five full pages and a short one)

# ---- the world ------------------------------------------------------------------------------


@dataclass
class World:
    tenant: Tenant
    owner: User
    staff: User
    flavor: Flavor
    image: Image
    instance: Instance  # snapshots and most operations hang off it
    other: Instance
    network: Network
    group: ServerGroup
    sgroups: list[SecurityGroup]

    def client(self, staff: bool = False) -> APIClient:
        client = APIClient()
        client.force_login(self.staff if staff else self.owner)
        return client


def build_world() -> World:
    n = next(_seq)
    tenant = make_tenant(f"lists-{n}")
    owner = add_member(tenant, role=Role.OWNER)
    staff = make_user(is_staff=True)
    flavor = Flavor.objects.create(
        name=f"lq-{n}", vcpus=1, ram_mib=64, disk_gib=1, public=False, tenant=tenant
    )
    image = Image.objects.create(
        name=f"lq-{n}", kind=ImageKind.KERNEL, os_name="t", sha256="0" * 64, public=False, tenant=tenant
    )
    network = Network.objects.create(tenant=tenant, name="net", cidr="10.99.0.0/24", gateway="10.99.0.1")
    group = ServerGroup.objects.create(tenant=tenant, name="grp", policy=GroupPolicy.SOFT_AFFINITY)
    sgroups = [SecurityGroup.objects.create(tenant=tenant, name=f"sg{i}") for i in range(2)]
    instance, other = (
        Instance.objects.create(
            tenant=tenant, name=name, flavor=flavor, image=image, state=InstanceState.RUNNING
        )
        for name in ("base", "other")
    )
    return World(tenant, owner, staff, flavor, image, instance, other, network, group, sgroups)


def _when(i: int) -> Any:
    """Timestamps with ties (every 7th row shares one), so the primary key must break them."""
    return timezone.now() - timedelta(minutes=10) + timedelta(seconds=i % 7)


def make_instances(w: World, n: int, tag: str, states: tuple[str, ...] = ()) -> list[Instance]:
    """Instances on a network, in a server group, with security groups; the queued ones wait in the queue."""
    states = states or (
        InstanceState.RUNNING,
        InstanceState.STOPPED,
        InstanceState.QUEUED,
        InstanceState.ERROR,
    )
    made = Instance.objects.unscoped().bulk_create(
        Instance(
            tenant=w.tenant,
            name=f"{tag}-{i:03d}",
            flavor=w.flavor,
            image=w.image,
            state=states[i % len(states)],
            kind=InstanceKind.VM if i % 2 else InstanceKind.CONTAINER,
            network=w.network if i % 2 else None,
            server_group=w.group if i % 3 == 0 else None,
            created=_when(i),
        )
        for i in range(n)
    )
    through = Instance.security_groups.through
    through.objects.bulk_create(
        through(instance_id=inst.pk, securitygroup_id=g.pk) for inst in made for g in w.sgroups[: inst.pk % 3]
    )
    QueueEntry.objects.unscoped().bulk_create(
        QueueEntry(
            tenant=w.tenant,
            instance=inst,
            priority=2,
            vcpus=1,
            ram_mib=64,
            disk_gib=1,
            state=QueueState.WAITING,
            enqueued_at=_when(i),
        )
        for i, inst in enumerate(made)
        if inst.state == InstanceState.QUEUED
    )
    return made


def make_some_instances(w: World, n: int, tag: str) -> None:
    make_instances(w, n, tag)


def make_queued(w: World, n: int, tag: str) -> None:
    make_instances(w, n, tag, states=(InstanceState.QUEUED,))


def make_drs_passes(w: World, n: int, tag: str) -> None:
    kinds = list(DrsPassKind.values)
    DrsPass.objects.bulk_create(
        DrsPass(kind=kinds[i % len(kinds)], automation="manual", threshold=3, created=_when(i))
        for i in range(n)
    )


def make_drs_recommendations(w: World, n: int, tag: str) -> None:
    host = Host.objects.create(name=f"drs-{tag}-{uuid.uuid4().hex[:6]}", uri="test:///default")
    drs_pass = DrsPass.objects.create(automation="manual", threshold=3)
    states = list(RecommendationState.values)
    DrsRecommendation.objects.bulk_create(
        DrsRecommendation(
            drs_pass=drs_pass,
            order=i,
            instance=w.instance if i % 2 else w.other,
            instance_ids=[w.instance.pk],
            source=host,
            target=host,
            state=states[i % len(states)],
            created=_when(i),
        )
        for i in range(n)
    )


def make_drs_placements(w: World, n: int, tag: str) -> None:
    host = Host.objects.create(name=f"drsp-{tag}-{uuid.uuid4().hex[:6]}", uri="test:///default")
    states = list(PlacementState.values)
    DrsPlacement.objects.bulk_create(
        DrsPlacement(
            instance=w.instance if i % 2 else w.other,
            target=host,
            state=states[i % len(states)],
            explanation={"top": [{"host": host.name, "weight": 1.0}]},
            created=_when(i),
            deadline=_when(i),
        )
        for i in range(n)
    )


def make_operations(w: World, n: int, tag: str) -> None:
    kinds, states = list(OperationKind.values), list(OperationState.values)
    Operation.objects.unscoped().bulk_create(
        Operation(
            tenant=w.tenant,
            instance=w.instance if i % 4 else w.other,
            kind=kinds[i % len(kinds)],
            state=states[i % len(states)],
            created=_when(i),
        )
        for i in range(n)
    )


def make_flavors(w: World, n: int, tag: str) -> None:
    modes, ios = list(CpuMode.values), list(IoModel.values)
    Flavor.objects.bulk_create(
        Flavor(
            name=f"{tag}-{i:03d}",
            vcpus=1 + i % 4,
            ram_mib=64 * (1 + i % 3),
            disk_gib=1,
            cpu_mode=modes[i % len(modes)],
            io_model=ios[i % len(ios)],
            public=False,
            tenant=w.tenant,
        )
        for i in range(n)
    )


def make_images(w: World, n: int, tag: str) -> None:
    kinds = list(ImageKind.values)
    Image.objects.bulk_create(
        Image(
            name=f"{tag}-{i:03d}",
            kind=kinds[i % len(kinds)],
            os_name=f"os{i % 3}",
            sha256="0" * 64,
            public=False,
            tenant=w.tenant,
            created=_when(i),
        )
        for i in range(n)
    )


def make_networks(w: World, n: int, tag: str) -> None:
    base = next(_seq) % 200
    Network.objects.unscoped().bulk_create(
        Network(
            tenant=w.tenant,
            name=f"{tag}-{i:03d}",
            cidr=f"10.{base}.{i}.0/24",
            gateway=f"10.{base}.{i}.1",
            nat_egress=i % 2 == 0,
            created=_when(i),
        )
        for i in range(n)
    )


def make_secgroups(w: World, n: int, tag: str) -> None:
    groups = SecurityGroup.objects.unscoped().bulk_create(
        SecurityGroup(tenant=w.tenant, name=f"{tag}-{i:03d}", created=_when(i)) for i in range(n)
    )
    # Every third group has rules; the others have none (an empty prefetch must not cost a query).
    SecurityRule.objects.unscoped().bulk_create(
        SecurityRule(tenant=w.tenant, group=g, protocol="tcp", port_min=p, port_max=p, cidr="0.0.0.0/0")
        for i, g in enumerate(groups)
        if i % 3 == 0
        for p in (22, 80)
    )


def make_floating_ips(w: World, n: int, tag: str) -> None:
    """Addresses of two pools (198.18.<k>.0/24 each), half of them on an instance of the tenant."""
    pools = []
    for j in range(2):
        k = next(_seq) % 250
        pools.append(
            FloatingPool.objects.create(
                name=f"{tag}-p{j}-{k}",
                cidr=f"198.18.{k}.0/24",
                interface="nxtlq",
                range_start=f"198.18.{k}.1",
                range_end=f"198.18.{k}.250",
            )
        )
    targets = Instance.objects.unscoped().bulk_create(
        Instance(tenant=w.tenant, name=f"{tag}-f{i:03d}", flavor=w.flavor, image=w.image, network=w.network)
        for i in range(n // 2)
    )
    FloatingIP.objects.unscoped().bulk_create(
        FloatingIP(
            tenant=w.tenant,
            pool=pools[i % 2],
            address=f"{pools[i % 2].cidr.rsplit('.', 1)[0]}.{i // 2 + 1}",
            instance=targets[i // 2] if i % 2 == 0 and i // 2 < len(targets) else None,
            created=_when(i),
        )
        for i in range(n)
    )


def make_servergroups(w: World, n: int, tag: str) -> None:
    policies = list(GroupPolicy.values)
    groups = ServerGroup.objects.unscoped().bulk_create(
        ServerGroup(
            tenant=w.tenant, name=f"{tag}-{i:03d}", policy=policies[i % len(policies)], created=_when(i)
        )
        for i in range(n)
    )
    Instance.objects.unscoped().bulk_create(
        Instance(tenant=w.tenant, name=f"{tag}-m{i:03d}", flavor=w.flavor, image=w.image, server_group=g)
        for i, g in enumerate(groups)
        if i % 2 == 0
    )


def make_snapshots(w: World, n: int, tag: str) -> None:
    Snapshot.objects.unscoped().bulk_create(
        Snapshot(tenant=w.tenant, instance=w.instance, name=f"{tag}-{i:03d}", created=_when(i))
        for i in range(n)
    )


def make_keypairs(w: World, n: int, tag: str) -> None:
    KeyPair.objects.unscoped().bulk_create(
        KeyPair(
            tenant=w.tenant,
            name=f"{tag}-{i:03d}",
            key_type="ssh-ed25519" if i % 2 else "ssh-rsa",
            public_key=f"ssh-ed25519 AAAA{i:04d} {tag}",
            fingerprint=f"SHA256:{tag}{i:03d}",
            bits=256 if i % 2 else 3072,
            created=_when(i),
        )
        for i in range(n)
    )


def make_volumes(w: World, n: int, tag: str) -> None:
    """Volumes, every third attached (to a VM of its own), every fifth in error, one deleted."""
    owners = Instance.objects.unscoped().bulk_create(
        Instance(tenant=w.tenant, name=f"{tag}-v{i:03d}", flavor=w.flavor, image=w.image)
        for i in range(0, n, 3)
    )
    states = [VolumeState.AVAILABLE, VolumeState.ERROR]
    Volume.objects.unscoped().bulk_create(
        Volume(
            tenant=w.tenant,
            name=f"{tag}-{i:03d}",
            size_gib=1 + i % 3,
            state=VolumeState.IN_USE if i % 3 == 0 else states[int(i % 5 == 0)],
            instance=owners[i // 3] if i % 3 == 0 else None,
            device="vdb" if i % 3 == 0 else "",
            created=_when(i),
            deleted_at=timezone.now() if i == 1 else None,
        )
        for i in range(n)
    )


def make_volume_snapshots(w: World, n: int, tag: str) -> None:
    volume = _snapshot_volume(w)
    VolumeSnapshot.objects.unscoped().bulk_create(
        VolumeSnapshot(tenant=w.tenant, volume=volume, name=f"{tag}-{i:03d}", size_gib=1, created=_when(i))
        for i in range(n)
    )


def _snapshot_volume(w: World) -> Volume:
    volume, _ = Volume.objects.unscoped().get_or_create(
        tenant=w.tenant, name="snapped", defaults={"size_gib": 1, "state": VolumeState.AVAILABLE}
    )
    return volume


def make_members(w: World, n: int, tag: str) -> None:
    users = User.objects.bulk_create(User(username=f"{tag}-{i:03d}") for i in range(n))
    roles = list(Role.values)
    Membership.objects.bulk_create(
        Membership(tenant=w.tenant, user=u, role=roles[i % len(roles)]) for i, u in enumerate(users)
    )


def make_tokens(w: World, n: int, tag: str) -> None:
    roles = list(Role.values)
    ApiToken.objects.unscoped().bulk_create(
        ApiToken(
            tenant=w.tenant,
            name=f"{tag}-{i:03d}",
            prefix="nubis_x",
            key_hash=uuid.uuid4().hex * 2,
            role=roles[i % len(roles)],
            created_by=w.owner,
        )
        for i in range(n)
    )


def make_audit(w: World, n: int, tag: str) -> None:
    outcomes = list(Outcome.values)
    for i in range(n):
        audit_log(
            actor=Actor(f"{tag}-{i % 3}", "api" if i % 3 else "ui", w.owner.pk),
            action="instance.create" if i % 2 else "member.add",
            tenant=w.tenant,
            outcome=outcomes[i % len(outcomes)],
            target_type="compute.instance",
            target_id=str(i),
        )


def make_tenants(w: World, n: int, tag: str) -> None:
    tenants = Tenant.objects.bulk_create(
        Tenant(name=f"{tag}-{i:03d}", slug=f"{tag}-{i:03d}", active=i % 10 != 0) for i in range(n)
    )
    Membership.objects.bulk_create(Membership(tenant=t, user=w.owner, role=Role.VIEWER) for t in tenants)


def make_hosts(w: World, n: int, tag: str) -> None:
    Host.objects.bulk_create(
        Host(
            name=f"{tag}-{i:03d}",
            uri="test:///",
            cpus=8,
            ram_mib=8192,
            disk_gib=100,
            state=HostState.MAINTENANCE if i % 4 == 0 else HostState.ENABLED,
            simulated=i % 5 == 0,
            registered_at=_when(i),
        )
        for i in range(n)
    )


# ---- the table ------------------------------------------------------------------------------

Filters = Callable[[World], list[tuple[str, Q]]]


@dataclass(frozen=True)
class ListCase:
    spec: ListSpec
    path: Callable[[World], str]
    rows: Callable[[World], QuerySet[Any]]  # what the list must show, before its filters
    make: Callable[[World, int, str], None]
    filters: Filters  # a query string and the rows it must select
    ident: str = "pk"  # the model field the response shows as `key`
    key: str = "id"
    staff: bool = False


def _t(suffix: str) -> Callable[[World], str]:
    return lambda w: f"/api/v1/tenants/{w.tenant.slug}/{suffix}"


def _live(w: World) -> QuerySet[Any]:
    return Instance.objects.for_tenant(w.tenant).exclude(state=InstanceState.DELETED)


CASES: dict[str, ListCase] = {
    "api-tenants": ListCase(
        tenant_api.TENANTS,
        lambda w: "/api/v1/tenants/",
        lambda w: Tenant.objects.filter(active=True, memberships__user=w.owner),
        make_tenants,
        lambda w: [(f"slug={w.tenant.slug}", Q(slug=w.tenant.slug))],
    ),
    "api-admin-tenants": ListCase(
        tenant_api.ADMIN_TENANTS,
        lambda w: "/api/v1/admin/tenants/",
        lambda w: Tenant.objects.all(),
        make_tenants,
        lambda w: [("active=false", Q(active=False)), (f"name={w.tenant.name}", Q(name=w.tenant.name))],
        staff=True,
    ),
    "api-members": ListCase(
        tenant_api.MEMBERS,
        _t("members/"),
        lambda w: Membership.objects.filter(tenant=w.tenant),
        make_members,
        lambda w: [
            ("role=viewer", Q(role="viewer")),
            ("role=owner,member", Q(role__in=["owner", "member"])),
            (f"username={w.owner.username}", Q(user=w.owner)),
        ],
    ),
    "api-tokens": ListCase(
        tenant_api.TOKENS,
        _t("tokens/"),
        lambda w: ApiToken.objects.for_tenant(w.tenant),
        make_tokens,
        lambda w: [("role=member", Q(role="member"))],
    ),
    "api-audit": ListCase(
        tenant_api.AUDIT,
        _t("audit/"),
        lambda w: AuditRecord.objects.for_tenant(w.tenant.pk),
        make_audit,
        lambda w: [
            ("outcome=denied", Q(outcome="denied")),
            ("action=member.add&source=api", Q(action="member.add", source="api")),
            ("target_id=3,4", Q(target_id__in=["3", "4"])),
        ],
        ident="seq",
        key="seq",
    ),
    "api-flavors": ListCase(
        catalog.FLAVORS,
        _t("flavors/"),
        lambda w: flavors_for(w.tenant),
        make_flavors,
        lambda w: [
            ("cpu_mode=hardware", Q(cpu_mode="hardware")),
            ("io_model=emulated", Q(io_model="emulated")),
        ],
    ),
    "api-images": ListCase(
        images.IMAGES,
        _t("images/"),
        lambda w: images_for(w.tenant),
        make_images,
        lambda w: [("kind=disk,rootfs", Q(kind__in=["disk", "rootfs"])), ("os_name=os1", Q(os_name="os1"))],
    ),
    "api-instances": ListCase(
        instances.INSTANCES,
        _t("instances/"),
        _live,
        make_some_instances,
        lambda w: [
            ("state=queued", Q(state="queued")),
            ("state=running,stopped&kind=vm", Q(state__in=["running", "stopped"], kind="vm")),
            ("name=other", Q(name="other")),
            ("network=net", Q(network=w.network)),
            ("server_group=grp", Q(server_group=w.group)),
        ],
        ident="uuid",
    ),
    "api-operations": ListCase(
        operations.OPERATIONS,
        _t("operations/"),
        lambda w: Operation.objects.for_tenant(w.tenant),
        make_operations,
        lambda w: [
            ("state=failed", Q(state="failed")),
            ("kind=start,stop", Q(kind__in=["start", "stop"])),
            (f"instance={w.other.uuid}", Q(instance=w.other)),
        ],
        ident="uuid",
    ),
    "api-networks": ListCase(
        networks.NETWORKS,
        _t("networks/"),
        lambda w: networks_for(w.tenant),
        make_networks,
        lambda w: [("nat_egress=true", Q(nat_egress=True)), ("nat_egress=0", Q(nat_egress=False))],
        ident="uuid",
    ),
    "api-secgroups": ListCase(
        networks.SECURITY_GROUPS,
        _t("security-groups/"),
        lambda w: SecurityGroup.objects.for_tenant(w.tenant),
        make_secgroups,
        lambda w: [("name=sg1", Q(name="sg1"))],
    ),
    "api-floating-ips": ListCase(
        floating_api.FLOATING_IPS,
        _t("floating-ips/"),
        lambda w: FloatingIP.objects.for_tenant(w.tenant),
        make_floating_ips,
        lambda w: [
            (f"pool={p.name}", Q(pool=p))
            for p in FloatingPool.objects.filter(addresses__tenant=w.tenant).distinct()[:1]
        ],
    ),
    "api-keypairs": ListCase(
        keypairs_api.KEYPAIRS,
        _t("keypairs/"),
        lambda w: KeyPair.objects.for_tenant(w.tenant),
        make_keypairs,
        lambda w: [("key_type=ssh-rsa", Q(key_type="ssh-rsa"))],
    ),
    "api-volumes": ListCase(
        volumes_api.VOLUMES,
        _t("volumes/"),
        lambda w: Volume.objects.for_tenant(w.tenant).filter(deleted_at__isnull=True),
        make_volumes,
        lambda w: [
            ("state=error", Q(state=VolumeState.ERROR)),
            ("state=in-use", Q(state=VolumeState.IN_USE)),
        ],
        ident="uuid",
    ),
    "api-volume-snapshots": ListCase(
        volumes_api.VOLUME_SNAPSHOTS,
        lambda w: f"/api/v1/tenants/{w.tenant.slug}/volumes/{_snapshot_volume(w).uuid}/snapshots/",
        lambda w: VolumeSnapshot.objects.for_tenant(w.tenant).filter(volume=_snapshot_volume(w)),
        make_volume_snapshots,
        lambda w: [],
    ),
    "api-servergroups": ListCase(
        groups.SERVER_GROUPS,
        _t("server-groups/"),
        lambda w: ServerGroup.objects.for_tenant(w.tenant),
        make_servergroups,
        lambda w: [("policy=affinity", Q(policy="affinity"))],
    ),
    "api-snapshots": ListCase(
        snapshots.SNAPSHOTS,
        lambda w: f"/api/v1/tenants/{w.tenant.slug}/instances/{w.instance.uuid}/snapshots/",
        lambda w: Snapshot.objects.for_tenant(w.tenant).filter(instance=w.instance),
        make_snapshots,
        lambda w: [],
    ),
    "api-tenant-snapshots": ListCase(
        snapshots.TENANT_SNAPSHOTS,
        _t("snapshots/"),
        lambda w: Snapshot.objects.for_tenant(w.tenant).exclude(instance__state=InstanceState.DELETED),
        make_snapshots,
        lambda w: [(f"instance={w.instance.uuid}", Q(instance=w.instance))],
    ),
    "api-queue": ListCase(
        groups.QUEUE,
        _t("queue/"),
        lambda w: _live(w).filter(queue_entry__state=QueueState.WAITING),
        make_queued,
        lambda w: [("kind=vm", Q(kind="vm"))],
        ident="uuid",
    ),
}
CASES.update(
    {
        "api-admin-hosts": ListCase(
            api_admin.HOSTS,
            lambda w: "/api/v1/admin/hosts/",
            lambda w: Host.objects.all(),
            make_hosts,
            lambda w: [
                ("state=maintenance", Q(state=HostState.MAINTENANCE)),
                ("simulated=true", Q(simulated=True)),
            ],
            staff=True,
        ),
        "api-admin-queue": ListCase(
            api_admin.ADMIN_QUEUE,
            lambda w: "/api/v1/admin/queue/",
            lambda w: QueueEntry.objects.unscoped().filter(state=QueueState.WAITING),
            make_queued,
            lambda w: [(f"tenant={w.tenant.slug}", Q(tenant=w.tenant))],
            staff=True,
        ),
        "api-admin-drs-passes": ListCase(
            drs_api.PASSES,
            lambda w: "/api/v1/admin/drs/passes/",
            lambda w: DrsPass.objects.all(),
            make_drs_passes,
            lambda w: [("kind=what_if", Q(kind="what_if"))],
            staff=True,
        ),
        "api-admin-drs-recommendations": ListCase(
            drs_api.RECOMMENDATIONS,
            lambda w: "/api/v1/admin/drs/recommendations/",
            lambda w: DrsRecommendation.objects.all(),
            make_drs_recommendations,
            lambda w: [("state=proposed,failed", Q(state__in=["proposed", "failed"]))],
            staff=True,
        ),
        "api-admin-drs-placements": ListCase(
            drs_api.PLACEMENTS,
            lambda w: "/api/v1/admin/drs/placements/",
            lambda w: DrsPlacement.objects.all(),
            make_drs_placements,
            lambda w: [("state=waiting,placed", Q(state__in=["waiting", "placed"]))],
            staff=True,
        ),
        "api-admin-quotas": ListCase(
            api_admin.QUOTAS,
            lambda w: "/api/v1/admin/quotas/",
            lambda w: Tenant.objects.all(),
            make_tenants,
            lambda w: [(f"tenant={w.tenant.slug}", Q(slug=w.tenant.slug))],
            ident="slug",
            key="tenant",
            staff=True,
        ),
    }
)
# GET routes that answer an array on purpose, and why.
NOT_PAGINATED = {
    "api-instance-metrics": "a time series, bounded by its `seconds` window",
    "api-instance-port-forwards": "at most floating_ips.MAX_FORWARDS (10) per instance",
}


def expected(case: ListCase, w: World, ordering: str, where: Q | None = None) -> list[str]:
    """The keys the list must show, in order, computed by the ORM alone."""
    sign = "-" if ordering.startswith("-") else ""
    paths = case.spec.orderings[ordering.removeprefix("-")]
    rows = case.rows(w).filter(where or Q()).order_by(*(sign + p for p in paths), f"{sign}pk")
    return [str(v) for v in rows.values_list(case.ident, flat=True)]


def keys(case: ListCase, body: dict[str, Any]) -> list[str]:
    return [str(row[case.key]) for row in body["results"]]


def get(client: APIClient, url: str) -> dict[str, Any]:
    response = client.get(url)
    assert response.status_code == 200, (url, response.content[:500])
    body: dict[str, Any] = response.json()
    assert set(body) == {"results", "next", "previous"}
    return body


def _join(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}" if query else url


def walk(
    client: APIClient, url: str, case: ListCase, between: Callable[[int], None] | None = None
) -> list[list[str]]:
    """Follow `next` from the first page to the last; the keys of each page."""
    pages: list[list[str]] = []
    link: str | None = url
    while link:
        body = get(client, link)
        assert (body["previous"] is None) == (not pages), link
        pages.append(keys(case, body))
        if between is not None:
            between(len(pages))
        link = body["next"]
        assert len(pages) < 200, "the walk does not end"
    return pages


def walk_back(client: APIClient, last: str, case: ListCase) -> list[list[str]]:
    """From the last page, follow `previous` to the first; the keys of each page, first page first."""
    pages: list[list[str]] = []
    link: str | None = last
    while link:
        body = get(client, link)
        pages.append(keys(case, body))
        link = body["previous"]
        assert len(pages) < 200, "the walk back does not end"
    return pages[::-1]


ORDERINGS = [(name, o) for name, case in CASES.items() for o in case.spec.allowed]

# ---- tests -----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(CASES))
def test_queries_per_page_do_not_grow_with_the_page(name: str) -> None:
    case = CASES[name]
    w = build_world()
    case.make(w, BIG, "big")
    assert case.rows(w).count() >= 100
    client, url = w.client(case.staff), case.path(w)
    # Warm the per-process caches first (the scheduler's host table, which the queue places read).
    get(client, _join(url, "page_size=1"))
    counts, sizes = [], []
    for size in (10, 100):
        with CaptureQueriesContext(connection) as queries:
            body = get(client, _join(url, f"page_size={size}"))
        counts.append(len(queries))
        sizes.append(len(body["results"]))
    assert sizes == [10, 100]
    assert counts[0] == counts[1], f"{name}: {counts[0]} queries at page_size=10, {counts[1]} at 100"
    # And the default page is PAGE_SIZE rows.
    assert len(get(client, url)["results"]) == PAGE_SIZE


@pytest.mark.django_db
@pytest.mark.parametrize(("name", "ordering"), ORDERINGS, ids=[f"{n}:{o}" for n, o in ORDERINGS])
def test_cursor_pages_walk_every_row_once_in_order(name: str, ordering: str) -> None:
    case = CASES[name]
    w = build_world()
    case.make(w, SMALL, "walk")
    client = w.client(case.staff)
    url = _join(case.path(w), f"ordering={ordering}&page_size=4")
    want = expected(case, w, ordering)
    pages = walk(client, url, case)
    assert [k for page in pages for k in page] == want
    assert all(len(page) == 4 for page in pages[:-1])
    assert 1 <= len(pages[-1]) <= 4
    # Backwards from the last page, through the previous links: the same pages.
    last = url
    for _ in pages[:-1]:
        last = get(client, last)["next"]
    assert walk_back(client, last, case) == pages


@pytest.mark.django_db
@pytest.mark.parametrize(("name", "ordering"), ORDERINGS, ids=[f"{n}:{o}" for n, o in ORDERINGS])
def test_rows_added_between_pages_neither_repeat_nor_hide_a_row(name: str, ordering: str) -> None:
    case = CASES[name]
    w = build_world()
    case.make(w, SMALL, "walk")
    client = w.client(case.staff)
    before = expected(case, w, ordering)

    def add(page: int) -> None:
        if page in (1, 3):
            case.make(w, 3, f"add{page}")

    seen = [
        k
        for page in walk(client, _join(case.path(w), f"ordering={ordering}&page_size=4"), case, add)
        for k in page
    ]
    after = expected(case, w, ordering)
    assert len(seen) == len(set(seen)), "a row was shown twice"
    assert set(before) <= set(seen), f"rows never shown: {sorted(set(before) - set(seen))}"
    positions = [after.index(k) for k in seen]
    assert positions == sorted(positions), "the rows came out of order"


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(CASES))
def test_filters_select_what_they_say(name: str) -> None:
    case = CASES[name]
    w = build_world()
    case.make(w, SMALL, "flt")
    client, url = w.client(case.staff), case.path(w)
    for query, where in case.filters(w):
        want = expected(case, w, case.spec.default, where)
        assert want, f"{name}: the data gives {query} nothing to find"
        got = keys(case, get(client, _join(url, f"{query}&page_size={MAX_PAGE_SIZE}")))
        assert got == want, f"{name}?{query}"


def _problem_field(client: APIClient, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 400, (url, response.status_code, response.content[:300])
    assert response["Content-Type"] == "application/problem+json"
    errors = response.json()["errors"]
    assert len(errors) == 1
    return str(errors[0]["field"])


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_parameters_answer_400_naming_the_parameter(name: str) -> None:
    case = CASES[name]
    w = build_world()
    case.make(w, 5, "bad")
    client, url = w.client(case.staff), case.path(w)
    for size in ("0", f"{MAX_PAGE_SIZE + 1}", "ten", "-1", ""):
        assert _problem_field(client, _join(url, f"page_size={size}")) == "page_size"
    response = client.get(_join(url, "ordering=nope"))
    assert _problem_field(client, _join(url, "ordering=nope")) == "ordering"
    assert all(o in response.json()["detail"] for o in case.spec.allowed)
    for flt in case.spec.filters:
        if flt.choices:
            assert _problem_field(client, _join(url, f"{flt.param}=bogus")) == flt.param
        if flt.kind in ("bool", "uuid"):
            assert _problem_field(client, _join(url, f"{flt.param}=maybe")) == flt.param
        if flt.kind == "str" and not flt.choices:  # the fuzzer's find: NUL reached PostgreSQL
            assert _problem_field(client, _join(url, f"{flt.param}=a%00b")) == flt.param
    nxt = get(client, _join(url, "page_size=2"))["next"]
    assert nxt is not None
    cursor = nxt.split("cursor=")[1].split("&")[0]
    for bad in ("garbage", cursor[:-2] + ("AA" if not cursor.endswith("AA") else "BB"), "e30:x"):
        assert _problem_field(client, _join(url, f"cursor={bad}")) == "cursor"
    # A cursor is bound to its ordering.
    other = next(o for o in case.spec.allowed if o != case.spec.default)
    assert _problem_field(client, _join(url, f"ordering={other}&cursor={cursor}")) == "cursor"


@pytest.mark.django_db
def test_a_cursor_of_one_list_is_refused_by_another() -> None:
    w = build_world()
    make_tenants(w, 5, "x")
    w.owner.is_staff = True
    w.owner.save()
    client = w.client()
    nxt = get(client, "/api/v1/tenants/?page_size=2")["next"]
    cursor = nxt.split("cursor=")[1]
    assert _problem_field(client, f"/api/v1/admin/tenants/?cursor={cursor}") == "cursor"


@pytest.mark.django_db
def test_links_keep_the_other_parameters() -> None:
    w = build_world()
    make_instances(w, 12, "keep")
    client = w.client()
    body = get(
        client, f"/api/v1/tenants/{w.tenant.slug}/instances/?state=queued,running&ordering=name&page_size=2"
    )
    second = get(client, body["next"])
    for link in (body["next"], second["previous"]):
        assert "state=queued%2Crunning" in link or "state=queued,running" in link
        assert "ordering=name" in link
        assert "page_size=2" in link
    assert [r["state"] in ("queued", "running") for r in second["results"]] == [True, True]


def _schema() -> dict[str, Any]:
    from drf_spectacular.generators import SchemaGenerator

    return dict(SchemaGenerator().get_schema(request=None, public=True))


def _route_name(path: str, operation: dict[str, Any]) -> str:
    """The URL name of a schema path, by resolving it with sample values for its parameters."""
    url = path
    for param in operation.get("parameters", []):
        if param["in"] != "path":
            continue
        schema = param.get("schema", {})
        sample = (
            "1"
            if schema.get("type") == "integer"
            else str(uuid.uuid4())
            if schema.get("format") == "uuid"
            else "x"
        )
        url = url.replace("{" + param["name"] + "}", sample)
    return str(resolve(url).url_name)


@pytest.mark.django_db
def test_every_list_endpoint_is_covered() -> None:
    schema = _schema()
    paginated, arrays = set(), set()
    for path, item in schema["paths"].items():
        operation = item.get("get")
        if operation is None:
            continue
        answer = operation["responses"].get("200", {}).get("content", {}).get("application/json", {})
        body = answer.get("schema", {})
        name = _route_name(path, operation)
        if body.get("type") == "array":
            arrays.add(name)
        elif body.get("$ref", "").startswith("#/components/schemas/Paginated"):
            paginated.add(name)
            assert operation["operationId"].endswith("_list"), (name, operation["operationId"])
            declared = {p["name"] for p in operation["parameters"] if p["in"] == "query"}
            assert {"cursor", "page_size", "ordering"} <= declared, name
            component = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
            assert set(component["properties"]) == {"results", "next", "previous"}, name
    unpaginated = sorted(arrays - set(NOT_PAGINATED))
    assert not unpaginated, f"list endpoints without cursor pagination: {unpaginated}"
    assert not sorted(paginated - set(CASES)), f"lists missing from CASES: {sorted(paginated - set(CASES))}"
    assert not sorted(set(CASES) - paginated), (
        f"CASES for no paginated list: {sorted(set(CASES) - paginated)}"
    )


@pytest.mark.django_db
def test_the_coverage_check_notices_an_unpaginated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """A list answering a bare array makes the coverage test fail (checked on a patched schema)."""
    real = _schema

    def patched() -> dict[str, Any]:
        schema = real()
        get_op = schema["paths"]["/api/v1/tenants/{tenant}/networks/"]["get"]
        get_op["responses"]["200"]["content"]["application/json"]["schema"] = {"type": "array"}
        return schema

    monkeypatch.setitem(globals(), "_schema", patched)
    with pytest.raises(AssertionError, match="api-networks"):
        test_every_list_endpoint_is_covered()


# ---- the web UI's instance list -----------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("query", ["", "state=&kind=vm", "state=running&q=big"])
def test_the_ui_instance_list_queries_do_not_grow_with_the_page(query: str) -> None:
    """The web UI's list pages like the API: the same number of queries for 10 rows and 100, on
    the first page and on a later one."""
    w = build_world()
    make_instances(w, 900, "big")  # a quarter running: two full pages of 100 for every query
    client = w.client()
    url = _join(f"/t/{w.tenant.slug}/instances/", query)
    client.get(_join(url, "page_size=1"))  # warm the per-process caches (session, tenant list)
    counts, sizes = [], []
    for size in (10, 100):
        first = client.get(_join(url, f"page_size={size}"))
        older = re.search(r'href="([^"]+)" rel="next"', first.content.decode())
        assert older is not None, "the first page has no link to older instances"
        for page in (_join(url, f"page_size={size}"), unescape(older.group(1))):
            with CaptureQueriesContext(connection) as queries:
                response = client.get(page)
            assert response.status_code == 200, page
            counts.append(len(queries))
            sizes.append(response.content.decode().count("<tr data-instance="))
    assert sizes == [10, 10, 100, 100]
    assert counts[0] == counts[2], f"first page: {counts[0]} queries at 10 rows, {counts[2]} at 100"
    assert counts[1] == counts[3], f"later page: {counts[1]} queries at 10 rows, {counts[3]} at 100"
