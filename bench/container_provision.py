"""Benchmark: container provisioning through the portal against raw runc, measured in the same run.

Portal path, per container. The clock starts just before ``POST /api/v1/tenants/<slug>/instances/``
with ``{"name", "flavor", "image": "busybox", "kind": "container", "network": null}`` (null: loopback
only; left out, the portal would put it on the tenant's "default" network), sent through DRF's
in-process client (no HTTP server, as in the tests). The request validates, claims quota, places
the instance and commits; the create Operation goes to a real ``manage.py compute_agent`` subprocess
(a Celery worker on a host queue of its own, ``--kvm-probe never``), which verifies the image, writes
``config.json`` in ``<NUBIS_INSTANCE_DIR>/<uuid>/`` (the root filesystem is unpacked once per image
and tenant uid range, then shared read-only), runs ``runc run -d`` and saves the instance as
``running``. The clock stops when this process receives that instance's ``running`` event on the
tenant's Channels group, the live feed browsers get: a listener thread blocks on Redis, so nothing
is polled and no CPU is spent waiting. Should an event go missing, the database is checked every
100 ms instead and the sample says ``seen_by: db``. Also recorded: the POST's own latency, when the
agent saved the row (``running_row_s``, from ``Instance.updated``; same machine, same clock), and
DELETE through the API until the ``deleted`` event. Each container is deleted before the next one
starts, so the host never holds more than two of this run's containers.

Raw path, per container. The config.json the portal wrote for its latest container, copied into a
fresh bundle with a fresh id (``benchraw-...``: no agent's reconciler takes it for its own), a fresh
``cgroupsPath`` (``/nubis/benchraw-...``) and hostname. Timed from just before ``runc run -d
--bundle DIR ID`` (stdio to files, never pipes; its exit seen by a blocking wait, see
``wait_exactly``) until ``runc state ID`` says running. Then killed and deleted (timed apart).

The paths alternate container by container (portal first on even rounds, raw first on odd ones),
so a shared machine's load hits both. One unmeasured portal container (the first unpack of the
root filesystem, Python warm-up) and one raw run come first. A second series
(``--network-count``) puts the portal's containers on a tenant network made for the run (veth into
its bridge, DHCP reservation, port rules), after one unmeasured container that brings the bridge
up; runc alone makes no network, so its raw baseline is the same loopback-only run.

Where the portal's time goes: per sample, the moments of its steps in ms from t0: the worker's
"received" log line, ``Operation.started`` (the agent's claim), the ``building`` event,
config.json's mtime, runc's own ``created`` stamp, the row's save, the ``running`` event and
``Operation.finished``. After the series, single calls on the agent's path are timed in this
process: ``runc state`` of a missing container, one event publish from synchronous code, one row
update, and a 20 ms command run with and without a subprocess timeout.

    cd /work/main && source .venv/bin/activate && \\
    DATABASE_URL=postgres://nubis:nubis@127.0.0.1:5432/nubisbench REDIS_URL=redis://127.0.0.1:6379/11 \\
    NUBIS_DOMAIN_PREFIX=nubis-bench- NUBIS_IMAGE_DIR=/var/cache/nubis/images \\
    python bench/container_provision.py [--count 50] [--network-count 20]

Run as root, with libvirtd (the agent registers through it), Redis and the database up, and no
other live agent on that database. Without a ``DATABASE_URL`` it uses SQLite in a temporary data
dir. It runs ``migrate`` and builds the busybox image (cached in ``NUBIS_IMAGE_DIR``) itself.
Prints tables and writes every sample, the summary and the machine's facts to
bench/results/container_provision.json. It reports; it asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import dataclasses
import datetime
import io
import ipaddress
import json
import os
import platform
import queue
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.vm_provision import (  # noqa: E402 - needs the repository on sys.path first
    RAW_PREFIX,
    Bench,
    BenchError,
    Env,
    describe,
    percentile,
    run_main,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from rest_framework.test import APIClient

    from compute.models import Flavor, Host, Image, Network
    from tenants.models import Tenant

DEFAULT_OUTPUT = ROOT / "bench" / "results" / "container_provision.json"
RUNC = "/usr/bin/runc"
DB_POLL_SECONDS = 0.1  # only when no event arrives: the database is the fallback, not the clock
EVENT_GRACE_SECONDS = 0.5  # the row is saved before its event is published: give the event this long
OP_POLL_SECONDS = 0.005  # waiting for the create Operation to be marked finished (after the clock)
GOAL_P95_S = 0.050  # the goal: the portal adds at most 50 ms at p95
PROBE_CALLS = 20
# Moments of one portal create, in ms from t0, in the order they happen.
MARKS = (
    "post_returned",
    "task_received",
    "claimed",
    "building_seen",
    "config_written",
    "runc_created",
    "running_saved",
    "running_seen",
    "op_finished",
)
SEGMENTS = (
    ("API request (POST until 202)", "t0", "post_returned"),
    ("202 -> worker receives the task", "post_returned", "task_received"),
    ("received -> Operation claimed", "task_received", "claimed"),
    ("claim -> 'building' saved + event seen", "claimed", "building_seen"),
    ("verify image, runc state, config.json", "building_seen", "config_written"),
    ("runc run: config.json -> created", "config_written", "runc_created"),
    ("runc start, steps, 'running' saved", "runc_created", "running_saved"),
    ("'running' event published + received", "running_saved", "running_seen"),
)
_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")
# Celery's worker log line for a task it took off the queue (local time, milliseconds).
_RECEIVED = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}): INFO/[^\]]*\] "
    r"Task compute\.run_operation\[[^\]]+\] received",
    re.MULTILINE,
)


# -- samples -----------------------------------------------------------------------------------------
@dataclasses.dataclass
class PortalSample:
    name: str
    uuid: str
    network: str  # "" when loopback only
    post_s: float  # the API call itself (answers 202)
    running_s: float  # t0 -> the instance's "running" event received here
    running_row_s: float  # t0 -> the agent saved state=running (Instance.updated, same clock)
    seen_by: str  # "event", or "db" if the event went missing and the fallback poll saw it
    delete_s: float  # DELETE -> the "deleted" event
    marks_ms: dict[str, float | None]  # MARKS, in ms from t0 (None: not observed)


@dataclasses.dataclass
class RawSample:
    name: str
    run_s: float  # runc run -d returned
    running_s: float  # ... and runc state said running
    created_ms: float  # runc's own "created" stamp, ms from t0
    delete_s: float  # kill, wait, delete --force, remove the bundle (not part of the result)


def rfc3339_seconds(stamp: str) -> float:
    """Epoch seconds of runc's RFC 3339 stamp with nanoseconds (fromisoformat takes at most 6 digits)."""
    found = _RFC3339.match(stamp.strip())
    if found is None:
        raise BenchError(f"cannot read runc's time stamp {stamp!r}")
    whole, fraction, zone = found.groups()
    base = datetime.datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    return base.timestamp() + (float(f"0.{fraction}") if fraction else 0.0)


