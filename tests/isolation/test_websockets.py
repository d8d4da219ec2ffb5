"""Every websocket route for every persona: who may connect, which tenants' events they hear, and
tenant B's VM refused to tenant A whatever the token. (Apart from test_harness.py: these run in
transactions of their own, since the consumers read the database from other threads.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.test import Client

from tests.isolation.routes import WEBSOCKETS
from tests.isolation.world import A_PERSONAS, World, build_world


def _ws(path: str, cookie: tuple[bytes, bytes] | None) -> tuple[bool, Any]:
    """Connect; return (accepted, first message) or (False, close code)."""
    from portal.asgi import application

    headers = [(b"origin", b"http://127.0.0.1:8000")] + ([cookie] if cookie else [])

    async def run() -> tuple[bool, Any]:
        ws = WebsocketCommunicator(application, path, headers=headers, subprotocols=["binary"])
        connected, code = await ws.connect(timeout=10)
        first = (
            (await ws.receive_json_from(timeout=5) if path == "/ws/events/" else None) if connected else code
        )
        await ws.disconnect()
        return connected, first

    return asyncio.run(run())


def _cookie(world: World, persona: str) -> tuple[bytes, bytes] | None:
    if persona == "anon":
        return None
    client = Client()
    client.force_login(world.users[persona])
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("route", sorted(WEBSOCKETS))
def test_websockets(route: str) -> None:
    from compute.consoles import console_token_issue, vnc_token_issue

    world = build_world()
    vm, b_vm = world.vms["a-vm"], world.vms["b-vm"]
    expected_groups = {
        "a_viewer": [world.a.pk],
        "a_member": [world.a.pk],
        "a_owner": [world.a.pk],
        "b_member": [world.b.pk],
        "staff": [],
        "superuser": [],
    }
    for persona, expect in WEBSOCKETS[route].items():
        cookie = _cookie(world, persona)
        if route == "ws-events":
            path = "/ws/events/"
        elif route == "ws-serial":
            path = f"/ws/instances/{vm.uuid}/serial/"
        elif route == "ws-terminal":
            token = console_token_issue(vm, world.users["a_member"].pk, "serial")
            path = f"/ws/instances/{vm.uuid}/terminal/?token={token}"
        else:
            token = vnc_token_issue(vm, world.users["a_member"].pk)
            path = f"/ws/instances/{vm.uuid}/vnc/?token={token}"
        connected, first = _ws(path, cookie)
        if expect == "accept":
            assert connected, persona
            if route == "ws-events":
                hello: dict[str, object] = {"type": "hello", "tenants": expected_groups[persona]}
                if persona in ("staff", "superuser"):  # they hear the staff pages' events too
                    hello["staff"] = True
                assert first == hello, persona
        else:
            assert (connected, first) == (False, expect), persona
        if persona in A_PERSONAS and route != "ws-events":
            # Tenant B's VM, whatever the token: refused as if it did not exist.
            other = f"/ws/instances/{b_vm.uuid}/{route.removeprefix('ws-')}/"
            if route == "ws-vnc":
                other += f"?token={vnc_token_issue(b_vm, world.users[persona].pk)}"
            if route == "ws-terminal":
                other += f"?token={console_token_issue(b_vm, world.users[persona].pk, 'serial')}"
            assert _ws(other, cookie) == (False, 4403), persona
