"""Consoles on real guests: the serial stream, and the VNC proxy with its instance- and user-bound token.

VNC goes through the session's compute agent (a process of its own): the portal (this process)
asks it to open a session, and the bytes travel through Redis between the agent's socket to QEMU
and the websocket. What this process connects to is recorded (an audit hook): never the guest's
VNC port, which only the agent's process holds a connection to.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import struct
import sys
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from compute.consoles import CLOSE_HOST_UNAVAILABLE, VncProxyConsumer, vnc_token_issue
from compute.models import Instance, OperationKind, OperationState
from compute.services import host_rpc
from compute.services.host_rpc import VNC_END, VNC_OPEN, AgentError, VncChannel
from compute.services.instances import instance_action, instance_create, instance_delete
from core.errors import ServiceError
from core.redis import redis_client
from portal.asgi import application
from security.audit import Actor
from tenants.models import Role
from tests.compute.conftest import Agent, wait_for, wait_marker, wait_operation
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


# ---- what is connected to what ----------------------------------------------------------------

_connects: list[Any] | None = None  # the addresses this process connects sockets to, while recorded


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect" and _connects is not None:
        _connects.append(args[1])


sys.addaudithook(_audit)  # for the whole process (hooks cannot be removed): records only when asked


@contextlib.contextmanager
def connects_recorded() -> Iterator[list[Any]]:
    """Every address a socket of this process (any thread) connects to meanwhile."""
    global _connects
    _connects = []
    try:
        yield _connects
    finally:
        _connects = None


def connections_to(pid: int, port: int) -> int:
    """Established TCP connections of process ``pid`` to 127.0.0.1:``port`` (from /proc)."""
    peer = f"0100007F:{port:04X}"
    inodes = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2] == peer and fields[3] == "01":
            inodes.add(f"socket:[{fields[9]}]")
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd) in inodes
    return count


def vnc_keys() -> list[bytes]:
    return list(redis_client().scan_iter(match="nubis:vnc:*"))


def no_sessions_left(agent: Agent, vm: Instance) -> None:
    """The agent holds no connection to the VM's VNC server any more, and no session list lingers
    beyond its TTL."""
    port = vm.vnc_port
    assert port
    wait_for(lambda: connections_to(agent.process.pid, port) == 0, "the agent's VNC socket to close", 20)

    def expiring() -> bool:
        ttls = [int(redis_client().ttl(key)) for key in vnc_keys()]  # type: ignore[arg-type]
        return all(ttl != -1 and ttl <= host_rpc.VNC_TTL for ttl in ttls)  # -1: no TTL; -2: gone

    wait_for(expiring, "no lasting session keys", 5)


# ---- an RFB client over the websocket ----------------------------------------------------------


class Rfb:
    """Enough of the RFB protocol (RFC 6143) to log in and ask for the whole screen."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator
        self.buffer = b""

    async def read(self, size: int) -> bytes:
        while len(self.buffer) < size:  # frames need not match messages: it is a stream
            self.buffer += await self.communicator.receive_from(timeout=10)
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    async def send(self, data: bytes) -> None:
        await self.communicator.send_to(bytes_data=data)

    async def handshake(self) -> bytes:
        """Version and security types: the types QEMU offers (2: VNC authentication)."""
        version = await self.read(12)
        assert version == b"RFB 003.008\n", version
        await self.send(b"RFB 003.008\n")
        (count,) = await self.read(1)
        assert count > 0, await self.read(4)  # 0: a reason follows
        return await self.read(count)

    async def login(self, password: str) -> tuple[int, int]:
        """VNC authentication with ``password``, then a shared session: the screen's size."""
        await self.send(b"\x02")
        challenge = await self.read(16)
        # The DES key is the password with each byte's bits reversed (RFC 6143 7.2.2).
        key = bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode().ljust(8, b"\0")[:8])
        encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # noqa: S305  # RFB's own scheme
        await self.send(encryptor.update(challenge) + encryptor.finalize())
        assert await self.read(4) == b"\0\0\0\0", "VNC authentication failed"
        await self.send(b"\x01")  # ClientInit: shared
        width, height = struct.unpack(">HH", await self.read(4))
        pixel_format = await self.read(16)
        (name_length,) = struct.unpack(">I", await self.read(4))
        await self.read(name_length)
        self.bytes_per_pixel = pixel_format[0] // 8
        return width, height

    async def whole_screen(self, width: int, height: int) -> int:
        """Ask for the whole screen (raw pixels: no encodings were set) and read it: its bytes."""
        await self.send(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
        kind, _, rects = struct.unpack(">BBH", await self.read(4))
        assert kind == 0, kind  # FramebufferUpdate
        total = 0
        for _ in range(rects):
            _x, _y, w, h, encoding = struct.unpack(">HHHHi", await self.read(12))
            assert encoding == 0, encoding  # raw
            total += len(await self.read(w * h * self.bytes_per_pixel))
        return total


def test_vnc_proxy_reaches_the_guests_vnc_server(no_leftovers, agent, two_vms) -> None:
    _, member, (one, _) = two_vms
    grant = vnc_token(member, one)
    assert len(grant["password"]) == 8
    one.refresh_from_db()
    port = one.vnc_port
    assert port
    ended_before = agent.text().count("ended: the portal closed it")

    async def session(communicator: WebsocketCommunicator) -> tuple[bytes, tuple[int, int], int, int]:
        rfb = Rfb(communicator)
        types = await rfb.handshake()
        size = await rfb.login(grant["password"])
        # While it is open, the agent's process holds the one connection to QEMU's port.
        held = connections_to(agent.process.pid, port)
        return types, size, await rfb.whole_screen(*size), held

    with connects_recorded() as connects:
        types, (width, height), screen, held = ws(f"{grant['url']}?token={grant['token']}", member, session)
    assert 2 in types  # QEMU's VNC server, with its password, speaking through the agent
    assert width >= 640
    assert screen == width * height * 4, (width, height, screen)
    assert held == 1
    assert connections_to(os.getpid(), port) == 0
    assert not [a for a in connects if isinstance(a, tuple) and a[1:2] == (port,)], connects
    assert connects, "the recording saw this process's connections (Redis, the database)"
    no_sessions_left(agent, one)
    wait_for(
        lambda: agent.text().count("ended: the portal closed it") == ended_before + 1, "the agent's log", 5
    )
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


def test_vnc_ends_when_the_guest_stops_and_the_agent_refuses_it(no_leftovers, agent, two_vms) -> None:
    _, member, (_, two) = two_vms
    grant = vnc_token(member, two)
    actor = Actor(member.username, "api", member.pk)
    closed_before = agent.text().count("ended: the VNC server closed the connection")

    def stop() -> None:
        op = instance_action(actor=actor, instance=two, kind=OperationKind.STOP)
        assert wait_operation(op).state == OperationState.SUCCEEDED

    async def until_the_end(communicator: WebsocketCommunicator) -> dict[str, Any]:
        assert await rfb_greeting(communicator) == b"RFB 003.008\n"
        await asyncio.to_thread(stop)
        # QEMU closed its end: the agent says so, and the websocket closes normally.
        return await communicator.receive_output(timeout=20)

    assert ws(f"{grant['url']}?token={grant['token']}", member, until_the_end) == {
        "type": "websocket.close",
        "code": 1000,
    }
    closed = "ended: the VNC server closed the connection"
    wait_for(lambda: agent.text().count(closed) == closed_before + 1, "the agent's log", 5)
    two.refresh_from_db()
    assert two.vnc_port is None or connections_to(agent.process.pid, two.vnc_port) == 0
    # A stopped VM: the portal does not even ask; asked anyway, the agent refuses (409).
    token = vnc_token_issue(two, member.pk)
    assert ws(f"/ws/instances/{two.uuid}/vnc/?token={token}", member, rfb_greeting) == ("closed", 4409)
    for uuid in (two.uuid, uuidlib.uuid4()):  # stopped; not on this host at all
        with pytest.raises(AgentError, match="not running"):
            host_rpc.call(agent.name, VNC_OPEN, {"uuid": str(uuid), "session": VncChannel.new().session})
    with pytest.raises(ServiceError, match="session"):  # a name that is not one of ours: 400
        host_rpc.call(agent.name, VNC_OPEN, {"uuid": str(two.uuid), "session": "../up"})


def test_an_agent_relays_a_bounded_number_of_sessions(no_leftovers, agent, two_vms) -> None:
    from compute.vnc_relay import SESSIONS

    _, _, (one, _) = two_vms
    one.refresh_from_db()
    assert one.vnc_port
    wait_for(lambda: connections_to(agent.process.pid, one.vnc_port) == 0, "earlier sessions to end", 20)
    channels = [VncChannel.new() for _ in range(SESSIONS)]
    try:
        for channel in channels:
            host_rpc.call(agent.name, VNC_OPEN, {"uuid": str(one.uuid), "session": channel.session})
        with pytest.raises(AgentError, match=f"{SESSIONS} sessions already"):
            host_rpc.call(agent.name, VNC_OPEN, {"uuid": str(one.uuid), "session": VncChannel.new().session})
        assert connections_to(agent.process.pid, one.vnc_port) == SESSIONS
        # Each one's greeting is waiting on its down list.
        got: Any = redis_client().blpop([channels[0].down], timeout=5)
        assert got is not None
        assert got[1] == b"D" + b"RFB 003.008\n"
    finally:
        for channel in channels:  # the portal's end marker, as a closed websocket sends it
            redis_client().rpush(channel.up, VNC_END)
    no_sessions_left(agent, one)
    host_rpc.call(agent.name, VNC_OPEN, {"uuid": str(one.uuid), "session": channels[0].session})
    redis_client().rpush(channels[0].up, VNC_END)  # slots are given back
    no_sessions_left(agent, one)


def test_a_silent_agent_closes_the_console(no_leftovers, agent, two_vms, monkeypatch) -> None:
    _, member, (one, _) = two_vms
    grant = vnc_token(member, one)
    # Shorter than the default, still longer than the agent's keepalive interval.
    silence = host_rpc.VNC_KEEPALIVE_SECONDS + 3
    monkeypatch.setattr(VncProxyConsumer, "silence_seconds", silence)

    async def idle_then_hung(communicator: WebsocketCommunicator) -> tuple[bool, dict[str, Any], float]:
        assert await rfb_greeting(communicator) == b"RFB 003.008\n"
        # Idle for longer than the silence allowed: the agent's keepalives keep it open.
        open_while_idle = await communicator.receive_nothing(timeout=silence + 2)
        agent.process.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        try:
            closed = await communicator.receive_output(timeout=silence + 10)
        finally:
            agent.process.send_signal(signal.SIGCONT)
        return open_while_idle, closed, time.monotonic() - started

    open_while_idle, closed, after = ws(f"{grant['url']}?token={grant['token']}", member, idle_then_hung)
    assert open_while_idle
    assert closed == {"type": "websocket.close", "code": CLOSE_HOST_UNAVAILABLE}
    assert after <= silence + 2, after
    no_sessions_left(agent, one)  # the agent, back, found the portal's end marker
