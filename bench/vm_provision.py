"""Benchmark: VM provisioning through the portal against raw libvirt, measured in the same run.

Portal path: POST /api/v1/tenants/<slug>/instances/ (in-process DRF client, as the tests do) to a
real compute agent subprocess (Celery worker on its own host queue, real libvirt), timed from just
before the POST to the instance's state becoming "running" and to ``NUBIS-READY`` in its serial log.

Baseline: the same domain XML (the portal's own ``domain_xml(guest_spec(...))`` with a fresh name
and UUID) on a fresh qcow2 overlay, timed from ``defineXML`` + ``create()`` (``virsh define`` +
``virsh start``) to running and to the ready marker.

The two paths alternate VM by VM (portal first on even rounds, raw first on odd ones), so both see
the same noise from a shared machine, and each VM is deleted before the next one starts: a 2-CPU
host has room for only 8 vCPUs under the portal's 4x CPU overcommit. One unmeasured raw boot warms
the page cache first.

    .venv/bin/python bench/vm_provision.py [--count 10]

Prints a table and writes every sample, the summary and the machine's facts to
bench/results/vm_provision.json. It reports; it asserts nothing about timings.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import libvirt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from rest_framework.test import APIClient

    from compute.drivers.base import GuestSpec
    from compute.models import Flavor, Host, Image
    from tenants.models import Tenant

DEFAULT_OUTPUT = ROOT / "bench" / "results" / "vm_provision.json"
DEFAULT_IMAGE_DIR = "/var/cache/nubis/images"
READY_MARKER = b"NUBIS-READY"
POLL_SECONDS = 0.05
MAX_RETRIES = 3
RAW_PREFIX = "benchraw-"  # not "nubis-": no agent's reconciler or test fixture may take these for its own
# The bench's agent must never remove domains of other runs sharing this libvirtd as "orphans".
AGENT_ORPHAN_GRACE = "86400"


T = TypeVar("T")


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


class Interfered(BenchError):
    """Another process removed this run's guest mid-measurement; the sample is dropped and redone."""


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; the ones that matter are raised."""


libvirt.registerErrorHandler(_quiet, None)


# -- environment -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Env:
    data_dir: Path
    own_data_dir: bool
    instance_dir: Path
    image_dir: Path
    raw_dir: Path
    tag: str


def prepare_environment() -> Env:
    """Point this process (and so the agent it starts) at a throwaway data dir, before Django loads."""
    tag = uuid.uuid4().hex[:8]
    given = os.environ.get("NUBIS_DATA_DIR", "").strip()
    if given:
        data_dir, own = Path(given).resolve(), False
        data_dir.mkdir(parents=True, exist_ok=True)
    else:
        data_dir, own = Path(tempfile.mkdtemp(prefix="nubis-bench-", dir="/tmp")), True
        data_dir.chmod(0o755)  # QEMU runs as libvirt-qemu and must traverse to the disks
    instance_dir = Path(os.environ.get("NUBIS_INSTANCE_DIR", "").strip() or data_dir / "instances")
    image_dir = Path(os.environ.get("NUBIS_IMAGE_DIR", "").strip() or DEFAULT_IMAGE_DIR)
    raw_dir = data_dir / f"raw-{tag}"
    for path in (instance_dir, image_dir, raw_dir):
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.environ["NUBIS_DATA_DIR"] = str(data_dir)
    os.environ["NUBIS_INSTANCE_DIR"] = str(instance_dir)
    os.environ["NUBIS_IMAGE_DIR"] = str(image_dir)
    if not os.environ.get("DATABASE_URL", "").strip():
        os.environ["DATABASE_URL"] = f"sqlite:///{data_dir / 'nubis.sqlite3'}"
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    return Env(data_dir, own, instance_dir, image_dir, raw_dir, tag)


def machine_facts(
    host: Host, domain_type: str | None, load_start: tuple[float, float, float]
) -> dict[str, Any]:
    """What a VM benchmark's figures depend on: the machine, its hypervisor and its load."""
    from django.conf import settings

    return {
        "nproc": os.cpu_count(),
        "accelerator": "tcg" if domain_type == "qemu" else "kvm",
        "tcg_available": host.tcg_available,
        "kvm_usable": host.kvm_usable,
        "kvm_probe_detail": host.kvm_probe_detail,
        "cpu_model": host.cpu_model,
        "ram_mib": host.ram_mib,
        "vmm": host.vmm,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "database": settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1],
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
    }


