"""Start, stop, kill and revive a lab's hosts, their namespaces, libvirt daemons and agents."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from compute.lab import hostdir, links, procs
from compute.lab.relay import relay_ready
from compute.lab.spec import LabError, LabHost, LabSpec, write_private

TOOLS = ("ip", "iptables", "nsenter", "unshare", "tini", "libvirtd", "virtlogd", "runc")
BOOT_TIMEOUT = 30.0  # seconds for a host's libvirtd to answer
Say = Callable[[str], None]


class Lab:
    """The lab kept in a directory: ``lab.json`` (what it is), ``agent.json`` (how its agents run:
    python, working directory, environment), ``hosts/<name>/`` (each host's private disk and
    pids), ``relay.pid``, ``relay.json`` and ``logs/`` (kept after ``down``)."""

    def __init__(self, spec: LabSpec, say: Say | None = None) -> None:
        self.spec = spec
        self.say: Say = say or (lambda _line: None)

    @property
    def directory(self) -> Path:
        return self.spec.directory

    # -- the whole lab ------------------------------------------------------------------------------
    def up(self, env: Mapping[str, str], *, python: str, workdir: Path, wait: float) -> None:
        """Bring every host up (those already up are left alone), then wait for their agents.

        ``env`` is the agents' environment (each host adds its own name, address and cgroup
        parent), ``python`` and ``workdir`` run ``manage.py compute_agent`` and the relay; all
        three are kept for ``lab start`` and ``lab agent-start``.
        """
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
        if missing:
            raise LabError(
                f"missing on this machine: {', '.join(missing)} (scripts/bootstrap-host installs them)"
            )
        self.spec.save()
        launch = {"python": python, "workdir": str(workdir), "env": dict(env)}
        write_private(self.directory / "agent.json", json.dumps(launch, indent=1) + "\n")
        links.bridge_up(self.spec, self.say)
        self._relay_up()
        started: list[tuple[LabHost, int]] = []
        for host in self.spec.host_list():
            if self.host_up(host):
                self.say(f"{host.name}: already up ({host.address})")
            else:
                self._boot(host)
            if self.agent_pid(host) is not None:
                self.say(f"{host.name}: agent already running")
            else:
                started.append((host, self._agent_start(host)))
        if wait:
            for host, offset in started:
                self._wait_ready(host, offset, wait)

    def down(self) -> None:
        """Stop every agent and host, and remove their namespaces, links, bridge and cgroups."""
        hosts = self.spec.host_list()
        agents = [pid for h in hosts if (pid := self.agent_pid(h)) is not None]
        if agents:
            gentle = procs.stop(agents, 15)
            self.say(f"agents: stopped {len(agents)}" + ("" if gentle else " (some killed)"))
        inits = {h.name: pid for h in hosts if (pid := self.init_pid(h)) is not None}
        spaces = [ns for h in hosts if (ns := self._pidns(h)) is not None]
        if inits:
            procs.stop(list(inits.values()), 20)
        for namespace in spaces:  # what the inits leave (none: a PID namespace dies with its init)
            left = procs.tree_members(namespace)
            procs.kill(left, signal.SIGKILL)
            procs.wait_gone(left, 10)
        for name in inits:
            self.say(f"{name}: stopped")
        relay = self.relay_pid()
        if relay is not None:
            procs.stop([relay], 10)
            self.say("relay: stopped")
        for host in hosts:
            links.netns_remove(host)
            links.cgroups_remove(host, self.say)
        links.bridge_remove(self.spec)
        self.say(f"bridge {self.spec.bridge}: removed")
        shutil.rmtree(self.directory / "hosts", ignore_errors=True)
        for name in ("lab.json", "agent.json", "relay.json", "relay.pid"):
            (self.directory / name).unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        hosts = []
        for host in self.spec.host_list():
            init = self.init_pid(host)
            namespace = self._pidns(host) if init else None
            commands = [procs.cmdline(pid) for pid in procs.members(namespace)] if namespace else []
            daemons = {cmd[0].rsplit("/", 1)[-1] for cmd in commands if cmd}
            hosts.append(
                {
                    "name": host.name,
                    "address": host.address,
                    "state": "up" if init else "down",
                    "init_pid": init,
                    "pidns": namespace,
                    "libvirtd": "libvirtd" in daemons,
                    "agent_pid": self.agent_pid(host),
                    "uri": host.local_uri,
                    "peer_uri": host.peer_uri,
                    "uuid": host.uuid,
                    "directory": str(host.directory),
                    "agent_log": str(host.agent_log),
                }
            )
        return {
            "directory": str(self.directory),
            "prefix": self.spec.prefix,
            "bridge": self.spec.bridge,
            "subnet": self.spec.subnet,
            "relay_pid": self.relay_pid(),
            "hosts": hosts,
        }

    # -- one host --------------------------------------------------------------------------------------
    def kill(self, name: str) -> None:
        """Kill the host hard: SIGKILL its tini, and with it everything in its PID namespace."""
        host = self.spec.host(name)
        init = self.init_pid(host)
        if init is None:
            self.say(f"{host.name}: already down")
            return
        namespace = self._pidns(host)
        procs.kill([init], signal.SIGKILL)
        deadline = time.monotonic() + 15
        while namespace and procs.tree_members(namespace):
            if time.monotonic() > deadline:
                raise LabError(f"{host.name}: processes outlived its init: {procs.tree_members(namespace)}")
            time.sleep(0.05)
        self.say(f"{host.name}: killed (init {init} and its PID namespace)")

    def start(self, name: str, *, wait: float) -> None:
        """Boot a host that is down (as after a power cut: a fresh /run and network stack), and its agent."""
        host = self.spec.host(name)
        if self.host_up(host):
            self.say(f"{host.name}: already up")
        else:
            self._relay_up()
            self._boot(host)
        if self.agent_pid(host) is None:
            offset = self._agent_start(host)
            if wait:
                self._wait_ready(host, offset, wait)

    def agent_kill(self, name: str) -> None:
        host = self.spec.host(name)
        pid = self.agent_pid(host)
        if pid is None:
            self.say(f"{host.name}: agent not running")
            return
        procs.kill([pid], signal.SIGKILL)
        procs.wait_gone([pid], 10)
        self.say(f"{host.name}: agent killed (pid {pid})")

    def agent_start(self, name: str, *, wait: float) -> None:
        host = self.spec.host(name)
        if not self.host_up(host):
            raise LabError(f"{host.name} is down: lab start {host.name}")
        if self.agent_pid(host) is not None:
            self.say(f"{host.name}: agent already running")
            return
        offset = self._agent_start(host)
        if wait:
            self._wait_ready(host, offset, wait)

    # -- what is running -------------------------------------------------------------------------------
    def init_pid(self, host: LabHost) -> int | None:
        """The host's tini (its PID 1), if it runs."""
        pid = procs.read_pid(host.directory / "init.pid")
        recorded = self._pidns(host)
        if pid is None or not procs.alive(pid) or recorded is None or procs.pidns(pid) != recorded:
            return None
        return pid

    def host_up(self, host: LabHost) -> bool:
        return self.init_pid(host) is not None and host.netns.exists()

    def agent_pid(self, host: LabHost) -> int | None:
        """The host's compute agent (its pid in the root namespace), if it runs."""
        pid = procs.read_pid(host.directory / "agent.pid")
        namespace = self._pidns(host)
        if pid is None or namespace is None or not procs.alive(pid) or procs.pidns(pid) != namespace:
            return None
        return pid if "compute_agent" in procs.cmdline(pid) else None

    def relay_pid(self) -> int | None:
        pid = procs.read_pid(self.directory / "relay.pid")
        if pid is None or not procs.alive(pid) or "compute.lab.relay" not in procs.cmdline(pid):
            return None
        return pid

    def _pidns(self, host: LabHost) -> str | None:
        try:
            return (host.directory / "pidns").read_text().strip() or None
        except OSError:
            return None

    # -- steps ---------------------------------------------------------------------------------------
    def _relay_up(self) -> None:
        if self.relay_pid() is not None:
            return
        launch = self._launch()
        python, workdir = launch["python"], launch["workdir"]
        self.spec.logs.mkdir(parents=True, exist_ok=True)
        with (self.spec.logs / "relay.log").open("ab") as log:
            process = subprocess.Popen(
                [python, "-m", "compute.lab.relay", str(self.directory)],
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        write_private(self.directory / "relay.pid", f"{process.pid}\n")
        endpoints = ", ".join(f"{address}:{port}" for address, port in self.spec.endpoints) or "nothing"
        self.say(f"relay: started (pid {process.pid}) for {endpoints}")

    def _boot(self, host: LabHost) -> None:
        started = time.monotonic()
        if self.init_pid(host) is not None:  # up, but its namespace is gone: a host half there
            self.kill(host.name)
        links.cgroups_remove(host, self.say)
        links.netns_make(self.spec, host)
        hostdir.prepare(self.spec, host)
        self.spec.logs.mkdir(parents=True, exist_ok=True)
        cmd = [
            "nsenter", f"--net={host.netns}",
            "unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc", "--propagation", "private",
            "tini", "--", "/bin/sh", str(host.directory / "init.sh"),
        ]  # fmt: skip
        with host.host_log.open("ab") as log:
            process = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        init = procs.wait_child(process.pid, 10, f"{host.name}: unshare")
        namespace = procs.pidns(init)
        if namespace is None:
            raise LabError(f"{host.name}: its init exited at once: {self._tail(host.host_log)}")
        (host.directory / "pidns").write_text(namespace + "\n")
        (host.directory / "init.pid").write_text(f"{init}\n")
        deadline = time.monotonic() + BOOT_TIMEOUT
        while not _answers(host.libvirt_socket):
            if not procs.alive(init) or time.monotonic() > deadline:
                raise LabError(f"{host.name}: libvirtd did not start: {self._tail(host.host_log)}")
            time.sleep(0.05)
        took = time.monotonic() - started
        self.say(f"{host.name}: up at {host.address}, libvirt {host.local_uri} [{took:.1f} s]")

    def _launch(self) -> dict[str, Any]:
        """How ``lab up`` was told to run the agents: python, workdir and environment."""
        path = self.directory / "agent.json"
        try:
            launch: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise LabError(f"{path}: {exc} (lab up first)") from None
        return launch

    def _agent_env(self, host: LabHost) -> dict[str, str]:
        return {
            **self._launch()["env"],
            "NUBIS_HOST_NAME": host.name,
            "NUBIS_HOST_ADDRESS": host.address,
            "NUBIS_LIBVIRT_PEER_URI": "qemu+tcp://{address}/system",
            "LIBVIRT_URI": "qemu:///system",
            "NUBIS_CGROUP_PARENT": f"nubis/{host.name}",
            # Per host, in its own /run (never a directory the caller chose for the root's agent).
            "NUBIS_NETWORK_STATE_DIR": "/run/nubis/networks",
            # The instance store is the machine's own directory, at the same path on every host,
            # unless each host has its own there (moves then copy the disks along).
            "NUBIS_SHARED_INSTANCE_STORE": "0" if self.spec.private_store else "1",
        }

    def _agent_start(self, host: LabHost) -> int:
        """Start the host's agent inside its namespaces; returns where its log's new lines begin."""
        init = self.init_pid(host)
        if init is None:
            raise LabError(f"{host.name} is down")
        deadline = time.monotonic() + 10
        while self.spec.endpoints and not relay_ready(self.directory, host.name):
            if time.monotonic() > deadline:
                relay_log = self._tail(self.spec.logs / "relay.log")
                raise LabError(f"{host.name}: the relay does not listen in it: {relay_log}")
            time.sleep(0.05)
        env = self._agent_env(host)
        launch = self._launch()
        python, workdir = launch["python"], launch["workdir"]
        offset = host.agent_log.stat().st_size if host.agent_log.exists() else 0
        cmd = [
            "nsenter", f"--target={init}", "--net", "--mount", "--uts", "--pid", f"--wd={workdir}", "--",
            python, "manage.py", "compute_agent", "--name", host.name, "--kvm-probe", "never",
        ]  # fmt: skip
        with host.agent_log.open("ab") as log:
            process = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        agent = procs.wait_child(process.pid, 10, f"{host.name}: nsenter")
        (host.directory / "agent.pid").write_text(f"{agent}\n")
        deadline = time.monotonic() + 10
        while self.agent_pid(host) is None:  # nsenter's child until it has exec'd the agent
            if not procs.alive(agent) or time.monotonic() > deadline:
                raise LabError(f"{host.name}: its agent did not start: {self._tail(host.agent_log)}")
            time.sleep(0.02)
        self.say(f"{host.name}: agent started (pid {agent}, log {host.agent_log})")
        return offset

    def _wait_ready(self, host: LabHost, offset: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with host.agent_log.open("rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
            if "ready." in text:
                registered = [line for line in text.splitlines() if line.startswith(f"agent {host.name}: ")]
                self.say(registered[0] if registered else f"{host.name}: agent ready")
                return
            if self.agent_pid(host) is None:
                raise LabError(f"{host.name}: its agent exited: {self._tail(host.agent_log)}")
            if time.monotonic() > deadline:
                raise LabError(
                    f"{host.name}: its agent is not ready after {timeout:.0f} s: {self._tail(host.agent_log)}"
                )
            time.sleep(0.2)

    @staticmethod
    def _tail(path: Path, lines: int = 8) -> str:
        try:
            return "\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"(no {path})"


def _answers(path: Path) -> bool:
    """Something accepts connections on Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True
