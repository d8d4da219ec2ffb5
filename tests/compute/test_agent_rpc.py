"""The portal asks a host's agent for consoles, logs and exec (compute.services.host_rpc), and never
reads the host's files itself.

First the request/reply seam on its own: a real RpcServer (compute.agent_rpc) in a thread of this
process, real Redis, real drivers reading real files. Then the whole way: a second compute agent
in a process of its own, for a host of another name, with a data and instance directory that this
process (the portal) does not share, serving a VM and a container; then that agent hung (SIGSTOP)
and stopped (SIGTERM), which the API answers with a 503 problem naming the host.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from pytest_django import DjangoDbBlocker
from rest_framework.test import APIClient

from compute.agent_rpc import RpcServer, whole_utf8
from compute.drivers.base import read_log
from compute.models import Host, HostState, Instance, InstanceKind, InstanceState, Operation, OperationState
from compute.services import host_rpc
from compute.services.containers import container_driver
from compute.services.host_rpc import CONSOLE_READ, CONTAINER_EXEC, CONTAINER_LOGS, AgentError
from compute.tasks import local_driver
from core.errors import HostUnavailable, ServiceError
from core.queues import rpc_queue
from core.redis import redis_client
from portal.asgi import application
from tenants.models import Role, Tenant
from tests.compute.conftest import DEADLINE, Agent, forget_host, start_agent, wait_for, wait_operation
from tests.conftest import stop_process
from tests.factories import add_member, make_tenant

TIMEOUT = 2  # seconds: NUBIS_AGENT_RPC_TIMEOUT in these tests


# ---- the seam on its own ---------------------------------------------------------------------


def test_read_log_from_an_offset(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    assert read_log(log, None, 10) == read_log(log, 5, 10)  # no log yet: empty
    assert read_log(log, None, 10).size == 0
    log.write_bytes(b"0123456789abcdef")
    assert read_log(log, None, 4).data == b"cdef"  # the tail
    chunk = read_log(log, 10, 100)
    assert (chunk.data, chunk.start, chunk.size) == (b"abcdef", 10, 16)
    assert read_log(log, 2, 4).start == 12  # more than max_bytes new: the newest of it
    assert read_log(log, 99, 100).data == log.read_bytes()  # past the end: the log was replaced


def test_only_whole_utf8_characters_are_sent() -> None:
    e_acute = "é".encode()
    assert whole_utf8(b"abc" + e_acute[:1]) == (0, 3)  # the rest comes with the next read
    assert whole_utf8(e_acute[1:] + b"xyz") == (1, 4)  # a read that began inside a character
    assert whole_utf8("€".encode()) == (0, 3)
    assert whole_utf8("€".encode()[:2]) == (0, 0)
    assert whole_utf8(b"\xff\xfe") == (0, 2)  # not UTF-8 at all: sent as it is


@dataclass
class Served:
    host: str
    instance_dir: Path


@pytest.fixture
def served(tmp_path: Path, settings: Any) -> Iterator[Served]:
    """A real RpcServer for a host of its own, in a thread, over a private instance directory."""
    settings.NUBIS_INSTANCE_DIR = tmp_path
    name = f"rpc-{uuid.uuid4().hex[:6]}"
    containers = container_driver.__wrapped__()  # not the process's cached one: this directory's
    server = RpcServer(name, local_driver(), containers, settings.NUBIS_DOMAIN_PREFIX)
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop,), daemon=True)
    thread.start()
    wait_for(lambda: redis_client().exists(host_rpc.presence_key(name)), "the server's mark", 5)
    try:
        yield Served(name, tmp_path)
    finally:
        stop.set()
        thread.join(5)
    assert not redis_client().exists(host_rpc.presence_key(name))  # withdrawn when it stops


def read_args(uid: uuid.UUID, offset: int | None, max_bytes: int = 1024, kind: str = "container") -> dict:
    return {"uuid": str(uid), "kind": kind, "offset": offset, "max_bytes": max_bytes}


def test_a_console_is_followed_by_offset(served: Served) -> None:
    uid = uuid.uuid4()
    (served.instance_dir / str(uid)).mkdir()
    log = served.instance_dir / str(uid) / "stdout.log"  # a container's console
    log.write_bytes(b"line one\nline two\n")
    first = host_rpc.call(served.host, CONSOLE_READ, read_args(uid, None))
    assert first == {"text": "line one\nline two\n", "start": 0, "end": 18, "size": 18}
    with log.open("ab") as out:
        out.write(b"three " + "é".encode()[:1])  # half a character so far
    second = host_rpc.call(served.host, CONSOLE_READ, read_args(uid, first["end"]))
    assert second == {"text": "three ", "start": 18, "end": 24, "size": 25}
    with log.open("ab") as out:
        out.write("é".encode()[1:] + b"\n")
    third = host_rpc.call(served.host, CONSOLE_READ, read_args(uid, second["end"]))
    assert (third["text"], third["end"]) == ("é\n", 27)
    assert host_rpc.call(served.host, CONSOLE_READ, read_args(uid, third["end"]))["text"] == ""
    # The tail cut inside a character starts at the next whole one.
    assert host_rpc.call(served.host, CONSOLE_READ, read_args(uid, None, 2)) == {
        "text": "\n",
        "start": 26,
        "end": 27,
        "size": 27,
    }
    log.write_bytes(b"rebooted\n")  # replaced: a reader past its end starts again
    assert host_rpc.call(served.host, CONSOLE_READ, read_args(uid, 27))["text"] == "rebooted\n"
    # A guest with no log (a container not made yet, a VM libvirt does not know): empty.
    for kind in ("container", "vm"):
        empty = host_rpc.call(served.host, CONSOLE_READ, read_args(uuid.uuid4(), None, kind=kind))
        assert empty == {"text": "", "start": 0, "end": 0, "size": 0}

    async def asynchronously() -> dict[str, Any]:
        client = host_rpc.async_client()
        try:
            return await host_rpc.acall(client, served.host, CONSOLE_READ, read_args(uid, None))
        finally:
            await client.aclose()

    assert asyncio.run(asynchronously())["text"] == "rebooted\n"


def test_container_logs_and_errors_come_back_as_answers(served: Served) -> None:
    uid = uuid.uuid4()
    bundle = served.instance_dir / str(uid)
    bundle.mkdir()
    (bundle / "stdout.log").write_text("out\n")
    (bundle / "stderr.log").write_text("err\n")
    args = {"uuid": str(uid), "max_bytes": 100}
    assert host_rpc.call(served.host, CONTAINER_LOGS, args) == {"text": "out\nerr\n"}
    # The driver's refusal (runc knows no such container): 409, in the driver's words.
    with pytest.raises(AgentError) as refused:
        host_rpc.call(served.host, CONTAINER_EXEC, {"uuid": str(uid), "argv": ["true"], "timeout": 5})
    assert refused.value.status == 409
    assert "is not running" in refused.value.message
    # What no instance could ask: a name instead of a uuid, an absurd size. 400, never run.
    for bad in ({"uuid": "../../etc", "max_bytes": 10}, {"uuid": str(uid), "max_bytes": 1 << 30}):
        with pytest.raises(ServiceError) as invalid:
            host_rpc.call(served.host, CONTAINER_LOGS, bad)
        assert (invalid.value.status, invalid.value.rule) == (400, "invalid")


def test_an_expired_request_is_dropped_unanswered(served: Served) -> None:
    late = host_rpc.RpcRequest(uuid.uuid4().hex, CONSOLE_READ, read_args(uuid.uuid4(), None), time.time() - 1)
    redis_client().rpush(rpc_queue(served.host), late.encode())
    # The list is worked in order: once the next request is answered, the late one was seen.
    assert host_rpc.call(served.host, CONSOLE_READ, read_args(uuid.uuid4(), None))["size"] == 0
    assert not redis_client().exists(late.reply_to)


def test_no_agent_fails_at_once_and_a_silent_one_after_the_timeout() -> None:
    absent = f"gone-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    with pytest.raises(HostUnavailable) as gone:
        host_rpc.call(absent, CONSOLE_READ, read_args(uuid.uuid4(), None))
    assert time.monotonic() - started < 0.5
    assert (gone.value.status, gone.value.host) == (503, absent)
    assert "is not running" in gone.value.message
    # Marked present but answering nothing (a hung agent): the caller waits its timeout, no longer,
    # and takes its request back so that the agent never runs it late.
    mute = f"mute-{uuid.uuid4().hex[:6]}"
    redis_client().set(host_rpc.presence_key(mute), "1", ex=30)
    try:
        started = time.monotonic()
        with pytest.raises(HostUnavailable) as silent:
            host_rpc.call(mute, CONSOLE_READ, read_args(uuid.uuid4(), None), timeout=1)
        assert 1 <= time.monotonic() - started < 1.8
        assert "did not answer within 1 s" in silent.value.message
        assert redis_client().llen(rpc_queue(mute)) == 0
    finally:
        redis_client().delete(host_rpc.presence_key(mute))


# ---- the whole way: an agent on another host, with its own directories ---------------------------


@dataclass
class FarAgent:
    agent: Agent
    instance_dir: Path

    @property
    def name(self) -> str:
        return self.agent.name


@pytest.fixture(scope="module")
def far(
    django_db_setup: None, django_db_blocker: DjangoDbBlocker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FarAgent]:
    """A compute agent in a process of its own for host ``far-…``, with a data directory and an
    instance directory of its own (0755 under /tmp: QEMU and a container's mapped root traverse it)."""
    root = Path(tempfile.mkdtemp(prefix="nubis-far-", dir="/tmp"))
    root.chmod(0o755)
    data, instances = root / "data", root / "instances"
    for path in (data, instances):
        path.mkdir(mode=0o755)
    name = f"far-{uuid.uuid4().hex[:6]}"
    log = tmp_path_factory.mktemp("far") / "agent.log"
    with django_db_blocker.unblock():
        process = start_agent(name, log, NUBIS_DATA_DIR=str(data), NUBIS_INSTANCE_DIR=str(instances))
    agent = Agent(name, process, log)
    try:
        deadline = time.monotonic() + 60
        while "ready." not in agent.text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the far agent did not start:\n{agent.text()[-3000:]}")
            time.sleep(0.2)
        yield FarAgent(agent, instances)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # in case a failed test left it stopped
        stop_process(process, 30)
        forget_host(name, django_db_blocker)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def portal_dirs(tmp_path: Path, settings: Any) -> Path:
    """This process is the portal: its data and instance directories are not the far agent's."""
    settings.DATA_DIR = tmp_path / "portal-data"
    settings.NUBIS_INSTANCE_DIR = tmp_path / "portal-instances"
    settings.NUBIS_AGENT_RPC_TIMEOUT = TIMEOUT
    settings.NUBIS_INSTANCE_DIR.mkdir()
    return Path(settings.NUBIS_INSTANCE_DIR)


@pytest.fixture
def far_host(far: FarAgent, transactional_db: None) -> Iterator[Host]:
    """The far agent's host, the only one placement may use (it registers again after a flush)."""
    wait_for(lambda: Host.objects.filter(name=far.name).exists(), f"{far.name} to register", 15)
    others = Host.objects.exclude(name=far.name)
    disabled = list(others.filter(state=HostState.ENABLED).values_list("pk", flat=True))
    others.update(state=HostState.DISABLED)
    yield Host.objects.get(name=far.name)
    Host.objects.filter(pk__in=disabled).update(state=HostState.ENABLED)


def create(client: APIClient, tenant: Tenant, **body: str) -> Operation:
    response = client.post(f"/api/v1/tenants/{tenant.slug}/instances/", body, format="json")
    assert response.status_code == 202, response.content
    return Operation.objects.for_tenant(tenant).get(uuid=response.json()["id"])


def follow_serial(path: str, user: User, marker: str) -> str:
    """What the serial websocket sends until ``marker`` shows."""
    web = Client()
    web.force_login(user)
    headers = [
        (b"origin", b"http://127.0.0.1:8000"),
        (b"cookie", f"sessionid={web.cookies['sessionid'].value}".encode()),
    ]

    async def run() -> str:
        ws = WebsocketCommunicator(application, path, headers=headers)
        connected, _ = await ws.connect(timeout=10)
        assert connected
        text = ""
        try:
            while marker not in text:
                message = await ws.receive_json_from(timeout=10)
                assert message["type"] == "serial", message
                text += message["data"]
        finally:
            await ws.disconnect()
        return text

    return asyncio.run(run())


def problem_503(response: Any, host: str) -> dict[str, Any]:
    assert response.status_code == 503, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert response["Retry-After"]
    body: dict[str, Any] = response.json()
    assert body["host"] == host
    assert (body["errors"][0]["field"], body["errors"][0]["rule"]) == ("host", "agent")
    assert host in body["detail"]
    return body


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_consoles_logs_and_exec_come_from_the_agent_of_another_host(
    far: FarAgent, far_host: Host, portal_dirs: Path, image, flavors, rootfs_image, cflavors, no_leftovers
) -> None:
    tenant = make_tenant("far")
    user = add_member(tenant, role=Role.MEMBER)
    client = APIClient()
    client.force_authenticate(user)
    vm_op = create(client, tenant, name="far-vm", flavor="t.virtio", image=image.name)
    box_op = create(client, tenant, name="far-box", flavor="c.small", image="busybox", kind="container")
    for op in (wait_operation(vm_op), wait_operation(box_op, timeout=60)):
        assert op.state == OperationState.SUCCEEDED, op.error
    vm = Instance.objects.for_tenant(tenant).get(name="far-vm")
    box = Instance.objects.for_tenant(tenant).get(name="far-box")
    assert {vm.host_id, box.host_id} == {far_host.pk}
    # Their files are on the far host's side only.
    assert (far.instance_dir / str(vm.uuid) / "serial.log").exists()
    assert (far.instance_dir / str(box.uuid) / "stdout.log").exists()
    assert list(portal_dirs.iterdir()) == []
    base = f"/api/v1/tenants/{tenant.slug}/instances"

    # The serial tail of the VM, the container's output and logs, all read by the far agent.
    serial = f"{base}/{vm.uuid}/console/serial/?lines=50"
    wait_for(
        lambda: any(line.startswith("NUBIS-READY") for line in client.get(serial).json()["lines"]),
        "the tiny guest's ready marker through the far agent",
        DEADLINE,
    )
    assert (
        client.get(serial).json()["size"] == (far.instance_dir / str(vm.uuid) / "serial.log").stat().st_size
    )
    ready = "nubis: container ready (far-box)"
    wait_for(
        lambda: ready in client.get(f"{base}/{box.uuid}/logs/").json()["text"], "the container's output", 30
    )
    assert ready in client.get(f"{base}/{box.uuid}/console/serial/").json()["lines"]
    # The live stream follows the same log through the agent.
    assert "NUBIS-READY" in follow_serial(f"/ws/instances/{vm.uuid}/serial/", user, "NUBIS-READY")

    # Exec through the agent; a long one does not hold up reads (it runs in a pool of its own).
    executed = client.post(
        f"{base}/{box.uuid}/exec/", {"argv": ["sh", "-c", "hostname; echo oops >&2; exit 3"]}, format="json"
    )
    assert executed.status_code == 200, executed.content
    assert executed.json() == {"exit_code": 3, "stdout": "far-box\n", "stderr": "oops\n"}
    slow: dict[str, Any] = {}

    def sleep_in_the_box() -> None:
        other = APIClient()
        other.force_authenticate(user)
        try:
            slow["response"] = other.post(
                f"{base}/{box.uuid}/exec/", {"argv": ["sleep", "3"], "timeout": 10}, format="json"
            )
        finally:
            connection.close()

    thread = threading.Thread(target=sleep_in_the_box)
    thread.start()
    time.sleep(0.5)
    started = time.monotonic()
    assert client.get(serial).status_code == 200
    assert time.monotonic() - started < 1.0
    thread.join(30)
    assert slow["response"].status_code == 200, slow["response"].content
    assert slow["response"].json()["exit_code"] == 0

    # Hung (SIGSTOP): a 503 problem naming the host, within the timeout.
    far.agent.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        body = problem_503(client.get(serial), far.name)
        hung = time.monotonic() - started
        assert TIMEOUT <= hung < TIMEOUT + 1.5, hung
        assert f"did not answer within {TIMEOUT} s" in body["detail"]
        problem_503(client.get(f"{base}/{box.uuid}/logs/"), far.name)
        # Once its presence mark lapses, callers stop waiting for it at all.
        wait_for(
            lambda: not redis_client().exists(host_rpc.presence_key(far.name)),
            "the hung agent's mark to lapse",
            host_rpc.PRESENCE_TTL + 2,
        )
        started = time.monotonic()
        problem_503(client.get(serial), far.name)
        assert time.monotonic() - started < 0.5
    finally:
        far.agent.process.send_signal(signal.SIGCONT)
    wait_for(lambda: client.get(serial).status_code == 200, "the agent to answer again", 15)

    for instance in (vm, box):
        assert client.delete(f"{base}/{instance.uuid}/").status_code == 202

    def gone(instance: Instance) -> bool:
        answer = client.get(f"{base}/{instance.uuid}/").status_code
        return answer == 404 and not (far.instance_dir / str(instance.uuid)).exists()

    for instance in (vm, box):
        wait_for(functools.partial(gone, instance), f"{instance.name} and its files to go", DEADLINE)

    # Stopped (SIGTERM): it withdraws its mark on the way out, so the answer is at once.
    stop_process(far.agent.process, 30)
    left = Instance.objects.create(
        tenant=tenant,
        name="left",
        kind=InstanceKind.CONTAINER,
        flavor=cflavors["small"],
        image=rootfs_image,
        host=far_host,
        state=InstanceState.STOPPED,
        ram_mib=64,
        current_ram_mib=64,
        disk_gib=0,
    )
    started = time.monotonic()
    body = problem_503(client.get(f"{base}/{left.uuid}/logs/"), far.name)
    assert time.monotonic() - started < 0.5
    assert f"the agent of host {far.name} is not running" in body["detail"]
