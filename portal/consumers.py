"""Websocket consumers: the live event stream of the tenants a user belongs to."""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from core.events import tenant_group
from tenants.selectors import tenant_ids_for_user

# Close codes in the 4000 range are for applications; 4401 mirrors HTTP 401.
CLOSE_UNAUTHENTICATED = 4401


class EventsConsumer(AsyncJsonWebsocketConsumer):
    """Deliver every event published to the groups of the user's tenants."""

    groups_joined: list[str]

    async def connect(self) -> None:
        self.groups_joined = []
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        tenant_ids = await database_sync_to_async(tenant_ids_for_user)(user)
        for tenant_id in tenant_ids:
            group = tenant_group(tenant_id)
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups_joined.append(group)
        await self.accept()
        await self.send_json({"type": "hello", "tenants": sorted(tenant_ids)})

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # The stream is one-way; a client ping gets a pong so it can detect dead connections.
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    async def nubis_event(self, message: dict[str, Any]) -> None:
        await self.send_json(message["event"])
