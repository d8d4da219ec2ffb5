"""Ask a host's agent and wait a short while for its answer: console output, container logs, exec.

The web process never reads a host's files or calls a driver. It pushes a request onto the host's
request list in Redis (``rpc.<host>``, core.queues) and waits on a reply key of its own
(``rpc.reply.<id>``). The agent answers from a thread of its own (compute.agent_rpc), so a request
never waits behind a VM create on the host's Celery queue.

- The agent marks itself present (``rpc.<host>.alive``, renewed every second, gone ``PRESENCE_TTL``
  seconds after it stops renewing): with no mark the caller fails at once instead of waiting.
- A request carries its deadline (wall-clock seconds): one the agent sees too late is dropped, and
  a caller that gave up takes its request back off the list.
- No answer within the timeout (``NUBIS_AGENT_RPC_TIMEOUT``; exec adds its own) raises
  HostUnavailable, a 503 naming the host. An error the agent answers (a driver's) raises
  AgentError, a 409; a request the agent could not read, a 400.

Arguments and answers are plain JSON. Nothing here imports a driver: the agent side does.

A VNC console is a byte stream, not a request: ``VNC_OPEN`` asks the agent to connect to the
guest's VNC server (on the host's 127.0.0.1) for a session of the caller's naming, and the bytes
then travel through two Redis lists of that session (``VncChannel``), one each way.
``SERIAL_OPEN`` does the same for the VM's serial port (its pty on the host): an interactive console.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from django.conf import settings

from compute.models import Instance, InstanceKind
from core.errors import Conflict, HostUnavailable, ServiceError
from core.queues import rpc_queue

PRESENCE_TTL = 5  # seconds an agent's mark outlives its last renewal
REPLY_TTL = 30  # seconds an answer waits for a caller that may have given up
QUEUE_TTL = 120  # seconds a request list outlives its last request (an agent that never comes back)
SOCKET_TIMEOUT = 120  # longer than any wait: exec's 60 s plus its margin
EXEC_MARGIN = 10  # seconds an exec's caller waits beyond the command's own timeout

# Marks the API operations that ask a host's agent: portal.schema documents their 503 (and drops it).
SCHEMA_EXTENSION = "x-nubis-host-agent"

CONSOLE_READ = "console_read"
CONTAINER_LOGS = "container_logs"
CONTAINER_EXEC = "container_exec"
VNC_OPEN = "vnc_open"
SERIAL_OPEN = "serial_open"  # an interactive serial console: the same byte stream as VNC's
# A move's target (compute.services.migration_agent), asked by the source host's agent.
ARRIVAL_PREPARE = "arrival_prepare"
ARRIVAL_CANCEL = "arrival_cancel"
# A volume's file work (make, remove, grow, snapshots: compute.services.volume_agent), on any host
# whose instance store holds it; the portal waits for the answer.
VOLUME_WORK = "volume_work"
CALLS = (
    CONSOLE_READ,
    CONTAINER_LOGS,
    CONTAINER_EXEC,
    VNC_OPEN,
    SERIAL_OPEN,
    ARRIVAL_PREPARE,
    ARRIVAL_CANCEL,
    VOLUME_WORK,
)


def presence_key(host: str) -> str:
    return f"{rpc_queue(host)}.alive"


def reply_key(request_id: str) -> str:
    return f"rpc.reply.{request_id}"


class AgentError(Conflict):
    """The agent answered, with an error: the driver's, for a guest that cannot do this now."""

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        super().__init__("host", "driver", message)


