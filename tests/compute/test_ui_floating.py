"""Pages for floating addresses and an instance's port forwards: forms, inline errors, roles, tenancy.

No host agent runs here (the NAT is tests/compute/test_floating_ips.py's): these tests check what the
pages show and what the services were asked for.
"""

from __future__ import annotations

import re

import pytest
from django.test import Client

from compute.models import FloatingIP, FloatingPool, Network, PortForward
from security.models import AuditRecord
from tenants.models import Quota, Role, Tenant
from tenants.selectors import quota_report
from tests.compute.test_ui_networks import client_of, field_error, input_tag, instance
from tests.factories import add_member, make_tenant
from tests.scheduler.test_placement import make_host

pytestmark = pytest.mark.django_db


@pytest.fixture
def alpha() -> Tenant:
    return make_tenant("alpha")


@pytest.fixture
def member(alpha: Tenant) -> Client:
    return client_of(add_member(alpha, role=Role.MEMBER))


@pytest.fixture
def viewer(alpha: Tenant) -> Client:
    return client_of(add_member(alpha, role=Role.VIEWER))


@pytest.fixture
def pool() -> FloatingPool:
    return FloatingPool.objects.create(
        name="ext",
        cidr="198.18.77.0/24",
        interface="nxtui",
        range_start="198.18.77.10",
        range_end="198.18.77.12",
        gateway="198.18.77.1",
    )


def lan(tenant: Tenant, third: int = 1) -> Network:
    return Network.objects.create(
        tenant=tenant, name=f"lan{third}", cidr=f"10.196.{third}.0/24", gateway=f"10.196.{third}.1"
    )


def text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))


def used(tenant: Tenant) -> int:
    return int(quota_report(tenant)["resources"]["floating_ips"]["used"])


def test_member_allocates_associates_disassociates_and_releases(
    alpha: Tenant, member: Client, pool: FloatingPool
) -> None:
    host = make_host("ui-host", address="192.0.2.40")
    web = instance(alpha, "web-1", network=lan(alpha), ip_address="10.196.1.5", host=host)
    instance(alpha, "loner")  # on no network: nothing to NAT to, not offered
    page = member.get("/t/alpha/floating-ips/").content.decode()
    assert "No floating addresses yet." in page
    assert '<option value="ext"' in input_tag(page, "fip-pool") + page
    assert 'href="/t/alpha/floating-ips/" aria-current="page">Floating IPs</a>' in page  # the nav link

    response = member.post("/t/alpha/floating-ips/", {"pool": "ext"}, follow=True)
    assert response.redirect_chain == [("/t/alpha/floating-ips/", 302)]
    page = response.content.decode()
    assert "Allocated 198.18.77.10 from pool ext." in page
    fip = FloatingIP.objects.for_tenant(alpha).get()
    assert (fip.address, fip.instance) == ("198.18.77.10", None)
    assert used(alpha) == 1
    row = re.search(rf'<tr id="fip-{fip.pk}">.*?</tr>', page, re.S)
    assert row
    assert "<code>198.18.77.10</code>" in row.group(0)
    select = re.search(rf'<select id="fip-{fip.pk}-instance".*?</select>', row.group(0), re.S)
    assert select
    assert f'<option value="{web.uuid}">web-1 (10.196.1.5)</option>' in select.group(0)
    assert "loner" not in select.group(0)

    response = member.post(
        f"/t/alpha/floating-ips/{fip.pk}/associate/", {"instance": str(web.uuid)}, follow=True
    )
    assert "198.18.77.10 now reaches web-1 (10.196.1.5)." in response.content.decode()
    fip.refresh_from_db()
    assert fip.instance == web
    row = re.search(rf'<tr id="fip-{fip.pk}">.*?</tr>', response.content.decode(), re.S)
    assert row
    assert f'href="/t/alpha/instances/{web.uuid}/">web-1</a>' in row.group(0)
    assert "Disassociate" in row.group(0)
    # The instance's page and the list show it.
    detail = member.get(f"/t/alpha/instances/{web.uuid}/").content.decode()
    found = re.search(r'<dd id="floating-address">(.*?)</dd>', detail, re.S)
    assert found
    assert "<code>198.18.77.10</code>" in found.group(1)
    listing = member.get("/t/alpha/instances/").content.decode()
    assert re.search(
        rf'data-instance="{web.uuid}".*?<code class="floating"[^>]*>198.18.77.10</code>', listing, re.S
    )

    response = member.post(f"/t/alpha/floating-ips/{fip.pk}/disassociate/", follow=True)
    assert "198.18.77.10 reaches nothing now (it was web-1)." in response.content.decode()
    fip.refresh_from_db()
    assert fip.instance is None

    # Released through its confirmation page (type the address), even when associated.
    member.post(f"/t/alpha/floating-ips/{fip.pk}/associate/", {"instance": str(web.uuid)})
    confirm = member.get(f"/t/alpha/floating-ips/{fip.pk}/release/")
    assert confirm.status_code == 200
    said = text(confirm.content.decode())
    assert "Delete floating address 198.18.77.10?" in said
    assert "web-1 is no longer reachable at it." in said
    untyped = member.post(f"/t/alpha/floating-ips/{fip.pk}/release/", {"confirm": "web-1"})
    assert untyped.status_code == 400
    assert "type 198.18.77.10 to confirm" in untyped.content.decode()
    assert FloatingIP.objects.for_tenant(alpha).exists()
    response = member.post(
        f"/t/alpha/floating-ips/{fip.pk}/release/", {"confirm": "198.18.77.10"}, follow=True
    )
    assert response.redirect_chain == [("/t/alpha/floating-ips/", 302)]
    assert "Deleted floating address 198.18.77.10." in response.content.decode()
    assert not FloatingIP.objects.for_tenant(alpha).exists()
    assert used(alpha) == 0
    actions = list(
        AuditRecord.objects.filter(action__startswith="floating_ip.", outcome="success")
        .order_by("seq")
        .values_list("action", flat=True)
    )
    assert actions == [
        "floating_ip.allocate",
        "floating_ip.associate",
        "floating_ip.disassociate",
        "floating_ip.associate",
        "floating_ip.release",
    ]


