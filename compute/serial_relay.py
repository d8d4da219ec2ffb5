"""The agent's side of interactive serial consoles: relay a VM's serial port to the portal.

A VM's serial port is a pty that libvirt allocates on the host that runs it (its output is also
appended to the instance's ``serial.log``, which the serial tail and live log read). The portal
asks for a session (``SERIAL_OPEN``, compute.agent_rpc); the agent looks the pty up in libvirt
itself (never a path from the request), opens it, and relays it exactly as a VNC session is
relayed (compute.vnc_relay: the same two Redis lists, keepalives, silence and end markers).

A pty has one reader: a second session of the same VM takes the port over and the first one ends
("another console session took over"), so a reloaded page never waits for its old session to
time out. The guest stopping (or moving to another host) closes QEMU's end: the session ends.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import termios
import threading
import tty
import uuid as uuidlib
from typing import Any, cast

import redis

from compute.drivers.base import DriverError, VmDriver
from compute.services.host_rpc import VncChannel
from compute.vnc_relay import SESSIONS, VncRelay, VncSession

logger = logging.getLogger("nubis.agent")

POLL_SECONDS = 0.5  # how soon a blocked read or write notices that its session ended


class PtyEnd:
    """Our end of a VM's pty, answering the calls a relayed session makes of a socket."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.closed = threading.Event()
        self.lock = threading.Lock()

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes; b"" once QEMU closed its end (EIO) or the session ended."""
        while not self.closed.is_set():
            ready, _, _ = select.select([self.fd], [], [], POLL_SECONDS)
            if not ready:
                continue
            try:
                return os.read(self.fd, size)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:  # no master any more: the guest stopped or moved
                    return b""
                raise
        return b""

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.closed.is_set():
                raise OSError(errno.EPIPE, "the session ended")
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:  # the guest reads slowly (a UART at TCG speed)
                select.select([], [self.fd], [], POLL_SECONDS)

    def shutdown(self, _how: int) -> None:
        self.closed.set()  # the reader and writer notice within POLL_SECONDS

    def close(self) -> None:
        with self.lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


def open_pty(path: str) -> PtyEnd:
    """Open the pty at ``path`` without making it our controlling terminal, in raw mode (no echo
    of the guest's output back into it, no newline translation)."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(fd, termios.TCSANOW)
    except termios.error:
        os.close(fd)
        raise
    return PtyEnd(fd)


class SerialSession(VncSession):
    """One relayed serial console: a VM's pty and the two lists of its channel."""

    label = "serial"
    closed_reason = "the guest's serial port closed"

    def __init__(self, relay: SerialRelay, channel: VncChannel, end: PtyEnd, name: str) -> None:
        # A PtyEnd answers recv, sendall, shutdown and close: all a session asks of its socket.
        super().__init__(relay, channel, cast(socket.socket, end))
        self.name = name


class SerialRelay(VncRelay):
    """The serial console sessions this agent relays: one per VM, at most ``sessions`` in all."""

    def __init__(
        self, vms: VmDriver, prefix: str, client: redis.Redis | None = None, sessions: int = SESSIONS
    ) -> None:
        super().__init__(vms, prefix, client, sessions)
        self.by_name: dict[str, SerialSession] = {}

    def open(self, args: dict[str, Any]) -> dict[str, Any]:
        """Connect the session that ``args`` names to the serial port of the VM of ``args["uuid"]``."""
        channel = VncChannel.named(args["session"])
        name = f"{self.prefix}{uuidlib.UUID(str(args['uuid']))}"
        path = self.vms.serial_device(name)
        if path is None:
            raise DriverError("serial: the VM is not running on this host, or has no interactive serial port")
        with self.lock:
            if channel.session in self.sessions:
                raise ValueError("session: already open")
            older = self.by_name.get(name)
        if older is not None:  # one reader per pty: the newer session takes it over
            older.end("another console session took over", tell_portal=True)
        with self.lock:
            if len(self.sessions) >= self.capacity:
                raise DriverError(
                    f"serial: this host relays {self.capacity} sessions already; try again later"
                )
            try:
                end = open_pty(path)
            except (OSError, termios.error) as exc:
                raise DriverError(f"serial: cannot open the VM's serial port: {exc}") from None
            session = SerialSession(self, channel, end, name)
            self.sessions[channel.session] = session
            self.by_name[name] = session
        session.start()
        logger.info("serial %s: relaying %s (%s)", channel.session[:8], name, path)
        return {"session": channel.session}

    def _forget(self, session: VncSession) -> None:
        with self.lock:
            self.sessions.pop(session.channel.session, None)
            if isinstance(session, SerialSession) and self.by_name.get(session.name) is session:
                del self.by_name[session.name]