def runc_state(name: str) -> dict[str, Any] | None:
    """`runc state NAME` as a dict, or None when there is no such container."""
    proc = subprocess.run(
        [RUNC, "state", name], stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        if "does not exist" in proc.stderr:
            return None
        raise BenchError(f"runc state {name}: {proc.stderr.strip()}")
    state: dict[str, Any] = json.loads(proc.stdout)
    return state


def wait_exactly(argv: list[str], stdout: IO[bytes], stderr: IO[bytes], timeout: float) -> int:
    """Run ``argv`` to its end and return its exit status, seen the moment it exits.

    Not ``subprocess.run(timeout=...)``: with a timeout, Python waits by polling with sleeps that
    double from 1 ms up to 50 ms, so an exit is noticed only 1, 3, 7, 15, 31, 63, ... ms after the
    start. This waits in a blocking waitpid and enforces the timeout with a timer that kills it.
    """
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        return proc.wait()
    finally:
        watchdog.cancel()


def runc_version() -> str:
    proc = subprocess.run([RUNC, "--version"], capture_output=True, text=True, check=False)
    return proc.stdout.splitlines()[0] if proc.stdout else "unknown"


# -- statistics --------------------------------------------------------------------------------------
def compare(portal: list[PortalSample], raw: list[RawSample]) -> dict[str, Any]:
    """Portal vs raw figures of one series (seconds)."""
    to_running = [s.running_s for s in portal]
    raw_running = [s.running_s for s in raw]
    p, r = describe(to_running), describe(raw_running)
    pairs = [a - b for a, b in zip(to_running, raw_running, strict=True)]
    overhead = {
        "p50_s": p["p50"] - r["p50"],
        "p95_s": p["p95"] - r["p95"],
        "mean_s": p["mean"] - r["mean"],
        "paired_p50_s": percentile(pairs, 50),
    }
    return {
        "n": len(portal),
        "portal": {
            "post": describe([s.post_s for s in portal]),
            "running": p,
            "running_row": describe([s.running_row_s for s in portal]),
            "delete": describe([s.delete_s for s in portal]),
            "seen_by_db": sum(s.seen_by == "db" for s in portal),
        },
        "raw": {
            "run": describe([s.run_s for s in raw]),
            "running": r,
            "created_ms": describe([s.created_ms for s in raw]),
            "delete": describe([s.delete_s for s in raw]),
        },
        "overhead": overhead,
        "goal_p95_s": GOAL_P95_S,
        "goal_met": overhead["p95_s"] <= GOAL_P95_S,
        "breakdown_ms": breakdown(portal),
    }


def breakdown(portal: list[PortalSample]) -> dict[str, Any]:
    """Per step: p50/p95 of its moment from t0 and of its own duration (median of per-sample gaps)."""
    marks: dict[str, dict[str, float]] = {}
    for m in MARKS:
        values = [v for s in portal if (v := s.marks_ms.get(m)) is not None]
        if values:
            marks[m] = describe(values)
    segments: dict[str, dict[str, float]] = {}
    for label, start, end in SEGMENTS:
        gaps = []
        for s in portal:
            first = 0.0 if start == "t0" else s.marks_ms.get(start)
            last = s.marks_ms.get(end)
            if first is not None and last is not None:
                gaps.append(last - first)
        if gaps:
            segments[label] = describe(gaps)
    return {"marks": marks, "segments": segments}


def table(title: str, result: dict[str, Any], baseline: str) -> str:
    def row(label: str, cells: Sequence[str]) -> str:
        return f"{label:<42}" + "".join(f"{c:>10}" for c in cells)

    def ms(stats: dict[str, float], scale: float = 1000.0) -> list[str]:
        return [f"{stats[k] * scale:.1f}" for k in ("p50", "p95", "mean", "min", "max")]

    portal, raw, over = result["portal"], result["raw"], result["overhead"]
    verdict = "met" if result["goal_met"] else "NOT met"
    lines = [
        title,
        "",
        row("milliseconds", ["p50", "p95", "mean", "min", "max"]),
        row("portal POST (202)", ms(portal["post"])),
        row("portal request -> running event", ms(portal["running"])),
        row("portal request -> row saved", ms(portal["running_row"])),
        row(f"{baseline} run -> running", ms(raw["running"])),
        row(f"{baseline} run -d returned", ms(raw["run"])),
        row("portal delete -> deleted event", ms(portal["delete"])),
        "",
        f"overhead (portal - raw): p50 {over['p50_s'] * 1000:+.1f} ms, p95 {over['p95_s'] * 1000:+.1f} ms, "
        f"median of paired differences {over['paired_p50_s'] * 1000:+.1f} ms",
        f"goal (portal adds <= {GOAL_P95_S * 1000:.0f} ms at p95): {verdict}",
        "",
        row("where the portal's time goes (ms)", ["at p50", "step p50", "step p95"]),
    ]
    marks, segments = result["breakdown_ms"]["marks"], result["breakdown_ms"]["segments"]
    for label, _start, end in SEGMENTS:
        if label not in segments:
            lines.append(row(label, ["n/a", "n/a", "n/a"]))
            continue
        lines.append(
            row(
                label,
                [
                    f"{marks[end]['p50']:.1f}",
                    f"{segments[label]['p50']:.1f}",
                    f"{segments[label]['p95']:.1f}",
                ],
            )
        )
    lines.append(row(f"({baseline}: start -> created)", [f"{raw['created_ms']['p50']:.1f}", "", ""]))
    return "\n".join(lines)


# -- the tenant's live events ------------------------------------------------------------------------
class EventFeed:
    """The tenant's live events (what its browsers get over the websocket), received by a thread of
    their own on the Channels layer and stamped with ``perf_counter`` on arrival."""

    def __init__(self, group: str, config: dict[str, Any]) -> None:
        self.group = group
        self.config = config
        self.inbox: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        self.seen: dict[str, list[tuple[float, str]]] = defaultdict(list)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._thread = threading.Thread(target=self._run, name="event-feed", daemon=True)
        self.read_timeouts = 0

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(15):
            raise BenchError("the event listener did not join the tenant's group within 15 s")
        if self._error is not None:
            raise BenchError(f"the event listener failed: {self._error!r}")

    def stop(self) -> None:
        if self._loop is not None and self._task is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._task.cancel)
            self._thread.join(10)

    def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(self._listen())

    async def _listen(self) -> None:
        from channels_redis.core import RedisChannelLayer

        try:
            # A layer of its own: the global one is used by this process's own publishes meanwhile.
            layer = RedisChannelLayer(**self.config)
            channel = await layer.new_channel()
            await layer.group_add(self.group, channel)
        except Exception as exc:
            self._error = exc
            self._ready.set()
            return
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._ready.set()
        try:
            while True:
                try:
                    message = await layer.receive(channel)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # redis-py 8 reads with a 5 s socket timeout, as long as channels_redis' own 5 s
                    # BZPOPMIN: an idle wait can end in TimeoutError. Nothing is lost (a message being
                    # received sits in the channel's backup set until the next receive), so go on.
                    self.read_timeouts += 1
                    await asyncio.sleep(0.01)
                    continue
                self.inbox.put((time.perf_counter(), dict(message.get("event") or {})))
        finally:
            with contextlib.suppress(Exception):
                await layer.group_discard(self.group, channel)
            with contextlib.suppress(Exception):
                await layer.close_pools()

    def _drain(self, wait: float) -> bool:
        """File what arrived (waiting up to ``wait`` for the first); False if nothing came."""
        try:
            stamp, event = self.inbox.get(timeout=wait)
        except queue.Empty:
            return False
        while True:
            self.seen[str(event.get("instance", ""))].append((stamp, str(event.get("state", ""))))
            try:
                stamp, event = self.inbox.get_nowait()
            except queue.Empty:
                return True

    def first(self, uid: str, state: str) -> float | None:
        return next((t for t, s in self.seen.get(uid, []) if s == state), None)

    def wait_state(
        self, uid: str, state: str, timeout: float, db_state: Callable[[], tuple[str, str]]
    ) -> tuple[float, str]:
        """``perf_counter`` when the instance's ``state`` event arrived, and "event"; or, if the event
        never came, when the fallback database check (every DB_POLL_SECONDS) first saw it, and "db"."""
        deadline = time.perf_counter() + timeout
        saw_in_db: float | None = None
        while True:
            if (stamp := self.first(uid, state)) is not None:
                return stamp, "event"
            if self.first(uid, "error") is not None and state != "error":
                _, fault = db_state()
                raise BenchError(f"instance {uid} went to error: {fault}")
            now = time.perf_counter()
            if saw_in_db is not None and now - saw_in_db > EVENT_GRACE_SECONDS:
                return saw_in_db, "db"
            if now > deadline:
                raise BenchError(f"instance {uid} did not become {state} within {timeout:.0f} s")
            if self._drain(DB_POLL_SECONDS) or saw_in_db is not None:
                continue
            current, fault = db_state()
            if current == state:
                saw_in_db = time.perf_counter()
            elif current == "error" and state != "error":
                raise BenchError(f"instance {uid} went to error: {fault}")


