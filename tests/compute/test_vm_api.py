"""The instance API end to end against a real agent: 202 with an Operation, then a running guest."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from compute.models import Instance
from tenants.models import Role
from tests.compute.conftest import wait_for
from tests.factories import add_member, make_tenant

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_create_follow_console_and_delete_over_the_api(host, image, flavors, no_leftovers) -> None:
    tenant = make_tenant("acme")
    client = APIClient()
    client.force_authenticate(add_member(tenant, role=Role.MEMBER))
    base = "/api/v1/tenants/acme"
    assert {f["name"] for f in client.get(f"{base}/flavors/").json()["results"]} == {"t.virtio", "t.emulated"}
    response = client.post(
        f"{base}/instances/", {"name": "api-vm", "flavor": "t.virtio", "image": image.name}, format="json"
    )
    assert response.status_code == 202, response.json()
    op = response.json()
    assert op["kind"] == "create"
    done = wait_for(
        lambda: (
            (o := client.get(f"{base}/operations/{op['id']}/").json())["state"] in ("succeeded", "failed")
            and o
        ),
        "the create operation",
    )
    assert done["state"] == "succeeded", done  # type: ignore[index]
    vm = client.get(f"{base}/instances/{op['instance_id']}/").json()
    assert vm["state"] == "running"
    wait_for(
        lambda: any(
            line.startswith("NUBIS-READY")
            for line in client.get(f"{base}/instances/{vm['id']}/console/serial/?lines=50").json()["lines"]
        ),
        "the ready marker over the console API",
    )
    bad = client.get(f"{base}/instances/{vm['id']}/console/serial/?lines=0")
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["field"] == "lines"
    stop_twice = [client.post(f"{base}/instances/{vm['id']}/stop/").status_code for _ in range(2)]
    assert stop_twice == [202, 409]  # one operation at a time
    wait_for(lambda: client.get(f"{base}/instances/{vm['id']}/").json()["state"] == "stopped", "stop")
    deleted = client.delete(f"{base}/instances/{vm['id']}/")
    assert deleted.status_code == 202
    wait_for(lambda: client.get(f"{base}/instances/{vm['id']}/").status_code == 404, "delete")
    assert Instance.objects.for_tenant(tenant).get(uuid=vm["id"]).state == "deleted"


def test_create_with_bad_input_names_the_field(host, image, flavors) -> None:
    tenant = make_tenant("acme", instances=0)
    client = APIClient()
    client.force_authenticate(add_member(tenant, role=Role.MEMBER))
    base = "/api/v1/tenants/acme/instances/"
    unknown = client.post(base, {"name": "x", "flavor": "nope", "image": image.name}, format="json")
    assert unknown.status_code == 400
    assert unknown.json()["errors"] == [
        {"field": "flavor", "rule": "exists", "message": "unknown flavor 'nope'"}
    ]
    over = client.post(base, {"name": "x", "flavor": "t.virtio", "image": image.name}, format="json")
    assert over.status_code == 409
    assert over.json()["errors"][0]["field"] == "instances"
    assert "limit 0" in over.json()["detail"]
    missing = client.post(base, {"flavor": "t.virtio"}, format="json")
    assert missing.status_code == 400
    assert {e["field"] for e in missing.json()["errors"]} == {"name", "image"}
    assert not Instance.objects.for_tenant(tenant).exists()
