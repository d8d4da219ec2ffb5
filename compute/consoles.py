"""Consoles: the serial log as a live stream (read by the host's agent), and VNC and the
interactive serial console through websocket proxies (relayed by the host's agent:
compute.vnc_relay, compute.serial_relay).

VNC and the interactive serial console need a token that is short-lived, single-use, and bound to
one instance, one user and one kind of console: the websocket for VM 2 refuses a token issued for
VM 1, and so does anyone else's session, or the other console's. A serial token also says whether
its session may type (``input``): without it, what the browser sends is dropped here, never
relayed to the guest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from typing import Any

import redis
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer

from compute.models import Instance, InstanceKind, InstanceState
from compute.services import host_rpc
from compute.services.host_rpc import (
    VNC_CHUNK,
    VNC_DATA,
    VNC_END,
    VNC_KEEPALIVE,
    VNC_KEEPALIVE_SECONDS,
    VNC_SILENCE,
    VNC_TTL,
)
from core.errors import HostUnavailable, ServiceError
from core.redis import redis_client
from tenants.access import membership_role
from tenants.models import Role

TOKEN_TTL = 60  # seconds
CLOSE_UNAUTHORISED = 4403
CLOSE_NOT_RUNNING = 4409  # also: no agent answers for its host, or it has no VNC server there
CLOSE_HOST_UNAVAILABLE = 4503  # an open console's agent fell silent


def _token_key(token: str) -> str:
    return f"nubis:vnc-token:{token}"


CONSOLE_KINDS = ("vnc", "serial")


def console_token_issue(instance: Instance, user_id: int, kind: str = "vnc", *, can_type: bool = True) -> str:
    """A single-use token for one console (``kind``) of ``instance``, for ``user_id`` only."""
    if kind not in CONSOLE_KINDS:
        raise ValueError(f"no such console: {kind}")
    token = secrets.token_urlsafe(24)
    payload = json.dumps({"instance": str(instance.uuid), "user": user_id, "kind": kind, "input": can_type})
    redis_client().set(_token_key(token), payload, ex=TOKEN_TTL)
    return token


def vnc_token_issue(instance: Instance, user_id: int) -> str:
    return console_token_issue(instance, user_id, "vnc")


def console_token_consume(
    token: str, instance_uuid: str, user_id: int | None, kind: str
) -> dict[str, Any] | None:
    """The token's grant if it was issued for this instance, user and console; it is used up either way."""
    if not token or user_id is None:
        return None
    raw: bytes | None = redis_client().getdel(_token_key(token))  # type: ignore[assignment]
    if raw is None:
        return None
    data: dict[str, Any] = json.loads(raw)
    if data.get("instance") != instance_uuid or data.get("user") != user_id:
        return None
    return data if data.get("kind", "vnc") == kind else None


def vnc_token_consume(token: str, instance_uuid: str, user_id: int | None) -> bool:
    """True if the token was issued for this instance and user; it is used up either way."""
    return console_token_consume(token, instance_uuid, user_id, "vnc") is not None


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


def _vnc_target(uuid: str) -> host_rpc.ConsoleTarget | None:
    """Where the VM's VNC server is now: None unless it is a running VM on a host."""
    instance = Instance.objects.unscoped().filter(uuid=uuid).select_related("host").first()
    if instance is None or instance.kind != InstanceKind.VM or instance.state != InstanceState.RUNNING:
        return None
    return host_rpc.ConsoleTarget.of(instance)


