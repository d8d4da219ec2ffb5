"""The world every isolation case runs in: tenants A and B, one user per persona, and their objects."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.contrib.auth.models import Permission, User
from django.utils import timezone

from compute.models import (
    CpuMode,
    Flavor,
    FloatingIP,
    FloatingPool,
    Host,
    Image,
    ImageKind,
    Instance,
    InstanceKind,
    InstanceState,
    KeyPair,
    Network,
    Operation,
    OperationKind,
    OperationState,
    PortForward,
    SecurityGroup,
    SecurityRule,
    ServerGroup,
    Snapshot,
    Volume,
    VolumeSnapshot,
    VolumeState,
)
from security.audit import Actor, audit_log
from tenants.models import ApiToken, Membership, Role, Tenant
from tenants.services.quotas import quota_claim
from tenants.services.tokens import token_create
from tests.factories import add_member, make_tenant, make_user

PERSONAS = ("anon", "a_viewer", "a_member", "a_owner", "b_member", "staff", "superuser")
A_PERSONAS = ("a_viewer", "a_member", "a_owner")

# Strings that belong to tenant B only: none may ever show up in an answer to someone outside B.
B_MARKERS = (
    "tenant-b",
    "b-member",
    "b-owner",
    "token-of-b",
    "b.secret-action",
    "b-vm",
    "b-snap",
    "b-private-flavor",
    "b-private-image",
    "b-upload",
    "b-net",
    "b-sg",
    "b-box",
    "b-spare",
    "10.99.",
    "b-key",
    "b-vol",
    "198.18.200.11",  # b-fip
    "OUFuOJlBBr2G2P8QZGQASp92colieUA7KP",  # b-key's fingerprint
)


@dataclass
class World:
    a: Tenant
    b: Tenant
    users: dict[str, User]
    a_extra: Membership  # a member of A that owners may change or remove
    b_extra: Membership
    a_token: ApiToken  # created by a_member
    b_token: ApiToken
    newcomer: User  # a user in no tenant, to be added
    vms: dict[str, Instance]  # a-vm (running), a-off (stopped), b-vm, b-off
    snaps: dict[str, Snapshot]  # a-snap, b-snap
    ops: dict[str, Operation]  # the create operation of a-vm and of b-vm
    nets: dict[str, Network]  # a-net, b-net (with a-box and b-box, stopped containers, on them)
    groups: dict[str, SecurityGroup]  # a-sg, b-sg, one rule each
    rules: dict[str, SecurityRule]
    server_groups: dict[str, ServerGroup]  # a-grp (a-vm in it), a-lone (empty), the same for b
    keypairs: dict[str, KeyPair] = field(default_factory=dict)  # a-key, b-key
    # a-vol (available), a-used (attached to a-vm as vdb), a-vsnap (a snapshot of a-vol); b's too.
    volumes: dict[str, Volume] = field(default_factory=dict)
    volume_snaps: dict[str, VolumeSnapshot] = field(default_factory=dict)
    # a-fip (free), b-fip from the pool "ext"; a-pf, b-pf: port forwards of a-box and b-box.
    floating: dict[str, FloatingIP] = field(default_factory=dict)
    forwards: dict[str, PortForward] = field(default_factory=dict)
    images: dict[str, Image] = field(default_factory=dict)  # a-upload, b-upload: uploaded, private


def _token(tenant: Tenant, user: User, name: str) -> ApiToken:
    token, _ = token_create(
        actor=Actor.system("fixture"),
        tenant=tenant,
        creator_id=user.pk,
        creator_role=Role.MEMBER,
        name=name,
        role=Role.VIEWER,
    )
    return token


def build_world() -> World:
    a, b = make_tenant("tenant-a"), make_tenant("tenant-b")
    users = {
        "a_viewer": add_member(a, make_user("a-viewer"), Role.VIEWER),
        "a_member": add_member(a, make_user("a-member"), Role.MEMBER),
        "a_owner": add_member(a, make_user("a-owner"), Role.OWNER),
        "b_member": add_member(b, make_user("b-member"), Role.MEMBER),
        "staff": make_user("staff", is_staff=True),
        "superuser": User.objects.create_superuser("root", password="pw-for-tests-only-9d1f"),
    }
    # Operators read everything in admin; they change nothing there unless granted more.
    users["staff"].user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    add_member(b, make_user("b-owner"), Role.OWNER)
    a_extra = Membership.objects.get(user=add_member(a, make_user("a-extra")), tenant=a)
    b_extra = Membership.objects.get(user__username="b-owner", tenant=b)
    vms, snaps, ops = _compute(a, b)
    nets, groups, rules = _networks(a, b, vms)
    server_groups = _placements(vms)
    world = World(
        server_groups=server_groups,
        nets=nets,
        groups=groups,
        rules=rules,
        vms=vms,
        snaps=snaps,
        ops=ops,
        a=a,
        b=b,
        users=users,
        a_extra=a_extra,
        b_extra=b_extra,
        a_token=_token(a, users["a_member"], "token-of-a"),
        b_token=_token(b, users["b_member"], "token-of-b"),
        newcomer=make_user("newcomer"),
    )
    _schedules()
    quota_claim(a, {"instances": 1, "vcpus": 1}, "fixture")
    quota_claim(b, {"instances": 1, "vcpus": 2}, "fixture of b")
    audit_log(actor=Actor.system("fixture"), action="a.visible-action", tenant=a)
    audit_log(actor=Actor.system("fixture"), action="b.secret-action", tenant=b)
    world.keypairs = _keypairs(a, b)
    world.images = _uploaded_images(a, b)
    world.volumes, world.volume_snaps = _volumes(a, b, vms)
    world.floating, world.forwards = _floating(a, b, vms)
    return world


def _floating(
    a: Tenant, b: Tenant, vms: dict[str, Instance]
) -> tuple[dict[str, FloatingIP], dict[str, PortForward]]:
    pool = FloatingPool.objects.create(
        name="ext",
        cidr="198.18.200.0/24",
        interface="nxtiso",
        range_start="198.18.200.10",
        range_end="198.18.200.30",
    )
    floating, forwards = {}, {}
    for tenant, prefix, n in ((a, "a", 10), (b, "b", 11)):
        floating[f"{prefix}-fip"] = FloatingIP.objects.create(
            tenant=tenant, pool=pool, address=f"198.18.200.{n}"
        )
        forwards[f"{prefix}-pf"] = PortForward.objects.create(
            tenant=tenant, instance=vms[f"{prefix}-box"], port=80, host_port=30900 + n
        )
    return floating, forwards


def _volumes(
    a: Tenant, b: Tenant, vms: dict[str, Instance]
) -> tuple[dict[str, Volume], dict[str, VolumeSnapshot]]:
    """Rows only, on the harness host's store (no agent answers: their file work gets a 503)."""
    volumes, snaps = {}, {}
    for tenant, prefix in ((a, "a"), (b, "b")):
        vm = vms[f"{prefix}-vm"]
        volumes[f"{prefix}-vol"] = Volume.objects.create(
            tenant=tenant, name=f"{prefix}-vol", size_gib=1, state=VolumeState.AVAILABLE, host=vm.host
        )
        volumes[f"{prefix}-used"] = Volume.objects.create(
            tenant=tenant,
            name=f"{prefix}-vol-used",
            size_gib=1,
            state=VolumeState.IN_USE,
            host=vm.host,
            instance=vm,
            device="vdb",
        )
        snaps[f"{prefix}-vsnap"] = VolumeSnapshot.objects.create(
            tenant=tenant, volume=volumes[f"{prefix}-vol"], name=f"{prefix}-vol-snap", size_gib=1
        )
    return volumes, snaps


