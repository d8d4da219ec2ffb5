"""Consoles: the serial log as a live stream (read by the host's agent), and VNC through a
websocket proxy.

A VNC console needs a token that is short-lived, single-use, and bound to one instance and one
user: the websocket for VM 2 refuses a token issued for VM 1, and so does anyone else's session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer

from compute.models import Instance, InstanceState
from compute.services import host_rpc
from core.errors import HostUnavailable
from core.redis import redis_client
from tenants.access import membership_role
from tenants.models import Role

TOKEN_TTL = 60  # seconds
CLOSE_UNAUTHORISED = 4403
CLOSE_NOT_RUNNING = 4409


def _token_key(token: str) -> str:
    return f"nubis:vnc-token:{token}"


def vnc_token_issue(instance: Instance, user_id: int) -> str:
    token = secrets.token_urlsafe(24)
    payload = json.dumps({"instance": str(instance.uuid), "user": user_id})
    redis_client().set(_token_key(token), payload, ex=TOKEN_TTL)
    return token


def vnc_token_consume(token: str, instance_uuid: str, user_id: int | None) -> bool:
    """True if the token was issued for this instance and user; it is used up either way."""
    if not token or user_id is None:
        return False
    raw: bytes | None = redis_client().getdel(_token_key(token))  # type: ignore[assignment]
    if raw is None:
        return False
    data = json.loads(raw)
    return bool(data.get("instance") == instance_uuid and data.get("user") == user_id)


def _instance_for(user: Any, uuid: str, need: Role) -> Instance | None:
    """The live instance if the user's role in its tenant is at least ``need``; else None (as 404 would)."""
    instance = Instance.objects.unscoped().filter(uuid=uuid).exclude(state=InstanceState.DELETED).first()
    if instance is None:
        return None
    role = membership_role(user, instance.tenant_id)
    return instance if role is not None and role.at_least(need) else None


def _console_target(uuid: str) -> host_rpc.ConsoleTarget | None:
    """Where the instance's console is now (None while it is on no host)."""
    instance = Instance.objects.unscoped().filter(uuid=uuid).select_related("host").first()
    return host_rpc.ConsoleTarget.of(instance) if instance is not None else None


class SerialConsoleConsumer(AsyncJsonWebsocketConsumer):
    """Send the tail of the serial log, then what is written to it, as ``{"type": "serial", "data"}``.

    The log is on the instance's host: its agent is asked for what follows the last offset every
    ``poll_seconds`` (compute.services.host_rpc). While the agent does not answer, one
    ``{"type": "unavailable", "host", "detail"}`` says so and the stream resumes once it answers
    again (``{"type": "available"}``); both carry an empty ``data`` for clients that only append it.
    """

    poll_seconds = 0.5
    retry_seconds = 2.0
    first_bytes = 16 * 1024
    follow_bytes = 64 * 1024

    async def connect(self) -> None:
        user = self.scope.get("user")
        uuid = str(self.scope["url_route"]["kwargs"]["uuid"])
        instance = await database_sync_to_async(_instance_for)(user, uuid, Role.MEMBER)
        if instance is None:
            await self.close(code=CLOSE_UNAUTHORISED)
            return
        self.uuid = str(instance.uuid)
        await self.accept()
        self.task = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        client = host_rpc.async_client()
        target: host_rpc.ConsoleTarget | None = None
        offset: int | None = None  # None: the tail first
        down = False
        try:
            while True:
                if target is None:
                    target = await database_sync_to_async(_console_target)(self.uuid)
                    if target is None:  # not placed yet: nothing written anywhere
                        await asyncio.sleep(self.retry_seconds)
                        continue
                size = self.first_bytes if offset is None else self.follow_bytes
                try:
                    chunk = await host_rpc.aconsole_read(client, target, offset, size)
                except (HostUnavailable, host_rpc.AgentError) as exc:
                    if not down:
                        down = True
                        detail = {"host": target.host, "detail": exc.message, "data": ""}
                        await self.send_json({"type": "unavailable", **detail})
                    target = None  # it may have moved meanwhile
                    await asyncio.sleep(self.retry_seconds)
                    continue
                if down:
                    down = False
                    await self.send_json({"type": "available", "host": target.host, "data": ""})
                if chunk.text:
                    await self.send_json({"type": "serial", "data": chunk.text})
                offset = chunk.end
                await asyncio.sleep(self.poll_seconds)
        finally:
            await client.aclose()

    async def disconnect(self, code: int) -> None:
        task = getattr(self, "task", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class VncProxyConsumer(AsyncWebsocketConsumer):
    """Relay binary websocket frames to the instance's VNC server on its host, and back."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        uuid = str(self.scope["url_route"]["kwargs"]["uuid"])
        query = dict(
            part.split("=", 1)
            for part in self.scope.get("query_string", b"").decode().split("&")
            if "=" in part
        )
        user_id = user.pk if user is not None and user.is_authenticated else None
        instance = await database_sync_to_async(_instance_for)(user, uuid, Role.MEMBER)
        allowed = await database_sync_to_async(vnc_token_consume)(query.get("token", ""), uuid, user_id)
        if instance is None or not allowed:
            await self.close(code=CLOSE_UNAUTHORISED)
            return
        if instance.state != InstanceState.RUNNING or not instance.vnc_port:
            await self.close(code=CLOSE_NOT_RUNNING)
            return
        try:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", instance.vnc_port)
        except OSError:
            await self.close(code=CLOSE_NOT_RUNNING)
            return
        subprotocols = self.scope.get("subprotocols") or []
        await self.accept("binary" if "binary" in subprotocols else None)
        self.pump = asyncio.get_running_loop().create_task(self._from_vnc())

    async def _from_vnc(self) -> None:
        try:
            while data := await self.reader.read(65536):
                await self.send(bytes_data=data)
        finally:
            await self.close()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if bytes_data:
            self.writer.write(bytes_data)
            await self.writer.drain()

    async def disconnect(self, code: int) -> None:
        pump = getattr(self, "pump", None)
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await pump
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.close()
