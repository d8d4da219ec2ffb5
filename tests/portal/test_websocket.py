"""A real websocket through the ASGI app, on the channels_redis layer, receives events from a Celery task."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client

from portal.asgi import application
from portal.consumers import CLOSE_UNAUTHENTICATED
from portal.tasks import heartbeat
from tenants.models import Membership, Role, Tenant
from tests.conftest import CeleryWorker

ORIGIN = (b"origin", b"http://127.0.0.1:8000")


def session_cookie(user: User) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


def member_of(tenant: Tenant, username: str) -> User:
    user = User.objects.create_user(username, password="pw-not-used-12345")
    Membership.objects.create(user=user, tenant=tenant, role=Role.MEMBER)
    return user


async def drain(communicator: WebsocketCommunicator, seconds: float) -> list[dict[str, Any]]:
    """Collect every event that arrives within ``seconds``.

    receive_nothing() polls without cancelling the app (a timed-out receive would cancel it).
    """
    events: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        if await communicator.receive_nothing(timeout=left, interval=0.02):
            break
        events.append(await communicator.receive_json_from(timeout=1))
    return events


@pytest.mark.django_db(transaction=True)
def test_event_from_celery_task_reaches_only_the_tenants_members(celery_worker: CeleryWorker) -> None:
    tenant_a = Tenant.objects.create(name="Tenant A", slug="tenant-a")
    tenant_b = Tenant.objects.create(name="Tenant B", slug="tenant-b")
    alice_cookie = session_cookie(member_of(tenant_a, "alice"))
    bob_cookie = session_cookie(member_of(tenant_b, "bob"))

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
        alice = WebsocketCommunicator(application, "/ws/events/", headers=[ORIGIN, alice_cookie])
        bob = WebsocketCommunicator(application, "/ws/events/", headers=[ORIGIN, bob_cookie])
        try:
            for ws, tenant in ((alice, tenant_a), (bob, tenant_b)):
                connected, _ = await ws.connect(timeout=10)
                assert connected
                assert await ws.receive_json_from(timeout=5) == {"type": "hello", "tenants": [tenant.id]}
            run = sync_to_async(
                lambda: heartbeat.apply_async(queue=celery_worker.queue).get(timeout=30),
                thread_sensitive=False,
            )
            sent = await run()
            return await drain(alice, 2), await drain(bob, 0.5), sent
        finally:
            await alice.disconnect()
            await bob.disconnect()

    alice_events, bob_events, sent = asyncio.run(scenario())
    assert sorted(sent["tenants"]) == ["tenant-a", "tenant-b"]
    assert [(e["type"], e["tenant"]) for e in alice_events] == [("heartbeat", "tenant-a")]
    assert [(e["type"], e["tenant"]) for e in bob_events] == [("heartbeat", "tenant-b")]
    assert alice_events[0]["at"] == sent["at"]


def test_anonymous_websocket_is_closed_unauthenticated() -> None:
    async def scenario() -> tuple[bool, int | None]:
        ws = WebsocketCommunicator(application, "/ws/events/", headers=[ORIGIN])
        connected, code = await ws.connect(timeout=5)
        await ws.disconnect()
        return connected, code

    assert asyncio.run(scenario()) == (False, CLOSE_UNAUTHENTICATED)


@pytest.mark.django_db(transaction=True)
def test_websocket_from_a_foreign_origin_is_refused() -> None:
    tenant = Tenant.objects.create(name="Tenant A", slug="tenant-a")
    cookie = session_cookie(member_of(tenant, "alice"))

    async def scenario() -> bool:
        ws = WebsocketCommunicator(
            application, "/ws/events/", headers=[(b"origin", b"http://evil.example"), cookie]
        )
        connected, _ = await ws.connect(timeout=5)
        await ws.disconnect()
        return connected

    assert asyncio.run(scenario()) is False


@pytest.mark.django_db(transaction=True)
def test_client_ping_gets_a_pong() -> None:
    tenant = Tenant.objects.create(name="Tenant A", slug="tenant-a")
    cookie = session_cookie(member_of(tenant, "alice"))

    async def scenario() -> dict[str, Any]:
        ws = WebsocketCommunicator(application, "/ws/events/", headers=[ORIGIN, cookie])
        await ws.connect(timeout=5)
        await ws.receive_json_from(timeout=5)
        await ws.send_json_to({"type": "ping"})
        reply = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return reply

    assert asyncio.run(scenario()) == {"type": "pong"}
