"""The instance pages through Django's test client: the list and its filters, the create form
with its inline errors and quota preview data, one instance's page, actions and the dashboard.
(The browser tests in tests/e2e drive the same pages in Chromium, with real guests.)"""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import pytest
from django.test import Client

from compute.models import CpuMode, Flavor, Image, ImageKind, Instance, InstanceState, Operation
from tenants.models import Role, Tenant
from tests.factories import add_member, make_tenant
from tests.scheduler.test_placement import make_host

pytestmark = pytest.mark.django_db


@pytest.fixture
def catalog() -> None:
    Image.objects.create(
        name="u-image", kind=ImageKind.KERNEL, os_name="Test OS", disk_path="/x", sha256="0" * 64
    )
    Image.objects.create(
        name="u-rootfs", kind=ImageKind.ROOTFS, os_name="busybox", disk_path="/y", sha256="1" * 64
    )
    Flavor.objects.create(name="u.small", vcpus=1, ram_mib=256, disk_gib=1, cpu_mode=CpuMode.EMULATED)
    Flavor.objects.create(name="u.big", vcpus=4, ram_mib=1024, disk_gib=1, cpu_mode=CpuMode.HARDWARE)
    make_host("u-host", cpus=8, ram_mib=16384)


def member_client(tenant: Tenant, role: Role = Role.MEMBER) -> Client:
    client = Client()
    client.force_login(add_member(tenant, role=role))
    return client


def html_of(response: Any) -> str:
    """The page's text with entities decoded (names in messages are quoted)."""
    return unescape(response.content.decode())


def create(client: Client, tenant: Tenant, **fields: str) -> Any:
    body = {"name": "web", "kind": "vm", "flavor": "u.small", "image": "u-image", "network": "__none__"}
    body.update({"priority": "1", **fields})
    return client.post(f"/t/{tenant.slug}/instances/new/", body)


def test_create_from_the_form_then_see_it_in_the_list_and_on_its_page(catalog: None) -> None:
    tenant = make_tenant("ui")
    client = member_client(tenant)
    form = client.get(f"/t/{tenant.slug}/instances/new/")
    assert form.status_code == 200
    text = form.content.decode()
    # The flavors come with their virtualization in plain words, for the form's explanation.
    assert "software-emulated CPU (QEMU TCG" in text
    assert "hardware-assisted CPU (KVM" in text
    response = create(client, tenant)
    instance = Instance.objects.for_tenant(tenant).get(name="web")
    assert response.status_code == 302
    assert response["Location"] == f"/t/{tenant.slug}/instances/{instance.uuid}/"
    assert instance.state == InstanceState.SCHEDULED
    page = client.get(response["Location"]).content.decode()
    assert 'data-live="state">scheduled<' in page
    assert re.search(r"On <strong>u-host</strong>", page)
    assert f'data-operation="{Operation.objects.for_tenant(tenant).get(instance=instance).uuid}"' in page
    listed = client.get(f"/t/{tenant.slug}/instances/").content.decode()
    assert f'data-instance="{instance.uuid}"' in listed
    row = client.get(f"/t/{tenant.slug}/instances/{instance.uuid}/row/")
    assert row.status_code == 200
    assert row.content.decode().strip().startswith(f'<tr data-instance="{instance.uuid}"')


def test_form_errors_name_the_field_and_create_nothing(catalog: None) -> None:
    tenant = make_tenant("ui-bad", vcpus=2)
    client = member_client(tenant)
    bad_name = create(client, tenant, name="1-not-a-name")
    assert bad_name.status_code == 400
    html = bad_name.content.decode()
    assert re.search(r'id="id_name-error"[^>]*>invalid name', html)
    assert 'aria-invalid="true"' in html
    too_big = create(client, tenant, name="huge", flavor="u.big")
    assert too_big.status_code == 409
    html = too_big.content.decode()
    # The quota refusal sits on the flavor field and names the limit.
    assert re.search(
        r'id="id_flavor-error"[^>]*>quota exceeded for vcpus: limit 2, in use 0, requested 4', html
    )
    assert not Instance.objects.for_tenant(tenant).exists()
    wrong_kind = create(client, tenant, name="box", kind="vm", image="u-rootfs")
    assert wrong_kind.status_code == 400
    assert re.search(
        r'id="id_image-error"[^>]*>image \'u-rootfs\' is a container root filesystem',
        html_of(wrong_kind),
    )