def test_refusals_are_named_next_to_their_field(alpha: Tenant, member: Client) -> None:
    # No pool at all: the page says so instead of the form, and a POST is a conflict on "pool".
    page = member.get("/t/alpha/floating-ips/").content.decode()
    assert 'id="no-pool"' in page
    assert 'id="fip-pool"' not in page
    none = member.post("/t/alpha/floating-ips/", {})
    assert none.status_code == 409
    assert 'role="alert" data-field="pool" data-rule="none"' in none.content.decode()

    FloatingPool.objects.create(
        name="ext",
        cidr="198.18.78.0/24",
        interface="nxtui",
        range_start="198.18.78.10",
        range_end="198.18.78.20",
    )
    unknown = member.post("/t/alpha/floating-ips/", {"pool": "elsewhere"})
    assert unknown.status_code == 400
    page = unknown.content.decode()
    assert "unknown floating pool &#x27;elsewhere&#x27;" in field_error(page, "fip-pool")
    assert 'aria-invalid="true"' in input_tag(page, "fip-pool")

    Quota.objects.for_tenant(alpha).update(max_floating_ips=1)
    assert member.post("/t/alpha/floating-ips/", {"pool": "ext"}).status_code == 302
    over = member.post("/t/alpha/floating-ips/", {"pool": "ext"})
    assert over.status_code == 409
    assert 'data-field="floating_ips" data-rule="quota"' in over.content.decode()
    assert FloatingIP.objects.for_tenant(alpha).count() == 1

    # An instance on no tenant network: refused next to the row's instance select.
    fip = FloatingIP.objects.for_tenant(alpha).get()
    loner = instance(alpha, "loner")
    boxed = instance(alpha, "boxed", network=lan(alpha), ip_address="10.196.1.6")
    refused = member.post(f"/t/alpha/floating-ips/{fip.pk}/associate/", {"instance": str(loner.uuid)})
    assert refused.status_code == 400
    page = refused.content.decode()
    assert "is on no tenant network" in field_error(page, f"fip-{fip.pk}")
    assert 'aria-invalid="true"' in input_tag(page, f"fip-{fip.pk}-instance")
    garbage = member.post(f"/t/alpha/floating-ips/{fip.pk}/associate/", {"instance": "not-a-uuid"})
    assert garbage.status_code == 400
    assert "choose an instance" in field_error(garbage.content.decode(), f"fip-{fip.pk}")
    # An instance that has an address already is not offered again.
    FloatingIP.objects.for_tenant(alpha).filter(pk=fip.pk).update(instance=boxed)
    Quota.objects.for_tenant(alpha).update(max_floating_ips=2)
    member.post("/t/alpha/floating-ips/", {"pool": "ext"})
    page = member.get("/t/alpha/floating-ips/").content.decode()
    assert f'<option value="{boxed.uuid}">' not in page
    assert "no instance on a tenant network to associate" in page
    fip.refresh_from_db()
    assert fip.instance == boxed


