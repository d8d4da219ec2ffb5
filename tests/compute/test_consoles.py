"""Consoles on real guests: the serial stream, and the VNC proxy with its instance- and user-bound token."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from compute.models import Instance, OperationState
from compute.services.instances import instance_create, instance_delete
from portal.asgi import application
from security.audit import Actor
from tenants.models import Role
from tests.compute.conftest import wait_marker, wait_operation
from tests.factories import add_member, make_tenant

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def cookie(user: User) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


def ws(path: str, user: User, action: Any) -> Any:
    headers = [(b"origin", b"http://127.0.0.1:8000"), cookie(user)]  # made here: it touches the database

    async def run() -> Any:
        communicator = WebsocketCommunicator(application, path, headers=headers, subprotocols=["binary"])
        connected, code = await communicator.connect(timeout=10)
        try:
            return await action(communicator) if connected else ("closed", code)
        finally:
            await communicator.disconnect()

    return asyncio.run(run())


@pytest.fixture
def two_vms(host, image, flavors):
    tenant = make_tenant("acme")
    member = add_member(tenant, role=Role.MEMBER)
    actor = Actor(member.username, "api", member.pk)
    vms = []
    for name in ("vm-one", "vm-two"):
        op = wait_operation(
            instance_create(actor=actor, tenant=tenant, name=name, flavor="t.virtio", image=image.name)
        )
        assert op.state == OperationState.SUCCEEDED, op.error
        vms.append(Instance.objects.for_tenant(tenant).get(pk=op.instance_id))
    yield tenant, member, vms
    for vm in vms:
        assert wait_operation(instance_delete(actor=actor, instance=vm)).state == OperationState.SUCCEEDED


def vnc_token(member: User, vm: Instance) -> dict[str, Any]:
    client = APIClient()
    client.force_authenticate(member)
    response = client.post(f"/api/v1/tenants/acme/instances/{vm.uuid}/console/vnc/")
    assert response.status_code == 200, response.content
    return response.json()


async def rfb_greeting(communicator: WebsocketCommunicator) -> bytes:
    return await communicator.receive_from(timeout=10)


def test_vnc_proxy_reaches_the_guests_vnc_server(no_leftovers, two_vms) -> None:
    _, member, (one, _) = two_vms
    grant = vnc_token(member, one)
    assert len(grant["password"]) == 8
    greeting = ws(f"{grant['url']}?token={grant['token']}", member, rfb_greeting)
    assert greeting.startswith(b"RFB 003.0"), greeting  # QEMU's VNC server speaking through the proxy
    # Single use: the same token does not open it twice.
    assert ws(f"{grant['url']}?token={grant['token']}", member, rfb_greeting) == ("closed", 4403)


def test_a_token_for_vm_one_never_opens_vm_two(no_leftovers, two_vms) -> None:
    _, member, (one, two) = two_vms
    grant = vnc_token(member, one)
    assert ws(f"/ws/instances/{two.uuid}/vnc/?token={grant['token']}", member, rfb_greeting) == (
        "closed",
        4403,
    )


def test_a_token_works_only_for_the_user_it_was_issued_to(no_leftovers, two_vms) -> None:
    tenant, member, (one, _) = two_vms
    colleague = add_member(tenant, role=Role.MEMBER)
    grant = vnc_token(member, one)
    assert ws(f"{grant['url']}?token={grant['token']}", colleague, rfb_greeting) == ("closed", 4403)


def test_serial_stream_shows_the_ready_marker(no_leftovers, two_vms) -> None:
    _, member, (one, _) = two_vms
    wait_marker(one, "NUBIS-READY")

    async def collect(communicator: WebsocketCommunicator) -> str:
        text = ""
        while "NUBIS-READY" not in text:
            message = await communicator.receive_json_from(timeout=10)
            text += message["data"]
        return text

    assert "NUBIS-READY" in ws(f"/ws/instances/{one.uuid}/serial/", member, collect)
