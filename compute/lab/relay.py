"""The lab's relay: PostgreSQL and Redis of the root namespace, on each lab host's own loopback.

PostgreSQL and Redis listen on the root namespace's 127.0.0.1 only. An agent inside a lab host
keeps its DATABASE_URL and REDIS_URL unchanged: for each host and each such endpoint, this process
listens on the same 127.0.0.1:port inside the host's network namespace and forwards every
connection to the root namespace's. Tenants never reach it: it listens on the host's loopback.

A socket stays in the network namespace it was made in, so each listening socket is made by a
thread that has entered the host's namespace (setns(2)); everything else runs in the root
namespace. A host whose namespace is made again (``lab start`` after ``lab kill``) gets new
listeners within a round; ``relay.json`` says which namespace each host's listeners are in.

Run as ``python -m compute.lab.relay LAB_DIR`` (``lab up`` starts it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

from compute.lab import procs
from compute.lab.spec import LabError, LabSpec, write_private

logger = logging.getLogger("nubis.lab.relay")
ROUND = 0.2  # seconds between looks at the hosts' namespaces
DEFAULT_PORTS = {"postgres": 5432, "postgresql": 5432, "redis": 6379, "rediss": 6379}
LOOPBACK = {"localhost": "127.0.0.1"}


def loopback_endpoints(urls: list[str]) -> tuple[tuple[str, int], ...]:
    """The (address, port) pairs on the root namespace's loopback that ``urls`` name.

    Others are left out: a database or broker on another machine is reached through the lab's
    routing, not the relay. A Unix socket cannot be: each lab host has its own /run.
    """
    found: list[tuple[str, int]] = []
    for url in urls:
        parts = urlsplit(url)
        scheme = parts.scheme.split("+")[0]
        if scheme not in DEFAULT_PORTS:
            continue  # sqlite: a file, seen at the same path on every host
        host = parts.hostname or ""
        if not host or host.startswith("/") or "%2f" in (parts.netloc or "").lower():
            raise LabError(
                f"{scheme} over a Unix socket: lab hosts have their own /run; use TCP on 127.0.0.1"
            )
        address = LOOPBACK.get(host, host)
        if not address.startswith("127."):
            continue
        pair = (address, parts.port or DEFAULT_PORTS[scheme])
        if pair not in found:
            found.append(pair)
    return tuple(found)


def listen_in(netns: Path, address: str, port: int) -> socket.socket:
    """A listening TCP socket on ``address:port`` inside network namespace ``netns``."""
    result: dict[str, socket.socket | OSError] = {}

    def make() -> None:
        try:
            with open("/proc/thread-self/ns/net") as own, open(netns) as target:
                procs.setns(target.fileno(), procs.CLONE_NEWNET)
                try:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind((address, port))
                    sock.listen(128)
                    sock.setblocking(False)
                    result["sock"] = sock
                finally:
                    procs.setns(own.fileno(), procs.CLONE_NEWNET)
        except OSError as exc:
            result["error"] = exc

    thread = threading.Thread(target=make, name=f"listen-{netns.name}")
    thread.start()
    thread.join()
    made = result.get("sock") or result.get("error")
    if isinstance(made, socket.socket):
        return made
    raise made if isinstance(made, OSError) else OSError(f"{netns}: no socket made")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _forward(address: str, port: int) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(address, port)
        except OSError as exc:
            logger.warning("relay to %s:%s: %s", address, port, exc)
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            for w in (writer, upstream_writer):
                w.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await w.wait_closed()

    return handle


class Relay:
    """The listeners of every host of the lab in ``directory``, kept in step with its namespaces."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.bound: dict[str, tuple[int, list[asyncio.Server]]] = {}

    async def round(self) -> None:
        lab = LabSpec.load(self.directory)
        hosts = lab.host_list() if lab else []
        wanted = {h.name for h in hosts}
        for name in [n for n in self.bound if n not in wanted]:
            self._close(name)
        for host in hosts:
            try:
                inode = host.netns.stat().st_ino
            except OSError:
                self._close(host.name)
                continue
            if host.name in self.bound and self.bound[host.name][0] == inode:
                continue
            self._close(host.name)
            servers = []
            try:
                for address, port in lab.endpoints if lab else ():
                    sock = listen_in(host.netns, address, port)
                    servers.append(await asyncio.start_server(_forward(address, port), sock=sock))
            except OSError as exc:
                logger.warning("%s: cannot listen: %s (retrying)", host.name, exc)
                for server in servers:
                    server.close()
                continue
            self.bound[host.name] = (inode, servers)
            logger.info("%s: relaying %s (netns inode %s)", host.name, lab.endpoints if lab else (), inode)
        status = {name: inode for name, (inode, _) in self.bound.items()}
        write_private(self.directory / "relay.json", json.dumps(status) + "\n")

    def _close(self, name: str) -> None:
        _, servers = self.bound.pop(name, (0, []))
        for server in servers:
            server.close()

    async def run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set():
            try:
                await self.round()
            except (LabError, OSError) as exc:
                logger.warning("round: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), ROUND)
        for name in list(self.bound):
            self._close(name)
        logger.info("stopped")


def relay_ready(directory: Path, name: str) -> bool:
    """The relay listens in host ``name``'s current network namespace."""
    try:
        status = json.loads((directory / "relay.json").read_text())
        return bool(status.get(name) == (Path("/run/netns") / name).stat().st_ino)
    except (OSError, ValueError):
        return False


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: python -m compute.lab.relay LAB_DIR\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s relay: %(message)s", stream=sys.stderr)
    directory = Path(argv[1])
    write_private(directory / "relay.pid", f"{os.getpid()}\n")
    asyncio.run(Relay(directory).run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