def test_port_forwards_on_the_instance_page(alpha: Tenant, member: Client) -> None:
    host = make_host("ui-host", address="192.0.2.41")
    web = instance(alpha, "web-1", network=lan(alpha), ip_address="10.196.1.5", host=host)
    url = f"/t/alpha/instances/{web.uuid}/"
    page = member.get(url).content.decode()
    assert re.search(r'<table class="list" id="port-forwards">.*?None\.', page, re.S)
    assert 'for="forward-port"' in page

    response = member.post(url + "port-forwards/", {"port": "22"}, follow=True)
    assert response.redirect_chain == [(url, 302)]
    forward = PortForward.objects.for_tenant(alpha).get()
    assert (forward.instance, forward.port) == (web, 22)
    page = response.content.decode()
    assert f"Port 22 of web-1 is reached at 192.0.2.41:{forward.host_port}." in page
    row = re.search(rf'<tr data-forward="{forward.pk}">.*?</tr>', page, re.S)
    assert row
    assert f"<code>192.0.2.41:{forward.host_port}</code>" in row.group(0)
    assert "tcp/22" in row.group(0)

    bad = member.post(url + "port-forwards/", {"port": "70000"})
    assert bad.status_code == 400
    page = bad.content.decode()
    found = re.search(r'<p class="field-error" id="forward-error"[^>]*>(.*?)</p>', page, re.S)
    assert found
    assert "port must be between 1 and 65535, not 70000" in found.group(1)
    assert 'aria-invalid="true"' in input_tag(page, "forward-port")
    again = member.post(url + "port-forwards/", {"port": "22"})
    assert again.status_code == 409
    assert "is forwarded already" in again.content.decode()
    loner = instance(alpha, "loner")
    refused = member.post(f"/t/alpha/instances/{loner.uuid}/port-forwards/", {"port": "22"})
    assert refused.status_code == 400
    assert 'data-field="instance" data-rule="network"' in refused.content.decode()
    assert PortForward.objects.for_tenant(alpha).count() == 1

    response = member.post(f"{url}port-forwards/{forward.pk}/delete/", follow=True)
    assert (
        f"Removed the forward of host port {forward.host_port} to port 22 of web-1."
        in response.content.decode()
    )
    assert not PortForward.objects.for_tenant(alpha).exists()
    assert list(
        AuditRecord.objects.filter(action__startswith="port_forward.", outcome="success")
        .order_by("seq")
        .values_list("action", flat=True)
    ) == ["port_forward.create", "port_forward.delete"]