# -- the run -----------------------------------------------------------------------------------------
class ContainerBench:
    """Both paths for containers; the VM benchmark's Bench runs the agent and does the final clean-up."""

    def __init__(self, env: Env, args: argparse.Namespace) -> None:
        self.env = env
        self.args = args
        # Its start_agent (a real compute_agent on host bench-<tag>, orphan grace of a day) and its
        # cleanup (stop the agent, remove the raw dir, drop the host's Redis keys) serve as they are.
        self.base = Bench(env, args)
        self.host_name = self.base.host_name
        self.log = self.base.log
        self.feed: EventFeed | None = None
        self.client: APIClient | None = None
        self.tenant: Tenant | None = None
        self.user: User | None = None
        self.host: Host | None = None
        self.network: Network | None = None
        self.template: dict[str, Any] | None = None  # the latest portal container's config.json
        self.live_instances: list[str] = []  # portal containers not deleted yet (uuids)
        self.live_raw: dict[str, Path] = {}  # raw containers not deleted yet: name -> bundle
        self.log_offset = 0  # how far the agent's log has been read for "received" lines
        self.received: list[float] = []  # epoch seconds of the tasks the agent's worker received

    # -- setup ---------------------------------------------------------------------------------------
    def setup(self) -> tuple[Tenant, User, Flavor, Image, Host]:
        from django.conf import settings
        from django.contrib.auth.models import User
        from django.core.management import call_command

        from compute.models import Flavor, Image
        from core.events import tenant_group
        from tenants.models import Membership, Quota, Role, Tenant

        self.log(f"data dir {self.env.data_dir}, database {settings.DATABASES['default']['ENGINE']}")
        call_command("migrate", verbosity=0, interactive=False)
        call_command("build_container_image", stdout=io.StringIO())
        image = Image.objects.get(name="busybox")
        n = self.args.count + self.args.network_count + 2 * self.args.warmup + 4
        tenant = Tenant.objects.create(name=f"Bench {self.env.tag}", slug=f"bench-{self.env.tag}")
        Quota.objects.for_tenant(tenant).update(max_containers=n, max_vcpus=n, max_ram_mib=n * 64)
        user = User.objects.create_user(f"bench-{self.env.tag}", password=None)
        Membership.objects.create(tenant=tenant, user=user, role=Role.MEMBER)
        # 64 MiB and 64 processes; no CPU cap beyond its one vCPU, so runc's own init (which runs
        # inside the container's cgroup) is not throttled on either path.
        flavor = Flavor.objects.create(
            name=f"cbench.{self.env.tag}",
            vcpus=1,
            ram_mib=64,
            disk_gib=1,
            pids_max=64,
            public=False,
            tenant=tenant,
        )
        self.tenant, self.user = tenant, user
        layer_config: Any = settings.CHANNEL_LAYERS["default"]["CONFIG"]  # typed by its literal there
        self.feed = EventFeed(tenant_group(tenant.pk), dict(layer_config))
        self.feed.start()
        self.host = self.base.start_agent()
        self.check_alone()
        return tenant, user, flavor, image, self.host

    def check_alone(self) -> None:
        """Placement spreads by free RAM: another live agent on this database could get our containers."""
        from django.utils import timezone

        from compute.models import Host, HostState

        now = timezone.now()
        others = [
            h.name
            for h in Host.objects.filter(state=HostState.ENABLED, simulated=False).exclude(
                name=self.host_name
            )
            if h.heartbeat_fresh(now)
        ]
        if others:
            raise BenchError(
                f"other live agents use this database ({', '.join(others)}); placement could send this "
                "run's containers there. Stop them, wait for their heartbeat to go stale, or use another "
                "database."
            )

    def make_network(self) -> Network:
        """A tenant network on a /24 that neither this database nor the host's routes use."""
        from compute.models import Network
        from compute.services.networks import network_create
        from security.audit import Actor

        assert self.tenant is not None
        assert self.user is not None
        taken = [
            ipaddress.IPv4Network(cidr)
            for cidr in Network.objects.unscoped()
            .filter(deleted_at__isnull=True)
            .values_list("cidr", flat=True)
        ]
        routes = subprocess.run(["ip", "-j", "-4", "route"], capture_output=True, text=True, check=False)
        for route in json.loads(routes.stdout or "[]"):
            with contextlib.suppress(ValueError):
                if route.get("dst", "default") != "default":
                    taken.append(ipaddress.IPv4Network(route["dst"], strict=False))
        choices = [ipaddress.IPv4Network(f"10.213.{third}.0/24") for third in range(256)]
        random.shuffle(choices)
        cidr = next((c for c in choices if not any(c.overlaps(t) for t in taken)), None)
        if cidr is None:
            raise BenchError("no free /24 in 10.213.0.0/16 for the tenant network")
        actor = Actor(self.user.username, "api", self.user.pk)
        self.network = network_create(
            actor=actor, tenant=self.tenant, name=f"benchnet-{self.env.tag}", cidr=str(cidr)
        )
        return self.network

    # -- one portal container ------------------------------------------------------------------------
    def portal_one(self, flavor: Flavor, name: str, network: str = "") -> PortalSample:
        from compute.models import Instance, Operation

        assert self.client is not None
        assert self.tenant is not None
        assert self.feed is not None
        base = f"/api/v1/tenants/{self.tenant.slug}/instances/"
        # null, not left out: left out means the tenant's "default" network (made on first use).
        body = {"name": name, "flavor": flavor.name, "image": "busybox", "kind": "container", "network": None}
        if network:
            body["network"] = network
        t0_wall = time.time()
        t0 = time.perf_counter()
        response = self.client.post(base, body, format="json")
        post_s = time.perf_counter() - t0
        if response.status_code != 202:
            raise BenchError(f"POST {base} answered {response.status_code}: {response.content[:500]!r}")
        op = response.json()
        uid = str(op["instance_id"])
        self.live_instances.append(uid)
        rows = Instance.objects.unscoped().filter(uuid=uid)
        placed = rows.values_list("host__name", flat=True).get()
        if placed != self.host_name:
            raise BenchError(f"{name} was placed on {placed or 'no host'}, not on this run's host")

        def db_state() -> tuple[str, str]:
            state, fault = rows.values_list("state", "fault").get()
            return str(state), str(fault)

        seen, seen_by = self.feed.wait_state(uid, "running", self.args.timeout, db_state)
        # The clock has stopped; what follows explains where the time went.
        instance = rows.get()
        ops = Operation.objects.unscoped().filter(uuid=op["id"])
        deadline = time.monotonic() + self.args.timeout
        while not (operation := ops.get()).done:
            if time.monotonic() > deadline:
                raise BenchError(f"the create operation of {name} did not finish")
            time.sleep(OP_POLL_SECONDS)
        if operation.state != "succeeded":
            raise BenchError(f"the create operation of {name} ended {operation.state}: {operation.error}")
        bundle = self.env.instance_dir / uid
        config_path = bundle / "config.json"
        self.template = json.loads(config_path.read_text())
        info = runc_state(instance.domain_name)
        if info is None or info["status"] != "running":
            raise BenchError(f"{name} is running in the database but runc says {info and info['status']}")
        building = self.feed.first(uid, "building")

        def from_t0(epoch: float) -> float:
            return (epoch - t0_wall) * 1000

        assert operation.started is not None
        assert operation.finished is not None
        received = self.task_received(t0_wall, operation.started.timestamp())
        marks: dict[str, float | None] = {
            "post_returned": post_s * 1000,
            "task_received": from_t0(received) if received is not None else None,
            "claimed": from_t0(operation.started.timestamp()),
            "building_seen": (building - t0) * 1000 if building is not None else None,
            "config_written": from_t0(config_path.stat().st_mtime_ns / 1e9),
            "runc_created": from_t0(rfc3339_seconds(str(info["created"]))),
            "running_saved": from_t0(instance.updated.timestamp()),
            "running_seen": (seen - t0) * 1000,
            "op_finished": from_t0(operation.finished.timestamp()),
        }
        delete_s = self.portal_delete(uid, name)
        if bundle.exists() or runc_state(instance.domain_name) is not None:
            raise BenchError(f"{name} is deleted but its bundle or runc container is still on the host")
        return PortalSample(
            name=name,
            uuid=uid,
            network=network,
            post_s=post_s,
            running_s=seen - t0,
            running_row_s=(instance.updated.timestamp() - t0_wall),
            seen_by=seen_by,
            delete_s=delete_s,
            marks_ms=marks,
        )

    def task_received(self, after: float, before: float) -> float | None:
        """When the agent's worker logged receiving the one task between ``after`` and ``before``."""
        try:
            with self.base.agent_log.open("rb") as log:
                log.seek(self.log_offset)
                data = log.read()
        except OSError:
            return None
        complete = data.rfind(b"\n") + 1  # whole lines only: the rest is read next time
        self.log_offset += complete
        for stamp, millis in _RECEIVED.findall(data[:complete].decode(errors="replace")):
            local = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S")  # the log's local time
            self.received.append(local.timestamp() + int(millis) / 1000)
        # The log truncates to the millisecond: allow one either side.
        found = [t for t in self.received if after - 0.001 <= t <= before + 0.001]
        return found[0] if len(found) == 1 else None

    def portal_delete(self, uid: str, name: str, timeout: float | None = None) -> float:
        """DELETE through the API; seconds until the "deleted" event (or the fallback check) says so."""
        from compute.models import Instance

        assert self.client is not None
        assert self.tenant is not None
        assert self.feed is not None
        rows = Instance.objects.unscoped().filter(uuid=uid)

        def db_state() -> tuple[str, str]:
            state, fault = rows.values_list("state", "fault").get()
            return str(state), str(fault)

        t0 = time.perf_counter()
        response = self.client.delete(f"/api/v1/tenants/{self.tenant.slug}/instances/{uid}/")
        if response.status_code != 202:
            raise BenchError(f"DELETE {name} answered {response.status_code}: {response.content[:500]!r}")
        seen, _ = self.feed.wait_state(uid, "deleted", timeout or self.args.timeout, db_state)
        self.live_instances.remove(uid)
        return seen - t0

    # -- one raw runc container ----------------------------------------------------------------------
    def raw_one(self) -> RawSample:
        from compute.drivers.oci import OciDriver

        if self.template is None:
            raise BenchError("no portal container has been made yet to take the bundle from")
        name = f"{RAW_PREFIX}{uuid.uuid4().hex[:12]}"
        bundle = self.env.raw_dir / name
        bundle.mkdir(mode=0o755)
        config = copy.deepcopy(self.template)
        config["hostname"] = name
        config["linux"]["cgroupsPath"] = f"/nubis/{name}"
        (bundle / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        self.live_raw[name] = bundle
        # runc run -d hands its stdio to the container for its whole life: files, never pipes.
        with (bundle / "stdout.log").open("ab") as out, (bundle / "stderr.log").open("ab") as err:
            t0_wall = time.time()
            t0 = time.perf_counter()
            returncode = wait_exactly(
                [RUNC, "run", "-d", "--bundle", str(bundle), name], stdout=out, stderr=err, timeout=30
            )
            run_s = time.perf_counter() - t0
        if returncode != 0:
            tail = (bundle / "stderr.log").read_text(errors="replace").strip()[-500:]
            raise BenchError(f"runc run {name}: {tail or f'exit {returncode}'}")
        info = runc_state(name)
        running_s = time.perf_counter() - t0
        if info is None or info["status"] != "running":
            raise BenchError(f"raw container {name} is {info and info['status']} right after runc run")
        created_ms = (rfc3339_seconds(str(info["created"])) - t0_wall) * 1000
        t1 = time.perf_counter()
        OciDriver(runc=RUNC).delete(name, bundle)
        delete_s = time.perf_counter() - t1
        del self.live_raw[name]
        return RawSample(name, run_s, running_s, created_ms, delete_s)

    # -- a series ------------------------------------------------------------------------------------
    def series(
        self, flavor: Flavor, count: int, stem: str, network: str = ""
    ) -> tuple[list[PortalSample], list[RawSample]]:
        portal: list[PortalSample] = []
        raw: list[RawSample] = []
        for i in range(count):
            for path in ("portal", "raw") if i % 2 == 0 else ("raw", "portal"):
                if path == "portal":
                    p = self.portal_one(flavor, f"{stem}-{i + 1:03d}", network)
                    portal.append(p)
                    self.log(
                        f"portal {i + 1:>3}/{count} {p.name}: running {p.running_s * 1000:6.1f} ms "
                        f"(POST {p.post_s * 1000:5.1f} ms, delete {p.delete_s * 1000:5.1f} ms"
                        f"{', seen in the database' if p.seen_by == 'db' else ''})"
                    )
                else:
                    r = self.raw_one()
                    raw.append(r)
                    self.log(
                        f"raw    {i + 1:>3}/{count} {r.name}: running {r.running_s * 1000:6.1f} ms "
                        f"(run -d {r.run_s * 1000:5.1f} ms, delete {r.delete_s * 1000:5.1f} ms)"
                    )
        return portal, raw

    # -- single calls the agent makes on its path ----------------------------------------------------
    def probes(self) -> dict[str, dict[str, float]]:
        """Milliseconds of calls on the agent's path, timed here (same code, same machine)."""
        from compute.drivers.oci import OciDriver
        from compute.models import Operation
        from core.events import send_now

        def timed(call: Callable[[], object]) -> dict[str, float]:
            times = []
            for _ in range(PROBE_CALLS):
                t0 = time.perf_counter()
                call()
                times.append((time.perf_counter() - t0) * 1000)
            return describe(times)

        missing = f"{RAW_PREFIX}probe-{self.env.tag}"
        op = Operation.objects.unscoped().filter(tenant=self.tenant).order_by("-pk").first()
        assert op is not None
        sleep = ["sleep", "0.02"]
        return {
            # What the drivers' subprocess.run(timeout=...) adds to a 20 ms command, against an exact wait.
            "sleep_20ms_subprocess_run_with_timeout": timed(
                lambda: subprocess.run(sleep, stdin=subprocess.DEVNULL, timeout=30, check=False)
            ),
            "sleep_20ms_blocking_wait": timed(
                lambda: wait_exactly(sleep, stdout=sys.stdout.buffer, stderr=sys.stderr.buffer, timeout=30)
            ),
            "runc_state_of_missing_container": timed(lambda: OciDriver(runc=RUNC).state(missing)),
            "event_publish_from_sync_code": timed(
                lambda: send_now(f"bench.probe.{self.env.tag}", {"type": "probe"})
            ),
            "operation_step_update": timed(
                lambda: Operation.objects.unscoped().filter(pk=op.pk).update(step=op.step, progress=100)
            ),
        }

    # -- the whole run -------------------------------------------------------------------------------
    def run(self) -> None:
        import django

        django.setup()
        self.base.django_ready = True
        from django.conf import settings
        from rest_framework.test import APIClient

        load_start = os.getloadavg()
        started = time.monotonic()
        _tenant, user, flavor, image, host = self.setup()
        hostname = next((h for h in settings.ALLOWED_HOSTS if h not in ("*",) and h[0] != "."), "localhost")
        self.client = APIClient(SERVER_NAME=hostname)
        self.client.force_authenticate(user)

        for i in range(self.args.warmup):
            w = self.portal_one(flavor, f"warm-{i + 1}")
            r = self.raw_one()
            self.log(
                f"warm-up {i + 1}: portal {w.running_s * 1000:.1f} ms, raw {r.running_s * 1000:.1f} ms "
                "(not counted)"
            )
        results: dict[str, Any] = {}
        samples: dict[str, Any] = {}
        portal, raw = self.series(flavor, self.args.count, "bench")
        results["loopback"] = compare(portal, raw)
        samples["loopback"] = {
            "portal": [dataclasses.asdict(s) for s in portal],
            "raw": [dataclasses.asdict(s) for s in raw],
        }
        if self.args.network_count:
            network = self.make_network()
            w = self.portal_one(flavor, "warm-net", network.name)
            self.log(f"warm-up on network {network.cidr}: portal {w.running_s * 1000:.1f} ms (not counted)")
            portal, raw = self.series(flavor, self.args.network_count, "net", network.name)
            results["tenant_network"] = compare(portal, raw)
            results["tenant_network"]["cidr"] = network.cidr
            samples["tenant_network"] = {
                "portal": [dataclasses.asdict(s) for s in portal],
                "raw": [dataclasses.asdict(s) for s in raw],
            }
        probes = self.probes()

        host.refresh_from_db()
        machine = {
            "nproc": os.cpu_count(),
            "cpu_model": host.cpu_model,
            "ram_mib": host.ram_mib,
            "kernel": platform.release(),
            "cgroups": "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1/hybrid",
            "runc": runc_version(),
            "python": platform.python_version(),
            "database": settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1],
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
        }
        result = {
            "benchmark": "container_provision",
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "duration_s": round(time.monotonic() - started, 1),
            "count": self.args.count,
            "network_count": self.args.network_count,
            "warmup": self.args.warmup,
            "observed": {
                "portal_running": "arrival of the instance's 'running' event on the tenant's Channels group "
                "(Redis), in a listener thread; no polling",
                "db_fallback_poll_s": DB_POLL_SECONDS,
                "listener_read_timeouts": self.feed.read_timeouts if self.feed else 0,
                "raw_running": "`runc state` right after `runc run -d` returns",
                "delete": "each container is deleted (portal: through the API, timed to the 'deleted' "
                "event) before the next one starts",
                "marks": "task_received = the worker's 'received' log line (ms, truncated); "
                "claimed = Operation.started; config_written = config.json mtime (filesystem "
                "clock, coarse); runc_created = runc's state 'created'; running_saved = Instance.updated; "
                "op_finished = Operation.finished; all on this machine's clock",
            },
            "agent": {
                "concurrency": 4,
                "celery_prefetch_multiplier": settings.CELERY_WORKER_PREFETCH_MULTIPLIER,
            },
            "flavor": {
                field: getattr(flavor, field)
                for field in ("vcpus", "ram_mib", "pids_max", "swap_mib", "cpu_cap_pct")
            },
            "container_userns": settings.NUBIS_CONTAINER_USERNS,
            "image": {"name": image.name, "os": image.os_name, "sha256": image.sha256},
            "machine": machine,
            "summary": results,
            "probes_ms": probes,
            "samples": samples,
        }
        output: Path = self.args.output
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n")
        head = (
            f"{machine['nproc']} CPUs, {machine['runc']}, {machine['database']}, "
            f"flavor 64 MiB / 64 pids, user namespace {'on' if settings.NUBIS_CONTAINER_USERNS else 'off'}"
        )
        self.log("")
        self.log(
            table(
                f"Container provisioning, portal vs raw runc (same bundle): N={self.args.count} each, "
                f"loopback only, {head}",
                results["loopback"],
                "raw runc",
            )
        )
        if "tenant_network" in results:
            self.log("")
            self.log(
                table(
                    f"On a tenant network ({results['tenant_network']['cidr']}): N={self.args.network_count} "
                    "each; the raw baseline has no network",
                    results["tenant_network"],
                    "raw runc",
                )
            )
        self.log("")
        self.log("single calls on the agent's path, timed here (ms, p50 / p95):")
        for label, stats in probes.items():
            self.log(f"  {label:<40} {stats['p50']:6.1f} / {stats['p95']:6.1f}")
        self.log(f"\nsamples and summary: {output} ({result['duration_s']} s)")

    # -- cleanup -------------------------------------------------------------------------------------
    def agent_output(self) -> str | None:
        return self.base.agent_output()

    def cleanup(self) -> list[str]:
        """Remove what this run made (containers first, while the agent still runs); what failed."""
        from compute.drivers.oci import OciDriver

        problems: list[str] = []
        oci = OciDriver(runc=RUNC)
        for name, bundle in list(self.live_raw.items()):
            try:
                oci.delete(name, bundle)
                del self.live_raw[name]
            except Exception as exc:
                problems.append(f"raw container {name}: {exc}")
        if self.base.django_ready:
            self.forget_instances(problems)
            self.forget_network(problems)
        if self.feed is not None:
            self.feed.stop()
        problems += self.base.cleanup()
        if self.host is not None:
            # The agent is gone: say so now rather than after the heartbeat timeout, so that a run
            # right after this one does not place containers on this host.
            from compute.models import Host, HostState

            try:
                Host.objects.filter(pk=self.host.pk).update(state=HostState.DOWN)
            except Exception as exc:
                problems.append(f"marking host {self.host_name} down: {exc}")
            finally:
                from django.db import connections

                connections.close_all()
        return problems

    def forget_instances(self, problems: list[str]) -> None:
        """Delete leftover portal containers through the API; whatever resists, on the host directly."""
        from compute.drivers.oci import OciDriver
        from compute.models import Instance, Operation, OperationState
        from compute.services import ports

        agent = self.base.agent
        agent_alive = agent is not None and agent.poll() is None
        for uid in list(self.live_instances):
            rows = Instance.objects.unscoped().filter(uuid=uid)
            try:
                state, host = rows.values_list("state", "host__name").get()
                if state == "deleted":
                    self.live_instances.remove(uid)
                    continue
                ours = agent_alive and host == self.host_name
                if ours and self.feed is not None and self.client is not None:
                    # A create still running would make the DELETE answer 409 (busy).
                    busy = Operation.objects.unscoped().filter(
                        instance__uuid=uid, state__in=[OperationState.PENDING, OperationState.RUNNING]
                    )
                    deadline = time.monotonic() + 30
                    while busy.exists() and time.monotonic() < deadline:
                        time.sleep(0.05)
                    self.portal_delete(uid, uid, timeout=30)
                    continue
            except Exception as exc:
                problems.append(f"deleting instance {uid} through the API: {exc}")
            try:
                instance = rows.select_related("network", "host").get()
                OciDriver(runc=RUNC).delete(instance.domain_name, self.env.instance_dir / uid)
                ports.port_detach(instance)
                self.live_instances.remove(uid)
            except Exception as exc:
                problems.append(f"removing container {uid} from the host: {exc}")

    def forget_network(self, problems: list[str]) -> None:
        """Retire the tenant's networks and remove their bridges and DHCP servers from this host, here.

        Not through network_delete: it asks every host row of the database to resync, and the rows of
        earlier runs have no agent left, so their Redis queues would fill up.
        """
        from django.utils import timezone

        from compute.models import Network
        from compute.services.ports import host_networks_sync

        if self.tenant is None or self.host is None:
            return
        try:
            Network.objects.for_tenant(self.tenant).filter(deleted_at__isnull=True).update(
                deleted_at=timezone.now()
            )
            host_networks_sync(self.host)
            self.network = None
        except Exception as exc:
            problems.append(f"networks of tenant {self.tenant.slug}: {exc}")


# -- entry point -------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=50, help="containers per path, loopback only (50)")
    parser.add_argument(
        "--network-count", type=int, default=20, help="containers per path on a tenant network (20; 0: none)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured portal + raw containers first (1)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds allowed per wait (60)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    args = parser.parse_args(argv)
    if args.count < 1 or args.warmup < 1 or args.network_count < 0:
        parser.error("--count and --warmup must be at least 1 (a raw run copies a portal bundle)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("container_provision", lambda env: ContainerBench(env, args))


if __name__ == "__main__":
    sys.exit(main())