@dataclass(frozen=True)
class RpcRequest:
    id: str
    call: str
    args: dict[str, Any]
    deadline: float  # time.time() after which nobody waits for the answer

    @classmethod
    def make(cls, call: str, args: dict[str, Any], wait: float) -> RpcRequest:
        if call not in CALLS:
            raise ValueError(f"no such agent call: {call}")
        return cls(uuid.uuid4().hex, call, args, time.time() + wait)

    @property
    def reply_to(self) -> str:
        return reply_key(self.id)

    def expired(self) -> bool:
        return time.time() > self.deadline

    def encode(self) -> bytes:
        body = {"id": self.id, "call": self.call, "args": self.args, "deadline": self.deadline}
        return json.dumps(body).encode()

    @classmethod
    def decode(cls, raw: bytes) -> RpcRequest:
        """The request in ``raw``; ValueError when it is not one."""
        try:
            body = json.loads(raw)
            request = cls(str(body["id"]), str(body["call"]), dict(body["args"]), float(body["deadline"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a request: {exc}") from None
        if not request.id.isalnum():
            raise ValueError(f"not a request id: {request.id!r}")
        return request


def ok_reply(result: dict[str, Any]) -> bytes:
    return json.dumps({"ok": True, "result": result}).encode()


def error_reply(status: int, message: str) -> bytes:
    return json.dumps({"ok": False, "status": status, "error": message}).encode()


def _result(host: str, raw: bytes) -> dict[str, Any]:
    reply = json.loads(raw)
    if reply.get("ok"):
        result: dict[str, Any] = reply["result"]
        return result
    message = str(reply.get("error") or "the agent failed")
    if reply.get("status") == 400:
        raise ServiceError("host", "invalid", f"the agent of host {host} refused the request: {message}")
    raise AgentError(host, message)


def _wait(timeout: float | None) -> float:
    return float(timeout if timeout is not None else settings.NUBIS_AGENT_RPC_TIMEOUT)


def _absent(host: str) -> HostUnavailable:
    return HostUnavailable(host, f"the agent of host {host} is not running")


def _silent(host: str, wait: float) -> HostUnavailable:
    return HostUnavailable(host, f"the agent of host {host} did not answer within {wait:g} s")


@lru_cache(maxsize=1)
def _client() -> redis.Redis:
    # Not core.redis's client: its socket timeout is shorter than an exec's wait.
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=5, socket_timeout=SOCKET_TIMEOUT)


def call(host: str, name: str, args: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Ask ``host``'s agent to run ``name`` with ``args``; its answer, or HostUnavailable."""
    wait = _wait(timeout)
    client = _client()
    if not client.exists(presence_key(host)):
        raise _absent(host)
    request = RpcRequest.make(name, args, wait)
    raw = request.encode()
    queue = rpc_queue(host)
    pipe = client.pipeline()
    pipe.rpush(queue, raw)
    pipe.expire(queue, QUEUE_TTL)
    pipe.execute()
    got = cast("list[bytes] | None", client.blpop([request.reply_to], timeout=wait))
    if got is None:
        client.lrem(queue, 1, raw)  # type: ignore[arg-type]  # not taken yet: nobody will see it
        raise _silent(host, wait)
    return _result(host, got[1])


def async_client() -> aioredis.Redis:
    """A client for ``acall``, one per consumer: asyncio connections belong to their event loop."""
    return aioredis.Redis.from_url(
        settings.REDIS_URL, socket_connect_timeout=5, socket_timeout=SOCKET_TIMEOUT
    )


async def acall(
    client: aioredis.Redis, host: str, name: str, args: dict[str, Any], timeout: float | None = None
) -> dict[str, Any]:
    """``call`` for asynchronous consumers, on a client of ``async_client``."""
    wait = _wait(timeout)
    if not await client.exists(presence_key(host)):
        raise _absent(host)
    request = RpcRequest.make(name, args, wait)
    raw = request.encode()
    queue = rpc_queue(host)
    await client.rpush(queue, raw)  # type: ignore[misc]
    await client.expire(queue, QUEUE_TTL)
    got = cast("list[bytes] | None", await client.blpop([request.reply_to], timeout=wait))  # type: ignore[misc]
    if got is None:
        await client.lrem(queue, 1, raw)  # type: ignore[misc,arg-type]
        raise _silent(host, wait)
    return _result(host, got[1])


# ---- the calls, for an instance ---------------------------------------------------------------


@dataclass(frozen=True)
class ConsoleTarget:
    """Where an instance's console is: its host, and what the agent needs to find it there."""

    host: str
    uuid: str
    kind: str

    @classmethod
    def of(cls, instance: Instance) -> ConsoleTarget | None:
        """None for an instance on no host (never placed): it has written nothing."""
        host = instance.host
        return cls(host.name, str(instance.uuid), instance.kind) if host is not None else None

    def args(self, offset: int | None, max_bytes: int) -> dict[str, Any]:
        return {"uuid": self.uuid, "kind": self.kind, "offset": offset, "max_bytes": max_bytes}


@dataclass(frozen=True)
class ConsoleText:
    """Console output: the text, where it starts in the log, where the next read starts, the size."""

    text: str
    start: int
    end: int
    size: int

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> ConsoleText:
        return cls(str(result["text"]), int(result["start"]), int(result["end"]), int(result["size"]))


NO_OUTPUT = ConsoleText("", 0, 0, 0)
SERIAL_TAIL_BYTES = 64 * 1024


def console_read(instance: Instance, offset: int | None, max_bytes: int) -> ConsoleText:
    """The instance's console output from ``offset`` (None: the last ``max_bytes``), from its host."""
    target = ConsoleTarget.of(instance)
    if target is None:
        return NO_OUTPUT
    return ConsoleText.from_result(call(target.host, CONSOLE_READ, target.args(offset, max_bytes)))


async def aconsole_read(
    client: aioredis.Redis, target: ConsoleTarget, offset: int | None, max_bytes: int
) -> ConsoleText:
    result = await acall(client, target.host, CONSOLE_READ, target.args(offset, max_bytes))
    return ConsoleText.from_result(result)


def serial_tail(instance: Instance, lines: int) -> tuple[list[str], int]:
    """The last ``lines`` lines of the instance's serial console (a container's output), and the
    log's size."""
    chunk = console_read(instance, None, SERIAL_TAIL_BYTES)
    return chunk.text.splitlines()[-lines:], chunk.size


def container_logs(instance: Instance, max_bytes: int) -> str:
    """The end of a container's stdout and stderr (at most ``max_bytes``), from its host."""
    if instance.kind != InstanceKind.CONTAINER:
        raise ValueError("logs are for containers")
    if instance.host is None:
        return ""
    args = {"uuid": str(instance.uuid), "max_bytes": max_bytes}
    return str(call(instance.host.name, CONTAINER_LOGS, args)["text"])


def container_exec(instance: Instance, argv: list[str], timeout: int) -> tuple[int, str, str]:
    """Run ``argv`` in the running container on its host: (exit code, stdout, stderr)."""
    if instance.host is None:
        raise Conflict("state", "state", "the container is on no host")
    args = {"uuid": str(instance.uuid), "argv": list(argv), "timeout": timeout}
    result = call(instance.host.name, CONTAINER_EXEC, args, timeout=timeout + EXEC_MARGIN)
    return int(result["exit_code"]), str(result["stdout"]), str(result["stderr"])


# ---- VNC: a byte stream through two Redis lists -----------------------------------------------
#
# Every item on a session's lists is one tag byte and a body: data (``VNC_DATA`` + bytes), a
# keepalive (``VNC_KEEPALIVE``) or the end (``VNC_END``). Both sides RPUSH (and renew the list's TTL
# with it) and BLPOP. Either side ends the session by pushing the end marker to the other; a side
# that hears nothing, not even a keepalive, for ``VNC_SILENCE`` seconds ends it too. So a session
# whose portal or agent vanished is closed on the other side, and its lists expire.

VNC_DATA = b"D"
VNC_KEEPALIVE = b"K"
VNC_END = b"E"
VNC_TTL = 30  # seconds a session's list outlives its last push
VNC_KEEPALIVE_SECONDS = 5.0  # an idle side says it is still there this often
VNC_SILENCE = 15.0  # seconds of silence after which a side ends the session
VNC_CHUNK = 64 * 1024  # bytes of VNC in one item at most
_SESSION = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class VncChannel:
    """The two lists of one VNC session: ``down`` from the agent to the portal, ``up`` back."""

    session: str

    @classmethod
    def new(cls) -> VncChannel:
        """A session of an unguessable name (the lists' names are its only secret)."""
        return cls(secrets.token_hex(16))

    @classmethod
    def named(cls, session: object) -> VncChannel:
        """The channel of ``session`` as a request names it; ValueError if it is not such a name."""
        if not isinstance(session, str) or not _SESSION.fullmatch(session):
            raise ValueError("session must be 32 lowercase hex digits")
        return cls(session)

    @property
    def down(self) -> str:
        return f"nubis:vnc:{self.session}:down"

    @property
    def up(self) -> str:
        return f"nubis:vnc:{self.session}:up"


async def avnc_open(client: aioredis.Redis, target: ConsoleTarget, channel: VncChannel) -> None:
    """Ask the instance's agent to connect ``channel`` to its VNC server: HostUnavailable when the
    agent does not answer, AgentError when it cannot (the VM is not running there, or it already
    relays as many sessions as it takes)."""
    await acall(client, target.host, VNC_OPEN, {"uuid": target.uuid, "session": channel.session})


async def aserial_open(client: aioredis.Redis, target: ConsoleTarget, channel: VncChannel) -> None:
    """Ask the instance's agent to connect ``channel`` to the VM's serial port (its pty there), as
    ``avnc_open`` does to its VNC server; an older session of that port is ended by the new one."""
    await acall(client, target.host, SERIAL_OPEN, {"uuid": target.uuid, "session": channel.session})