# Public keys only (their private halves were thrown away): a-key's and b-key's.
_KEYS = {
    "a": (
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJf7q9z0WEO0NgpgZbX9TA3AG+3ynhAR96czVpHm7x8Y a-laptop",
        "SHA256:u1s+VtpGhpnXy3dLFo6e4tbzalKeAJ3dzxAsN38JM+I",
    ),
    "b": (
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIET9g3kSRpjYTxgowHGwnp/ki9x4ud/byf1o+IjO/86g b-laptop",
        "SHA256:OUFuOJlBBr2G2P8QZGQASp92colieUA7KP/0WDuDd/0",
    ),
}


def _uploaded_images(a: Tenant, b: Tenant) -> dict[str, Image]:
    """An uploaded (private, active) image per tenant; no file behind it (deleting one is harmless)."""
    return {
        f"{prefix}-upload": Image.objects.create(
            name=f"{prefix}-upload",
            kind=ImageKind.DISK,
            os_name="uploaded",
            disk_path=f"/nonexistent/{prefix}-upload.qcow2",
            sha256=str(i) * 64,
            public=False,
            tenant=tenant,
        )
        for i, (tenant, prefix) in enumerate(((a, "a"), (b, "b")))
    }


def _keypairs(a: Tenant, b: Tenant) -> dict[str, KeyPair]:
    """A key pair per tenant."""
    rows = {}
    for tenant, prefix in ((a, "a"), (b, "b")):
        public_key, fingerprint = _KEYS[prefix]
        rows[f"{prefix}-key"] = KeyPair.objects.create(
            tenant=tenant,
            name=f"{prefix}-key",
            key_type="ssh-ed25519",
            public_key=public_key,
            fingerprint=fingerprint,
            bits=256,
            comment=f"{prefix}-laptop",
        )
    return rows


