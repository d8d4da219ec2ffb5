"""Tenant networks and what else is on the host: routes someone else made, and what we leave behind.

- The subnet allocator skips, and a chosen subnet is refused when it overlaps, a route or address
  already on a compute host (issue 13, item 9).
- Per-port chains are named for their deployment, and the reconciler and the test clean-up remove
  those no live instance needs, also when the port's interface is gone (item 12).
- ``scripts/down`` says what the deployment's networks leave on the host; ``--purge`` removes it.

Every link made here is a bridge or a veth of the root namespace whose name holds
this run's id, with addresses from this run's NUBIS_NETWORK_POOL; each test removes what it made.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import transaction
from rest_framework.test import APIClient

from compute.drivers import network as plumbing
from compute.drivers.network import NetSpec, Rule
from compute.models import Flavor, Host, Image, ImageKind, Instance, InstanceState, Network
from compute.services.hosts import host_heartbeat
from compute.services.networks import default_network, network_create
from compute.services.ports import chain_owner, local_routes, tag_prefix
from compute.services.reconcile import reconcile_host
from compute.tasks import local_driver
from security.audit import Actor
from tenants.models import Role, Tenant
from tests.compute.conftest import remove_network_leftovers
from tests.conftest import ROOT
from tests.factories import add_member, make_tenant

RUN = secrets.token_hex(3)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
    return proc


def pool_subnet(index: int) -> ipaddress.IPv4Network:
    """The INDEXth /24 of this run's pool (the allocator hands them out in this order)."""
    pool = ipaddress.IPv4Network(settings.NUBIS_NETWORK_POOL)
    subnets = pool.subnets(new_prefix=max(24, pool.prefixlen))
    for _ in range(index):
        next(subnets)
    return next(subnets)


@pytest.fixture
def dummy() -> Iterator[str]:
    """A bridge with no ports in the root namespace, up: someone else's network (a VPN, Docker...).

    (This kernel has no dummy interfaces.)"""
    name = f"xbr{RUN}"
    sh("ip", "link", "add", name, "type", "bridge")
    try:
        sh("ip", "link", "set", name, "up")
        yield name
    finally:
        sh("ip", "link", "del", name, check=False)


def member_of(slug: str) -> tuple[Tenant, Actor, APIClient]:
    tenant = make_tenant(slug)
    user = add_member(tenant, role=Role.MEMBER)
    client = APIClient()
    client.force_authenticate(user)
    return tenant, Actor(user.username, "api", user.pk), client


def instance(tenant: Tenant, name: str, **fields: object) -> Instance:
    """An instance row (nothing on the host): the reconciler only asks whether it is live."""
    flavor, _ = Flavor.objects.get_or_create(
        name="leftovers", defaults={"vcpus": 1, "ram_mib": 64, "disk_gib": 1}
    )
    image, _ = Image.objects.get_or_create(
        name="leftovers",
        defaults={
            "kind": ImageKind.KERNEL,
            "os_name": "test",
            "disk_path": "/nonexistent",
            "sha256": "0" * 64,
        },
    )
    values: dict[str, object] = {"state": InstanceState.RUNNING, "vcpus": 1, "ram_mib": 64, "disk_gib": 1}
    return Instance.objects.create(
        tenant=tenant, name=name, flavor=flavor, image=image, **{**values, **fields}
    )


