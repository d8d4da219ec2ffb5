"""Every state change of an instance reaches the tenant's websockets, and only theirs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connection
from django.test import Client

from compute.models import Instance, OperationState
from compute.services.instances import instance_create, instance_delete
from portal.asgi import application
from security.audit import Actor
from tenants.models import Role
from tests.compute.conftest import wait_operation
from tests.factories import add_member, make_tenant

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def in_thread(fn: Any) -> Any:
    """Run database work off the event loop, closing the thread's connection afterwards."""

    def run() -> Any:
        try:
            return fn()
        finally:
            connection.close()

    return sync_to_async(run, thread_sensitive=False)


def headers_for(user: Any) -> list[tuple[bytes, bytes]]:
    client = Client()
    client.force_login(user)
    return [
        (b"origin", b"http://127.0.0.1:8000"),
        (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()),
    ]


def test_state_changes_stream_to_the_tenant_only(host, image, flavors, no_leftovers) -> None:
    tenant, other = make_tenant("acme"), make_tenant("other")
    member = add_member(tenant, role=Role.VIEWER)
    outsider = add_member(other, role=Role.MEMBER)
    actor = Actor("ops", "api", None)
    mine, theirs = headers_for(member), headers_for(outsider)

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]], Instance]:
        a = WebsocketCommunicator(application, "/ws/events/", headers=mine)
        b = WebsocketCommunicator(application, "/ws/events/", headers=theirs)
        await a.connect(timeout=10)
        await b.connect(timeout=10)
        await a.receive_json_from(timeout=5)
        await b.receive_json_from(timeout=5)
        create = sync_to_async(
            lambda: instance_create(
                actor=actor, tenant=tenant, name="live", flavor="t.virtio", image=image.name
            ),
            thread_sensitive=False,
        )
        op = await create()
        seen: list[dict[str, Any]] = []
        # Operations stream too (their state is "running" while they run): wait for the instance's.
        while not any(e.get("type") == "instance.state" and e.get("state") == "running" for e in seen):
            seen.append(await a.receive_json_from(timeout=60))
        leaked = [] if await b.receive_nothing(timeout=1) else [await b.receive_json_from(timeout=1)]
        await a.disconnect()
        await b.disconnect()
        instance = await in_thread(lambda: Instance.objects.for_tenant(tenant).get(pk=op.instance_id))()
        return seen, leaked, instance

    seen, leaked, instance = asyncio.run(scenario())
    states = [
        e["state"] for e in seen if e["type"] == "instance.state" and e["instance"] == str(instance.uuid)
    ]
    assert states == ["scheduled", "building", "running"], seen
    assert leaked == []
    assert wait_operation(instance_delete(actor=actor, instance=instance)).state == OperationState.SUCCEEDED
