"""Websocket consumers: the live event stream of the tenants a user belongs to (and, for staff,
the staff pages' events).

Group membership lives in Redis (channels_redis), and Redis may lose it: a FLUSHALL, or a restart
without persistence. The socket then stays open but hears nothing. So the consumer watches an
epoch, a random value the first consumer stores in the channel layer's Redis (``SET NX``): it
remembers the value at connect, and every NUBIS_LIVE_CHECK_SECONDS reads it again. Missing or
changed means Redis lost its data: the consumer joins its groups again and tells the page
``{"type": "resync"}``, and the page asks the server for the current state of what it shows (the
events sent meanwhile are lost). A Redis error in the check is logged and the check runs again
next time; it never closes the socket. The same check joins the groups again before channels_redis
expires their membership (its ``group_expiry``), so a page left open for days stays live.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from core.events import STAFF_GROUP, tenant_group
from tenants.selectors import tenant_ids_for_user

log = logging.getLogger(__name__)

# Close codes in the 4000 range are for applications; 4401 mirrors HTTP 401.
CLOSE_UNAUTHENTICATED = 4401
EPOCH_KEY = "epoch"  # under the channel layer's prefix: "<prefix>:epoch"


class EventsConsumer(AsyncJsonWebsocketConsumer):
    """Deliver every event published to the groups of the user's tenants."""

    groups_joined: list[str]
    epoch: list[bytes | None]  # per Redis host of the channel layer, as read at the last (re)join
    joined_at: float
    watch: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self.groups_joined = []
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        tenant_ids = await database_sync_to_async(tenant_ids_for_user)(user)
        self.groups_joined = [tenant_group(tenant_id) for tenant_id in tenant_ids]
        if user.is_staff:  # the staff pages' events too (DRS); no tenant's
            self.groups_joined.append(STAFF_GROUP)
        # The epoch is read before joining: a loss in between changes it, and the watch sees that.
        self.epoch = await self.read_epoch()
        await self.join()
        await self.accept()
        hello: dict[str, Any] = {"type": "hello", "tenants": sorted(tenant_ids)}
        if user.is_staff:
            hello["staff"] = True
        await self.send_json(hello)
        self.watch = asyncio.create_task(self.watch_groups())

    async def disconnect(self, code: int) -> None:
        if self.watch is not None:
            self.watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watch
            self.watch = None
        for group in getattr(self, "groups_joined", []):
            with contextlib.suppress(Exception):  # Redis down: the membership expires by itself
                await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # The stream is one-way; a client ping gets a pong so it can detect dead connections.
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    async def nubis_event(self, message: dict[str, Any]) -> None:
        await self.send_json(message["event"])

    # -- surviving a Redis that lost its data -----------------------------------------------------
    async def join(self) -> None:
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        self.joined_at = time.monotonic()

    async def read_epoch(self) -> list[bytes | None]:
        """The epoch of each Redis host of the channel layer, set first where missing (none for a
        layer that keeps nothing in Redis: nothing to watch)."""
        layer: Any = self.channel_layer
        if not hasattr(layer, "connection") or not hasattr(layer, "ring_size"):
            return []
        key = f"{layer.prefix}:{EPOCH_KEY}"
        epochs: list[bytes | None] = []
        for index in range(layer.ring_size):
            async with layer.connection(index).pipeline(transaction=False) as pipe:
                pipe.set(key, uuid.uuid4().hex, nx=True)
                pipe.get(key)
                _set, value = await pipe.execute()
            epochs.append(value)
        return epochs

    async def check(self) -> bool:
        """Join the groups again if Redis lost them (then tell the page to resync: True), or if
        their membership would expire soon."""
        epoch = await self.read_epoch()
        if epoch != self.epoch:
            await self.join()
            self.epoch = epoch  # only once joined: a join that failed half-way is tried again
            log.info("live check: Redis lost the channel groups; joined %s again", self.groups_joined)
            await self.send_json({"type": "resync"})
            return True
        expiry = getattr(self.channel_layer, "group_expiry", None)
        if expiry is not None and time.monotonic() - self.joined_at > expiry / 2:
            await self.join()
        return False

    async def watch_groups(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(float(settings.NUBIS_LIVE_CHECK_SECONDS))
            try:
                await self.check()
            except Exception as exc:  # Redis unreachable, or lost mid-check: try again next time
                (log.debug if failing else log.warning)("live check failed, will retry: %s", exc)
                failing = True
            else:
                if failing:
                    log.info("live check: Redis answers again")
                failing = False
