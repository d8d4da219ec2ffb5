"""Acceptance: PostgreSQL restarts while 10 operations are in flight.

Every process of a deployment runs on a PostgreSQL cluster and a Redis of the test's own
(tests.outages_pg, tests.outages): the web process (`manage.py serve`), a compute agent for a host
of its own (with a domain prefix of its own), the control worker (`celery worker -Q control`, with
the operations dispatcher) and beat (`celery beat` on portal.beat's scheduler). Ten container
creates are sent through the API while the agent is held (SIGSTOP: a container create takes less
time than a POST, so otherwise the first ones would end before the last is sent); as soon as the
agent, let go, has started some, the test runs `pg_ctl restart -m fast`, which cuts every
connection of every process while the agent's threads are mid-operation. Then:

- each process serves again within SERVE_WITHIN (10 s) of PostgreSQL being back, without being
  restarted: the web answers the API, the agent's heartbeat advances, the control worker runs a task
  that reads the database, and beat reads its schedule from the database again;
- each operation ends succeeded or failed, none pending or running, within SETTLE_WITHIN (60 s)
  of PostgreSQL being back. The bound: an operation the restart interrupted is run again from its
  claim after 0.5, 1, 2, 4, then every 5 s (compute.services.agent), so a restart of a second
  costs it a second or two; ten container creates take a few seconds on two cores with the agent's
  four threads (measured: all ten ended about 1.5 s after PostgreSQL was back); the rest is margin
  for a loaded CI machine;
- the instances whose create succeeded are running (runc says so), those that failed carry a fault;
- deleting them all through the API leaves nothing: no runc container, cgroup, interface or
  bundle of the test's prefix, and no quota held.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from celery import Celery
from django.conf import settings

from tests.compute.conftest import start_agent
from tests.conftest import ROOT, serve_portal, stop_process, subprocess_env
from tests.outages import private_redis, start_control_worker
from tests.outages_pg import PrivateDatabase, ask, private_database, seed_tenant

pytestmark = [pytest.mark.slow]

OPERATIONS = 10
SERVE_WITHIN = 10.0  # seconds after PostgreSQL is back by which every process serves again
SETTLE_WITHIN = 60.0  # seconds after PostgreSQL is back by which every operation has ended
DONE = ("succeeded", "failed")

CATALOG_SCRIPT = """
from django.core.management import call_command
from compute.models import Flavor
Flavor.objects.create(name="c.small", vcpus=1, ram_mib=64, disk_gib=1, cpu_limit_pct=20, pids_max=64)
call_command("build_container_image")
"""


@pytest.fixture
def database(request: pytest.FixtureRequest) -> Iterator[PrivateDatabase]:
    with private_database(request.config) as db:
        yield db


def start_beat(log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Beat as production runs it: `celery -A portal beat` on the database scheduler (settings)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "portal", "beat", "--loglevel", "INFO"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait(what: str, predicate: Callable[[], object], timeout: float, logs: list[Path]) -> float:
    """Poll ``predicate`` until true; returns the seconds it took, or fails showing the logs."""
    started = time.monotonic()
    while True:
        with contextlib.suppress(Exception):  # a probe may fail while the database is away
            if predicate():
                return time.monotonic() - started
        if time.monotonic() - started > timeout:
            tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in logs)
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")
        time.sleep(0.1)


def runc_containers(prefix: str) -> set[str]:
    out = subprocess.run(["runc", "list", "-q"], capture_output=True, text=True, check=True).stdout
    return {name for name in out.split() if name.startswith(prefix)}


def runc_status(name: str) -> str:
    done = subprocess.run(["runc", "state", name], capture_output=True, text=True, check=False)
    return str(json.loads(done.stdout)["status"]) if done.returncode == 0 else "absent"


def traces(prefix: str, uuids: list[str]) -> list[str]:
    """What a container of this prefix leaves on the host while it exists (as container_traces)."""
    found = [f"runc container {name}" for name in sorted(runc_containers(prefix))]
    for parent in [Path("/sys/fs/cgroup"), *Path("/sys/fs/cgroup").iterdir()]:  # v2, v1 controllers
        found += [f"cgroup {p}" for p in (parent / "nubis").glob(f"{prefix}*")]
    netns = Path("/var/run/netns")
    if netns.exists():
        found += [f"netns {p.name}" for p in netns.glob(f"{prefix}*")]
    for value in uuids:
        if Path(f"/sys/class/net/nv{uuid.UUID(value).hex[:12]}").exists():
            found.append(f"interface nv{uuid.UUID(value).hex[:12]}")
        if (Path(settings.NUBIS_INSTANCE_DIR) / value).exists():
            found.append(f"bundle {value}")
    return found


def operations(database: PrivateDatabase, ids: list[str]) -> dict[str, tuple[str, str, str, str, str]]:
    """operation uuid -> (operation state, its error, instance uuid, instance state, its fault)."""
    rows = database.query(
        "SELECT o.uuid::text, o.state, o.error, i.uuid::text, i.state, i.fault FROM compute_operation o "
        "JOIN compute_instance i ON i.id = o.instance_id WHERE o.uuid::text = ANY(%s)",
        ids,
    )
    return {row[0]: (row[1], row[2], row[3], row[4], row[5]) for row in rows}


def test_every_process_and_operation_survives_a_postgresql_restart(
    database: PrivateDatabase, tmp_path: Path
) -> None:
    prefix = f"nubis-dbr{uuid.uuid4().hex[:6]}-"
    host = f"dbr-{uuid.uuid4().hex[:6]}"
    seeded = seed_tenant(database)
    database.manage("shell", "-c", CATALOG_SCRIPT)
    base = f"/api/v1/tenants/{seeded.tenant}"
    logs = {name: tmp_path / f"{name}.log" for name in ("web", "agent", "control", "beat")}
    processes: list[subprocess.Popen[bytes]] = []
    uuids: list[str] = []
    with private_redis() as broker, contextlib.ExitStack() as stack:
        overrides = {
            "DATABASE_URL": database.url,
            "REDIS_URL": broker.url(0),
            "NUBIS_DOMAIN_PREFIX": prefix,
            "NUBIS_HOST_HEARTBEAT_SECONDS": "1",
            "NUBIS_HEARTBEAT_SECONDS": "1",  # beat sends a task every second
        }
        env = subprocess_env(**overrides)
        port = stack.enter_context(serve_portal(logs["web"], env))
        processes.append(start_agent(host, logs["agent"], **overrides))
        processes.append(start_control_worker(logs["control"], env))
        processes.append(start_beat(logs["beat"], env))
        probe_app = Celery("probe", broker=broker.url(0), backend=broker.url(0))

        def control_runs_a_task() -> bool:
            result = probe_app.send_task("portal.tasks.heartbeat", queue="control")
            try:
                return seeded.tenant in result.get(timeout=2)["tenants"]
            finally:
                result.forget()

        try:
            all_logs = list(logs.values())
            wait("the agent to be ready", lambda: "ready." in logs["agent"].read_text(), 90, all_logs)
            wait("the control worker", control_runs_a_task, 60, all_logs)
            wait("beat to start", lambda: "Sending due task" in logs["beat"].read_text(), 60, all_logs)

            wait(
                "the agent to register its host",
                lambda: database.scalar("SELECT heartbeat_at FROM compute_host WHERE name = %s", host),
                30,
                all_logs,
            )
            # Ten one-vCPU containers on a machine of two CPUs: an overcommit that lets them all fit
            # (the version tells every process's host table to read the row again).
            database.query(
                "UPDATE compute_host SET cpu_ratio = 16, version = version + 1 WHERE name = %s RETURNING id",
                host,
            )

            # The agent is frozen while the ten are accepted, so that all ten are in flight when
            # PostgreSQL restarts: a container create takes well under a second, less than a POST.
            agent = processes[0]
            agent.send_signal(signal.SIGSTOP)
            ops: list[str] = []
            try:
                for i in range(OPERATIONS):
                    body = {
                        "name": f"db-{i}",
                        "flavor": "c.small",
                        "image": "busybox",
                        "kind": "container",
                        "network": None,
                    }
                    answer = ask(port, "POST", f"{base}/instances/", token=seeded.token, body=body)
                    assert answer.status == 202, answer
                    ops.append(answer.json["id"])
                    uuids.append(answer.json["instance_id"])
            finally:
                agent.send_signal(signal.SIGCONT)
            # Restart as soon as the agent has started work: it has claimed some, the rest wait.
            wait(
                "the agent to start an operation",
                lambda: any(s[0] != "pending" for s in operations(database, ops).values()),
                30,
                all_logs,
            )
            at_restart = [s[0] for s in operations(database, ops).values()]
            restart_started = time.monotonic()
            database.cluster.restart()
            back, back_at = time.monotonic(), datetime.now(UTC)
            figures: dict[str, float] = {"restart": back - restart_started}
            in_flight = sum(state not in DONE for state in at_restart)
            assert in_flight >= OPERATIONS // 2, f"too few in flight at the restart: {at_restart}"

            # Every process, probed at once; each must serve again within SERVE_WITHIN.
            def web_answers() -> bool:
                return ask(port, "GET", f"{base}/instances/", token=seeded.token, timeout=3).status == 200

            def agent_heartbeats() -> bool:
                beat = database.scalar("SELECT heartbeat_at FROM compute_host WHERE name = %s", host)
                return beat is not None and beat > back_at

            beat_mark: list[int] = []

            def beat_reads_its_schedule() -> bool:
                # Tell beat its schedule changed (as an admin's edit does); it must read it again.
                if not beat_mark:
                    text = logs["beat"].read_text(errors="replace")
                    changed = database.query(
                        "UPDATE django_celery_beat_periodictasks SET last_update = now() RETURNING ident"
                    )
                    assert changed, "no schedule row"
                    beat_mark.append(len(text))
                return "Schedule changed." in logs["beat"].read_text(errors="replace")[beat_mark[0] :]

            probes = {
                "web": web_answers,
                "agent": agent_heartbeats,
                "control worker": control_runs_a_task,
                "beat": beat_reads_its_schedule,
            }

            def measure(name: str, probe: Callable[[], bool]) -> None:
                while time.monotonic() - back < SERVE_WITHIN + 20:
                    with contextlib.suppress(Exception):
                        if probe():
                            figures[name] = time.monotonic() - back
                            return
                    time.sleep(0.1)

            threads = [threading.Thread(target=measure, args=item) for item in probes.items()]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            sys.stderr.write(f"after the restart (s): {figures}; states at the restart: {at_restart}\n")
            slow = {name: figures.get(name) for name in probes if figures.get(name, 1e9) > SERVE_WITHIN}
            tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in all_logs)
            assert not slow, f"not serving again within {SERVE_WITHIN} s: {slow}\n{tails}"
            for process in processes:
                assert process.poll() is None, f"a process exited:\n{tails}"

            wait(
                "every operation to end",
                lambda: all(s[0] in DONE for s in operations(database, ops).values()),
                SETTLE_WITHIN - (time.monotonic() - back),
                all_logs,
            )
            figures["operations ended"] = time.monotonic() - back
            ended = operations(database, ops)
            outcome = {op: state for op, (state, *_rest) in ended.items()}
            sys.stderr.write(f"operations: {sorted(outcome.values())}; figures (s): {figures}\n")
            sys.stderr.write(f"failed: {[(e[1], e[4]) for e in ended.values() if e[0] != 'succeeded']}\n")
            for op, (state, error, instance, instance_state, fault) in ended.items():
                if state == "succeeded":
                    assert instance_state == "running", (op, instance_state)
                    assert runc_status(prefix + instance) == "running", instance
                else:
                    assert error or fault, f"operation {op} failed without saying why"

            # Delete them all through the API; nothing may be left.
            deletes = []
            for instance in uuids:
                answer = ask(port, "DELETE", f"{base}/instances/{instance}/", token=seeded.token)
                assert answer.status == 202, answer
                deletes.append(answer.json["id"])
            wait(
                "every delete to end",
                lambda: all(s[0] in DONE for s in operations(database, deletes).values()),
                120,
                all_logs,
            )
            assert {s[0] for s in operations(database, deletes).values()} == {"succeeded"}
            assert {s[3] for s in operations(database, deletes).values()} == {"deleted"}
            assert traces(prefix, uuids) == []
            held = database.query(
                "SELECT count(*) FROM tenants_quotaclaim WHERE released_at IS NULL "
                "AND (containers > 0 OR ram_mib > 0 OR vcpus > 0)"
            )
            assert held == [(0,)], "quota still held after every instance was deleted"
        finally:
            for process in reversed(processes):
                stop_process(process, 30)
            for name in runc_containers(prefix):
                subprocess.run(["runc", "delete", "--force", name], capture_output=True, check=False)
            for value in uuids:
                subprocess.run(["rm", "-rf", str(Path(settings.NUBIS_INSTANCE_DIR) / value)], check=False)
            subprocess.run(["rm", "-rf", str(Path(settings.NUBIS_ROOTFS_DIR) / prefix)], check=False)


BEAT_SCRIPT = """
import datetime, json, os, subprocess
from django.db import connection
from django_celery_beat import schedulers
from portal.beat import DatabaseScheduler
from portal.celery import app
commands = json.loads(os.environ["NUBIS_TEST_PG_CTL"])
seen = {}
for label, kind in (("stock", schedulers.DatabaseScheduler), ("portal.beat", DatabaseScheduler)):
    connection.close()
    scheduler = kind(app=app, lazy=False)  # reads the schedule, as beat does when it starts
    scheduler.tick()
    subprocess.run(commands["stop"], check=True, capture_output=True)
    # The full re-read of the schedule is due (it comes every 5 minutes), and the database is down.
    scheduler._last_full_sync -= datetime.timedelta(seconds=schedulers.SCHEDULE_SYNC_MAX_INTERVAL)
    try:
        seen[label] = f"ticked, next in {scheduler.tick():.0f} s"
    except Exception as exc:
        seen[label] = f"raised {type(exc).__name__}"
    subprocess.run(commands["start"], check=True, capture_output=True)
    try:
        scheduler.tick()
        seen[label + " once back"] = sorted(scheduler.schedule)
    except Exception as exc:
        seen[label + " once back"] = f"raised {type(exc).__name__}"
print("SEEN=" + json.dumps(seen))
"""


def test_beat_outlives_a_database_outage_during_its_full_reread(database: PrivateDatabase) -> None:
    """django_celery_beat's own scheduler ends beat (its tick raises) when the database is down at
    its periodic full re-read of the schedule; portal.beat's ticks again after a short wait, and
    reads the schedule once the database is back."""
    commands = {"stop": database.cluster.ctl("stop"), "start": database.cluster.ctl("start")}
    out = database.manage("shell", "-c", BEAT_SCRIPT, NUBIS_TEST_PG_CTL=json.dumps(commands))
    seen = json.loads(next(line[5:] for line in out.splitlines() if line.startswith("SEEN=")))
    assert seen["stock"] == "raised OperationalError", seen
    assert seen["portal.beat"] == "ticked, next in 2 s", seen
    assert "tenant-heartbeat" in seen["portal.beat once back"], seen
