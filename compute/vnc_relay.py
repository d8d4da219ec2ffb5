"""The agent's side of VNC consoles: relay a guest's VNC server to the portal through Redis.

QEMU's VNC server listens on this host's 127.0.0.1 only, and stays there: no tenant, and no
portal on another machine, ever reaches the port. The portal asks for a session (``VNC_OPEN``,
compute.agent_rpc); the agent looks the port up in libvirt itself (never a port from the
request), connects, and relays the session's two Redis lists (compute.services.host_rpc,
``VncChannel``) to and from that socket:

- a reader thread: socket -> ``down`` (an item per ``recv``, up to 64 KiB), and the end marker
  when QEMU closes the connection (the guest stopped);
- a writer thread: ``up`` -> socket (BLPOP a second at a time), which also sends the keepalives
  down and ends the session when the portal ends it or has been silent for ``VNC_SILENCE``.

Sessions are few and bounded (``SESSIONS`` per agent: one more is refused with a 409), on Redis
connections of their own, so a blocking BLPOP never holds up the RPC loop's reads. When the
portal stops reading, the agent stops reading QEMU once ``BACKLOG`` items wait (QEMU then waits
too) instead of filling Redis.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import uuid as uuidlib
from typing import Any, cast

import redis
from django.conf import settings

from compute.drivers.base import DriverError, VmDriver
from compute.services.host_rpc import (
    VNC_CHUNK,
    VNC_DATA,
    VNC_END,
    VNC_KEEPALIVE,
    VNC_KEEPALIVE_SECONDS,
    VNC_SILENCE,
    VNC_TTL,
    VncChannel,
)

logger = logging.getLogger("nubis.agent")

SESSIONS = 16  # VNC sessions one agent relays at once
BACKLOG = 256  # items waiting for the portal (up to 16 MiB) before the agent stops reading QEMU
CONNECT_SECONDS = 5.0
TAKE_SECONDS = 1  # each BLPOP of the writer; silence and keepalives are checked between them


def relay_client() -> redis.Redis:
    """The relay's own connection pool: its BLPOPs must never wait on the RPC loop's client."""
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=5, socket_timeout=10)


class VncRelay:
    """The VNC sessions this agent relays, at most ``sessions`` at once."""

    def __init__(
        self, vms: VmDriver, prefix: str, client: redis.Redis | None = None, sessions: int = SESSIONS
    ) -> None:
        self.vms = vms
        self.prefix = prefix
        self.client = client or relay_client()
        self.capacity = sessions
        self.sessions: dict[str, VncSession] = {}
        self.lock = threading.Lock()

    def open(self, args: dict[str, Any]) -> dict[str, Any]:
        """Connect the session that ``args`` names to the VNC server of the VM of ``args["uuid"]``."""
        channel = VncChannel.named(args["session"])
        name = f"{self.prefix}{uuidlib.UUID(str(args['uuid']))}"
        port = self.vms.vnc_port(name)
        if port is None:
            raise DriverError("vnc: the VM is not running on this host, or has no VNC server")
        with self.lock:
            if channel.session in self.sessions:
                raise ValueError("session: already open")
            if len(self.sessions) >= self.capacity:
                raise DriverError(f"vnc: this host relays {self.capacity} sessions already; try again later")
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_SECONDS)
            except OSError as exc:
                raise DriverError(f"vnc: cannot reach the VM's VNC server: {exc}") from None
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # key presses go at once
            session = VncSession(self, channel, sock)
            self.sessions[channel.session] = session
        session.start()
        logger.info("vnc %s: relaying %s (port %d)", channel.session[:8], name, port)
        return {"session": channel.session}

    def count(self) -> int:
        with self.lock:
            return len(self.sessions)

    def close_all(self) -> None:
        """End every session (the agent is stopping): each portal hears the end at once."""
        with self.lock:
            sessions = list(self.sessions.values())
        for session in sessions:
            session.end("the host's agent stopped", tell_portal=True)

    def _forget(self, session: VncSession) -> None:
        with self.lock:
            self.sessions.pop(session.channel.session, None)


class VncSession:
    """One relayed connection: a socket to QEMU and the two lists of its channel."""

    label = "vnc"  # in the agent's log and thread names (compute.serial_relay relays a pty)
    closed_reason = "the VNC server closed the connection"

    def __init__(self, relay: VncRelay, channel: VncChannel, sock: socket.socket) -> None:
        self.relay = relay
        self.client = relay.client
        self.channel = channel
        self.sock = sock
        self.ended = threading.Event()
        self.told_portal = False
        self.last_down = time.monotonic()
        self.lock = threading.Lock()
        self.running = 2  # threads; the last one out tidies up

    def start(self) -> None:
        tag = self.channel.session[:8]
        for target, side in ((self._read, "down"), (self._write, "up")):
            name = f"{self.label}-{tag}-{side}"
            threading.Thread(target=self._run, args=(target,), name=name, daemon=True).start()

    def _run(self, target: Any) -> None:
        try:
            target()
        except (OSError, redis.RedisError) as exc:
            self.end(f"relay failed: {exc}", tell_portal=True)
        except Exception:  # the session ends in any case, and its slot is given back
            logger.exception("%s %s: relay failed", self.label, self.channel.session[:8])
            self.end("relay failed", tell_portal=True)
        finally:
            with self.lock:
                self.running -= 1
                last = self.running == 0
            if last:
                self._tidy()

    # -- the two directions ------------------------------------------------------------------------
    def _read(self) -> None:
        """QEMU -> portal, until QEMU closes the connection or the session ends."""
        while not self.ended.is_set():
            data = self.sock.recv(VNC_CHUNK)
            if not data:
                self.end(self.closed_reason, tell_portal=True)
                return
            if self._push_down(VNC_DATA + data) > BACKLOG:
                self._wait_for_the_portal()

    def _write(self) -> None:
        """Portal -> QEMU, until the portal ends the session or falls silent; keepalives down."""
        heard = time.monotonic()
        while not self.ended.is_set():
            got = cast("list[bytes] | None", self.client.blpop([self.channel.up], timeout=TAKE_SECONDS))
            now = time.monotonic()
            if got is not None:
                heard = now
                rest = cast("list[bytes] | None", self.client.lpop(self.channel.up, 255)) or []
                for item in (got[1], *rest):
                    if item[:1] == VNC_END:
                        self.end("the portal closed it", tell_portal=False)
                        return
                    if item[:1] == VNC_DATA and len(item) > 1:
                        self.sock.sendall(item[1:])
            elif now - heard > VNC_SILENCE:
                self.end(f"the portal was silent for {VNC_SILENCE:g} s", tell_portal=False)
                return
            if now - self.last_down >= VNC_KEEPALIVE_SECONDS and not self.ended.is_set():
                self._push_down(VNC_KEEPALIVE)

    def _push_down(self, item: bytes) -> int:
        pipe = self.client.pipeline(transaction=False)
        pipe.rpush(self.channel.down, item)
        pipe.expire(self.channel.down, VNC_TTL)
        length, _ = pipe.execute()
        self.last_down = time.monotonic()
        return int(length)

    def _wait_for_the_portal(self) -> None:
        while not self.ended.is_set() and cast(int, self.client.llen(self.channel.down)) > BACKLOG // 2:
            self.ended.wait(0.05)

    # -- the end -----------------------------------------------------------------------------------
    def end(self, reason: str, tell_portal: bool) -> None:
        """End the session once: close the socket to QEMU (which wakes the reader) and, unless the
        portal ended it, put the end marker on its list."""
        with self.lock:
            if self.ended.is_set():
                return
            self.ended.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        if tell_portal:
            with contextlib.suppress(redis.RedisError):
                self._push_down(VNC_END + reason.encode())
                self.told_portal = True
        self.relay._forget(self)
        logger.info("%s %s: ended: %s", self.label, self.channel.session[:8], reason)

    def _tidy(self) -> None:
        """Both threads are done: close the socket, and drop the lists nobody reads any more (the
        portal still has to read the end marker on ``down``, which otherwise expires)."""
        self.sock.close()
        keys = [self.channel.up] if self.told_portal else [self.channel.up, self.channel.down]
        with contextlib.suppress(redis.RedisError):
            self.client.delete(*keys)
