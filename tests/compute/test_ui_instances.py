"""The instance pages through Django's test client: the list and its filters, the create form
with its inline errors and quota preview data, one instance's page, actions and the dashboard.
(The browser tests in tests/e2e drive the same pages in Chromium, with real guests.)"""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape
from typing import Any

import pytest
from django.db.models import Q
from django.test import Client
from django.utils import timezone

from compute.models import (
    CpuMode,
    Flavor,
    Image,
    ImageKind,
    Instance,
    InstanceKind,
    InstanceState,
    Operation,
)
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


# ---- the list in pages ------------------------------------------------------------------------

ROW = re.compile(r'<tr data-instance="([0-9a-f-]{36})"')
LINK = re.compile(r'<a class="button" href="([^"]+)" rel="(first|prev|next)">')


def many(tenant: Tenant, n: int, tag: str = "p", hours_ago: int = 1) -> list[Instance]:
    """Instances of both kinds in several states; every 5th shares its timestamp with the next
    ones, so the id must break the ties."""
    flavor = Flavor.objects.get(name="u.small")
    image = Image.objects.get(name="u-image")
    start = timezone.now() - timedelta(hours=hours_ago)
    states = [InstanceState.RUNNING, InstanceState.STOPPED, InstanceState.ERROR, InstanceState.QUEUED]
    return Instance.objects.unscoped().bulk_create(
        Instance(
            tenant=tenant,
            name=f"{tag}-{i:03d}",
            flavor=flavor,
            image=image,
            kind=InstanceKind.VM if i % 2 else InstanceKind.CONTAINER,
            state=states[i % len(states)],
            ip_address=f"10.9.{i // 100}.{i % 100 + 1}",
            created=start + timedelta(seconds=i // 5 * 5),
        )
        for i in range(n)
    )


def expected(tenant: Tenant, where: Q) -> list[str]:
    rows = Instance.objects.for_tenant(tenant).filter(where).order_by("-created", "-pk")
    return [str(u) for u in rows.values_list("uuid", flat=True)]


def page_of(client: Client, url: str) -> tuple[Any, list[str], dict[str, str]]:
    response = client.get(url)
    html = response.content.decode()
    links = {rel: unescape(href) for href, rel in LINK.findall(html)}
    return response, ROW.findall(html), links


def walk(client: Client, url: str) -> list[list[str]]:
    """Follow "Older" from the first page to the last; the instances of each page."""
    pages: list[list[str]] = []
    link: str | None = url
    while link:
        response, rows, links = page_of(client, link)
        assert response.status_code == 200, link
        html = response.content.decode()
        first = not pages
        assert ('id="not-first-page"' not in html) == first, link
        assert ("first" not in links and "prev" not in links) == first, link
        assert ('data-first-page="1"' in html) == first, link
        pages.append(rows)
        link = links.get("next")
        assert len(pages) < 100, "the walk does not end"
    return pages


CASES = [
    ("", ~Q(state__in=[InstanceState.DELETED, InstanceState.ERROR])),
    ("?state=&kind=vm", Q(kind=InstanceKind.VM)),
    ("?state=running&kind=", Q(state=InstanceState.RUNNING)),
    ("?state=&q=p-01", Q(name__icontains="p-01")),
    ("?state=active&q=10.9.0.1", Q(ip_address__startswith="10.9.0.1") & ~Q(state=InstanceState.ERROR)),
]


@pytest.mark.parametrize(("query", "where"), CASES, ids=[q or "default" for q, _ in CASES])
def test_every_instance_is_reached_once_in_order_by_following_the_pages(
    catalog: None, query: str, where: Q
) -> None:
    tenant = make_tenant("ui-pages")
    many(tenant, 43)
    client = member_client(tenant)
    base = f"/t/{tenant.slug}/instances/"
    url = base + query + ("&" if query else "?") + "page_size=4"
    want = expected(tenant, where)
    assert len(want) > 4, "the case needs more than one page"
    pages = walk(client, url)
    assert [u for page in pages for u in page] == want
    assert all(len(page) == 4 for page in pages[:-1])
    # The links keep the filters and the page size.
    _, _, links = page_of(client, url)
    params = dict(p.split("=", 1) for p in links["next"].split("?", 1)[1].split("&"))
    for part in (query.lstrip("?").split("&") if query else ["state=active"]) + ["page_size=4"]:
        key, value = part.split("=", 1)
        assert params[key] == value.replace(":", "%3A"), (key, links["next"])
    # Back from the last page through "Newer": the same pages; the newest lands on the first page.
    last = url
    for _ in pages[:-1]:
        last = page_of(client, last)[2]["next"]
    back: list[list[str]] = []
    link: str | None = last
    while link:
        response = client.get(link)
        if response.status_code == 302:
            assert "cursor=" not in response["Location"]
            link = response["Location"]
            continue
        back.append(ROW.findall(response.content.decode()))
        link = {rel: unescape(h) for h, rel in LINK.findall(response.content.decode())}.get("prev")
    assert back[::-1] == pages


def test_the_default_page_holds_50_and_instances_made_between_pages_are_not_repeated(catalog: None) -> None:
    tenant = make_tenant("ui-pages-add")
    made = many(tenant, 120)
    client = member_client(tenant)
    base = f"/t/{tenant.slug}/instances/?state="
    _, first, links = page_of(client, base)
    assert len(first) == 50
    assert first == [str(i.uuid) for i in sorted(made, key=lambda i: (i.created, i.pk), reverse=True)][:50]
    many(tenant, 7, tag="late", hours_ago=0)  # newer than all: they go on the first page, not the next ones
    seen = list(first)
    link: str | None = links["next"]
    while link:
        _, rows, links = page_of(client, link)
        seen += rows
        link = links.get("next")
    assert sorted(seen) == sorted(str(i.uuid) for i in made)
    assert len(seen) == len(set(seen))


def test_a_bad_cursor_or_page_size_answers_400_with_the_first_page_and_says_why(catalog: None) -> None:
    tenant = make_tenant("ui-pages-bad")
    many(tenant, 9)
    client = member_client(tenant)
    base = f"/t/{tenant.slug}/instances/"
    _, _, links = page_of(client, base + "?state=&page_size=3")
    cursor = links["next"].split("cursor=")[1].split("&")[0]
    other = make_tenant("ui-pages-other")
    many(other, 9, tag="o")
    other_client = member_client(other)
    cases = [
        (client, base + "?state=&page_size=3&cursor=garbage", "cursor is not a page of this list"),
        (client, base + f"?state=&page_size=3&cursor={cursor[:-3]}xyz", "cursor is not a page of this list"),
        (client, base + f"?state=&kind=vm&page_size=3&cursor={cursor}", "cursor belongs to other filters"),
        (
            other_client,
            f"/t/{other.slug}/instances/?state=&page_size=3&cursor={cursor}",
            "cursor is not a page of this list",
        ),
    ]
    for who, url, message in cases:
        response = who.get(url)
        assert response.status_code == 400, url
        html = html_of(response)
        assert re.search(r'id="list-errors" role="alert"><p>' + re.escape(message), html), url
        assert "showing the first page" in html
        assert 'data-first-page="1"' in html
        assert len(ROW.findall(html)) == 3  # the first page, with its own page size
    assert ROW.findall(client.get(base + "?state=&kind=vm&page_size=3&cursor=x").content.decode()) == [
        str(u) for u in Instance.objects.for_tenant(tenant).filter(kind="vm").order_by("-created", "-pk")
        .values_list("uuid", flat=True)[:3]
    ]  # fmt: skip
    for size in ("0", "201", "ten", "-1"):
        response = client.get(base + f"?state=&page_size={size}")
        assert response.status_code == 400
        assert "page_size must be a whole number from 1 to 200" in html_of(response)
        assert len(ROW.findall(response.content.decode())) == 9
    # A NUL in the search box (PostgreSQL text cannot hold one): refused before the page runs.
    assert client.get(base + "?q=a%00b").status_code == 400


def test_the_row_the_live_list_asks_for_keeps_to_its_filters(catalog: None) -> None:
    tenant = make_tenant("ui-row")
    box, vm, failed = many(tenant, 3)  # a running container, a stopped VM, a failed container
    assert (box.kind, vm.kind, failed.state) == ("container", "vm", InstanceState.ERROR)
    client = member_client(tenant)

    def row(instance: Instance, query: str) -> int:
        return int(client.get(f"/t/{tenant.slug}/instances/{instance.uuid}/row/?{query}").status_code)

    assert row(vm, "state=active&kind=&q=") == 200
    assert row(vm, "state=active&kind=container&q=") == 204
    assert row(box, "state=active&kind=container&q=") == 200
    assert row(box, f"state=&kind=&q={box.name}") == 200
    assert row(box, "state=&kind=&q=nomatch") == 204
    assert row(failed, "state=active&kind=&q=") == 204  # active hides failed instances
    assert row(failed, "state=error&kind=&q=") == 200
    assert row(failed, "") == 204  # no filters: the list's default, active


def test_the_filter_form_keeps_a_valid_page_size(catalog: None) -> None:
    tenant = make_tenant("ui-pages-form")
    many(tenant, 3)
    client = member_client(tenant)
    base = f"/t/{tenant.slug}/instances/"
    assert '<input type="hidden" name="page_size" value="2">' in html_of(client.get(base + "?page_size=2"))
    assert 'name="page_size"' not in html_of(client.get(base))
    assert 'name="page_size"' not in html_of(client.get(base + "?page_size=0"))