# --- item 9: the allocator and the host's routes ----------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_allocator_skips_a_subnet_routed_on_this_host(dummy: str) -> None:
    """This machine's routes count as its agent reports them: the control process reads no host."""
    first, second = pool_subnet(0), pool_subnet(1)
    address = f"{first.network_address + 1}/{first.prefixlen}"
    here = Host.objects.create(name=f"here-{RUN}", uri="qemu:///system")
    sh("ip", "addr", "add", address, "dev", dummy)
    assert host_heartbeat(here.name, routes=local_routes())  # what the agent's heartbeat does
    tenant, actor, client = member_of("routes-a")

    with transaction.atomic():  # as in instance_create, its caller
        network = default_network(tenant, actor)
    assert network.cidr == str(second), "the pool's first subnet is routed on this host already"

    response = client.post(
        "/api/v1/tenants/routes-a/networks/", {"name": "mine", "cidr": str(first)}, format="json"
    )
    assert response.status_code == 400, response.content
    error = response.json()["errors"][0]
    assert (error["field"], error["rule"]) == ("cidr", "route"), error
    assert f"overlaps the route {first} (dev {dummy})" in error["message"], error
    assert not Network.objects.for_tenant(tenant).filter(name="mine").exists()

    # Once the other network is gone (and the next heartbeat says so), its subnet can be had again.
    sh("ip", "addr", "del", address, "dev", dummy)
    assert host_heartbeat(here.name, routes=local_routes())
    created = client.post(
        "/api/v1/tenants/routes-a/networks/", {"name": "mine", "cidr": str(first)}, format="json"
    )
    assert created.status_code == 201, created.content


@pytest.mark.django_db(transaction=True)
def test_allocator_skips_routes_a_compute_host_reported(dummy: str) -> None:
    """The control process need not be the compute host: each agent reports its host's routes."""
    first, second, third = pool_subnet(0), pool_subnet(1), pool_subnet(2)
    sh("ip", "addr", "add", f"{third.network_address + 7}/{third.prefixlen}", "dev", dummy)
    routes = local_routes()
    assert routes is not None
    assert {"cidr": str(third), "dev": dummy} in routes

    remote = Host.objects.create(name=f"remote-{RUN}", uri="qemu+ssh://remote/system")
    version = remote.version
    assert host_heartbeat(remote.name, routes=[{"cidr": str(first), "dev": "tun0"}])
    remote.refresh_from_db()
    assert remote.routes == [{"cidr": str(first), "dev": "tun0"}]
    assert remote.version == version, "a heartbeat's routes do not make the scheduler re-read the host"

    tenant, actor, client = member_of("routes-b")
    with transaction.atomic():
        assert default_network(tenant, actor).cidr == str(second)
    response = client.post(
        "/api/v1/tenants/routes-b/networks/", {"name": "x", "cidr": str(first)}, format="json"
    )
    assert response.status_code == 400, response.content
    assert f"{first} (dev tun0) on host {remote.name}" in response.json()["errors"][0]["message"]

    # A route through this deployment's own bridge is a network of its own database: once that
    # network is deleted, its subnet is free again (its bridge is removed before a new one is made).
    gone = network_create(actor=actor, tenant=tenant, name="gone", cidr=str(pool_subnet(3)))
    Network.objects.unscoped().filter(pk=gone.pk).update(deleted_at=remote.registered_at)
    host_heartbeat(remote.name, routes=[{"cidr": str(pool_subnet(3)), "dev": gone.bridge}])
    again = network_create(actor=actor, tenant=tenant, name="again", cidr=str(pool_subnet(3)))
    assert again.cidr == str(pool_subnet(3))


# --- item 12: chains named for their deployment, removed when no live instance needs them -----------


def owned_lines(owner: str) -> list[str]:
    return [
        line
        for table in ("filter", "nat")
        for line in sh("iptables", "-w", "-t", table, "-S").stdout.splitlines()
        if f"-{owner}-" in line
    ]