# -- samples and statistics --------------------------------------------------------------------------
@dataclasses.dataclass
class PortalSample:
    name: str
    uuid: str
    post_s: float  # the API call itself (answers 202)
    running_s: float
    ready_s: float
    delete_s: float  # DELETE to the instance being gone


@dataclasses.dataclass
class RawSample:
    name: str
    uuid: str
    overlay_s: float  # qemu-img create, before the clock starts
    define_s: float
    running_s: float
    ready_s: float
    delete_s: float  # destroy + undefine


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); with 10 samples p95 sits near max."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def describe(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "mean": sum(values) / len(values),
        "min": min(values),
        "max": max(values),
    }


def summarize(portal: list[PortalSample], raw: list[RawSample]) -> dict[str, Any]:
    summary: dict[str, Any] = {"portal": {}, "raw": {}, "overhead": {}}
    for metric in ("running", "ready"):
        p = [getattr(s, f"{metric}_s") for s in portal]
        r = [getattr(s, f"{metric}_s") for s in raw]
        summary["portal"][metric] = describe(p)
        summary["raw"][metric] = describe(r)
        pairs = [a - b for a, b in zip(p, r, strict=True)]
        summary["overhead"][metric] = {
            f"{q}_{kind}": value
            for q in ("p50", "p95")
            for kind, value in (
                ("s", summary["portal"][metric][q] - summary["raw"][metric][q]),
                ("ratio", summary["portal"][metric][q] / summary["raw"][metric][q]),
            )
        } | {"paired_p50_s": percentile(pairs, 50)}
    summary["portal"]["post"] = describe([s.post_s for s in portal])
    summary["portal"]["delete"] = describe([s.delete_s for s in portal])
    summary["raw"]["define"] = describe([s.define_s for s in raw])
    summary["raw"]["overlay"] = describe([s.overlay_s for s in raw])
    summary["raw"]["delete"] = describe([s.delete_s for s in raw])
    return summary


def table(summary: dict[str, Any], count: int, machine: dict[str, Any]) -> str:
    def row(label: str, cells: list[str]) -> str:
        return f"{label:<24}" + "".join(f"{c:>13}" for c in cells)

    def secs(path: str, metric: str, q: str) -> str:
        return f"{summary[path][metric][q]:.3f} s"

    metrics = [(m, q) for m in ("running", "ready") for q in ("p50", "p95")]
    over = summary["overhead"]
    lines = [
        f"VM provisioning, portal vs raw libvirt (same domain XML): N={count} each, sequential, "
        f"{machine['accelerator'].upper()}, {machine['nproc']} CPUs",
        "",
        row("seconds from request", ["running p50", "running p95", "ready p50", "ready p95"]),
        row("portal (API + agent)", [secs("portal", m, q) for m, q in metrics]),
        row("raw libvirt", [secs("raw", m, q) for m, q in metrics]),
        row("overhead (portal-raw)", [f"{over[m][f'{q}_s']:+.3f} s" for m, q in metrics]),
        row("ratio (portal/raw)", [f"{over[m][f'{q}_ratio']:.2f}x" for m, q in metrics]),
    ]
    return "\n".join(lines)