def _schedules() -> None:
    """One row of each beat model, an auth group and a failed login, so their admin pages have
    something to show."""
    from django.contrib.auth.models import Group
    from django.utils import timezone
    from django_celery_beat.models import (
        ClockedSchedule,
        CrontabSchedule,
        IntervalSchedule,
        PeriodicTask,
        SolarSchedule,
    )

    Group.objects.create(name="operators")
    every = IntervalSchedule.objects.create(every=30, period=IntervalSchedule.SECONDS)
    CrontabSchedule.objects.create(minute="0", hour="3")
    SolarSchedule.objects.create(event="sunrise", latitude=48.0, longitude=2.0)
    ClockedSchedule.objects.create(clocked_time=timezone.now())
    PeriodicTask.objects.create(name="fixture-task", task="portal.tasks.heartbeat", interval=every)
    from axes.models import AccessAttempt

    AccessAttempt.objects.create(
        username="fixture-guess", ip_address="192.0.2.1", user_agent="harness", http_accept="*/*",
        path_info="/login/", get_data="", post_data="", failures_since_start=1,
    )  # fmt: skip


def _drs(vm: Instance) -> None:
    """The cluster's DRS settings, a pass that recommends moving A's VM, and a decided placement
    of it (admin shows them)."""
    from scheduler.models import DrsPass, DrsPlacement, DrsRecommendation, DrsSettings, PlacementState

    DrsSettings.current()
    drs_pass = DrsPass.objects.create(automation="manual", threshold=3, summary={"hosts": []})
    host = Host.objects.get(pk=vm.host_id or 0)
    DrsRecommendation.objects.create(
        drs_pass=drs_pass, order=0, instance=vm, instance_ids=[vm.pk], source=host, target=host
    )
    DrsPlacement.objects.create(
        instance=vm, target=host, host=host, state=PlacementState.PLACED, deadline=timezone.now()
    )


def _placements(vms: dict[str, Instance]) -> dict[str, ServerGroup]:
    """A placement record for each VM, an aggregate of the hosts, server groups and a queued
    instance per tenant (the API and the admin show them all)."""
    from scheduler.models import Aggregate, PlacementDecision, QueueEntry

    for name in ("a-vm", "b-vm"):
        vm = vms[name]
        PlacementDecision.objects.create(
            tenant_id=vm.tenant_id, instance=vm, host=vm.host, record={"host": "harness-host", "filters": []}
        )
    aggregate = Aggregate.objects.create(
        name="harness-aggregate", cpu_ratio=2.0, tenant_id=vms["a-vm"].tenant_id
    )
    aggregate.hosts.add(vms["a-vm"].host_id or 0)
    _drs(vms["a-vm"])
    groups = {}
    for prefix in ("a", "b"):
        vm = vms[f"{prefix}-vm"]
        groups[f"{prefix}-grp"] = ServerGroup.objects.create(
            tenant_id=vm.tenant_id, name=f"{prefix}-grp", policy="anti-affinity"
        )
        groups[f"{prefix}-lone"] = ServerGroup.objects.create(
            tenant_id=vm.tenant_id, name=f"{prefix}-lone", policy="soft-affinity"
        )
        Instance.objects.unscoped().filter(pk=vm.pk).update(server_group=groups[f"{prefix}-grp"])
        waiting = vms[f"{prefix}-wait"] = Instance.objects.create(
            tenant_id=vm.tenant_id,
            name=f"{prefix}-wait",
            flavor=vm.flavor,
            image=vm.image,
            state=InstanceState.QUEUED,
            vcpus=1,
            ram_mib=128,
            current_ram_mib=128,
            disk_gib=1,
        )
        QueueEntry.objects.create(
            tenant_id=vm.tenant_id, instance=waiting, priority=1, vcpus=1, ram_mib=128, disk_gib=1
        )
    return groups