@pytest.mark.django_db(transaction=True)
def test_reconciler_removes_rules_of_ports_whose_interface_is_gone() -> None:
    """An agent killed between destroying a domain and removing its rules: the tap is gone."""
    owner = chain_owner()
    tenant = make_tenant("leaky")
    here = Host.objects.create(name=f"here-{RUN}", uri=settings.LIBVIRT_URI)
    elsewhere = Host.objects.create(name=f"elsewhere-{RUN}", uri=settings.LIBVIRT_URI)
    live = instance(tenant, "live", host=elsewhere)  # on another host of this machine: still needed
    deleted = instance(tenant, "deleted", host=here, state=InstanceState.DELETED)
    killed = f"nt{uuid.uuid4().hex[:12]}"  # an instance row flushed with a test database, say
    other_owner = f"x{RUN}"  # another deployment on this machine, whose chains are not ours
    ports = [live.port_name, deleted.port_name, killed]
    # Chains an older version named without owner: the deleted instance's are this deployment's.
    old_deleted = instance(tenant, "old", host=here, state=InstanceState.DELETED).port_name
    unknown = f"nt{uuid.uuid4().hex[:12]}"
    try:
        for port in (old_deleted, unknown):
            sh("iptables", "-w", "-N", f"NSG-{port}")
            sh("iptables", "-w", "-A", f"NSG-{port}", "-j", "DROP")
            sh(
                "iptables",
                "-w",
                "-A",
                "NUBIS-NSG",
                "-m",
                "physdev",
                "--physdev-out",
                port,
                "-j",
                f"NSG-{port}",
            )
        for n, port in enumerate([*ports, killed]):
            plumbing.port_rules_set(
                port,
                f"10.9.9.{n + 2}",
                [Rule("tcp", 22, None, "0.0.0.0/0")],
                other_owner if n == 3 else owner,
            )
        assert set(ports) <= plumbing.port_chains_list(owner)
        assert not any(Path(f"/sys/class/net/{p}").exists() for p in ports)

        report = reconcile_host(here, local_driver())

        left = plumbing.port_chains_list(owner)
        assert live.port_name in left
        assert deleted.port_name not in left
        assert killed not in left
        # (The session's agent, when one runs, may have removed them first; else this pass did.)
        assert f"rules:{killed}" in report.orphans_removed or not report.orphans_removed
        spoof = sh("iptables", "-w", "-S", "NUBIS-SPOOF").stdout
        assert killed in spoof  # only the other deployment's jump is left for that port name
        assert f"NSA-{owner}-{killed}" not in spoof
        assert plumbing.port_chains_list(other_owner) == {killed}
        assert Instance.objects.unscoped().get(pk=live.pk).state == InstanceState.RUNNING
        legacy = plumbing.legacy_port_chains_list()
        assert old_deleted not in legacy
        assert old_deleted not in sh("iptables", "-w", "-S", "NUBIS-NSG").stdout
        assert unknown in legacy  # nobody's we know of: left alone
    finally:
        for port in (old_deleted, unknown):
            plumbing.port_rules_remove(port, owner)  # removes the unowned name too
        for port in ports:
            plumbing.port_rules_remove(port, owner)
        plumbing.port_rules_remove(killed, other_owner)
    assert not list(owned_lines(other_owner))
    assert not {old_deleted, unknown} & plumbing.legacy_port_chains_list()


def test_test_clean_up_leaves_no_chain_bridge_or_namespace_of_the_run(settings) -> None:
    """remove_network_leftovers (run at the end of every test session) removes all of a run's
    pieces, also those a killed agent orphaned: chains of vanished ports, a bridge's chains and
    dnsmasq without the bridge."""
    settings.NUBIS_DOMAIN_PREFIX = f"nubis-z{RUN}-"
    owner = chain_owner()
    subnet = pool_subnet(250)
    network_uuid = uuid.uuid4()
    bridge = f"nbr{network_uuid.hex[:12]}"
    spec = NetSpec(
        bridge=bridge,
        cidr=str(subnet),
        gateway=str(subnet.network_address + 1),
        nat=True,
        tag=f"{tag_prefix()}{network_uuid}",
        state_dir=Path(settings.NUBIS_NETWORK_STATE_DIR) / bridge,
        owner=owner,
    )
    netns = f"{settings.NUBIS_DOMAIN_PREFIX}{uuid.uuid4()}"
    second = f"nbr{uuid.uuid4().hex[:12]}"
    second_spec = NetSpec(
        bridge=second,
        cidr=str(pool_subnet(251)),
        gateway=str(pool_subnet(251).network_address + 1),
        nat=False,
        tag=f"{tag_prefix()}{uuid.uuid4()}",
        state_dir=Path(settings.NUBIS_NETWORK_STATE_DIR) / second,
        owner=owner,
    )
    try:
        plumbing.network_ensure(spec)
        plumbing.network_ensure(second_spec)
        sh("ip", "link", "del", second)  # a bridge gone, its chains and dnsmasq not
        for port in (f"nt{uuid.uuid4().hex[:12]}", f"nv{uuid.uuid4().hex[:12]}"):
            plumbing.port_rules_set(port, str(subnet.network_address + 9), [], owner)
        sh("ip", "netns", "add", netns)
        assert len(plumbing.port_chains_list(owner)) == 2
        assert plumbing.network_chains_list(owner) == {bridge, second}

        removed = remove_network_leftovers()

        assert bridge in removed
        assert netns in removed
        assert owned_lines(owner) == []
        assert plumbing.port_chains_list(owner) == set() == plumbing.network_chains_list(owner)
        assert not Path(f"/sys/class/net/{bridge}").exists()
        assert not (Path("/var/run/netns") / netns).exists()
        assert plumbing.dnsmasq_pids(second, second_spec.state_dir) == []
        assert plumbing.dnsmasq_pids(bridge, spec.state_dir) == []
    finally:
        for each in (spec, second_spec):
            plumbing.network_remove(each)
        sh("ip", "netns", "del", netns, check=False)