# -- the run -----------------------------------------------------------------------------------------
class Bench:
    def __init__(self, env: Env, args: argparse.Namespace) -> None:
        self.env = env
        self.args = args
        self.host_name = f"bench-{env.tag}"
        self.agent_log = env.data_dir / f"agent-{env.tag}.log"
        self.agent: subprocess.Popen[bytes] | None = None
        self.django_ready = False
        self.conn: libvirt.virConnect | None = None
        # Everything this run made on the host, for the cleanup.
        self.portal_uuids: list[str] = []
        self.raw_domains: list[str] = []
        self.raw_dirs: list[Path] = []
        self.interference: list[str] = []  # samples dropped because another process removed the guest

    def log(self, text: str) -> None:
        print(text, flush=True)

    # -- setup ---------------------------------------------------------------------------------------
    def setup(self) -> tuple[Tenant, User, Flavor, Image, Host]:
        from django.conf import settings
        from django.contrib.auth.models import User
        from django.core.management import call_command

        from compute.models import CpuMode, Flavor, IoModel
        from tenants.models import Membership, Quota, Role, Tenant

        self.log(f"data dir {self.env.data_dir}, database {settings.DATABASES['default']['ENGINE']}")
        call_command("migrate", verbosity=0, interactive=False)
        image = self.register_image()
        ram_mib, disk_gib = self.FLAVOR
        n = self.args.count + self.args.warmup + 2
        tenant = Tenant.objects.create(name=f"Bench {self.env.tag}", slug=f"bench-{self.env.tag}")
        Quota.objects.for_tenant(tenant).update(
            max_instances=n, max_vcpus=n, max_ram_mib=n * ram_mib, max_disk_gib=n * disk_gib
        )
        user = User.objects.create_user(f"bench-{self.env.tag}", password=None)
        Membership.objects.create(tenant=tenant, user=user, role=Role.MEMBER)
        self.tenant_ready(tenant, user)
        flavor = Flavor.objects.create(
            name=f"bench.{self.env.tag}",
            vcpus=1,
            ram_mib=ram_mib,
            disk_gib=disk_gib,
            cpu_mode=CpuMode.EMULATED,
            io_model=IoModel.VIRTIO,
            public=False,
            tenant=tenant,
        )
        self.conn = libvirt.open(settings.LIBVIRT_URI)
        host = self.start_agent()
        return tenant, user, flavor, image, host

    NAME = "vm_provision"
    READY_MEANS = "NUBIS-READY on the serial console (the tiny guest's init ran, DHCP done)"
    FLAVOR = (192, 1)  # RAM (MiB) and disk (GiB) of the measured guests

    def register_image(self) -> Image:
        """The image both paths boot: the tiny test guest (built once and cached)."""
        from compute.guest.builder import build_guest_image
        from compute.services.images import image_register

        return image_register(
            build_guest_image(self.env.image_dir, log=lambda line: self.log(f"image: {line}"))
        )

    def tenant_ready(self, tenant: Tenant, user: User) -> None:
        """Anything else the tenant needs before the first request (the Debian series: a key pair)."""

    def start_agent(self) -> Host:
        from compute.models import Host

        env = dict(os.environ, NUBIS_HOST_HEARTBEAT_SECONDS="1", NUBIS_ORPHAN_GRACE=AGENT_ORPHAN_GRACE)
        command = [
            sys.executable,
            "manage.py",
            "compute_agent",
            "--name",
            self.host_name,
            "--kvm-probe",
            "never",
        ]
        with self.agent_log.open("ab") as out:
            # Its own session: a Ctrl-C reaches only the bench, whose cleanup then stops the agent.
            self.agent = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 90
        while True:
            host = Host.objects.filter(name=self.host_name).first()
            if host is not None and "ready." in self.agent_text():
                self.log(f"agent {self.host_name} ready (pid {self.agent.pid}): {host.vmm}")
                return host
            if self.agent.poll() is not None:
                raise BenchError(f"the compute agent exited with status {self.agent.returncode}")
            if time.monotonic() > deadline:
                raise BenchError("the compute agent did not register and get ready within 90 s")
            time.sleep(0.2)

    def agent_output(self) -> str | None:
        """The agent's log, once an agent was started."""
        return self.agent_text() if self.agent is not None else None

    def agent_text(self) -> str:
        return self.agent_log.read_text(errors="replace") if self.agent_log.exists() else ""

    # -- one portal VM -------------------------------------------------------------------------------
    def portal_one(
        self, client: APIClient, tenant: Tenant, flavor: Flavor, image: Image, stem: str, retry: int
    ) -> PortalSample:
        from compute.models import Instance, InstanceState, Operation

        name = f"{stem}-r{retry}" if retry else stem
        base = f"/api/v1/tenants/{tenant.slug}/instances/"
        t0 = time.perf_counter()
        response = client.post(base, self.create_body(name, flavor, image), format="json")
        post_s = time.perf_counter() - t0
        if response.status_code != 202:
            raise BenchError(f"POST {base} answered {response.status_code}: {response.content[:500]!r}")
        op = response.json()
        vm_uuid = str(op["instance_id"])
        self.portal_uuids.append(vm_uuid)
        rows = Instance.objects.unscoped().filter(uuid=vm_uuid)
        instance = rows.select_related("host").get()
        if instance.host is None or instance.host.name != self.host_name:
            where = instance.host.name if instance.host else "no host"
            raise BenchError(f"{name} was placed on {where}, not on this run's host ({instance.fault})")

        def running() -> bool:
            state, fault = rows.values_list("state", "fault").get()
            if state == InstanceState.ERROR:
                if "vanished" in fault:
                    raise Interfered(f"{name}: {fault}")
                raise BenchError(f"{name} went to error: {fault}")
            return state == InstanceState.RUNNING

        serial = self.env.instance_dir / vm_uuid / "serial.log"
        ops = Operation.objects.unscoped().filter(uuid=op["id"])
        try:
            running_s, ready_s = self.wait_boot(t0, running, f"nubis-{vm_uuid}", serial, name)
        except Interfered:
            self.wait(lambda: ops.get().done, f"the create operation of {name} to finish")
            self.portal_delete(client, f"{base}{vm_uuid}/", name)
            raise
        self.wait(lambda: ops.get().done, f"the create operation of {name} to finish")
        if (failed := ops.get()).state != "succeeded":
            raise BenchError(f"the create operation of {name} ended {failed.state}: {failed.error}")
        delete_s = self.portal_delete(client, f"{base}{vm_uuid}/", name)
        if self.domain(f"nubis-{vm_uuid}") is not None or serial.parent.exists():
            raise BenchError(f"{name} is deleted but its domain or directory is still on the host")
        return PortalSample(name, vm_uuid, post_s, running_s, ready_s, delete_s)

    def create_body(self, name: str, flavor: Flavor, image: Image) -> dict[str, Any]:
        """The create request's body (the Debian series adds its key pair)."""
        return {"name": name, "flavor": flavor.name, "image": image.name}

    def portal_delete(self, client: APIClient, url: str, name: str) -> float:
        """DELETE the instance through the API; seconds until it is gone."""
        from compute.models import Instance, InstanceState

        rows = Instance.objects.unscoped().filter(uuid=url.rstrip("/").rsplit("/", 1)[-1])
        t0 = time.perf_counter()
        response = client.delete(url)
        if response.status_code != 202:
            raise BenchError(f"DELETE {name} answered {response.status_code}: {response.content[:500]!r}")
        gone = (InstanceState.DELETED, InstanceState.ERROR)
        self.wait(lambda: rows.values_list("state", flat=True).get() in gone, f"{name} to be deleted")
        delete_s = time.perf_counter() - t0
        if (after := rows.get()).state != InstanceState.DELETED:
            raise BenchError(f"deleting {name} failed: {after.fault}")
        return delete_s

    # -- one raw libvirt VM --------------------------------------------------------------------------
    def raw_one(self, template: GuestSpec, base_disk: str, disk_gib: int) -> RawSample:
        assert self.conn is not None
        vm_uuid = str(uuid.uuid4())
        name = f"{RAW_PREFIX}{vm_uuid[:8]}"
        workdir = self.env.raw_dir / vm_uuid
        workdir.mkdir(mode=0o755)
        self.raw_dirs.append(workdir)
        spec = dataclasses.replace(
            template,
            name=name,
            uuid=vm_uuid,
            disk_path=str(workdir / "disk.qcow2"),
            serial_log=str(workdir / "serial.log"),
            vnc_password=secrets.token_hex(4),
        )
        t_overlay = time.perf_counter()
        make_overlay(base_disk, Path(spec.disk_path), disk_gib)
        spec = self.raw_prepared(spec, workdir)
        overlay_s = time.perf_counter() - t_overlay
        xml = domain_xml_of(spec)

        t0 = time.perf_counter()
        self.raw_domains.append(name)
        dom = self.conn.defineXML(xml)
        define_s = time.perf_counter() - t0
        dom.create()
        try:
            running_s, ready_s = self.wait_boot(
                t0, lambda: dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING, name, Path(spec.serial_log), name
            )
        finally:
            t1 = time.perf_counter()
            with contextlib.suppress(libvirt.libvirtError):  # gone already if someone removed it
                undefine(dom)
            delete_s = time.perf_counter() - t1
            shutil.rmtree(workdir)
            self.raw_domains.remove(name)
            self.raw_dirs.remove(workdir)
        return RawSample(name, vm_uuid, overlay_s, define_s, running_s, ready_s, delete_s)

    def raw_prepared(self, spec: GuestSpec, workdir: Path) -> GuestSpec:
        """What else a raw guest needs before it is defined (the Debian series: its config drive)."""
        return spec

    def measured(self, what: str, measure: Callable[[int], T]) -> T:
        """One sample; measured again (up to MAX_RETRIES times) if another process interfered."""
        for retry in range(MAX_RETRIES + 1):
            try:
                return measure(retry)
            except Interfered as exc:
                self.interference.append(str(exc))
                self.log(f"{what}: sample dropped, {exc}; measuring it again")
        raise BenchError(
            f"{what}: interfered with {MAX_RETRIES + 1} times in a row; run again when the machine is quieter"
        )

    # -- waiting -------------------------------------------------------------------------------------
    def wait_boot(
        self, t0: float, running: Callable[[], bool], domain: str, serial: Path, name: str
    ) -> tuple[float, float]:
        """Seconds from t0 to running and to the ready marker, each seen within one poll period.

        Raises Interfered if the domain disappears once running: another process on this shared
        libvirtd removed it (a concurrent test's leftover sweep takes every new ``nubis-`` domain).
        """
        running_s: float | None = None
        ready_s: float | None = None
        deadline = t0 + self.args.timeout
        while running_s is None or ready_s is None:
            if running_s is None and running():
                running_s = time.perf_counter() - t0
            if ready_s is None and running_s is not None and self.is_ready(domain, serial):
                ready_s = time.perf_counter() - t0
            if running_s is not None and ready_s is None and self.domain(domain) is None:
                raise Interfered(f"{name}: its domain {domain} was removed by another process")
            if time.perf_counter() > deadline:
                missing = "running" if running_s is None else "the ready marker"
                raise BenchError(f"{name} did not reach {missing} within {self.args.timeout:.0f} s")
            time.sleep(POLL_SECONDS)
        return running_s, ready_s

    def is_ready(self, domain: str, serial: Path) -> bool:
        """Whether the guest is up: the tiny image prints its ready marker on the serial console."""
        return serial.exists() and READY_MARKER in serial.read_bytes()

    def wait(self, predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.args.timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {self.args.timeout:.0f} s waiting for {what}")
            time.sleep(POLL_SECONDS)

    def domain(self, name: str) -> libvirt.virDomain | None:
        assert self.conn is not None
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    # -- the whole run -------------------------------------------------------------------------------
    def run(self) -> None:
        import django

        django.setup()
        self.django_ready = True
        from django.conf import settings
        from rest_framework.test import APIClient

        from compute.models import Instance
        from compute.services.guests import guest_spec

        load_start = os.getloadavg()
        tenant, user, flavor, image, host = self.setup()
        hostname = next((h for h in settings.ALLOWED_HOSTS if h not in ("*",) and h[0] != "."), "localhost")
        client = APIClient(SERVER_NAME=hostname)
        client.force_authenticate(user)
        # The portal's own spec for an (unsaved) instance of this flavor and image; raw runs rename it.
        template = guest_spec(
            Instance(
                tenant=tenant,
                name="raw",
                flavor=flavor,
                image=image,
                vcpus=flavor.vcpus,
                ram_mib=flavor.ram_mib,
                current_ram_mib=flavor.ram_mib,
                disk_gib=flavor.disk_gib,
            )
        )
        domain_type = ET.fromstring(domain_xml_of(template)).get("type")  # noqa: S314 (our own XML)

        for i in range(self.args.warmup):
            sample = self.raw_one(template, image.disk_path, flavor.disk_gib)
            self.log(f"warm-up {i + 1}: raw boot to ready {sample.ready_s:.2f} s (not counted)")
        portal: list[PortalSample] = []
        raw: list[RawSample] = []
        for i in range(self.args.count):
            order = ("portal", "raw") if i % 2 == 0 else ("raw", "portal")
            for path in order:
                if path == "portal":
                    stem = f"bench-{i + 1:02d}"
                    p = self.measured(
                        f"portal {i + 1}",
                        functools.partial(self.portal_one, client, tenant, flavor, image, stem),
                    )
                    portal.append(p)
                    self.log(
                        f"portal {i + 1:>2}/{self.args.count} {p.name}: running {p.running_s:.3f} s, "
                        f"ready {p.ready_s:.3f} s (POST {p.post_s * 1000:.0f} ms, delete {p.delete_s:.2f} s)"
                    )
                else:
                    r = self.measured(
                        f"raw {i + 1}", lambda _: self.raw_one(template, image.disk_path, flavor.disk_gib)
                    )
                    raw.append(r)
                    self.log(
                        f"raw    {i + 1:>2}/{self.args.count} {r.name}: running {r.running_s:.3f} s, "
                        f"ready {r.ready_s:.3f} s (define {r.define_s * 1000:.0f} ms, "
                        f"overlay {r.overlay_s * 1000:.0f} ms)"
                    )

        host.refresh_from_db()
        machine = machine_facts(host, domain_type, load_start)
        summary = summarize(portal, raw)
        result = {
            "benchmark": self.NAME,
            "ready_means": self.READY_MEANS,
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "count": self.args.count,
            "warmup": self.args.warmup,
            "poll_seconds": POLL_SECONDS,
            "dropped_samples": self.interference,
            "flavor": {
                field: getattr(flavor, field)
                for field in ("vcpus", "ram_mib", "disk_gib", "cpu_mode", "io_model")
            },
            "image": {"name": image.name, "os": image.os_name, "sha256": image.sha256},
            "machine": machine,
            "summary": summary,
            "samples": {
                "portal": [dataclasses.asdict(s) for s in portal],
                "raw": [dataclasses.asdict(s) for s in raw],
            },
        }
        output: Path = self.args.output
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n")
        self.log("")
        self.log(table(summary, self.args.count, machine))
        self.log(f"ready = {self.READY_MEANS}")
        self.log(f"\nsamples and summary: {output}")

    # -- cleanup -------------------------------------------------------------------------------------
    def cleanup(self) -> list[str]:
        """Remove what this run made; returns what could not be removed."""
        problems: list[str] = []
        if self.agent is not None and self.agent.poll() is None:
            self.agent.terminate()
            try:
                self.agent.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        names = [f"nubis-{u}" for u in self.portal_uuids] + self.raw_domains
        if names:
            try:
                conn = (
                    self.conn
                    if self.conn is not None
                    else libvirt.open(os.environ.get("LIBVIRT_URI", "qemu:///system"))
                )
                for name in names:
                    with contextlib.suppress(libvirt.libvirtError):  # already gone
                        undefine(conn.lookupByName(name))
            except libvirt.libvirtError as exc:
                problems.append(f"libvirt: {exc}")
        dirs = [self.env.instance_dir / u for u in self.portal_uuids] + [*self.raw_dirs, self.env.raw_dir]
        for path in dirs:
            shutil.rmtree(path, ignore_errors=True)
            if path.exists():
                problems.append(f"could not remove {path}")
        if self.conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self.conn.close()
        self.forget_in_redis(problems)
        if self.django_ready:
            from django.db import connections

            connections.close_all()
        return problems

    def forget_in_redis(self, problems: list[str]) -> None:
        """Drop the agent's keys (its queue binding, orphan notes): all carry this run's host name."""
        import redis

        try:
            client = redis.Redis.from_url(os.environ["REDIS_URL"])
            keys = list(client.scan_iter(match=f"*{self.host_name}*", count=1000))
            if keys:
                client.delete(*keys)
        except redis.RedisError as exc:
            problems.append(f"redis: {exc}")


def domain_xml_of(spec: GuestSpec) -> str:
    from compute.drivers.domain_xml import domain_xml

    return domain_xml(spec)


def make_overlay(base: str, disk: Path, size_gib: int) -> None:
    """A copy-on-write overlay of the image's disk, as the agent makes it (retrying qemu-img's hiccup)."""
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, str(disk), f"{size_gib}G"]
    for attempt in range(3):
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
        if proc.returncode == 0:
            return
        if "accurate CPU usage" not in proc.stderr or attempt == 2:
            raise BenchError(f"qemu-img create failed: {proc.stderr.strip() or proc.returncode}")