def _networks(
    a: Tenant, b: Tenant, vms: dict[str, Instance]
) -> tuple[dict[str, Network], dict[str, SecurityGroup], dict[str, SecurityRule]]:
    """A network and a security group per tenant, and a stopped container on each network."""
    rootfs = Image.objects.create(
        name="h-rootfs", kind=ImageKind.ROOTFS, os_name="test", disk_path="/nonexistent", sha256="2" * 64
    )
    nets, groups, rules = {}, {}, {}
    for tenant, prefix, cidr in ((a, "a", "10.98.0.0/24"), (b, "b", "10.99.0.0/24")):
        net = nets[f"{prefix}-net"] = Network.objects.create(
            tenant=tenant, name=f"{prefix}-net", cidr=cidr, gateway=cidr.replace("0/24", "1")
        )
        group = groups[f"{prefix}-sg"] = SecurityGroup.objects.create(tenant=tenant, name=f"{prefix}-sg")
        rules[f"{prefix}-rule"] = SecurityRule.objects.create(
            tenant=tenant, group=group, protocol="tcp", port_min=22, port_max=22, cidr=cidr
        )
        template = vms[f"{prefix}-off"]
        box = vms[f"{prefix}-box"] = Instance.objects.create(
            tenant=tenant,
            name=f"{prefix}-box",
            kind=InstanceKind.CONTAINER,
            flavor=template.flavor,
            image=rootfs,
            host=template.host,
            state=InstanceState.STOPPED,
            network=net,
            ip_address=cidr.replace("0/24", "2"),
            ram_mib=128,
            current_ram_mib=128,
            disk_gib=0,
        )
        box.groups_set([group])
        # Unused ones, which can be deleted.
        nets[f"{prefix}-spare"] = Network.objects.create(
            tenant=tenant,
            name=f"{prefix}-spare",
            cidr=cidr.replace(".0.0/", ".1.0/"),
            gateway=cidr.replace(".0.0/24", ".1.1"),
        )
        groups[f"{prefix}-spare"] = SecurityGroup.objects.create(tenant=tenant, name=f"{prefix}-spare")
    return nets, groups, rules


def _compute(a: Tenant, b: Tenant) -> tuple[dict[str, Instance], dict[str, Snapshot], dict[str, Operation]]:
    """Rows only: the harness checks who may reach what; tasks it enqueues go to a queue nobody serves."""
    from django.utils import timezone

    host = Host.objects.create(
        name="harness-host",
        uri="qemu:///system",
        cpus=64,
        ram_mib=65536,
        disk_gib=1000,
        heartbeat_at=timezone.now(),
    )
    flavor = Flavor.objects.create(
        name="h.small", vcpus=1, ram_mib=128, disk_gib=1, min_ram_mib=64, cpu_mode=CpuMode.EMULATED
    )
    Flavor.objects.create(name="b-private-flavor", vcpus=1, ram_mib=128, disk_gib=1, public=False, tenant=b)
    image = Image.objects.create(
        name="h-image", kind=ImageKind.KERNEL, os_name="test", disk_path="/nonexistent", sha256="0" * 64
    )
    Image.objects.create(
        name="b-private-image",
        kind=ImageKind.KERNEL,
        os_name="test",
        disk_path="/nonexistent",
        sha256="1" * 64,
        public=False,
        tenant=b,
    )
    vms: dict[str, Instance] = {}
    ops: dict[str, Operation] = {}
    for tenant, name, state in (
        (a, "a-vm", InstanceState.RUNNING),
        (a, "a-off", InstanceState.STOPPED),
        (b, "b-vm", InstanceState.RUNNING),
        (b, "b-off", InstanceState.STOPPED),
    ):
        vms[name] = Instance.objects.create(
            tenant=tenant,
            name=name,
            flavor=flavor,
            image=image,
            host=host,
            state=state,
            vcpus=1,
            ram_mib=128,
            current_ram_mib=128,
            disk_gib=1,
        )
        ops[name] = Operation.objects.create(
            tenant=tenant, instance=vms[name], kind=OperationKind.CREATE, state=OperationState.SUCCEEDED
        )
    snaps = {
        "a-snap": Snapshot.objects.create(tenant=a, instance=vms["a-vm"], name="a-snap"),
        "b-snap": Snapshot.objects.create(tenant=b, instance=vms["b-vm"], name="b-snap"),
    }
    return vms, snaps, ops
