"""Deleting a network, a security group or a server group: confirmed by typing its name, as an
instance is, and refused while a live instance uses it, naming the instances, in the UI and the API.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from django.db import models
from django.test import Client
from rest_framework.test import APIClient

from compute.models import Instance, InstanceState, Network, SecurityGroup, ServerGroup
from security.models import AuditRecord
from tenants.models import Role, Tenant
from tests.compute.test_ui_networks import client_of, instance
from tests.factories import add_member, make_tenant

pytestmark = pytest.mark.django_db


@dataclass(frozen=True)
class Kind:
    """One kind of thing deleted through a confirmation page."""

    what: str  # as the pages name it
    section: str  # its part of the tenant's URLs
    api: str  # its part of the tenant's API URLs
    action: str  # the audit action of its delete
    make: Callable[[Tenant, str], models.Model]
    use: Callable[[Tenant, models.Model, str], None]  # an instance of that name uses it
    gone: Callable[[Tenant, models.Model], bool]

    def ref(self, obj: models.Model) -> str:
        return str(obj.uuid if isinstance(obj, Network) else obj.pk)

    def page(self, obj: models.Model) -> str:
        return f"/t/alpha/{self.section}/{self.ref(obj)}/delete/"


def _network(tenant: Tenant, name: str) -> Network:
    third = Network.objects.unscoped().count() + 1
    cidr = f"10.196.{third}.0/24"
    return Network.objects.create(tenant=tenant, name=name, cidr=cidr, gateway=cidr.replace("0/24", "1"))


def _on_network(tenant: Tenant, obj: models.Model, name: str) -> None:
    assert isinstance(obj, Network)
    count = Instance.objects.for_tenant(tenant).filter(network=obj).count()
    instance(tenant, name, network=obj, ip_address=obj.cidr.replace("0/24", str(count + 2)))


def _in_group(tenant: Tenant, obj: models.Model, name: str) -> None:
    assert isinstance(obj, SecurityGroup)
    instance(tenant, name).groups_set([obj])


def _member_of(tenant: Tenant, obj: models.Model, name: str) -> None:
    instance(tenant, name, server_group=obj)


KINDS = [
    Kind(
        "network",
        "networks",
        "networks",
        "network.delete",
        _network,
        _on_network,
        lambda t, o: not Network.objects.for_tenant(t).filter(pk=o.pk, deleted_at=None).exists(),
    ),
    Kind(
        "security group",
        "security-groups",
        "security-groups",
        "secgroup.delete",
        lambda t, name: SecurityGroup.objects.create(tenant=t, name=name),
        _in_group,
        lambda t, o: not SecurityGroup.objects.for_tenant(t).filter(pk=o.pk).exists(),
    ),
    Kind(
        "server group",
        "server-groups",
        "server-groups",
        "servergroup.delete",
        lambda t, name: ServerGroup.objects.create(tenant=t, name=name, policy="affinity"),
        _member_of,
        lambda t, o: not ServerGroup.objects.for_tenant(t).filter(pk=o.pk).exists(),
    ),
]
IDS = [k.section for k in KINDS]


@pytest.fixture
def alpha() -> Tenant:
    return make_tenant("alpha")


@pytest.fixture
def member(alpha: Tenant) -> Client:
    return client_of(add_member(alpha, role=Role.MEMBER))


def text(html: str) -> str:
    """What a page says, without its tags, on one line."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).replace("&#x27;", "'")