def undefine(dom: libvirt.virDomain) -> None:
    if dom.isActive():
        dom.destroy()
    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)


# -- entry point -------------------------------------------------------------------------------------
def parse_args(
    argv: Sequence[str] | None,
    *,
    default_count: int = 10,
    default_output: Path = DEFAULT_OUTPUT,
    default_timeout: float = 180.0,
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument(
        "--count", type=int, default=default_count, help=f"VMs per path (default {default_count})"
    )
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured raw boots first (default 1)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=default_timeout,
        help=f"seconds allowed per wait (default {default_timeout:.0f})",
    )
    parser.add_argument("--output", type=Path, default=default_output, help="JSON results file")
    args = parser.parse_args(argv)
    if args.count < 1 or args.warmup < 0:
        parser.error("--count must be at least 1 and --warmup at least 0")
    return args


def _on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cleanup


class Runnable(Protocol):
    """What run_main drives: this benchmark's Bench, and container_provision's."""

    def run(self) -> None: ...

    def cleanup(self) -> list[str]: ...

    def agent_output(self) -> str | None: ...


def run_main(label: str, make_bench: Callable[[Env], Runnable]) -> int:
    """Run a benchmark to its end or its failure, report, and always clean up after it."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    env = prepare_environment()
    bench = make_bench(env)
    status = 0
    try:
        bench.run()
    except BenchError as exc:
        print(f"{label}: FAILED: {exc}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print(f"{label}: interrupted", file=sys.stderr)
        status = 130
    except Exception as exc:
        traceback.print_exc()
        print(f"{label}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        status = 1
    finally:
        log = bench.agent_output() if status else None
        if log is not None:
            print(f"--- last lines of the agent's log ---\n{log[-3000:]}", file=sys.stderr)
        problems = bench.cleanup()
        if env.own_data_dir:
            shutil.rmtree(env.data_dir, ignore_errors=True)
        for problem in problems:
            print(f"{label}: cleanup: {problem}", file=sys.stderr)
    return status or (1 if problems else 0)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main("vm_provision", lambda env: Bench(env, args))


if __name__ == "__main__":
    sys.exit(main())