# --- scripts/down ------------------------------------------------------------------------------------


def test_down_says_what_is_left_and_purges_it(settings, tmp_path: Path) -> None:
    prefix = f"nubis-d{RUN}-"
    settings.NUBIS_DOMAIN_PREFIX = prefix
    owner = chain_owner()
    subnet = pool_subnet(252)
    network_uuid, instance_uuid = uuid.uuid4(), uuid.uuid4()
    bridge, port = f"nbr{network_uuid.hex[:12]}", f"nv{instance_uuid.hex[:12]}"
    netns = f"{prefix}{instance_uuid}"
    spec = NetSpec(
        bridge=bridge,
        cidr=str(subnet),
        gateway=str(subnet.network_address + 1),
        nat=False,
        tag=f"{tag_prefix()}{network_uuid}",
        state_dir=Path(settings.NUBIS_NETWORK_STATE_DIR) / bridge,
        owner=owner,
    )
    env = {**os.environ, "NUBIS_DOMAIN_PREFIX": prefix, "NUBIS_DATA_DIR": str(tmp_path)}

    def down(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ROOT / "scripts" / "down"), *args], capture_output=True, text=True, env=env, timeout=120
        )

    try:
        plumbing.network_ensure(spec)
        plumbing.port_attach_netns(
            netns, bridge, port, "02:00:00:00:00:09", f"{subnet.network_address + 9}/24", None,
            f"{tag_prefix()}{instance_uuid}",
        )  # fmt: skip
        plumbing.port_rules_set(port, str(subnet.network_address + 9), [], owner)

        listed = down()
        assert listed.returncode == 0, listed.stderr
        out = listed.stdout
        assert f"nubis: tenant networks: left on this host by deployment '{prefix}'" in out, out
        assert f"{bridge} ({subnet.network_address + 1}/24, dnsmasq pid " in out, out
        assert f"network namespaces: {netns}" in out, out
        assert f"ports of instances still running: {port}" in out, out
        assert f"NBR-{owner}-{bridge}" in out, out
        assert f"NSA/NSG-{owner}-{port}" in out, out
        assert "--purge" in out

        refused = down("--purge")
        assert refused.returncode != 0
        assert f"instances of this deployment are still running ({port})" in refused.stderr, refused.stderr
        assert Path(f"/sys/class/net/{bridge}").exists()

        plumbing.port_detach_netns(netns, port)  # the instance stopped
        purged = down("--purge")
        assert purged.returncode == 0, purged.stderr
        assert f"bridge {bridge}" in purged.stdout, purged.stdout
        assert owned_lines(owner) == []
        assert not Path(f"/sys/class/net/{bridge}").exists()
        assert plumbing.dnsmasq_pids(bridge, spec.state_dir) == []
        assert "nothing of deployment" in down().stdout
    finally:
        plumbing.port_rules_remove(port, owner)
        plumbing.port_detach_netns(netns, port)
        plumbing.network_remove(spec)
