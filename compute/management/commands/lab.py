"""A lab of N compute hosts on this machine: up, down, status, and a host's hard kill and reboot."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from compute.lab.control import Lab
from compute.lab.relay import loopback_endpoints
from compute.lab.spec import DEFAULT_BRIDGE, DEFAULT_PREFIX, DEFAULT_SUBNET, LabError, LabSpec

HOST_ACTIONS = {
    "kill": "kill a host hard: SIGKILL its init, and so its agent, libvirtd, guests and containers",
    "start": "boot a host that is down (fresh /run and network stack), then its agent",
    "agent-kill": "SIGKILL only the host's compute agent (its guests and containers keep running)",
    "agent-start": "start the host's compute agent again",
}


class Command(BaseCommand):
    help = (
        "A lab of several compute hosts on this machine, each in its own namespaces with its own "
        "libvirtd and compute agent: lab up --hosts N | down | status | "
        "kill/start/agent-kill/agent-start HOST."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)

        def action(name: str, text: str) -> CommandParser:
            sub: CommandParser = actions.add_parser(name, help=text, description=text)
            sub.add_argument(
                "--dir", type=Path, default=None, help="the lab's directory (default NUBIS_DATA_DIR/lab)"
            )
            return sub

        up = action("up", "start the lab's hosts and agents (those already up are left alone)")
        up.add_argument("--hosts", type=int, required=True, help="how many hosts")
        up.add_argument(
            "--prefix", default=DEFAULT_PREFIX, help=f"host names <prefix>1.. (default {DEFAULT_PREFIX})"
        )
        up.add_argument("--bridge", default=DEFAULT_BRIDGE, help=f"the lab bridge (default {DEFAULT_BRIDGE})")
        up.add_argument(
            "--subnet",
            default=DEFAULT_SUBNET,
            help=f"hosts at .1, .2, ..; the bridge last (default {DEFAULT_SUBNET})",
        )
        up.add_argument(
            "--timeout", type=float, default=180, help="seconds to wait for the agents (0: do not)"
        )
        up.add_argument(
            "--private-store",
            action="store_true",
            help="give each host an instance store of its own (at NUBIS_INSTANCE_DIR, as a host's local "
            "disk): live moves then copy the disks along; default: one store shared by every host",
        )
        action("down", "stop every host and agent; remove namespaces, links, bridge and cgroups")
        status = action("status", "each host's state, processes and libvirt URIs")
        status.add_argument("--json", action="store_true", help="as JSON")
        for name, text in HOST_ACTIONS.items():
            sub = action(name, text)
            sub.add_argument("host", help="the host's name (e.g. labh1)")
            if name.endswith("start"):
                sub.add_argument("--timeout", type=float, default=120, help="seconds to wait for the agent")

    def handle(self, *args: Any, **options: Any) -> None:
        directory = (options["dir"] or Path(settings.DATA_DIR) / "lab").resolve()
        action = options["action"]
        started = time.monotonic()
        try:
            if action == "up":
                self._up(directory, options)
            else:
                spec = LabSpec.load(directory)
                if spec is None:
                    if action in ("down", "status"):
                        self.stdout.write(f"lab: none in {directory}")
                        return
                    raise LabError(f"no lab in {directory} (lab up first)")
                lab = Lab(spec, say=self.say)
                if action == "down":
                    lab.down()
                elif action == "status":
                    self._status(lab, as_json=options["json"])
                    return
                elif action == "kill":
                    lab.kill(options["host"])
                elif action == "start":
                    lab.start(options["host"], wait=options["timeout"])
                elif action == "agent-kill":
                    lab.agent_kill(options["host"])
                elif action == "agent-start":
                    lab.agent_start(options["host"], wait=options["timeout"])
        except LabError as exc:
            raise CommandError(f"lab {action}: {exc}") from None
        self.say(f"{action}: done [{time.monotonic() - started:.1f} s]")

    def say(self, line: str) -> None:
        self.stdout.write(f"lab: {line}")
        self.stdout.flush()

    def _up(self, directory: Path, options: dict[str, Any]) -> None:
        if os.geteuid() != 0:
            raise LabError("needs root (network namespaces, bridges, libvirtd)")
        spec = LabSpec(
            directory=directory,
            hosts=options["hosts"],
            prefix=options["prefix"],
            bridge=options["bridge"],
            subnet=options["subnet"],
            endpoints=loopback_endpoints([settings.DATABASE_URL, settings.REDIS_URL]),
            private_store=str(settings.NUBIS_INSTANCE_DIR) if options["private_store"] else "",
        )
        existing = LabSpec.load(directory)
        if existing is not None and (not existing.same_network(spec) or existing.hosts > spec.hosts):
            raise LabError(
                f"{directory} holds a lab of {existing.hosts} host(s) {existing.prefix}1.. on "
                f"{existing.bridge} {existing.subnet}: lab down first, or use another --dir"
            )
        # The agents run with this process's environment, pointed at what this process uses.
        env = {
            **os.environ,
            "DATABASE_URL": settings.DATABASE_URL,
            "REDIS_URL": settings.REDIS_URL,
            "NUBIS_DATA_DIR": str(settings.DATA_DIR),
            "NUBIS_IMAGE_DIR": str(settings.NUBIS_IMAGE_DIR),
            "NUBIS_INSTANCE_DIR": str(settings.NUBIS_INSTANCE_DIR),
            "NUBIS_ROOTFS_DIR": str(settings.NUBIS_ROOTFS_DIR),
        }
        Lab(spec, say=self.say).up(
            env, python=sys.executable, workdir=Path(settings.BASE_DIR), wait=options["timeout"]
        )

    def _status(self, lab: Lab, *, as_json: bool) -> None:
        status = lab.status()
        if as_json:
            self.stdout.write(json.dumps(status, indent=2))
            return
        relay = status["relay_pid"]
        self.stdout.write(
            f"lab {status['directory']}: bridge {status['bridge']} {status['subnet']}, "
            f"relay {'pid ' + str(relay) if relay else 'not running'}"
        )
        for host in status["hosts"]:
            agent = f"agent pid {host['agent_pid']}" if host["agent_pid"] else "no agent"
            daemon = "libvirtd" if host["libvirtd"] else "no libvirtd"
            where = f"{host['name']:<10} {host['address']:<15} {host['state']:<5}"
            self.stdout.write(f"  {where} {daemon}, {agent}  {host['uri']}")
