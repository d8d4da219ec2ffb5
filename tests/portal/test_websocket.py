"""A real websocket through the ASGI app, on the channels_redis layer, receives events from a Celery task;
after Redis lost its data (FLUSHALL on a private redis-server) it joins its groups again and says
"resync"."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client, override_settings

from core.events import tenant_group
from portal.asgi import application
from portal.consumers import CLOSE_UNAUTHENTICATED, EPOCH_KEY
from portal.tasks import heartbeat
from tenants.models import Membership, Role, Tenant
from tests.conftest import CeleryWorker
from tests.outages import PrivateRedis, private_redis

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


@pytest.mark.django_db(transaction=True)
def test_staff_hear_the_drs_page_events_and_tenant_members_do_not() -> None:
    from compute.services.drs import drs_settings_update
    from security.audit import Actor

    tenant = Tenant.objects.create(name="Tenant A", slug="tenant-a")
    owner = member_of(tenant, "olga")
    Membership.objects.filter(user=owner).update(role=Role.OWNER)
    staff = User.objects.create_user("sam", password="pw-not-used-12345", is_staff=True)
    cookies = [session_cookie(user) for user in (staff, owner)]

    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        sockets = [
            WebsocketCommunicator(application, "/ws/events/", headers=[ORIGIN, cookie]) for cookie in cookies
        ]
        try:
            for ws in sockets:
                connected, _ = await ws.connect(timeout=10)
                assert connected
            hello = await sockets[0].receive_json_from(timeout=5)
            await sockets[1].receive_json_from(timeout=5)
            change = sync_to_async(
                lambda: drs_settings_update(actor=Actor("sam", "api", staff.pk), threshold=4),
                thread_sensitive=False,
            )
            await change()
            return hello, await drain(sockets[0], 2), await drain(sockets[1], 0.5)
        finally:
            for ws in sockets:
                await ws.disconnect()

    hello, heard, owner_heard = asyncio.run(scenario())
    assert hello == {"type": "hello", "tenants": [], "staff": True}
    assert heard == [{"type": "drs", "what": "settings", "id": 1}]
    assert owner_heard == []


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


# -- Redis loses its data: the consumer joins its groups again and tells the page to resync -------
CHECK_SECONDS = 0.2


@pytest.fixture
def private_layer() -> Iterator[PrivateRedis]:
    """The channel layer on a redis-server of the test's own (flushing the session's would take
    every other test's groups and queues with it), checked every CHECK_SECONDS."""
    with private_redis() as server:
        layers: dict[str, Any] = copy.deepcopy(settings.CHANNEL_LAYERS)
        layers["default"]["CONFIG"]["hosts"] = [server.url()]
        with override_settings(CHANNEL_LAYERS=layers, NUBIS_LIVE_CHECK_SECONDS=CHECK_SECONDS):
            yield server


async def receive_type(communicator: WebsocketCommunicator, kind: str, seconds: float) -> dict[str, Any]:
    """The first message of type ``kind`` within ``seconds`` (others before it are skipped)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        if await communicator.receive_nothing(timeout=left, interval=0.02):
            break
        message = await communicator.receive_json_from(timeout=1)
        if message.get("type") == kind:
            return message
    raise AssertionError(f"no {kind!r} message within {seconds} s")


def event(tenant: Tenant, text: str) -> dict[str, Any]:
    return {"type": "nubis.event", "event": {"type": "test", "tenant": tenant.slug, "name": text}}


@pytest.mark.django_db(transaction=True)
def test_after_a_flushall_the_consumer_joins_its_groups_again_and_says_resync(
    private_layer: PrivateRedis,
) -> None:
    tenant = Tenant.objects.create(name="Tenant A", slug="tenant-a")
    cookie = session_cookie(member_of(tenant, "alice"))
    group_key = f"nubis:asgi:group:{tenant_group(tenant.id)}".encode()

    async def scenario() -> list[dict[str, Any]]:
        layer = get_channel_layer()
        assert layer is not None
        ws = WebsocketCommunicator(application, "/ws/events/", headers=[ORIGIN, cookie])
        try:
            connected, _ = await ws.connect(timeout=10)
            assert connected
            assert (await ws.receive_json_from(timeout=5))["type"] == "hello"
            await layer.group_send(tenant_group(tenant.id), event(tenant, "before"))
            heard = [await ws.receive_json_from(timeout=5)]
            # Nothing to resync while Redis keeps its data.
            assert await ws.receive_nothing(timeout=CHECK_SECONDS * 4)
            private_layer.flush()
            assert not private_layer.client().exists(group_key)
            heard.append(await receive_type(ws, "resync", CHECK_SECONDS * 20))
            assert private_layer.client().exists(group_key), "the group was joined again"
            await layer.group_send(tenant_group(tenant.id), event(tenant, "after"))
            heard.append(await ws.receive_json_from(timeout=5))
            # One resync per loss, not one per check.
            assert await ws.receive_nothing(timeout=CHECK_SECONDS * 4)
            return heard
        finally:
            await ws.disconnect()

    heard = asyncio.run(scenario())
    assert [m["type"] for m in heard] == ["test", "resync", "test"]
    assert [m.get("name") for m in heard] == ["before", None, "after"]
    assert heard[1] == {"type": "resync"}


@pytest.mark.django_db(transaction=True)
def test_a_redis_error_in_the_check_keeps_the_socket_and_the_check_runs_again(
    private_layer: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = Tenant.objects.create(name="Tenant A", slug="tenant-a")
    cookie = session_cookie(member_of(tenant, "alice"))
    epoch_key = f"nubis:asgi:{EPOCH_KEY}"

    async def scenario() -> list[dict[str, Any]]:
        layer = get_channel_layer()
        assert layer is not None
        redis = private_layer.client()
        ws = WebsocketCommunicator(application, "/ws/events/", headers=[ORIGIN, cookie])
        try:
            connected, _ = await ws.connect(timeout=10)
            assert connected
            await ws.receive_json_from(timeout=5)
            # The epoch becomes a list: every check fails with WRONGTYPE (a Redis error) while the
            # layer itself keeps working.
            redis.delete(epoch_key)
            redis.rpush(epoch_key, "not-an-epoch")
            await asyncio.sleep(CHECK_SECONDS * 5)
            await ws.send_json_to({"type": "ping"})
            heard = [await ws.receive_json_from(timeout=5)]
            redis.delete(epoch_key)  # the next check sets a new epoch: a loss, as after a flush
            heard.append(await receive_type(ws, "resync", CHECK_SECONDS * 20))
            await layer.group_send(tenant_group(tenant.id), event(tenant, "after"))
            heard.append(await ws.receive_json_from(timeout=5))
            return heard
        finally:
            await ws.disconnect()

    with caplog.at_level(logging.DEBUG, logger="portal.consumers"):
        heard = asyncio.run(scenario())
    assert [m["type"] for m in heard] == ["pong", "resync", "test"]
    failures = [r for r in caplog.records if "live check failed" in r.getMessage()]
    assert failures, "the failed check was logged"
    assert "WRONGTYPE" in failures[0].getMessage()
    assert [r.levelno for r in failures][:2] == [logging.WARNING, logging.DEBUG], "warned once, then quieter"