class VncProxyConsumer(AsyncWebsocketConsumer):
    """Relay binary websocket frames to the VM's VNC server, through its host's agent, and back.

    The portal never connects to a VNC server: it asks the host's agent to open a session
    (host_rpc.avnc_open) and pumps the session's two Redis lists (host_rpc.VncChannel), ``down``
    to websocket frames and websocket frames to ``up``. An idle portal says it is there every
    ``keepalive_seconds`` (so does the agent); an agent silent for ``silence_seconds`` (stopped, or
    its host gone) closes the websocket with ``CLOSE_HOST_UNAVAILABLE``, the VNC server closing its
    end (the guest stopped) with a normal close.
    """

    keepalive_seconds = VNC_KEEPALIVE_SECONDS
    silence_seconds = VNC_SILENCE
    agent_ended = False
    kind = "vnc"  # the console its tokens name
    input_allowed = True  # what the browser sends is relayed (a serial token may say otherwise)
    input_dropped = 0  # bytes of input refused (a read-only session)

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
        grant = await database_sync_to_async(console_token_consume)(
            query.get("token", ""), uuid, user_id, self.kind
        )
        if instance is None or grant is None:
            await self.close(code=CLOSE_UNAUTHORISED)
            return
        self.input_allowed = bool(grant.get("input", True))
        target = await database_sync_to_async(_vnc_target)(uuid)
        if target is None:
            await self.close(code=CLOSE_NOT_RUNNING)
            return
        self.client = host_rpc.async_client()
        self.channel = host_rpc.VncChannel.new()
        try:
            await self.open_session(target)
        except (HostUnavailable, host_rpc.AgentError, ServiceError, redis.RedisError):
            # No agent, or no VNC server behind it (the VM stopped meanwhile, or moved).
            await self._close_client()
            await self.close(code=CLOSE_NOT_RUNNING)
            return
        self.last_up = time.monotonic()
        subprotocols = self.scope.get("subprotocols") or []
        await self.accept("binary" if "binary" in subprotocols else None)
        self.pump = asyncio.get_running_loop().create_task(self._from_agent())

    async def open_session(self, target: host_rpc.ConsoleTarget) -> None:
        """Ask the agent to connect this session's channel to the console."""
        await host_rpc.avnc_open(self.client, target, self.channel)

    async def _from_agent(self) -> None:
        """``down`` -> websocket, keepalives ``up`` while the user is idle, until the session ends."""
        channel = self.channel
        heard = time.monotonic()
        code = 1000
        try:
            while True:
                got = await self.client.blpop([channel.down], timeout=1)  # type: ignore[misc]
                now = time.monotonic()
                if got is not None:
                    heard = now
                    items = [got[1], *(await self.client.lpop(channel.down, 63) or [])]  # type: ignore[misc]
                    data = b"".join(item[1:] for item in items if item[:1] == VNC_DATA)
                    if data:
                        await self.send(bytes_data=data)
                    if any(item[:1] == VNC_END for item in items):
                        self.agent_ended = True  # the VNC server closed, or the agent stopped
                        break
                elif now - heard > self.silence_seconds:
                    code = CLOSE_HOST_UNAVAILABLE
                    break
                if now - self.last_up >= self.keepalive_seconds:
                    await self._push_up(VNC_KEEPALIVE)
        except redis.RedisError:
            code = CLOSE_HOST_UNAVAILABLE
        await self.close(code=code)

    async def _push_up(self, item: bytes) -> None:
        self.last_up = time.monotonic()
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.rpush(self.channel.up, item)
            pipe.expire(self.channel.up, VNC_TTL)
            await pipe.execute()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if bytes_data and not self.input_allowed:
            self.input_dropped += len(bytes_data)  # a read-only session: never relayed
            return
        if bytes_data and hasattr(self, "pump"):
            for at in range(0, len(bytes_data), VNC_CHUNK):
                await self._push_up(VNC_DATA + bytes_data[at : at + VNC_CHUNK])

    async def disconnect(self, code: int) -> None:
        pump = getattr(self, "pump", None)
        if pump is None:
            return
        if pump is not asyncio.current_task():
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, redis.RedisError):
                await pump
        # Tell the agent (it closes its socket to QEMU); drop what it sent that nobody will read.
        with contextlib.suppress(redis.RedisError):
            if not self.agent_ended:
                await self._push_up(VNC_END)
            await self.client.delete(self.channel.down)
        await self._close_client()

    async def _close_client(self) -> None:
        with contextlib.suppress(redis.RedisError):
            await self.client.aclose()


class SerialTerminalConsumer(VncProxyConsumer):
    """The VM's serial port, interactive: binary frames to and from its pty, through its host's
    agent (compute.serial_relay), with a single-use ``serial`` token. A token without ``input``
    makes a session that only reads: what its browser sends is dropped here.

    The port has one reader: a newer session of the same VM ends this one (a normal close).
    """

    kind = "serial"

    async def open_session(self, target: host_rpc.ConsoleTarget) -> None:
        await host_rpc.aserial_open(self.client, target, self.channel)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is not None and bytes_data is None:
            bytes_data = text_data.encode()  # a terminal may send its keys as text frames
        await super().receive(bytes_data=bytes_data)