def refusal(html: str) -> str:
    found = re.search(
        r'<div class="error-summary" id="delete-refused" role="alert"[^>]*>(.*?)</div>', html, re.S
    )
    assert found, "the page does not say why it cannot be deleted"
    return text(found.group(1)).strip()


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_the_list_links_to_a_confirmation_page_that_asks_for_the_name(
    alpha: Tenant, member: Client, kind: Kind
) -> None:
    obj = kind.make(alpha, "spare")
    listing = member.get(f"/t/alpha/{kind.section}/").content.decode()
    assert f'href="{kind.page(obj)}"' in listing
    # Nothing on the list deletes at one click.
    assert f'action="{kind.page(obj)}"' not in listing

    response = member.get(kind.page(obj))

    assert response.status_code == 200
    html = response.content.decode()
    assert f"Delete {kind.what} spare?" in text(html)
    assert "Type spare to confirm" in text(html)
    assert re.search(r'<input id="confirm" name="confirm"[^>]* required', html)
    assert "delete-refused" not in html
    assert not kind.gone(alpha, obj)


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
@pytest.mark.parametrize("typed", [None, "", "Spare", "spare2", " spare"])
def test_a_delete_without_the_name_typed_deletes_nothing(
    alpha: Tenant, member: Client, kind: Kind, typed: str | None
) -> None:
    obj = kind.make(alpha, "spare")

    response = member.post(kind.page(obj), {} if typed is None else {"confirm": typed})

    assert response.status_code == 400
    html = response.content.decode()
    found = re.search(r'<p class="field-error" id="confirm-error" role="alert">(.*?)</p>', html)
    assert found, html
    assert found.group(1) == "type spare to confirm"
    assert re.search(r'<input id="confirm"[^>]* aria-invalid="true" aria-describedby="confirm-error"', html)
    assert not kind.gone(alpha, obj)
    assert not AuditRecord.objects.filter(action=kind.action).exists()


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_a_delete_with_the_name_typed_deletes_it(alpha: Tenant, member: Client, kind: Kind) -> None:
    obj = kind.make(alpha, "spare")
    # An instance that was deleted holds nothing.
    kind.use(alpha, obj, "old-1")
    Instance.objects.for_tenant(alpha).filter(name="old-1").update(state=InstanceState.DELETED)

    response = member.post(kind.page(obj), {"confirm": "spare"}, follow=True)

    assert response.redirect_chain == [(f"/t/alpha/{kind.section}/", 302)]
    assert f"Deleted {kind.what} spare." in response.content.decode()
    assert kind.gone(alpha, obj)
    assert AuditRecord.objects.filter(action=kind.action, outcome="success").count() == 1


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_one_in_use_is_refused_naming_the_instances(alpha: Tenant, member: Client, kind: Kind) -> None:
    obj = kind.make(alpha, "used")
    kind.use(alpha, obj, "web-1")
    kind.use(alpha, obj, "web-2")
    said = f"{kind.what} 'used' is used by instances web-1, web-2"

    page = member.get(kind.page(obj))

    # The page says what uses it, and offers no delete.
    assert page.status_code == 200
    html = page.content.decode()
    assert refusal(html) == f"It cannot be deleted: {said}."
    assert 'name="confirm"' not in html
    assert 'href="/t/alpha/' in html  # the way back

    # The name typed anyway (a page opened before it was used): refused, with the same words.
    response = member.post(kind.page(obj), {"confirm": "used"})
    assert response.status_code == 409
    assert refusal(response.content.decode()) == f"It cannot be deleted: {said}."
    # Without the name, it is still in use that is said.
    assert member.post(kind.page(obj), {"confirm": "x"}).status_code == 409
    assert not kind.gone(alpha, obj)
    assert not AuditRecord.objects.filter(action=kind.action).exists()


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_many_users_are_named_up_to_five_and_counted(alpha: Tenant, member: Client, kind: Kind) -> None:
    obj = kind.make(alpha, "busy")
    for n in range(1, 9):
        kind.use(alpha, obj, f"vm-{n}")
    html = member.get(kind.page(obj)).content.decode()
    assert "'busy' is used by instances vm-1, vm-2, vm-3, vm-4, vm-5 and 3 more." in refusal(html)


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_the_api_refuses_one_in_use_with_a_problem_naming_the_instances(alpha: Tenant, kind: Kind) -> None:
    client = APIClient()
    client.force_authenticate(add_member(alpha, role=Role.MEMBER))
    used, spare = kind.make(alpha, "used"), kind.make(alpha, "spare")
    kind.use(alpha, used, "db-1")
    base = f"/api/v1/tenants/alpha/{kind.api}/"

    response = client.delete(f"{base}{kind.ref(used)}/")

    assert response.status_code == 409
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 409
    assert f"{kind.what} 'used' is used by instance db-1" in body["detail"]
    assert body["errors"][0]["rule"] == "in_use"
    assert body["errors"][0]["message"] == f"{kind.what} 'used' is used by instance db-1"
    assert not kind.gone(alpha, used)
    assert client.delete(f"{base}{kind.ref(spare)}/").status_code == 204
    assert kind.gone(alpha, spare)


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_viewers_get_no_confirmation_page(alpha: Tenant, kind: Kind) -> None:
    viewer = client_of(add_member(alpha, role=Role.VIEWER))
    obj = kind.make(alpha, "spare")
    assert viewer.get(kind.page(obj)).status_code == 403
    assert viewer.post(kind.page(obj), {"confirm": "spare"}).status_code == 403
    assert not kind.gone(alpha, obj)


def test_the_security_group_page_links_to_its_delete(alpha: Tenant, member: Client) -> None:
    group = SecurityGroup.objects.create(tenant=alpha, name="web")
    html = member.get(f"/t/alpha/security-groups/{group.pk}/").content.decode()
    assert f'href="/t/alpha/security-groups/{group.pk}/delete/"' in html
