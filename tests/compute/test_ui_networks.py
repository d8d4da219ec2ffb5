"""Pages for networks, security groups, server groups and snapshots: forms, inline errors, roles, tenancy."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.test import Client

from compute.models import (
    CpuMode,
    Flavor,
    Image,
    ImageKind,
    Instance,
    InstanceState,
    Network,
    Operation,
    OperationKind,
    OperationState,
    SecurityGroup,
    SecurityRule,
    ServerGroup,
    Snapshot,
)
from security.models import AuditRecord
from tenants.models import Role, Tenant
from tests.factories import add_member, make_tenant

pytestmark = pytest.mark.django_db


def client_of(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def alpha() -> Tenant:
    return make_tenant("alpha")


@pytest.fixture
def member(alpha: Tenant) -> Client:
    return client_of(add_member(alpha, role=Role.MEMBER))


@pytest.fixture
def viewer(alpha: Tenant) -> Client:
    return client_of(add_member(alpha, role=Role.VIEWER))


def instance(tenant: Tenant, name: str, **kw: object) -> Instance:
    flavor, _ = Flavor.objects.get_or_create(
        name="ui.small", defaults={"vcpus": 1, "ram_mib": 128, "disk_gib": 1, "cpu_mode": CpuMode.EMULATED}
    )
    image, _ = Image.objects.get_or_create(
        name="ui-image",
        defaults={
            "kind": ImageKind.KERNEL,
            "os_name": "test",
            "disk_path": "/nonexistent",
            "sha256": "0" * 64,
        },
    )
    fields: dict[str, object] = {
        "state": InstanceState.RUNNING,
        "vcpus": 1,
        "ram_mib": 128,
        "current_ram_mib": 128,
        "disk_gib": 1,
        **kw,
    }
    return Instance.objects.create(tenant=tenant, name=name, flavor=flavor, image=image, **fields)


def field_error(page: str, field_id: str) -> str:
    """The text of the error shown next to the field, checking the input points at it."""
    found = re.search(rf'<p class="field-error" id="{field_id}-error"[^>]*>(.*?)</p>', page, re.S)
    assert found, f"no error next to {field_id}"
    return re.sub(r"<[^>]+>", "", found.group(1))


def input_tag(page: str, field_id: str) -> str:
    found = re.search(rf'<(?:input|select)[^>]* id="{field_id}"[^>]*>', page)
    assert found, f"no input {field_id}"
    return found.group(0)


# -- networks ----------------------------------------------------------------------------------
def test_member_creates_a_network_and_sees_it_listed(alpha: Tenant, member: Client) -> None:
    response = member.post(
        "/t/alpha/networks/", {"name": "web", "cidr": "10.197.1.0/24", "nat_egress": "on"}, follow=True
    )
    assert response.redirect_chain == [("/t/alpha/networks/", 302)]
    page = response.content.decode()
    assert "Created network web (10.197.1.0/24, gateway 10.197.1.1)." in page
    network = Network.objects.for_tenant(alpha).get(name="web")
    assert (network.cidr, network.gateway, network.nat_egress) == ("10.197.1.0/24", "10.197.1.1", True)
    assert "<code>10.197.1.0/24</code>" in page
    assert AuditRecord.objects.filter(action="network.create", outcome="success").count() == 1


def test_a_bad_cidr_is_named_next_to_its_field(alpha: Tenant, member: Client) -> None:
    response = member.post("/t/alpha/networks/", {"name": "web", "cidr": "10.197.1.5/24"})
    assert response.status_code == 400
    page = response.content.decode()
    error = field_error(page, "network-cidr")
    assert error.startswith("cidr:")
    assert "host bits set; did you mean 10.197.1.0/24?" in error
    tag = input_tag(page, "network-cidr")
    assert 'aria-invalid="true"' in tag
    assert 'aria-describedby="network-cidr-hint network-cidr-error"' in tag
    assert 'value="10.197.1.5/24"' in tag  # what was typed comes back, to be corrected
    assert 'value="web"' in input_tag(page, "network-name")
    assert 'role="alert" data-field="cidr" data-rule="cidr"' in page
    assert not Network.objects.for_tenant(alpha).exists()


def test_a_bad_name_is_named_next_to_its_field(member: Client) -> None:
    response = member.post("/t/alpha/networks/", {"name": "9 lives", "cidr": "10.197.2.0/24"})
    assert response.status_code == 400
    assert "1-63 letters, digits, - or _" in field_error(response.content.decode(), "network-name")


def test_an_overlapping_subnet_is_a_conflict(alpha: Tenant, member: Client) -> None:
    assert member.post("/t/alpha/networks/", {"name": "one", "cidr": "10.197.3.0/24"}).status_code == 302
    response = member.post("/t/alpha/networks/", {"name": "two", "cidr": "10.197.0.0/16"})
    assert response.status_code == 409
    error = field_error(response.content.decode(), "network-cidr")
    assert "overlaps network &#x27;one&#x27; (10.197.3.0/24) of this tenant" in error
    assert Network.objects.for_tenant(alpha).count() == 1


def test_nat_egress_is_turned_on_and_off(alpha: Tenant, member: Client) -> None:
    member.post("/t/alpha/networks/", {"name": "web", "cidr": "10.197.4.0/24"})
    network = Network.objects.for_tenant(alpha).get(name="web")
    assert network.nat_egress is False
    page = member.get("/t/alpha/networks/").content.decode()
    assert 'name="nat_egress" value="on"' in page
    response = member.post(f"/t/alpha/networks/{network.uuid}/nat/", {"nat_egress": "on"}, follow=True)
    assert "NAT egress of web is on." in response.content.decode()
    network.refresh_from_db()
    assert network.nat_egress is True
    member.post(f"/t/alpha/networks/{network.uuid}/nat/", {"nat_egress": "off"})
    network.refresh_from_db()
    assert network.nat_egress is False
    bad = member.post(f"/t/alpha/networks/{network.uuid}/nat/", {"nat_egress": "maybe"})
    assert bad.status_code == 400
    assert "nat_egress must be on or off" in field_error(bad.content.decode(), f"network-{network.uuid}")


def test_a_network_in_use_is_not_deleted_and_a_free_one_is(alpha: Tenant, member: Client) -> None:
    member.post("/t/alpha/networks/", {"name": "used", "cidr": "10.197.5.0/24"})
    member.post("/t/alpha/networks/", {"name": "free", "cidr": "10.197.6.0/24"})
    used = Network.objects.for_tenant(alpha).get(name="used")
    instance(alpha, "web-1", network=used, ip_address="10.197.5.2")
    page = member.get("/t/alpha/networks/").content.decode()
    assert re.search(r"<th scope=\"row\">used</th>.*?web-1", page, re.S)
    assert f'href="/t/alpha/networks/{used.uuid}/delete/"' in page  # to its confirmation page
    response = member.post(f"/t/alpha/networks/{used.uuid}/delete/", {"confirm": "used"})
    assert response.status_code == 409
    assert "network &#x27;used&#x27; is used by instance web-1" in response.content.decode()
    free = Network.objects.for_tenant(alpha).get(name="free")
    response = member.post(f"/t/alpha/networks/{free.uuid}/delete/", {"confirm": "free"}, follow=True)
    assert "Deleted network free." in response.content.decode()
    assert list(Network.objects.for_tenant(alpha).filter(deleted_at=None).values_list("name", flat=True)) == [
        "used"
    ]
    assert "10.197.6.0/24" not in response.content.decode()


# -- security groups ---------------------------------------------------------------------------
def test_member_creates_a_group_adds_and_removes_rules(alpha: Tenant, member: Client) -> None:
    response = member.post("/t/alpha/security-groups/", {"name": "web", "description": "HTTP in"})
    group = SecurityGroup.objects.for_tenant(alpha).get(name="web")
    assert response["Location"] == f"/t/alpha/security-groups/{group.pk}/"
    base = f"/t/alpha/security-groups/{group.pk}/"
    response = member.post(
        base + "rules/",
        {"protocol": "tcp", "port_min": "80", "port_max": "", "cidr": "0.0.0.0/0"},
        follow=True,
    )
    assert "Added rule tcp:80-80 from 0.0.0.0/0 to web." in response.content.decode()
    member.post(
        base + "rules/", {"protocol": "udp", "port_min": "5000", "port_max": "5010", "cidr": "10.0.0.0/8"}
    )
    member.post(base + "rules/", {"protocol": "icmp", "port_min": "", "port_max": "", "cidr": "192.0.2.0/24"})
    page = member.get(base).content.decode()
    assert "5000\u20135010" in page  # an en dash
    assert "<code>192.0.2.0/24</code>" in page
    listing = member.get("/t/alpha/security-groups/").content.decode()
    assert f'href="{base}">web</a>' in listing
    assert "<code>udp</code> 5000\u20135010" in listing
    rule = SecurityRule.objects.for_tenant(alpha).get(protocol="icmp")
    response = member.post(f"{base}rules/{rule.pk}/delete/", follow=True)
    assert "Removed rule icmp from 192.0.2.0/24 from web." in response.content.decode()
    assert SecurityRule.objects.for_tenant(alpha).filter(group=group).count() == 2
    response = member.post(f"{base}delete/", {"confirm": "web"}, follow=True)
    assert response.redirect_chain == [("/t/alpha/security-groups/", 302)]
    assert not SecurityGroup.objects.for_tenant(alpha).exists()


@pytest.mark.parametrize(
    ("data", "field", "why"),
    [
        (
            {"protocol": "tcp", "port_min": "", "cidr": "0.0.0.0/0"},
            "rule-port-min",
            "a tcp rule needs port_min",
        ),
        (
            {"protocol": "tcp", "port_min": "70000", "cidr": "0.0.0.0/0"},
            "rule-port-min",
            "between 1 and 65535",
        ),
        (
            {"protocol": "udp", "port_min": "90", "port_max": "80", "cidr": "0.0.0.0/0"},
            "rule-port-max",
            "below",
        ),
        ({"protocol": "tcp", "port_min": "22", "cidr": "10.1.2.3"}, "rule-cidr", "give the prefix length"),
        ({"protocol": "gre", "cidr": "0.0.0.0/0"}, "rule-protocol", "protocol must be one of"),
        ({"protocol": "icmp", "port_min": "8", "cidr": "0.0.0.0/0"}, "rule-port-min", "has no ports"),
    ],
)
def test_a_bad_rule_is_named_next_to_its_field(
    alpha: Tenant, member: Client, data: dict[str, str], field: str, why: str
) -> None:
    group = SecurityGroup.objects.create(tenant=alpha, name="web")
    response = member.post(f"/t/alpha/security-groups/{group.pk}/rules/", data)
    assert response.status_code == 400
    page = response.content.decode()
    assert why in field_error(page, field)
    assert 'aria-invalid="true"' in input_tag(page, field)
    assert not SecurityRule.objects.for_tenant(alpha).exists()


def test_a_taken_group_name_is_a_conflict(alpha: Tenant, member: Client) -> None:
    SecurityGroup.objects.create(tenant=alpha, name="web")
    response = member.post("/t/alpha/security-groups/", {"name": "web"})
    assert response.status_code == 409
    assert "a security group named &#x27;web&#x27; already exists" in field_error(
        response.content.decode(), "group-name"
    )


def test_a_group_in_use_is_not_deleted(alpha: Tenant, member: Client) -> None:
    group = SecurityGroup.objects.create(tenant=alpha, name="web")
    instance(alpha, "web-1").groups_set([group])
    response = member.post(f"/t/alpha/security-groups/{group.pk}/delete/", {"confirm": "web"})
    assert response.status_code == 409
    assert "is used by instance web-1" in response.content.decode()
    assert SecurityGroup.objects.for_tenant(alpha).filter(pk=group.pk).exists()


# -- server groups -----------------------------------------------------------------------------
def test_member_creates_and_deletes_a_server_group(alpha: Tenant, member: Client) -> None:
    response = member.post("/t/alpha/server-groups/", {"name": "db", "policy": "anti-affinity"}, follow=True)
    page = response.content.decode()
    assert "Created server group db (anti-affinity)." in page
    assert "Every member runs on a different host." in page
    group = ServerGroup.objects.for_tenant(alpha).get(name="db")
    assert group.policy == "anti-affinity"
    response = member.post(f"/t/alpha/server-groups/{group.pk}/delete/", {"confirm": "db"}, follow=True)
    assert "Deleted server group db." in response.content.decode()
    assert not ServerGroup.objects.for_tenant(alpha).exists()


def test_a_bad_policy_is_named_next_to_its_field(alpha: Tenant, member: Client) -> None:
    response = member.post("/t/alpha/server-groups/", {"name": "db", "policy": "together"})
    assert response.status_code == 400
    page = response.content.decode()
    assert "policy must be one of affinity" in field_error(page, "sgroup-policy")
    assert 'aria-describedby="sgroup-policy-error" aria-invalid="true"' in page


def test_a_server_group_with_members_refuses_deletion(alpha: Tenant, member: Client) -> None:
    group = ServerGroup.objects.create(tenant=alpha, name="db", policy="affinity")
    instance(alpha, "db-1", server_group=group)
    assert re.search(
        r"<th scope=\"row\">db</th>.*?db-1", member.get("/t/alpha/server-groups/").content.decode(), re.S
    )
    response = member.post(f"/t/alpha/server-groups/{group.pk}/delete/", {"confirm": "db"})
    assert response.status_code == 409
    assert "server group &#x27;db&#x27; is used by instance db-1" in response.content.decode()
    assert ServerGroup.objects.for_tenant(alpha).filter(pk=group.pk).exists()


# -- snapshots ---------------------------------------------------------------------------------
def test_snapshots_are_reverted_and_deleted_as_operations(alpha: Tenant, member: Client) -> None:
    vm = instance(alpha, "vm-1")
    snap = Snapshot.objects.create(tenant=alpha, instance=vm, name="before-upgrade")
    page = member.get("/t/alpha/snapshots/").content.decode()
    assert "before-upgrade" in page
    assert "vm-1" in page
    response = member.post(f"/t/alpha/snapshots/{snap.pk}/revert/", follow=True)
    op = Operation.objects.for_tenant(alpha).get(kind=OperationKind.REVERT)
    assert op.params["snapshot"] == snap.pk
    page = response.content.decode()
    assert f"Requested revert to snapshot vm-1@before-upgrade: operation {op.uuid} is pending." in page
    assert "revert to snapshot: pending" in page  # the row shows the operation under way
    # Busy with the revert: a delete now is refused, and the row says why.
    response = member.post(f"/t/alpha/snapshots/{snap.pk}/delete/")
    assert response.status_code == 409
    assert "busy with a revert operation" in field_error(response.content.decode(), f"snapshot-{snap.pk}")
    Operation.objects.for_tenant(alpha).filter(pk=op.pk).update(state=OperationState.SUCCEEDED)
    response = member.post(f"/t/alpha/snapshots/{snap.pk}/delete/", follow=True)
    deleting = Operation.objects.for_tenant(alpha).get(kind=OperationKind.DELETE_SNAPSHOT)
    assert f"operation {deleting.uuid} is pending." in response.content.decode()
    assert AuditRecord.objects.filter(action="snapshot.delete", outcome="success").count() == 1


# -- roles and tenancy -------------------------------------------------------------------------
PAGES = ("networks/", "security-groups/", "server-groups/", "snapshots/")


def test_viewers_see_the_pages_without_forms_and_cannot_post(alpha: Tenant, viewer: Client) -> None:
    network = Network.objects.create(tenant=alpha, name="web", cidr="10.197.7.0/24", gateway="10.197.7.1")
    group = SecurityGroup.objects.create(tenant=alpha, name="web")
    rule = SecurityRule.objects.create(
        tenant=alpha, group=group, protocol="tcp", port_min=22, port_max=22, cidr="0.0.0.0/0"
    )
    sgroup = ServerGroup.objects.create(tenant=alpha, name="db", policy="affinity")
    snap = Snapshot.objects.create(tenant=alpha, instance=instance(alpha, "vm-1"), name="s1")
    for suffix in (*PAGES, f"security-groups/{group.pk}/"):
        response = viewer.get(f"/t/alpha/{suffix}")
        assert response.status_code == 200, suffix
        page = response.content.decode()
        assert '<form method="post" action="/t/alpha/' not in page, suffix
        assert "changing it needs the member role" in page
    posts = [
        ("networks/", {"name": "x", "cidr": "10.197.8.0/24"}),
        (f"networks/{network.uuid}/nat/", {"nat_egress": "on"}),
        (f"networks/{network.uuid}/delete/", {}),
        ("security-groups/", {"name": "x"}),
        (f"security-groups/{group.pk}/delete/", {}),
        (f"security-groups/{group.pk}/rules/", {"protocol": "any", "cidr": "0.0.0.0/0"}),
        (f"security-groups/{group.pk}/rules/{rule.pk}/delete/", {}),
        ("server-groups/", {"name": "x", "policy": "affinity"}),
        (f"server-groups/{sgroup.pk}/delete/", {}),
        (f"snapshots/{snap.pk}/revert/", {}),
        (f"snapshots/{snap.pk}/delete/", {}),
    ]
    for suffix, data in posts:
        assert viewer.post(f"/t/alpha/{suffix}", data).status_code == 403, suffix
    network.refresh_from_db()
    assert (network.nat_egress, network.deleted_at) == (False, None)
    assert SecurityGroup.objects.for_tenant(alpha).count() == 1
    assert SecurityRule.objects.for_tenant(alpha).count() == 1
    assert ServerGroup.objects.for_tenant(alpha).count() == 1
    assert not Operation.objects.for_tenant(alpha).exists()


def test_another_tenants_objects_answer_404_and_never_show(alpha: Tenant, member: Client) -> None:
    beta = make_tenant("beta")
    net = Network.objects.create(tenant=beta, name="beta-net", cidr="10.197.9.0/24", gateway="10.197.9.1")
    group = SecurityGroup.objects.create(tenant=beta, name="beta-sg")
    rule = SecurityRule.objects.create(
        tenant=beta, group=group, protocol="udp", port_min=53, port_max=53, cidr="10.197.9.0/24"
    )
    mine = SecurityGroup.objects.create(tenant=alpha, name="mine")
    sgroup = ServerGroup.objects.create(tenant=beta, name="beta-grp", policy="affinity")
    snap = Snapshot.objects.create(tenant=beta, instance=instance(beta, "beta-vm"), name="beta-snap")
    for suffix in PAGES:
        page = member.get(f"/t/alpha/{suffix}").content.decode()
        for marker in ("beta-net", "10.197.9.", "beta-sg", "beta-grp", "beta-vm", "beta-snap"):
            assert marker not in page, (suffix, marker)
        assert member.get(f"/t/beta/{suffix}").status_code == 404
    assert member.get(f"/t/alpha/security-groups/{group.pk}/").status_code == 404
    posts = [
        (f"networks/{net.uuid}/nat/", {"nat_egress": "on"}),
        (f"networks/{net.uuid}/delete/", {}),
        (f"security-groups/{group.pk}/delete/", {}),
        (f"security-groups/{group.pk}/rules/", {"protocol": "any", "cidr": "0.0.0.0/0"}),
        (f"security-groups/{mine.pk}/rules/{rule.pk}/delete/", {}),
        (f"server-groups/{sgroup.pk}/delete/", {}),
        (f"snapshots/{snap.pk}/revert/", {}),
        (f"snapshots/{snap.pk}/delete/", {}),
    ]
    for suffix, data in posts:
        assert member.post(f"/t/alpha/{suffix}", data).status_code == 404, suffix
    assert member.post("/t/beta/networks/", {"name": "x", "cidr": "10.197.10.0/24"}).status_code == 404
    net.refresh_from_db()
    assert (net.nat_egress, net.deleted_at) == (False, None)
    assert SecurityRule.objects.for_tenant(beta).count() == 1
    assert ServerGroup.objects.for_tenant(beta).count() == 1
    assert not Operation.objects.for_tenant(beta).exists()


def test_anonymous_visitors_are_sent_to_log_in() -> None:
    make_tenant("alpha")
    response = Client().get("/t/alpha/networks/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")


def test_pages_have_labels_for_every_input(alpha: Tenant, member: Client) -> None:
    group = SecurityGroup.objects.create(tenant=alpha, name="web")
    for suffix in (*PAGES, f"security-groups/{group.pk}/"):
        page = member.get(f"/t/alpha/{suffix}").content.decode()
        for tag in re.findall(r"<(?:input|select)\b[^>]*>", page):
            if 'type="hidden"' in tag:
                continue
            found = re.search(r'id="([^"]+)"', tag)
            assert found, f"{suffix}: an input without id: {tag}"
            assert f'for="{found.group(1)}"' in page, f"{suffix}: no label for {found.group(1)}"