def test_viewers_see_pages_but_not_forms_and_cannot_post(catalog: None) -> None:
    tenant = make_tenant("ui-view")
    create(member_client(tenant), tenant)
    instance = Instance.objects.for_tenant(tenant).get()
    viewer = member_client(tenant, Role.VIEWER)
    page = viewer.get(f"/t/{tenant.slug}/instances/{instance.uuid}/").content.decode()
    assert 'data-action="stop"' not in page
    assert viewer.get(f"/t/{tenant.slug}/instances/new/").status_code == 403
    assert (
        viewer.post(f"/t/{tenant.slug}/instances/{instance.uuid}/action/", {"action": "stop"}).status_code
        == 403
    )
    other = make_tenant("ui-other")
    outsider = member_client(other)
    assert outsider.get(f"/t/{tenant.slug}/instances/{instance.uuid}/").status_code == 404
    assert outsider.get(f"/t/{other.slug}/instances/{instance.uuid}/").status_code == 404


def test_list_filters_by_state_kind_and_name(catalog: None) -> None:
    tenant = make_tenant("ui-filter")
    client = member_client(tenant)
    create(client, tenant, name="alpha")
    create(client, tenant, name="beta")
    Instance.objects.for_tenant(tenant).filter(name="beta").update(state=InstanceState.ERROR)
    base = f"/t/{tenant.slug}/instances/"

    def names(query: str) -> list[str]:
        html = client.get(base + query).content.decode()
        return re.findall(r'<th scope="row"><a href="[^"]+">([^<]+)</a>', html)

    assert names("") == ["alpha"]  # active: the failed one is hidden
    assert sorted(names("?state=")) == ["alpha", "beta"]
    assert names("?state=error") == ["beta"]
    assert names("?state=&q=alp") == ["alpha"]
    assert names("?state=&kind=container") == []


def test_actions_refused_by_the_service_come_back_on_the_page(catalog: None) -> None:
    tenant = make_tenant("ui-act")
    client = member_client(tenant)
    create(client, tenant)
    instance = Instance.objects.for_tenant(tenant).get()
    url = f"/t/{tenant.slug}/instances/{instance.uuid}/"
    refused = client.post(url + "action/", {"action": "stop"})  # its create has not run yet
    assert refused.status_code == 409
    assert "the instance is busy with a create operation" in html_of(refused)
    Instance.objects.for_tenant(tenant).filter(pk=instance.pk).update(state=InstanceState.RUNNING)
    Operation.objects.for_tenant(tenant).update(state="succeeded")
    done = client.post(url + "action/", {"action": "stop"})
    assert done.status_code == 302
    assert Instance.objects.for_tenant(tenant).get(pk=instance.pk).state == InstanceState.STOPPING
    bad_resize = client.post(url + "resize/", {"vcpus": "2"})
    assert bad_resize.status_code == 400
    assert "needs both vCPUs and RAM" in bad_resize.content.decode()
    confirm = client.post(url + "delete/", {"confirm": "wrong"})
    assert confirm.status_code == 400
    assert Instance.objects.for_tenant(tenant).get(pk=instance.pk).state == InstanceState.STOPPING


def test_dashboard_shows_quota_states_operations_and_the_queue(catalog: None) -> None:
    tenant = make_tenant("ui-dash")
    client = member_client(tenant)
    create(client, tenant, name="one")
    Flavor.objects.create(name="u.huge", vcpus=1, ram_mib=15000, disk_gib=1)
    create(client, tenant, name="fills", flavor="u.huge")
    create(client, tenant, name="waits", flavor="u.huge", wait="on")
    assert Instance.objects.for_tenant(tenant).get(name="waits").state == InstanceState.QUEUED
    html = client.get(f"/t/{tenant.slug}/").content.decode()
    assert 'data-resource="vcpus"' in html
    assert "Waiting for room" in html
    assert re.search(r">waits</a></td>\s*<td>1 of 1</td>", html)
    assert html.count('class="state state-scheduled"') >= 1
    detail = client.get(
        f"/t/{tenant.slug}/instances/{Instance.objects.for_tenant(tenant).get(name='waits').uuid}/"
    )
    assert "Waiting for room: place 1 of 1" in detail.content.decode()