def test_viewers_see_the_pages_without_forms_and_cannot_post(
    alpha: Tenant, viewer: Client, pool: FloatingPool
) -> None:
    web = instance(alpha, "web-1", network=lan(alpha), ip_address="10.196.1.5")
    fip = FloatingIP.objects.create(tenant=alpha, pool=pool, address="198.18.77.10", instance=web)
    spare = FloatingIP.objects.create(tenant=alpha, pool=pool, address="198.18.77.11")
    forward = PortForward.objects.create(tenant=alpha, instance=web, port=80, host_port=30990)
    page = viewer.get("/t/alpha/floating-ips/").content.decode()
    assert "<code>198.18.77.10</code>" in page
    assert "<code>198.18.77.11</code>" in page
    assert '<form method="post" action="/t/alpha/' not in page
    assert "Release" not in page
    assert "changing it needs the member role" in page
    detail = viewer.get(f"/t/alpha/instances/{web.uuid}/").content.decode()
    assert "<code>the host:30990</code>" in detail  # read: the forward, without its forms
    assert "port-forwards/" not in detail
    posts = [
        ("floating-ips/", {"pool": "ext"}),
        (f"floating-ips/{spare.pk}/associate/", {"instance": str(web.uuid)}),
        (f"floating-ips/{fip.pk}/disassociate/", {}),
        (f"floating-ips/{fip.pk}/release/", {"confirm": "198.18.77.10"}),
        (f"instances/{web.uuid}/port-forwards/", {"port": "22"}),
        (f"instances/{web.uuid}/port-forwards/{forward.pk}/delete/", {}),
    ]
    for suffix, data in posts:
        assert viewer.post(f"/t/alpha/{suffix}", data).status_code == 403, suffix
    assert viewer.get(f"/t/alpha/floating-ips/{fip.pk}/release/").status_code == 403
    assert list(
        FloatingIP.objects.for_tenant(alpha).order_by("address").values_list("instance", flat=True)
    ) == [
        web.pk,
        None,
    ]
    assert list(PortForward.objects.for_tenant(alpha).values_list("port", flat=True)) == [80]


def test_another_tenants_objects_answer_404_and_never_show(
    alpha: Tenant, member: Client, pool: FloatingPool
) -> None:
    beta = make_tenant("beta")
    theirs = instance(beta, "beta-vm", network=lan(beta, 9), ip_address="10.196.9.5")
    their_fip = FloatingIP.objects.create(tenant=beta, pool=pool, address="198.18.77.12", instance=theirs)
    their_forward = PortForward.objects.create(tenant=beta, instance=theirs, port=80, host_port=30991)
    mine = instance(alpha, "web-1", network=lan(alpha), ip_address="10.196.1.5")
    my_fip = FloatingIP.objects.create(tenant=alpha, pool=pool, address="198.18.77.10")
    page = member.get("/t/alpha/floating-ips/").content.decode()
    for marker in ("198.18.77.12", "beta-vm", "10.196.9."):
        assert marker not in page, marker
    assert member.get("/t/beta/floating-ips/").status_code == 404
    posts = [
        (f"floating-ips/{their_fip.pk}/associate/", {"instance": str(mine.uuid)}),
        (f"floating-ips/{their_fip.pk}/disassociate/", {}),
        (f"floating-ips/{their_fip.pk}/release/", {"confirm": "198.18.77.12"}),
        (f"instances/{theirs.uuid}/port-forwards/", {"port": "22"}),
        (f"instances/{mine.uuid}/port-forwards/{their_forward.pk}/delete/", {}),
    ]
    for suffix, data in posts:
        assert member.post(f"/t/alpha/{suffix}", data).status_code == 404, suffix
    assert member.get(f"/t/alpha/floating-ips/{their_fip.pk}/release/").status_code == 404
    # Their instance named in my form is unknown, not theirs to take.
    taken = member.post(f"/t/alpha/floating-ips/{my_fip.pk}/associate/", {"instance": str(theirs.uuid)})
    assert taken.status_code == 400
    assert "unknown instance" in field_error(taken.content.decode(), f"fip-{my_fip.pk}")
    their_fip.refresh_from_db()
    my_fip.refresh_from_db()
    assert (their_fip.instance, my_fip.instance) == (theirs, None)
    assert PortForward.objects.for_tenant(beta).count() == 1
    assert not PortForward.objects.for_tenant(alpha).exists()


def test_pages_have_labels_for_every_input(alpha: Tenant, member: Client, pool: FloatingPool) -> None:
    web = instance(alpha, "web-1", network=lan(alpha), ip_address="10.196.1.5")
    FloatingIP.objects.create(tenant=alpha, pool=pool, address="198.18.77.10")
    for url in ("/t/alpha/floating-ips/", f"/t/alpha/instances/{web.uuid}/"):
        page = member.get(url).content.decode()
        for tag in re.findall(r"<(?:input|select)\b[^>]*>", page):
            if 'type="hidden"' in tag or ("forward-port" not in tag and "instances/" in url):
                continue
            found = re.search(r'id="([^"]+)"', tag)
            assert found, f"{url}: an input without id: {tag}"
            assert f'for="{found.group(1)}"' in page, f"{url}: no label for {found.group(1)}"
