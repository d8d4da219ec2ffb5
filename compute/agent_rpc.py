"""The agent's side of compute.services.host_rpc: answer the portal's quick calls for this host.

One thread takes requests off ``rpc.<host>`` (BLPOP, a second at a time, renewing the agent's
presence mark between takes) and answers reads at once: a console or log read is a file read of
milliseconds. An exec may run for up to a minute, so execs go to a small pool of their own and
never hold up the reads. A VNC console is opened here and then relayed by threads of its own
(compute.vnc_relay). The calls of a move's target (ARRIVAL_PREPARE, ARRIVAL_CANCEL: another host's
agent asks) are the only ones that read the database, on the pool too. The Celery queue of the
host, with its long operations, is another thread's.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import redis
from django.conf import settings
from django.db import close_old_connections

from compute.drivers.base import ContainerDriver, DriverError, LogChunk, VmDriver
from compute.models import Host, Instance, InstanceKind
from compute.serial_relay import SerialRelay
from compute.services.containers import container_driver
from compute.services.host_rpc import (
    ARRIVAL_CANCEL,
    ARRIVAL_PREPARE,
    CONSOLE_READ,
    CONTAINER_EXEC,
    CONTAINER_LOGS,
    PRESENCE_TTL,
    REPLY_TTL,
    SERIAL_OPEN,
    VNC_OPEN,
    VOLUME_WORK,
    RpcRequest,
    error_reply,
    ok_reply,
    presence_key,
)
from compute.services.migration_agent import arrival_cancel, arrival_prepare
from compute.services.volume_agent import volume_work
from compute.tasks import local_driver
from compute.vnc_relay import VncRelay
from core.queues import rpc_queue
from core.redis import redis_client

logger = logging.getLogger("nubis.agent")

# Calls that may take a while (a command, network plumbing) run on the pool, not the reading thread;
# the arrival calls read the database (and close the pool thread's connection afterwards).
USE_DATABASE = frozenset({ARRIVAL_PREPARE, ARRIVAL_CANCEL, VOLUME_WORK})
POOLED = frozenset({CONTAINER_EXEC}) | USE_DATABASE
MAX_READ = 1 << 20  # bytes of console or log in one answer
EXEC_WORKERS = 4
TAKE_SECONDS = 1  # each BLPOP; the presence mark is renewed between them


def whole_utf8(data: bytes) -> tuple[int, int]:
    """Where the whole UTF-8 characters of ``data`` start and end: a read cut at a byte offset may
    begin inside one character and end inside another. What is cut off at the end is sent with the
    next read; bytes that are not UTF-8 at all are sent as they are (and replaced when decoded)."""
    head = 0
    while head < min(3, len(data)) and data[head] & 0xC0 == 0x80:
        head += 1
    end = len(data)
    for back in range(1, min(4, len(data) - head) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: look further back for its lead
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
        if need > back:
            end = len(data) - back
        break
    return head, end


def console_answer(chunk: LogChunk) -> dict[str, Any]:
    head, end = whole_utf8(chunk.data)
    return {
        "text": chunk.data[head:end].decode(errors="replace"),
        "start": chunk.start + head,
        "end": chunk.start + end,
        "size": chunk.size,
    }


class RpcServer:
    """Answers the calls of one host's request list with this host's drivers."""

    def __init__(
        self,
        host: str,
        vms: VmDriver,
        containers: ContainerDriver,
        prefix: str,
        client: redis.Redis | None = None,
        exec_workers: int = EXEC_WORKERS,
        vnc: VncRelay | None = None,
    ) -> None:
        self.host = host
        self.vms = vms
        self.containers = containers
        self.prefix = prefix
        self.client = client or redis_client()
        self.exec_workers = exec_workers
        self.vnc = vnc or VncRelay(vms, prefix)
        self.serial = SerialRelay(vms, prefix, self.vnc.client)  # interactive serial consoles
        self.calls: dict[str, Callable[[dict[str, Any], RpcRequest], dict[str, Any]]] = {
            CONSOLE_READ: self.console_read,
            CONTAINER_LOGS: self.container_logs,
            CONTAINER_EXEC: self.container_exec,
            VNC_OPEN: self.vnc_open,
            SERIAL_OPEN: self.serial_open,
            ARRIVAL_PREPARE: self.arrival_prepare,
            ARRIVAL_CANCEL: self.arrival_cancel,
            VOLUME_WORK: self.volume_work,
        }

    # -- the calls -------------------------------------------------------------------------------
    def _name(self, args: dict[str, Any]) -> str:
        """The guest's name on this host, from the instance's uuid (never a name from the request)."""
        return f"{self.prefix}{uuidlib.UUID(str(args['uuid']))}"

    @staticmethod
    def _size(args: dict[str, Any]) -> int:
        size = int(args["max_bytes"])
        if not 0 < size <= MAX_READ:
            raise ValueError(f"max_bytes must be from 1 to {MAX_READ}")
        return size

    def console_read(self, args: dict[str, Any], _request: RpcRequest) -> dict[str, Any]:
        driver = self.containers if args.get("kind") == InstanceKind.CONTAINER else self.vms
        offset = args.get("offset")
        chunk = driver.console_read(
            self._name(args), None if offset is None else int(offset), self._size(args)
        )
        return console_answer(chunk)

    def container_logs(self, args: dict[str, Any], _request: RpcRequest) -> dict[str, Any]:
        return {"text": self.containers.logs(self._name(args), self._size(args))}

    def container_exec(self, args: dict[str, Any], request: RpcRequest) -> dict[str, Any]:
        argv = args["argv"]
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError("argv must be a list of strings")
        # Never run past the caller's patience: a late start gets what is left of it.
        timeout = min(float(args["timeout"]), request.deadline - time.time() - 1)
        if timeout <= 0:
            raise DriverError("exec: no time left to run it")
        rc, out, err = self.containers.exec(self._name(args), argv, timeout)
        return {"exit_code": rc, "stdout": out, "stderr": err}

    def vnc_open(self, args: dict[str, Any], _request: RpcRequest) -> dict[str, Any]:
        """Connect a VNC session to the VM's VNC server; the relay's threads carry it from there."""
        return self.vnc.open(args)

    def serial_open(self, args: dict[str, Any], _request: RpcRequest) -> dict[str, Any]:
        """Connect a session to the VM's serial port (an interactive console), relayed like VNC."""
        return self.serial.open(args)

    def _arrival(self, args: dict[str, Any]) -> tuple[Instance, Host]:
        uid = uuidlib.UUID(str(args["uuid"]))
        instance = (
            Instance.objects.unscoped()
            .select_related("image", "flavor", "network", "host", "migration_host")
            .filter(uuid=uid)
            .first()
        )
        host = Host.objects.filter(name=self.host).first()
        if instance is None or host is None:
            raise DriverError(f"no instance {uid} or no host {self.host} in the database")
        return instance, host

    def arrival_prepare(self, args: dict[str, Any], _request: RpcRequest) -> dict[str, Any]:
        """A VM is about to move here: its port (bridge, tunnel, DHCP, rules), and its disk when the
        instance store is not shared."""
        instance, host = self._arrival(args)
        if instance.migration_host_id != host.pk:
            raise DriverError(f"{instance.name} is not moving to {self.host}")
        arrival_prepare(instance, host, self.vms)
        return {"prepared": True}

    def arrival_cancel(self, args: dict[str, Any], _request: RpcRequest) -> dict[str, Any]:
        """The move did not happen: what arrival_prepare made goes (not if it runs here after all)."""
        instance, host = self._arrival(args)
        if instance.host_id == host.pk:
            raise DriverError(f"{instance.name} is placed on {self.host}; its port stays")
        arrival_cancel(instance, host)
        return {"cancelled": True}

    def volume_work(self, args: dict[str, Any], request: RpcRequest) -> dict[str, Any]:
        """A volume's file work on this host's instance store (compute.services.volume_agent)."""
        return volume_work(args, request.deadline)

    # -- serving ---------------------------------------------------------------------------------
    def answer(self, request: RpcRequest) -> None:
        if request.expired():
            logger.info("rpc %s %s: expired before it ran; dropped", request.call, request.id)
            return
        handler = self.calls.get(request.call)
        try:
            if handler is None:
                raise ValueError(f"no such call: {request.call}")
            reply = ok_reply(handler(request.args, request))
        except DriverError as exc:
            reply = error_reply(409, str(exc))
        except (KeyError, TypeError, ValueError) as exc:
            reply = error_reply(400, f"{request.call}: bad arguments: {exc}")
        except Exception as exc:  # an answer in any case: the caller would wait for nothing
            logger.exception("rpc %s failed", request.call)
            reply = error_reply(500, f"{request.call} failed on the agent: {exc}")
        pipe = self.client.pipeline()
        pipe.rpush(request.reply_to, reply)
        pipe.expire(request.reply_to, REPLY_TTL)
        pipe.execute()

    def dispatch(self, raw: bytes, pool: ThreadPoolExecutor) -> None:
        try:
            request = RpcRequest.decode(raw)
        except ValueError as exc:
            logger.warning("rpc: %s", exc)
            return
        if request.expired():
            logger.info("rpc %s %s: expired in the queue; dropped", request.call, request.id)
        elif request.call in POOLED:
            pool.submit(self._safely, request)
        else:
            self._safely(request)

    def _safely(self, request: RpcRequest) -> None:
        try:
            self.answer(request)
        except redis.RedisError as exc:
            logger.warning("rpc %s: cannot reply: %s", request.call, exc)
        finally:
            if request.call in USE_DATABASE:
                close_old_connections()

    def mark_present(self) -> None:
        self.client.set(presence_key(self.host), str(time.time()), ex=PRESENCE_TTL)

    def serve(self, stop: threading.Event) -> None:
        queue = rpc_queue(self.host)
        pool = ThreadPoolExecutor(self.exec_workers, thread_name_prefix="rpc-exec")
        marked = 0.0
        try:
            while not stop.is_set():
                try:
                    if time.monotonic() - marked >= 1:
                        self.mark_present()
                        marked = time.monotonic()
                    got = cast("list[bytes] | None", self.client.blpop([queue], timeout=TAKE_SECONDS))
                except redis.RedisError as exc:
                    logger.warning("rpc: redis: %s", exc)
                    stop.wait(1)
                    continue
                if got is not None:
                    self.dispatch(got[1], pool)
        finally:
            with contextlib.suppress(redis.RedisError):
                self.client.delete(presence_key(self.host))
            self.vnc.close_all()
            self.serial.close_all()
            pool.shutdown(wait=False, cancel_futures=True)


def rpc_loop(name: str, stop: threading.Event) -> None:
    """The agent's RPC thread: this host's server, on the agent's drivers, until ``stop``."""
    RpcServer(name, local_driver(), container_driver(), settings.NUBIS_DOMAIN_PREFIX).serve(stop)


def withdraw(name: str) -> None:
    """Say at once that nobody answers for ``name`` any more (a stopping agent)."""
    with contextlib.suppress(redis.RedisError):
        redis_client().delete(presence_key(name))
