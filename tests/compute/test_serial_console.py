"""The interactive serial console on real guests: keys typed into the websocket reach the VM's
serial port (a pty on its host, opened by the session's compute agent) and what the guest prints
comes back, while the port's log keeps everything as before.

The guest is the tiny test image with a shell on its serial port (kernel argument
``nubis.console=1``, compute/guest/init.sh).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from compute.consoles import console_token_issue, vnc_token_issue
from compute.models import Image, Instance, OperationState
from compute.services.instances import instance_create, instance_delete
from portal.asgi import application
from security.audit import Actor
from security.models import AuditRecord
from tenants.models import Membership, Role, Tenant
from tests.compute.conftest import serial_text, wait_for, wait_marker, wait_operation
from tests.factories import add_member, make_tenant

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def console_vm(host: Any, console_image: Image, flavors: Any) -> Iterator[tuple[Tenant, User, Instance]]:
    tenant = make_tenant("acme")
    member = add_member(tenant, role=Role.MEMBER)
    actor = Actor(member.username, "api", member.pk)
    op = wait_operation(
        instance_create(
            actor=actor,
            tenant=tenant,
            name="typed",
            flavor="t.virtio",
            image=console_image.name,
            network=None,
        )
    )
    assert op.state == OperationState.SUCCEEDED, op.error
    vm = Instance.objects.for_tenant(tenant).get(pk=op.instance_id)
    wait_marker(vm, "NUBIS-READY")
    yield tenant, member, vm
    assert wait_operation(instance_delete(actor=actor, instance=vm)).state == OperationState.SUCCEEDED


def cookie(user: User) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


def ws(path: str, user: User, action: Any) -> Any:
    headers = [(b"origin", b"http://127.0.0.1:8000"), cookie(user)]  # made here: it touches the database

    async def run() -> Any:
        communicator = WebsocketCommunicator(application, path, headers=headers)
        connected, code = await communicator.connect(timeout=10)
        try:
            return await action(communicator) if connected else ("closed", code)
        finally:
            await communicator.disconnect()

    return asyncio.run(run())


def grant(user: User, vm: Instance, **body: Any) -> tuple[int, dict[str, Any]]:
    client = APIClient()
    client.force_authenticate(user)
    response = client.post(
        f"/api/v1/tenants/{vm.tenant.slug}/instances/{vm.uuid}/console/terminal/", body, format="json"
    )
    return response.status_code, response.json()


async def read_until(communicator: WebsocketCommunicator, wanted: str, timeout: float = 30) -> str:
    """What the console sends until ``wanted`` appears in it (TimeoutError if it never does)."""
    text = ""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while wanted not in text:
        left = deadline - loop.time()
        if left <= 0:
            raise TimeoutError(f"{wanted!r} never came; got {text[-500:]!r}")
        message = await communicator.receive_output(timeout=left)
        if message["type"] == "websocket.close":
            raise AssertionError(f"closed ({message.get('code')}) before {wanted!r}; got {text[-500:]!r}")
        text += (message.get("bytes") or message.get("text", "").encode()).decode(errors="replace")
    return text


async def opened(_communicator: WebsocketCommunicator) -> str:
    return "open"


async def type_and_read(communicator: WebsocketCommunicator, keys: bytes, wanted: str) -> str:
    # The agent opens the pty as the session starts; QEMU notices a reader within a second.
    await communicator.send_to(bytes_data=b"\r")
    await read_until(communicator, "#")  # the shell's prompt
    await communicator.send_to(bytes_data=keys)
    return await read_until(communicator, wanted)


def test_typing_into_the_serial_console_runs_a_command(no_leftovers, console_vm) -> None:
    _, member, vm = console_vm
    status, body = grant(member, vm)
    assert status == 200, body
    assert body["input"] is True
    assert body["url"] == f"/ws/instances/{vm.uuid}/terminal/"
    record = AuditRecord.objects.filter(action="instance.console").order_by("seq").last()
    assert record is not None
    assert record.detail == {"console": "serial", "input": True}
    assert record.actor_id == member.pk

    async def session(communicator: WebsocketCommunicator) -> str:
        # Typed as keys (text frames, as a terminal may send them) and as bytes.
        await communicator.send_to(text_data="\r")
        await read_until(communicator, "#")
        return await type_and_read(communicator, b"echo NUBIS-TYPED-$((6*7))\r", "NUBIS-TYPED-42")

    path = f"{body['url']}?token={body['token']}"
    out = ws(path, member, session)
    assert "NUBIS-TYPED-42" in out
    # The log kept it all: the markers as before, and what the session printed.
    wait_marker(vm, "NUBIS-TYPED-42")
    assert serial_text(vm).count("NUBIS-READY") == 1
    client = APIClient()
    client.force_authenticate(member)
    tail = client.get(f"/api/v1/tenants/acme/instances/{vm.uuid}/console/serial/?lines=1000").json()
    assert any("NUBIS-TYPED-42" in line for line in tail["lines"])
    assert any("NUBIS-READY" in line for line in tail["lines"])
    # Single use: the same token does not open it twice.
    assert ws(path, member, opened) == ("closed", 4403)


def test_input_is_refused_server_side_without_the_right(no_leftovers, console_vm) -> None:
    tenant, member, vm = console_vm
    # A viewer gets no token; another tenant's member does not even see the VM.
    viewer = add_member(tenant, role=Role.VIEWER)
    assert grant(viewer, vm)[0] == 403
    stranger = add_member(make_tenant("other"), role=Role.OWNER)
    assert grant(stranger, vm)[0] == 404
    assert ws(
        f"/ws/instances/{vm.uuid}/terminal/?token={console_token_issue(vm, stranger.pk, 'serial')}",
        stranger,
        opened,
    ) == ("closed", 4403)
    # Neither a VNC token nor another user's serial token opens it.
    assert ws(
        f"/ws/instances/{vm.uuid}/terminal/?token={vnc_token_issue(vm, member.pk)}", member, opened
    ) == (
        "closed",
        4403,
    )
    colleague = add_member(tenant, role=Role.MEMBER)
    token = console_token_issue(vm, member.pk, "serial")
    assert ws(f"/ws/instances/{vm.uuid}/terminal/?token={token}", colleague, opened) == ("closed", 4403)
    # A member demoted to viewer after the token was issued: refused when it is used.
    token = console_token_issue(vm, colleague.pk, "serial")
    Membership.objects.filter(user=colleague, tenant=tenant).update(role=Role.VIEWER)
    assert ws(f"/ws/instances/{vm.uuid}/terminal/?token={token}", colleague, opened) == ("closed", 4403)

    # A read-only session sees the guest but what it sends never reaches it (the portal drops it:
    # the page hiding the keyboard is not what stops it).
    status, body = grant(member, vm, input=False)
    assert status == 200, body
    assert body["input"] is False

    async def read_only(communicator: WebsocketCommunicator) -> bool:
        await communicator.send_to(bytes_data=b"\recho NUBIS-READONLY-$((2*3))\r")
        return await communicator.receive_nothing(timeout=4)

    assert ws(f"{body['url']}?token={body['token']}", member, read_only)
    # An interactive session then works, and the read-only keys never reached the guest.
    status, body = grant(member, vm)

    async def interactive(communicator: WebsocketCommunicator) -> str:
        return await type_and_read(communicator, b"echo NUBIS-AFTER-$((2*3))\r", "NUBIS-AFTER-6")

    assert "NUBIS-AFTER-6" in ws(f"{body['url']}?token={body['token']}", member, interactive)
    wait_marker(vm, "NUBIS-AFTER-6")
    assert "NUBIS-READONLY" not in serial_text(vm)


def test_a_new_session_takes_the_port_over(no_leftovers, agent, console_vm) -> None:
    _, member, vm = console_vm
    first, second = grant(member, vm)[1], grant(member, vm)[1]
    took_over = "ended: another console session took over"
    before = agent.text().count(took_over)

    async def both() -> tuple[dict[str, Any], str]:
        headers = [(b"origin", b"http://127.0.0.1:8000"), cookie_header]
        one = WebsocketCommunicator(application, f"{first['url']}?token={first['token']}", headers=headers)
        two = WebsocketCommunicator(application, f"{second['url']}?token={second['token']}", headers=headers)
        try:
            assert (await one.connect(timeout=10))[0]
            await one.send_to(bytes_data=b"\r")
            await read_until(one, "#")
            assert (await two.connect(timeout=10))[0]
            # The older session hears the end and closes normally; the newer one types.
            while True:
                message = await one.receive_output(timeout=10)
                if message["type"] == "websocket.close":
                    break
            text = await type_and_read(two, b"echo NUBIS-SECOND-$((3*3))\r", "NUBIS-SECOND-9")
            return message, text
        finally:
            await one.disconnect()
            await two.disconnect()

    cookie_header = cookie(member)
    closed, text = asyncio.run(both())
    assert closed == {"type": "websocket.close", "code": 1000}
    assert "NUBIS-SECOND-9" in text
    wait_for(lambda: agent.text().count(took_over) == before + 1, "the agent's log", 5)
