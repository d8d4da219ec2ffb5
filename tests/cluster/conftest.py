"""A lab of real compute hosts for the cluster tests, started once per test session.

``lab`` (package-scoped: up for this directory's tests, down after them) runs ``manage.py lab up
--hosts 3`` with a prefix, bridge and subnet of this session's own (two runs on one machine never
collide) against the session's test database, and ``lab down`` at the end. Each host is a set of
namespaces with its own libvirtd and compute agent; the session's single-host agent
(tests/compute_fixtures.py), when some test starts it, keeps running beside them. ``lab_hosts``
waits for the lab hosts' rows (pytest-django's flush deletes them; the agents register again
within a heartbeat) and ``placement.only(...)`` keeps every other host out.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
import pytest
from django.db.models import ProtectedError
from pytest_django import DjangoDbBlocker

from compute.lab.control import Lab
from compute.lab.spec import LabSpec
from compute.models import Host, HostState, Instance
from tests.compute_fixtures import agent_env_defaults
from tests.conftest import ROOT, subprocess_env

LAB_HOSTS = 3


@dataclass
class LabHost:
    """One lab host: its name, address, libvirt URIs and the lab's controls for it."""

    name: str
    address: str
    uri: str  # its libvirtd from the root namespace (the Unix socket in its private /run/libvirt)
    peer_uri: str  # from the other hosts, over the lab bridge
    lab: LabControl

    def status(self) -> dict[str, Any]:
        return next(h for h in self.lab.status()["hosts"] if h["name"] == self.name)

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the host's namespaces (network, mount, UTS, PID)."""
        init = self.status()["init_pid"]
        assert init, f"{self.name} is down"
        enter = ["nsenter", f"--target={init}", "--net", "--mount", "--uts", "--pid", "--"]
        done = subprocess.run([*enter, *cmd], capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(
                f"{self.name}: {' '.join(cmd)}: {done.returncode}\n{done.stdout}{done.stderr}"
            )
        return done

    def kill(self) -> None:
        self.lab.command("kill", self.name)

    def start(self) -> None:
        self.lab.command("start", self.name)

    def agent_kill(self) -> None:
        self.lab.command("agent-kill", self.name)

    def agent_start(self) -> None:
        self.lab.command("agent-start", self.name)

    def agent_log(self) -> str:
        return Path(self.status()["agent_log"]).read_text(errors="replace")


@dataclass
class LabControl:
    """``manage.py lab`` on the lab in ``directory`` (the agents' environment is ``env``)."""

    directory: Path
    prefix: str
    bridge: str
    subnet: str
    env: dict[str, str]
    hosts: list[LabHost] = field(default_factory=list)

    def command(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        cmd = [sys.executable, "manage.py", "lab", *args, "--dir", str(self.directory)]
        done = subprocess.run(
            cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(f"lab {' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}")
        return done.stdout + done.stderr

    def up(self, hosts: int, *options: str) -> str:
        out = self.command(
            "up",
            *options,
            "--hosts",
            str(hosts),
            "--prefix",
            self.prefix,
            "--bridge",
            self.bridge,
            "--subnet",
            self.subnet,
        )
        self.hosts = [
            LabHost(h["name"], h["address"], h["uri"], h["peer_uri"], self) for h in self.status()["hosts"]
        ]
        return out

    def status(self) -> dict[str, Any]:
        """What ``lab status --json`` prints, read in this process (no Django start-up per call)."""
        spec = LabSpec.load(self.directory)
        assert spec is not None, f"no lab in {self.directory}"
        return Lab(spec).status()

    def host(self, name: str) -> LabHost:
        return next(h for h in self.hosts if h.name == name)


def free_subnet() -> str:
    """A /24 in 10.77.0.0/16 that nothing on this machine routes."""
    routes = subprocess.run(["ip", "-4", "-j", "route"], capture_output=True, text=True, check=True).stdout
    taken = [
        ipaddress.IPv4Network(r["dst"], strict=False) for r in json.loads(routes) if r["dst"] != "default"
    ]
    candidates = [ipaddress.IPv4Network(f"10.77.{i}.0/24") for i in range(1, 255)]
    free = [n for n in candidates if not any(n.overlaps(t) for t in taken)]
    assert free, "no free /24 in 10.77.0.0/16 for a lab"
    return str(random.choice(free))


def new_lab(directory: Path, env: dict[str, str]) -> LabControl:
    """A lab with names, bridge and subnet of its own (not started)."""
    tag = uuid.uuid4().hex[:4]
    return LabControl(directory, f"l{tag}h", f"l{tag}br", free_subnet(), env)


def lab_env(django_db_blocker: DjangoDbBlocker) -> dict[str, str]:
    with django_db_blocker.unblock():
        return subprocess_env(**agent_env_defaults())


# Once per session, for this directory's tests only: started by the first of them and stopped
# after the last, so the rest of the session's tests never see the lab's hosts (their placements
# would land there).
@pytest.fixture(scope="package")
def lab(
    django_db_setup: None, django_db_blocker: DjangoDbBlocker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabControl]:
    control = new_lab(tmp_path_factory.mktemp("lab"), lab_env(django_db_blocker))
    started = time.monotonic()
    try:
        out = control.up(LAB_HOSTS)
        print(f"lab up: {LAB_HOSTS} hosts in {time.monotonic() - started:.1f} s\n{out}")  # noqa: T201
        yield control
    finally:
        started = time.monotonic()
        out = control.command("down", check=False)
        print(f"lab down: {time.monotonic() - started:.1f} s\n{out}")  # noqa: T201
        # The rows the agents registered again after the last test's flush.
        with django_db_blocker.unblock(), contextlib.suppress(ProtectedError):
            Host.objects.filter(name__startswith=control.prefix).delete()


class Placement:
    """Keeps placement to the hosts a test names: every other enabled host is disabled meanwhile."""

    def __init__(self) -> None:
        self.disabled: set[int] = set()

    def only(self, *names: str) -> None:
        """Placement sees only ``names`` from now on (each call replaces the last one's choice)."""
        self.restore()
        others = Host.objects.filter(state=HostState.ENABLED).exclude(name__in=names)
        self.disabled = set(others.values_list("pk", flat=True))
        Host.objects.filter(pk__in=self.disabled).update(state=HostState.DISABLED)

    def restore(self) -> None:
        Host.objects.filter(pk__in=self.disabled, state=HostState.DISABLED).update(state=HostState.ENABLED)
        self.disabled = set()


def wait_registered(names: list[str], timeout: float = 60) -> dict[str, Host]:
    deadline = time.monotonic() + timeout
    while True:
        found = {h.name: h for h in Host.objects.filter(name__in=names)}
        if len(found) == len(names):
            return found
        assert time.monotonic() < deadline, f"lab hosts not registered: {sorted(set(names) - set(found))}"
        time.sleep(0.2)


@pytest.fixture
def lab_hosts(lab: LabControl, transactional_db: None) -> Iterator[dict[str, Host]]:
    """The lab hosts' rows, once their agents have registered them again after the test's flush.
    A host or agent an earlier test left down (it failed half-way) is started first. Afterwards
    (before the flush), every guest of the test's instances is removed from every lab host: a
    test that failed half-way leaves none for the next one to trip over."""
    for host in lab.status()["hosts"]:
        if host["state"] != "up":
            lab.command("start", host["name"])
        elif host["agent_pid"] is None:
            lab.command("agent-start", host["name"])
    yield wait_registered([h.name for h in lab.hosts])
    remove_guests(lab, {i.domain_name for i in Instance.objects.unscoped().all()})


def remove_guests(lab: LabControl, names: set[str]) -> list[str]:
    """Destroy and undefine these domains, and delete these containers, on every lab host up."""
    removed = []
    for host in lab.hosts:
        if host.status()["state"] != "up":
            continue
        conn = libvirt.open(host.uri)
        try:
            for dom in conn.listAllDomains(0):
                if dom.name() in names:
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.destroy()
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
                    removed.append(f"{host.name}:{dom.name()}")
        finally:
            conn.close()
        for name in host.run("runc", "list", "-q", check=False).stdout.split():
            if name in names:
                host.run("runc", "delete", "--force", name, check=False)
                removed.append(f"{host.name}:{name}")
    return removed


@pytest.fixture
def placement(transactional_db: None) -> Iterator[Placement]:
    chosen = Placement()
    try:
        yield chosen
    finally:
        chosen.restore()
