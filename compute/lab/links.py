"""The lab's plumbing in the root namespace: its bridge, each host's network namespace and link,
and the cgroups its containers leave behind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from compute.lab import procs
from compute.lab.spec import LabError, LabHost, LabSpec

CGROUP_ROOT = Path("/sys/fs/cgroup")


def bridge_up(lab: LabSpec, say: Callable[[str], None]) -> None:
    """The lab bridge with the last address of the subnet (made once; refused on a routed subnet)."""
    bridge, prefixlen = lab.bridge, lab.network.prefixlen
    if not Path(f"/sys/class/net/{bridge}").exists():
        taken = procs.run(["ip", "-4", "route", "show", "to", "match", lab.gateway]).stdout
        if any(line and not line.startswith("default") for line in taken.splitlines()):
            raise LabError(f"subnet {lab.subnet} is routed on this machine already: {taken.strip()}")
        procs.run(["ip", "link", "add", bridge, "type", "bridge"])
        say(f"bridge {bridge}: {lab.gateway}/{prefixlen}")
    procs.run(["ip", "addr", "replace", f"{lab.gateway}/{prefixlen}", "dev", bridge])
    procs.run(["ip", "link", "set", bridge, "up"])
    # Traffic between the hosts crosses the machine's FORWARD chain (bridge netfilter is on for
    # tenant networks' security groups): let it through whatever that chain's policy is.
    if procs.run(["iptables", *_forward_rule(lab, "-C")], check=False).returncode != 0:
        procs.run(["iptables", *_forward_rule(lab, "-I")])


def bridge_remove(lab: LabSpec) -> None:
    procs.run(["ip", "link", "del", lab.bridge], check=False)
    while procs.run(["iptables", *_forward_rule(lab, "-D")], check=False).returncode == 0:
        pass  # every copy


def _forward_rule(lab: LabSpec, op: str) -> list[str]:
    comment = ["-m", "comment", "--comment", f"nubis lab {lab.bridge}"]
    return ["-w", op, "FORWARD", "-i", lab.bridge, "-o", lab.bridge, *comment, "-j", "ACCEPT"]


def netns_remove(host: LabHost) -> None:
    if host.netns.exists():
        procs.run(["ip", "netns", "del", host.name])
    if Path(f"/sys/class/net/{host.veth}").exists():
        procs.run(["ip", "link", "del", host.veth], check=False)


def netns_make(lab: LabSpec, host: LabHost) -> None:
    """A fresh network namespace with eth0 on the lab bridge (a boot finds no old interfaces)."""
    netns_remove(host)
    inside = ["ip", "-n", host.name]
    procs.run(["ip", "netns", "add", host.name])
    procs.run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.name])
    procs.run(["ip", "link", "set", host.veth, "master", lab.bridge, "up"])
    procs.run([*inside, "addr", "add", f"{host.address}/{host.prefixlen}", "dev", "eth0"])
    procs.run([*inside, "link", "set", "eth0", "up"])
    procs.run([*inside, "link", "set", "lo", "up"])


def cgroups_remove(host: LabHost, say: Callable[[str], None]) -> None:
    """The host's containers' cgroups (``nubis/<host>``, NUBIS_CGROUP_PARENT of its agent), empty
    once its PID namespace is gone, deepest first: a reboot finds none."""
    for tree in CGROUP_ROOT.glob(f"*/nubis/{host.name}"):
        inner = sorted((p for p in tree.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for path in [*inner, tree]:
            try:
                path.rmdir()
            except OSError as exc:
                say(f"{host.name}: cgroup {path} stays: {exc.strerror}")
