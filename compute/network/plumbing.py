"""Host-side plumbing of isolated tenant networks: Linux bridges, veths in netns, iptables and dnsmasq.

Plain Python without Django or a database: every function shells out to ``ip``, ``iptables`` (the
nf_tables backend, through ``iptables-restore --noflush`` batches, each committed as one atomic
transaction) and ``dnsmasq``. All of them are idempotent and safe to call again after a crash half
way; a failing command raises :class:`PlumbingError` carrying that command's stderr.

A tenant network is a bridge named ``BRIDGE_PREFIX...`` in the root namespace holding the gateway
address, with one dnsmasq serving DHCP (no DNS) on it. The iptables layout (``iptables -S`` names):

filter table
  INPUT    1: ``-i nbr+ -j NUBIS-INPUT``
  FORWARD  1: ``-j NUBIS-FWD``
  NUBIS-INPUT   DHCP (udp 68->67) ACCEPT; replies to connections the host opened ACCEPT; DROP.
  NUBIS-FWD     1 ``-i nbr+ -j NUBIS-SPOOF``            anti-spoofing, bridged and routed frames
                2 ``-i nbr+ --physdev-is-bridged -j NUBIS-NSG``   security group of the output port
                3 ``-i nbr+ --physdev-is-bridged -j ACCEPT``      same bridge, no security group
                4 ``-i nbr+ -o nbr+ -j DROP``          routed between two tenant bridges: never
                5 ``-j NUBIS-NETS``                     per-network verdicts (egress, return traffic)
                6 ``-i nbr+ -j DROP``, 7 ``-o nbr+ -j DROP``   fail closed for bridges without a chain
  NUBIS-SPOOF   ``--physdev-in PORT -j NSA-OWNER-PORT`` per port with rules (NSA: the port's own IP
                or a DHCP discover RETURN, anything else DROP; DHCP server replies from a port DROP)
  NUBIS-NSG     ``--physdev-out PORT -j NSG-OWNER-PORT`` per port with rules (NSG: RELATED,ESTABLISHED,
                one ACCEPT per rule, DROP)
  NUBIS-NETS    ``-i BR -j NBR-OWNER-BR`` and ``-o BR -j NBR-OWNER-BR`` per network (NBR: egress ACCEPT
                iff NAT, inbound RELATED,ESTABLISHED ACCEPT, else DROP)
nat table
  POSTROUTING 1: ``-j NUBIS-POST``; NUBIS-POST: ``-s CIDR ! -d CIDR -j MASQUERADE`` per NAT network,
  tagged with the comment ``NBR-OWNER-BR``.

OWNER (1-8 of [a-z0-9]) names the deployment that made a chain, so each deployment on a host can
list, and remove, the chains it owns and no others' (iptables chain names are at most 28 characters:
"NSA-" + 8 + "-" + a 15-character interface name fits). The NUBIS-* chains are shared by every
deployment on the host. Everything allowed is ACCEPTed explicitly in these chains, so the rules do
not depend on FORWARD's policy (Docker sets it to DROP).

The per-port rules match bridged frames (``-m physdev``), which iptables sees only while bridge
netfilter is on (``br_netfilter`` loaded, ``net.bridge.bridge-nf-call-iptables`` = 1). Every call
that writes rules first makes sure it is on, and fails when it cannot be, rather than let security
groups fail open (see :func:`bridge_netfilter_ensure`).
ip6 filter table
  Tenant networks are IPv4 only, so every IPv6 packet from or to a tenant bridge is dropped (INPUT and
  FORWARD), and the bridges have IPv6 disabled: otherwise link-local IPv6 would bypass the security
  groups between neighbours and reach host services listening on ``::``.

Every chain is compared with ``iptables -S`` before anything is written, so a second call writes
nothing; a chain that differs is flushed and refilled in one transaction.

Known limits: ARP and other non-IP frames within one bridge are not filtered (an instance can
poison its neighbours' ARP caches on its own network), and the anti-spoofing checks source IPs, not
MAC addresses. Traffic the host itself sends to an instance goes through OUTPUT, not FORWARD, so
security groups do not apply to it: the host is trusted.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

BRIDGE_PREFIX = "nbr"  # every tenant bridge starts with it; the iptables rules match "nbr+"

IP = "ip"
IPTABLES = {4: "iptables", 6: "ip6tables"}
IPTABLES_RESTORE = {4: "iptables-restore", 6: "ip6tables-restore"}
DNSMASQ = "/usr/sbin/dnsmasq"
NETNS_DIR = Path("/var/run/netns")
LOCK_PATH = Path("/run/lock/nubis-network.lock")
XTABLES_WAIT = "10"  # seconds iptables waits for the xtables lock (-w)
CMD_TIMEOUT = 30.0
DNSMASQ_STOP_TIMEOUT = 3.0
DHCP_LEASE_TIME = "12h"

CHAIN_INPUT = "NUBIS-INPUT"
CHAIN_FWD = "NUBIS-FWD"
CHAIN_SPOOF = "NUBIS-SPOOF"
CHAIN_NSG = "NUBIS-NSG"
CHAIN_NETS = "NUBIS-NETS"
CHAIN_POST = "NUBIS-POST"
# Bridged frames reach iptables (and so the per-port rules) only while these are 1.
BRIDGE_NF_DIR = Path("/proc/sys/net/bridge")
BRIDGE_NF_KEYS = ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables")
MODPROBE = "modprobe"

_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_NETNS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_NOT_HOSTNAME = re.compile(r"[^a-z0-9-]+")
_PROTOCOLS = ("tcp", "udp", "icmp", "any")
_OWNER = re.compile(r"[a-z0-9]{1,8}")

_P = ParamSpec("_P")
_R = TypeVar("_R")


class PlumbingError(RuntimeError):
    """A host command failed; the message holds the command and its own stderr."""

    def __init__(
        self, message: str, *, cmd: Sequence[str] = (), returncode: int | None = None, stderr: str = ""
    ) -> None:
        super().__init__(message)
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True)
class NetSpec:
    """One tenant network: its bridge, IPv4 subnet and gateway, NAT egress, owner tag and state dir.

    ``state_dir`` holds dnsmasq's pid, leases and hosts files. dnsmasq drops root privileges for
    ``nobody``, so every directory above it must be searchable by others (mode o+x). ``owner`` is
    the deployment's id in the names of the network's iptables chains.
    """

    bridge: str
    cidr: str
    gateway: str
    nat: bool
    tag: str
    state_dir: Path
    owner: str


@dataclass(frozen=True)
class Rule:
    """One security-group rule: accept ``protocol`` to ports ``port_min``..``port_max`` from ``cidr``."""

    protocol: str
    port_min: int | None
    port_max: int | None
    cidr: str


# --- serialisation: one mutation at a time per host (threads and processes) ------------------------


class _HostLock:
    """A re-entrant lock held across processes with flock(2) on LOCK_PATH."""

    def __init__(self) -> None:
        self._thread_lock = threading.RLock()
        self._depth = 0

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._thread_lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
            with LOCK_PATH.open("a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                self._depth = 1
                try:
                    yield
                finally:
                    self._depth = 0  # closing the file releases the flock


_host_lock = _HostLock()


def _locked(function: Callable[_P, _R]) -> Callable[_P, _R]:
    # iptables batches are computed from a dump of the current rules, so two concurrent callers would
    # otherwise both add the same missing rule.
    @functools.wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with _host_lock.held():
            return function(*args, **kwargs)

    return wrapper


# --- commands -------------------------------------------------------------------------------------


def _run(
    args: Sequence[str], *, check: bool = True, input_text: str | None = None, timeout: float = CMD_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    argv = list(args)
    try:
        # An empty input rather than the caller's stdin: nothing here may wait for a terminal.
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, input=input_text or "", check=False
        )
    except FileNotFoundError as exc:
        raise PlumbingError(f"`{shlex.join(argv)}`: {exc}", cmd=argv) from exc
    except subprocess.TimeoutExpired as exc:
        raise PlumbingError(f"`{shlex.join(argv)}` timed out after {timeout:g} s", cmd=argv) from exc
    if check and proc.returncode != 0:
        raise _command_error(argv, proc)
    return proc


def _command_error(argv: Sequence[str], proc: subprocess.CompletedProcess[str]) -> PlumbingError:
    detail = proc.stderr.strip() or proc.stdout.strip() or "(no output)"
    return PlumbingError(
        f"`{shlex.join(argv)}` failed with exit status {proc.returncode}: {detail}",
        cmd=argv,
        returncode=proc.returncode,
        stderr=proc.stderr,
    )


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    prefix = [IP, "-n", netns] if netns else [IP]
    return _run([*prefix, *args], check=check)


def _ip_json(*args: str, netns: str | None = None) -> list[dict[str, Any]]:
    out = _ip("-j", *args, netns=netns).stdout
    data = json.loads(out) if out.strip() else []
    return data if isinstance(data, list) else []


def _link(name: str, netns: str | None = None) -> dict[str, Any] | None:
    """`ip -d link show` of one link, or None if it does not exist."""
    argv = [IP, *(["-n", netns] if netns else []), "-j", "-d", "link", "show", "dev", name]
    proc = _run(argv, check=False)
    if proc.returncode != 0:
        if "does not exist" in proc.stderr:
            return None
        raise _command_error(argv, proc)
    data = json.loads(proc.stdout or "[]")
    return data[0] if data else None


def _link_kind(info: dict[str, Any]) -> str | None:
    kind = info.get("linkinfo", {}).get("info_kind")
    return str(kind) if kind else None


def _ipv4_addresses(name: str, netns: str | None = None) -> list[str]:
    """The IPv4 addresses of a link as ``address/prefixlen``."""
    found: list[str] = []
    for link in _ip_json("-4", "addr", "show", "dev", name, netns=netns):
        for addr in link.get("addr_info", []):
            if addr.get("family") == "inet":
                found.append(f"{addr['local']}/{addr['prefixlen']}")
    return found


def ipv4_addresses(name: str) -> list[str]:
    """The IPv4 addresses of a link of the root namespace as ``address/prefixlen``."""
    _check_ifname(name)
    return _ipv4_addresses(name)


def _addresses_set(name: str, wanted: str, netns: str | None = None) -> None:
    """Make WANTED ("a.b.c.d/len") the only IPv4 address of a link."""
    # Stale addresses go first: deleting a primary address also deletes the secondaries of its
    # subnet, which would take a freshly added WANTED with it.
    for address in _ipv4_addresses(name, netns=netns):
        if address != wanted:
            _ip("addr", "del", address, "dev", name, netns=netns)
    if wanted not in _ipv4_addresses(name, netns=netns):
        _ip("addr", "replace", wanted, "dev", name, netns=netns)


def _sysctl_set(key: str, value: str) -> None:
    """Write /proc/sys/KEY (slashes) unless it already holds VALUE; a missing key is left alone."""
    path = Path("/proc/sys") / key
    try:
        if path.read_text().strip() != value:
            path.write_text(value)
    except FileNotFoundError:
        return  # e.g. the kernel has no IPv6
    except OSError as exc:
        raise PlumbingError(f"cannot set {path} to {value}: {exc}") from exc


def _bridge_nf_ensure() -> None:
    """Bridge netfilter on (see bridge_netfilter_ensure); a PlumbingError when it cannot be."""
    why = (
        "the security groups and anti-spoofing rules of tenant networks would not see bridged "
        "traffic and would fail open; refusing to run tenant networks"
    )
    if not (BRIDGE_NF_DIR / BRIDGE_NF_KEYS[0]).exists():
        # A stock Debian kernel has br_netfilter as a module that nothing loads.
        try:
            proc = _run([MODPROBE, "br_netfilter"], check=False)
            detail = (proc.stderr or proc.stdout).strip() or f"exit status {proc.returncode}"
        except PlumbingError as exc:
            detail = str(exc)
        if not (BRIDGE_NF_DIR / BRIDGE_NF_KEYS[0]).exists():
            raise PlumbingError(
                f"bridge netfilter is unavailable: {BRIDGE_NF_DIR / BRIDGE_NF_KEYS[0]} is missing and "
                f"`{MODPROBE} br_netfilter` did not load it ({detail}); {why}"
            )
    for key in BRIDGE_NF_KEYS:
        path = BRIDGE_NF_DIR / key
        try:
            if path.read_text().strip() != "1":
                path.write_text("1")
            value = path.read_text().strip()
        except FileNotFoundError:
            if key == BRIDGE_NF_KEYS[0]:
                raise PlumbingError(f"bridge netfilter is unavailable: {path} is missing; {why}") from None
            continue  # no IPv6 in this kernel: nothing to filter
        except OSError as exc:
            raise PlumbingError(
                f"bridge netfilter is off and cannot be turned on: writing 1 to {path}: {exc.strerror}; {why}"
            ) from None
        if value != "1":
            raise PlumbingError(f"bridge netfilter is off: {path} reads {value!r} after writing 1; {why}")


# --- the host's routes ----------------------------------------------------------------------------

MAX_ROUTES = 2048  # a compute host has a few dozen; a full routing table is cut here


def host_routes() -> list[dict[str, str]]:
    """The IPv4 subnets this host routes or has an address in, whoever made them: [{cidr, dev}].

    Every routing table counts (a VPN's policy routes too), and every address's subnet; not the
    default route, loopback, broadcast or multicast. A tenant subnet that overlaps one of these
    would be shadowed by, or shadow, someone else's network on this host.
    """
    found: dict[tuple[str, str], None] = {}

    def add(cidr: str, dev: str) -> None:
        try:
            network = ipaddress.IPv4Network(cidr, strict=False)
        except ValueError:
            return
        if network.prefixlen and not (network.is_loopback or network.is_multicast):
            found.setdefault((str(network), dev), None)

    for route in _ip_json("-4", "route", "show", "table", "all"):
        dst = str(route.get("dst", ""))
        if dst and dst != "default" and route.get("type", "unicast") not in ("broadcast", "multicast"):
            add(dst, str(route.get("dev", "")))
    for link in _ip_json("-4", "addr", "show"):
        for addr in link.get("addr_info", []):
            if addr.get("family") == "inet":
                add(f"{addr['local']}/{addr['prefixlen']}", str(link.get("ifname", "")))
    return [{"cidr": cidr, "dev": dev} for cidr, dev in sorted(found)][:MAX_ROUTES]


# --- validation -----------------------------------------------------------------------------------


def _check_ifname(name: str, what: str = "interface") -> None:
    if not _IFNAME.fullmatch(name):
        raise ValueError(f"invalid {what} name {name!r} (1-15 of [A-Za-z0-9_.-])")


def _check_bridge(name: str) -> None:
    _check_ifname(name, "bridge")
    if not name.startswith(BRIDGE_PREFIX) or name == BRIDGE_PREFIX:
        raise ValueError(f"bridge {name!r} does not start with {BRIDGE_PREFIX!r}")


def _check_netns(name: str) -> None:
    if not _NETNS.fullmatch(name):
        raise ValueError(f"invalid netns name {name!r}")


def _check_owner(owner: str) -> None:
    if not _OWNER.fullmatch(owner):
        raise ValueError(f"invalid chain owner {owner!r} (1-8 of [a-z0-9])")


def _check_tag(tag: str) -> None:
    if not tag or len(tag) > 255 or not tag.isprintable():
        raise ValueError(f"invalid owner tag {tag!r} (1-255 printable characters)")


def _normal_mac(mac: str) -> str:
    mac = mac.lower()
    if not _MAC.fullmatch(mac) or int(mac[:2], 16) & 1:
        raise ValueError(f"invalid unicast MAC address {mac!r}")
    return mac


@dataclass(frozen=True)
class _Net:
    network: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address


def _parse_spec(spec: NetSpec) -> _Net:
    _check_bridge(spec.bridge)
    _check_tag(spec.tag)
    _check_owner(spec.owner)
    network = ipaddress.IPv4Network(spec.cidr)  # strict: "10.20.0.0/24", not a host address
    if network.prefixlen > 30:
        raise ValueError(f"{spec.cidr}: a tenant network needs at least a /30")
    gateway = ipaddress.IPv4Address(spec.gateway)
    if gateway not in network or gateway in (network.network_address, network.broadcast_address):
        raise ValueError(f"gateway {gateway} is not a host address of {network}")
    _check_state_dir(spec.state_dir)
    return _Net(network, gateway)


def _check_state_dir(state_dir: Path) -> None:
    # network_remove deletes the whole directory: refuse anything that looks like a system path.
    path = Path(state_dir)
    if not path.is_absolute() or len(path.parts) < 3 or ".." in path.parts:
        raise ValueError(f"state_dir {state_dir} must be an absolute path at least two levels deep")


# --- iptables -------------------------------------------------------------------------------------


def _ipt(family: int, table: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run([IPTABLES[family], "-w", XTABLES_WAIT, "-t", table, *args], check=check)


def _dump(family: int, table: str) -> dict[str, list[str]]:
    """{chain: [rule as printed by ``iptables -S`` after ``-A CHAIN``]} of one table."""
    chains: dict[str, list[str]] = {}
    for line in _ipt(family, table, "-S").stdout.splitlines():
        parts = line.split(" ", 2)
        if parts[0] in ("-P", "-N") and len(parts) >= 2:
            chains.setdefault(parts[1], [])
        elif parts[0] == "-A" and len(parts) == 3:
            chains.setdefault(parts[1], []).append(parts[2])
    return chains


class _Batch:
    """Lines for one ``iptables-restore --noflush`` run, which nf_tables commits atomically.

    Declaring an existing chain (``:CHAIN``) in such a batch flushes it, so "declare and refill"
    replaces a chain's rules without a moment where packets see it half-built.
    """

    def __init__(self, family: int, table: str) -> None:
        self.family = family
        self.table = table
        self.declarations: list[str] = []
        self.commands: list[str] = []

    def declare(self, chain: str) -> None:
        self.declarations.append(f":{chain} - [0:0]")

    def add(self, line: str) -> None:
        self.commands.append(line)

    def commit(self) -> None:
        if not self.declarations and not self.commands:
            return
        payload = "\n".join([f"*{self.table}", *self.declarations, *self.commands, "COMMIT", ""])
        _run([IPTABLES_RESTORE[self.family], "-w", XTABLES_WAIT, "--noflush"], input_text=payload)


def _sync_chain(batch: _Batch, dump: dict[str, list[str]], chain: str, rules: list[str]) -> None:
    """Make CHAIN hold exactly RULES (in ``iptables -S`` form); nothing is done if it already does."""
    if dump.get(chain) != rules:
        batch.declare(chain)
        batch.commands.extend(f"-A {chain} {rule}" for rule in rules)


def _ensure_once(batch: _Batch, dump: dict[str, list[str]], chain: str, rule: str) -> None:
    """Exactly one copy of RULE somewhere in CHAIN (for dispatch chains, where order is irrelevant)."""
    count = dump.get(chain, []).count(rule)
    if count == 0:
        batch.add(f"-A {chain} {rule}")
    batch.commands.extend([f"-D {chain} {rule}"] * max(0, count - 1))


def _ensure_first(batch: _Batch, dump: dict[str, list[str]], chain: str, rule: str) -> None:
    """Exactly one copy of RULE, at position 1 of a built-in CHAIN (ahead of libvirt's jumps)."""
    rules = dump.get(chain, [])
    if rules[:1] == [rule] and rules.count(rule) == 1:
        return
    # Delete every copy, then insert at the top, in the same transaction: never absent, never twice.
    batch.commands.extend([f"-D {chain} {rule}"] * rules.count(rule))
    batch.add(f"-I {chain} 1 {rule}")


def _remove_all(batch: _Batch, dump: dict[str, list[str]], chain: str, rule: str) -> None:
    batch.commands.extend([f"-D {chain} {rule}"] * dump.get(chain, []).count(rule))


def _drop_chain(batch: _Batch, dump: dict[str, list[str]], chain: str) -> None:
    if chain in dump:
        batch.add(f"-F {chain}")
        batch.add(f"-X {chain}")


def _ipv6_enabled() -> bool:
    return Path("/proc/sys/net/ipv6").is_dir()


def _base_filter_rules() -> dict[str, list[str]]:
    tenant = f"{BRIDGE_PREFIX}+"
    return {
        CHAIN_INPUT: [
            "-p udp -m udp --sport 68 --dport 67 -j ACCEPT",  # DHCP clients
            # Replies to connections the host itself opened (dnsmasq's ping probe before it offers an
            # address, the agent's health checks); a tenant cannot open anything towards the host.
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-j DROP",
        ],
        CHAIN_FWD: [
            f"-i {tenant} -j {CHAIN_SPOOF}",
            f"-i {tenant} -m physdev --physdev-is-bridged -j {CHAIN_NSG}",
            f"-i {tenant} -m physdev --physdev-is-bridged -j ACCEPT",
            f"-i {tenant} -o {tenant} -j DROP",
            f"-j {CHAIN_NETS}",
            f"-i {tenant} -j DROP",
            f"-o {tenant} -j DROP",
        ],
    }


def _base_ensure() -> None:
    tenant = f"{BRIDGE_PREFIX}+"
    _bridge_nf_ensure()
    dump = _dump(4, "filter")
    batch = _Batch(4, "filter")
    for chain in (CHAIN_SPOOF, CHAIN_NSG, CHAIN_NETS):
        if chain not in dump:  # dispatch chains: created once, their content belongs to other calls
            batch.declare(chain)
    for chain, rules in _base_filter_rules().items():
        _sync_chain(batch, dump, chain, rules)
    _ensure_first(batch, dump, "INPUT", f"-i {tenant} -j {CHAIN_INPUT}")
    _ensure_first(batch, dump, "FORWARD", f"-j {CHAIN_FWD}")
    batch.commit()

    dump = _dump(4, "nat")
    batch = _Batch(4, "nat")
    if CHAIN_POST not in dump:
        batch.declare(CHAIN_POST)
    _ensure_first(batch, dump, "POSTROUTING", f"-j {CHAIN_POST}")
    batch.commit()

    if _ipv6_enabled():
        dump = _dump(6, "filter")
        batch = _Batch(6, "filter")
        _sync_chain(batch, dump, CHAIN_INPUT, ["-j DROP"])
        _sync_chain(batch, dump, CHAIN_FWD, [f"-i {tenant} -j DROP", f"-o {tenant} -j DROP"])
        _ensure_first(batch, dump, "INPUT", f"-i {tenant} -j {CHAIN_INPUT}")
        _ensure_first(batch, dump, "FORWARD", f"-j {CHAIN_FWD}")
        batch.commit()


@_locked
def firewall_base_ensure() -> None:
    """Turn bridge netfilter on, then create the NUBIS-* chains and their jumps at the top of INPUT,
    FORWARD and POSTROUTING (ahead of libvirt's and Docker's).

    Rules are compared with ``iptables -S`` before anything is written, so a second call adds nothing.
    """
    _base_ensure()


@_locked
def bridge_netfilter_ensure() -> None:
    """Make iptables see bridged frames: load ``br_netfilter`` if needed, set bridge-nf-call-ip(6)tables.

    Without it every ``-m physdev`` rule (security groups, anti-spoofing) is skipped in silence, so
    this raises a PlumbingError saying so when the module cannot be loaded or the sysctl not set.
    """
    _bridge_nf_ensure()


@_locked
def firewall_base_remove() -> None:
    """Remove the NUBIS-* base chains and jumps; refuses while any network or port rules remain."""
    tenant = f"{BRIDGE_PREFIX}+"
    dump = _dump(4, "filter")
    nat = _dump(4, "nat")
    busy = [c for c in (CHAIN_SPOOF, CHAIN_NSG, CHAIN_NETS) if dump.get(c)]
    busy += [CHAIN_POST] if nat.get(CHAIN_POST) else []
    busy += [c for c in dump if c.startswith(("NBR-", "NSG-", "NSA-"))]
    if busy:
        raise PlumbingError(f"tenant networks or port rules still present ({', '.join(sorted(busy))})")
    batch = _Batch(4, "filter")
    _remove_all(batch, dump, "INPUT", f"-i {tenant} -j {CHAIN_INPUT}")
    _remove_all(batch, dump, "FORWARD", f"-j {CHAIN_FWD}")
    for chain in (CHAIN_INPUT, CHAIN_FWD, CHAIN_SPOOF, CHAIN_NSG, CHAIN_NETS):
        _drop_chain(batch, dump, chain)
    batch.commit()
    batch = _Batch(4, "nat")
    _remove_all(batch, nat, "POSTROUTING", f"-j {CHAIN_POST}")
    _drop_chain(batch, nat, CHAIN_POST)
    batch.commit()
    if _ipv6_enabled():
        dump = _dump(6, "filter")
        batch = _Batch(6, "filter")
        _remove_all(batch, dump, "INPUT", f"-i {tenant} -j {CHAIN_INPUT}")
        _remove_all(batch, dump, "FORWARD", f"-j {CHAIN_FWD}")
        _drop_chain(batch, dump, CHAIN_INPUT)
        _drop_chain(batch, dump, CHAIN_FWD)
        batch.commit()


def _net_chain(bridge: str, owner: str) -> str:
    return f"NBR-{owner}-{bridge}"


def _names(kind: str, name: str, owner: str) -> tuple[str, str]:
    """KIND's chain ("NSA", "NSG", "NBR") of interface NAME owned by OWNER, and the name older
    versions gave it (KIND-NAME, no owner; the interface name holds part of its instance's or
    network's UUID, so a deployment that owns the interface owns that chain too)."""
    return f"{kind}-{owner}-{name}", f"{kind}-{name}"


def _chains_of(dump: dict[str, list[str]], kind: str, name: str, owner: str) -> list[str]:
    return [chain for chain in _names(kind, name, owner) if chain in dump]


def _owned(dump: dict[str, list[str]], kind: str, owner: str) -> set[str]:
    """Interface names of KIND's chains owned by OWNER."""
    prefix = f"{kind}-{owner}-"
    return {chain.removeprefix(prefix) for chain in dump if chain.startswith(prefix)}


def _network_firewall_ensure(spec: NetSpec, net: _Net) -> None:
    bridge, chain = spec.bridge, _net_chain(spec.bridge, spec.owner)
    dump = _dump(4, "filter")
    batch = _Batch(4, "filter")
    # The chain of this bridge by an older version's name: its jumps and itself go.
    for old in _chains_of(dump, "NBR", bridge, spec.owner):
        if old != chain:
            _remove_all(batch, dump, CHAIN_NETS, f"-i {bridge} -j {old}")
            _remove_all(batch, dump, CHAIN_NETS, f"-o {bridge} -j {old}")
            _drop_chain(batch, dump, old)
    rules = [
        f"-i {bridge} -j {'ACCEPT' if spec.nat else 'DROP'}",
        f"-o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"-o {bridge} -j DROP",
    ]
    _sync_chain(batch, dump, chain, rules)
    _ensure_once(batch, dump, CHAIN_NETS, f"-i {bridge} -j {chain}")
    _ensure_once(batch, dump, CHAIN_NETS, f"-o {bridge} -j {chain}")
    batch.commit()

    # NAT rules carry the bridge's chain name as a comment, so a later call (or network_remove)
    # finds them even if the CIDR they were made for is not known any more.
    cidr = str(net.network)
    wanted = f"-s {cidr} ! -d {cidr} -m comment --comment {chain} -j MASQUERADE"
    dump = _dump(4, "nat")
    batch = _Batch(4, "nat")
    ours = [rule for rule in dump.get(CHAIN_POST, []) if _has_nat_comment(rule, bridge, spec.owner)]
    for rule in ours:
        if rule != wanted:
            batch.add(f"-D {CHAIN_POST} {rule}")
    if spec.nat:
        _ensure_once(batch, {CHAIN_POST: [r for r in ours if r == wanted]}, CHAIN_POST, wanted)
    else:
        _remove_all(batch, dump, CHAIN_POST, wanted)
    batch.commit()


def _has_nat_comment(rule: str, bridge: str, owner: str) -> bool:
    """RULE (of NUBIS-POST) is tagged with the name of OWNER's chain of BRIDGE."""
    names = _names("NBR", bridge, owner)
    return any(a == "--comment" and b in names for a, b in itertools.pairwise(rule.split()))


def _network_firewall_remove(bridge: str, owner: str) -> None:
    dump = _dump(4, "filter")
    batch = _Batch(4, "filter")
    for chain in _chains_of(dump, "NBR", bridge, owner):
        _remove_all(batch, dump, CHAIN_NETS, f"-i {bridge} -j {chain}")
        _remove_all(batch, dump, CHAIN_NETS, f"-o {bridge} -j {chain}")
        _drop_chain(batch, dump, chain)
    batch.commit()
    dump = _dump(4, "nat")
    batch = _Batch(4, "nat")
    for rule in dump.get(CHAIN_POST, []):
        if _has_nat_comment(rule, bridge, owner):
            batch.add(f"-D {CHAIN_POST} {rule}")
    batch.commit()


def network_chains_list(owner: str) -> set[str]:
    """The bridges that have a network chain (NBR-OWNER-bridge) owned by OWNER, bridge or not."""
    _check_owner(owner)
    return _owned(_dump(4, "filter"), "NBR", owner)


# --- dnsmasq --------------------------------------------------------------------------------------


def _pid_file(state_dir: Path) -> Path:
    return Path(state_dir) / "dnsmasq.pid"


def _hosts_file(spec: NetSpec) -> Path:
    return Path(spec.state_dir) / "hosts"


def _leases_file(spec: NetSpec) -> Path:
    return Path(spec.state_dir) / "leases"


def _dhcp_range(net: _Net) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    first = net.network.network_address + 1
    last = net.network.broadcast_address - 1
    if net.gateway < last:
        return net.gateway + 1, last
    return first, last - 1  # the gateway is the last host address


def _dnsmasq_argv(spec: NetSpec, net: _Net) -> list[str]:
    start, end = _dhcp_range(net)
    return [
        DNSMASQ,
        "--conf-file=/dev/null",
        "--no-hosts",
        "--no-resolv",
        f"--interface={spec.bridge}",
        "--bind-interfaces",
        "--except-interface=lo",
        "--port=0",
        f"--dhcp-range={start},{end},{net.network.netmask},{DHCP_LEASE_TIME}",
        f"--dhcp-hostsfile={_hosts_file(spec)}",
        f"--dhcp-leasefile={_leases_file(spec)}",
        f"--pid-file={_pid_file(spec.state_dir)}",
        # Without NAT there is no way out, so no router is offered at all (option 3, empty).
        f"--dhcp-option=option:router,{net.gateway}" if spec.nat else "--dhcp-option=3",
        "--dhcp-authoritative",
    ]


def _process_alive(pid: int) -> bool:
    """Running and not a zombie (PID 1 here may be slow to reap daemons it inherited)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])


def _process_argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def _dnsmasq_processes(bridge: str, state_dir: Path) -> dict[int, list[str]]:
    """Live dnsmasq processes of this network: those using its pid file or serving its bridge."""
    markers = {f"--pid-file={_pid_file(state_dir)}", f"--interface={bridge}"}
    found: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        argv = _process_argv(pid)
        if argv and Path(argv[0]).name == "dnsmasq" and markers & set(argv) and _process_alive(pid):
            found[pid] = argv
    return found


def dnsmasq_pids(bridge: str, state_dir: Path) -> list[int]:
    """The live dnsmasq processes serving BRIDGE or using the pid file in STATE_DIR."""
    return sorted(_dnsmasq_processes(bridge, state_dir))


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _dnsmasq_pid(spec: NetSpec) -> int | None:
    """The pid in the pid file, if that process is alive and really this network's dnsmasq."""
    pid = _read_pid(_pid_file(spec.state_dir))
    if pid is None or not _process_alive(pid):
        return None
    return pid if f"--pid-file={_pid_file(spec.state_dir)}" in _process_argv(pid) else None


def _stop_processes(pids: Sequence[int]) -> None:
    for sig, wait in ((signal.SIGTERM, DNSMASQ_STOP_TIMEOUT), (signal.SIGKILL, 1.0)):
        alive = [pid for pid in pids if _process_alive(pid)]
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(0.02)
            alive = [pid for pid in alive if _process_alive(pid)]
        if not alive:
            return
    raise PlumbingError(f"processes {pids} survived SIGKILL")


def _check_searchable(path: Path) -> None:
    # dnsmasq reads the hosts file after dropping root for "nobody" (also on SIGHUP): a parent with
    # mode 0700 makes it log "Permission denied" to a syslog that may not exist and serve no host.
    for directory in [path, *path.parents]:
        if not directory.stat().st_mode & stat.S_IXOTH:
            raise PlumbingError(
                f"{directory} is not searchable by others; dnsmasq (as nobody) cannot read {path}"
            )


def _state_dir_prepare(spec: NetSpec) -> None:
    state_dir = Path(spec.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o755)
    hosts = _hosts_file(spec)
    if not hosts.exists():
        _write_atomic(hosts, "")
    _check_searchable(state_dir)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _dnsmasq_ensure(spec: NetSpec, net: _Net) -> None:
    argv = _dnsmasq_argv(spec, net)
    processes = _dnsmasq_processes(spec.bridge, spec.state_dir)
    current = _dnsmasq_pid(spec)
    # Keep the running one only if it is the pid file's process and has exactly today's options
    # (a NAT toggle changes the router option); any other match is a leftover that would answer too.
    # (A dnsmasq outliving its bridge follows a re-created one through netlink: no restart needed.)
    keep = current if current is not None and processes.get(current) == argv else None
    _stop_processes([pid for pid in processes if pid != keep])
    if keep is not None:
        return
    _pid_file(spec.state_dir).unlink(missing_ok=True)
    # dnsmasq forks and the parent exits once the daemon is set up, reporting set-up errors on its
    # stderr; the daemon itself moves its stdio to /dev/null. Never a pipe: a daemon holding it would
    # keep the caller waiting. A temporary file catches the parent's stderr.
    with tempfile.TemporaryFile(mode="w+") as errors:
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                timeout=CMD_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise PlumbingError(f"`{shlex.join(argv)}` timed out", cmd=argv) from exc
        errors.seek(0)
        stderr = errors.read()
    if proc.returncode != 0:
        raise PlumbingError(
            f"`{shlex.join(argv)}` failed with exit status {proc.returncode}: {stderr.strip()}",
            cmd=argv,
            returncode=proc.returncode,
            stderr=stderr,
        )
    deadline = time.monotonic() + 2.0
    while _dnsmasq_pid(spec) is None:
        if time.monotonic() > deadline:
            raise PlumbingError(f"dnsmasq for {spec.bridge} did not stay up: {stderr.strip()}", cmd=argv)
        time.sleep(0.02)


# --- bridges --------------------------------------------------------------------------------------


def _bridge_ensure(spec: NetSpec, net: _Net) -> None:
    """Bridge up, STP off, with the owner tag as alias and the gateway as its only address."""
    bridge = spec.bridge
    info = _link(bridge)
    if info is None:
        _ip("link", "add", "name", bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        info = _link(bridge)
        if info is None:
            raise PlumbingError(f"bridge {bridge} vanished right after being created")
    elif _link_kind(info) != "bridge":
        raise PlumbingError(f"{bridge} exists and is not a bridge ({_link_kind(info)})")
    else:
        data = info.get("linkinfo", {}).get("info_data", {})
        if data.get("stp_state") != 0 or data.get("forward_delay") != 0:
            _ip("link", "set", "dev", bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0")
    # IPv4 only: no link-local IPv6 address for tenants to reach the host on; and answer ARP only
    # for the bridge's own address, so instances cannot map out the host's other addresses.
    _sysctl_set(f"net/ipv6/conf/{bridge}/disable_ipv6", "1")
    _sysctl_set(f"net/ipv4/conf/{bridge}/arp_ignore", "1")
    if info.get("ifalias") != spec.tag:
        _ip("link", "set", "dev", bridge, "alias", spec.tag)
    _addresses_set(bridge, f"{net.gateway}/{net.network.prefixlen}")
    if "UP" not in info.get("flags", []):
        _ip("link", "set", "dev", bridge, "up")


@_locked
def network_ensure(spec: NetSpec) -> None:
    """Bring a tenant network to SPEC: firewall first, then the bridge, then its dnsmasq."""
    net = _parse_spec(spec)
    _base_ensure()
    _network_firewall_ensure(spec, net)
    _bridge_ensure(spec, net)
    _state_dir_prepare(spec)
    _dnsmasq_ensure(spec, net)


@_locked
def network_remove(spec: NetSpec) -> None:
    """Stop the network's dnsmasq, delete its bridge, firewall rules and state dir. Idempotent."""
    bridge_remove(spec.bridge, spec.state_dir, spec.owner)


@_locked
def bridge_remove(bridge: str, state_dir: Path, owner: str) -> None:
    """network_remove for a bridge whose network is known only by name (an orphan, say)."""
    _check_bridge(bridge)
    _check_state_dir(state_dir)
    _check_owner(owner)
    _stop_processes(list(_dnsmasq_processes(bridge, state_dir)))
    info = _link(bridge)
    if info is not None:
        if _link_kind(info) != "bridge":
            raise PlumbingError(f"{bridge} exists and is not a bridge ({_link_kind(info)})")
        # The bridge goes before its rules: nothing is ever forwarded without them.
        _ip("link", "del", "dev", bridge)
    _network_firewall_remove(bridge, owner)
    if Path(state_dir).exists():
        shutil.rmtree(state_dir)


def _dhcp_hostname(name: str) -> str:
    """NAME as a DNS label dnsmasq accepts: lower case, runs of other characters as "-", at most 63."""
    return _NOT_HOSTNAME.sub("-", name.lower())[:63].strip("-")


@_locked
def dhcp_hosts_set(spec: NetSpec, hosts: list[tuple[str, str, str]]) -> None:
    """Replace the network's DHCP reservations (mac, ip, hostname) and make dnsmasq reread them.

    Hostnames (e.g. instance names) are reduced to a valid DNS label, or left out if nothing is left.
    """
    net = _parse_spec(spec)
    lines: list[str] = []
    seen_macs: set[str] = set()
    seen_ips: set[ipaddress.IPv4Address] = set()
    for mac, ip, hostname in hosts:
        mac = _normal_mac(mac)
        address = ipaddress.IPv4Address(ip)
        if address not in net.network or address in (
            net.network.network_address,
            net.network.broadcast_address,
            net.gateway,
        ):
            raise ValueError(f"{address} is not a free host address of {net.network}")
        if mac in seen_macs or address in seen_ips:
            raise ValueError(f"duplicate reservation for {mac} / {address}")
        seen_macs.add(mac)
        seen_ips.add(address)
        label = _dhcp_hostname(hostname)
        lines.append(f"{mac},{address},{label}\n" if label else f"{mac},{address}\n")
    Path(spec.state_dir).mkdir(parents=True, exist_ok=True)
    _write_atomic(_hosts_file(spec), "".join(lines))
    pid = _dnsmasq_pid(spec)
    if pid is not None:  # otherwise network_ensure starts dnsmasq, which reads the file then
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGHUP)


def _tagged_links(tag_prefix: str, bridges: bool) -> dict[str, str]:
    found: dict[str, str] = {}
    for link in _ip_json("-d", "link", "show"):
        alias = link.get("ifalias")
        if not isinstance(alias, str) or not alias.startswith(tag_prefix):
            continue
        if (_link_kind(link) == "bridge") == bridges:
            found[str(link["ifname"])] = alias
    return found


def bridges_list(tag_prefix: str) -> dict[str, str]:
    """{bridge: alias} of the bridges whose alias (owner tag) starts with TAG_PREFIX."""
    return _tagged_links(tag_prefix, bridges=True)


def ports_list(tag_prefix: str) -> dict[str, str]:
    """{interface: alias} of the non-bridge links (veth host ends, tagged taps) owned by TAG_PREFIX."""
    return _tagged_links(tag_prefix, bridges=False)


@_locked
def link_alias_set(ifname: str, tag: str) -> None:
    """Tag a link someone else created (e.g. libvirt's tap) so that ports_list finds it."""
    _check_ifname(ifname)
    _check_tag(tag)
    info = _link(ifname)
    if info is None:
        _ip("link", "show", "dev", ifname)  # raises with ip's own "does not exist"
    elif info.get("ifalias") != tag:
        _ip("link", "set", "dev", ifname, "alias", tag)


# --- ports ----------------------------------------------------------------------------------------


def _netns_usable(netns: str) -> bool:
    if not (NETNS_DIR / netns).exists():
        return False
    return _ip("link", "show", "dev", "lo", netns=netns, check=False).returncode == 0


def _veth_paired(host: dict[str, Any] | None, peer: dict[str, Any] | None) -> bool:
    """HOST is a veth whose peer, in another namespace, is PEER."""
    return (
        host is not None
        and peer is not None
        and _link_kind(host) == "veth"
        and _link_kind(peer) == "veth"
        and "link_netnsid" in host
        and host.get("link_index") == peer.get("ifindex")
    )


@_locked
def port_attach_netns(
    netns: str, bridge: str, host_if: str, mac: str, address: str, gateway: str | None, tag: str
) -> None:
    """Put an instance's network namespace NETNS on BRIDGE through a veth pair (HOST_IF <-> eth0).

    The namespace is made with ``ip netns add`` (so runc can join /var/run/netns/NETNS); eth0 gets
    MAC and ADDRESS ("10.20.0.5/24"), lo comes up, and a default route via GATEWAY if given.
    """
    _check_netns(netns)
    _check_bridge(bridge)
    _check_ifname(host_if)
    _check_tag(tag)
    mac = _normal_mac(mac)
    interface = ipaddress.IPv4Interface(address)
    via = ipaddress.IPv4Address(gateway) if gateway is not None else None
    bridge_info = _link(bridge)
    if bridge_info is None:
        _ip("link", "show", "dev", bridge)  # raises with ip's own "does not exist"
    elif _link_kind(bridge_info) != "bridge":
        raise PlumbingError(f"{bridge} is not a bridge ({_link_kind(bridge_info)})")

    if not _netns_usable(netns):
        if (NETNS_DIR / netns).exists():  # left by a crash between creating the file and mounting it
            _ip("netns", "del", netns, check=False)
        _ip("netns", "add", netns)

    host, peer = _link(host_if), _link("eth0", netns=netns)
    if not _veth_paired(host, peer):
        if host is not None:
            if _link_kind(host) != "veth":
                raise PlumbingError(f"{host_if} exists and is not a veth ({_link_kind(host)})")
            _ip("link", "del", "dev", host_if)
        if peer is not None:
            _ip("link", "del", "dev", "eth0", netns=netns)
        # One command makes both ends, the peer already inside the namespace under its final name.
        veth = ["link", "add", "name", host_if, "type", "veth"]
        _ip(*veth, "peer", "name", "eth0", "address", mac, "netns", netns)
        host, peer = _link(host_if), _link("eth0", netns=netns)
    if host is None or peer is None:
        raise PlumbingError(f"veth {host_if} <-> {netns}/eth0 vanished while being set up")

    if str(peer.get("address", "")).lower() != mac:
        _ip("link", "set", "dev", "eth0", "address", mac, netns=netns)
    if host.get("ifalias") != tag:
        _ip("link", "set", "dev", host_if, "alias", tag)
    _sysctl_set(f"net/ipv6/conf/{host_if}/disable_ipv6", "1")
    if host.get("master") != bridge:
        _ip("link", "set", "dev", host_if, "master", bridge)
    if "UP" not in host.get("flags", []):
        _ip("link", "set", "dev", host_if, "up")

    _ip("link", "set", "dev", "lo", "up", netns=netns)
    _addresses_set("eth0", interface.with_prefixlen, netns=netns)
    _ip("link", "set", "dev", "eth0", "up", netns=netns)
    routes = _ip_json("-4", "route", "show", "default", netns=netns)
    if via is not None:
        if [r.get("gateway") for r in routes] != [str(via)]:
            _ip("route", "replace", "default", "via", str(via), "dev", "eth0", netns=netns)
    elif routes:
        _ip("route", "del", "default", netns=netns)


@_locked
def port_detach_netns(netns: str, host_if: str) -> None:
    """Delete the veth pair of HOST_IF and the namespace NETNS. Idempotent."""
    _check_netns(netns)
    _check_ifname(host_if)
    host = _link(host_if)
    if host is not None:
        if _link_kind(host) != "veth":
            raise PlumbingError(f"{host_if} is not a veth ({_link_kind(host)}); not deleting it")
        _ip("link", "del", "dev", host_if)
    netns_remove(netns)


@_locked
def netns_bind(netns: str, pid: int) -> None:
    """Name the network namespace of process PID /var/run/netns/NETNS (replacing a stale one).

    For a namespace someone else made: runc makes a container's inside the container's user
    namespace (one made beforehand with ``ip netns add`` belongs to the host's user namespace,
    and the container could not mount its /sys). Idempotent.
    """
    _check_netns(netns)
    try:
        current = os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError as exc:
        raise PlumbingError(f"netns {netns}: no process {pid}: {exc.strerror}") from None
    target = NETNS_DIR / netns
    if target.exists():
        if target.stat().st_ino == current:
            return
        _ip("netns", "del", netns, check=False)
    _ip("netns", "attach", netns, str(pid))


@_locked
def netns_remove(netns: str) -> None:
    """Drop the name /var/run/netns/NETNS (the namespace goes once nothing else holds it)."""
    _check_netns(netns)
    if (NETNS_DIR / netns).exists():
        _ip("netns", "del", netns)


def _nsg_rule(rule: Rule) -> str:
    """One security-group rule in the form ``iptables -S`` prints it back."""
    if rule.protocol not in _PROTOCOLS:
        raise ValueError(f"unknown protocol {rule.protocol!r}")
    source = ipaddress.IPv4Network(rule.cidr, strict=False)
    parts = [f"-s {source}"] if source.prefixlen else []
    has_ports = rule.port_min is not None or rule.port_max is not None
    if rule.protocol in ("tcp", "udp"):
        parts.append(f"-p {rule.protocol}")
        if has_ports:
            if rule.port_min is None:
                raise ValueError(f"{rule}: port_max without port_min")
            high = rule.port_min if rule.port_max is None else rule.port_max
            if not 1 <= rule.port_min <= high <= 65535:
                raise ValueError(f"{rule}: bad port range")
            dport = str(rule.port_min) if high == rule.port_min else f"{rule.port_min}:{high}"
            parts.append(f"-m {rule.protocol} --dport {dport}")
    elif has_ports:
        raise ValueError(f"{rule}: ports only apply to tcp and udp")
    elif rule.protocol == "icmp":
        parts.append("-p icmp")
    return " ".join([*parts, "-j ACCEPT"])


def _port_rules_drop(batch: _Batch, dump: dict[str, list[str]], port: str, owner: str, legacy: bool) -> None:
    """Add to BATCH the removal of OWNER's chains of PORT and their jumps (LEGACY: only those
    of the name older versions gave them)."""
    for kind, dispatch, direction in (("NSA", CHAIN_SPOOF, "in"), ("NSG", CHAIN_NSG, "out")):
        for chain in _chains_of(dump, kind, port, owner):
            if not legacy or chain == f"{kind}-{port}":
                _remove_all(batch, dump, dispatch, f"-m physdev --physdev-{direction} {port} -j {chain}")
                _drop_chain(batch, dump, chain)


@_locked
def port_rules_set(port: str, ip: str, rules: list[Rule], owner: str) -> None:
    """Give PORT (veth host end or tap) its security group and bind it to source address IP.

    Chains NSA-OWNER-PORT (anti-spoofing) and NSG-OWNER-PORT (inbound rules) are flushed and
    refilled in one iptables-restore transaction, with their dispatch jumps, so packets see either
    the old rules or the new ones, never a half-built chain. Nothing is written when the rules are
    already in place. OWNER is the deployment's id, so that it finds its chains again.
    """
    _check_ifname(port, "port")
    _check_owner(owner)
    nsa, nsg_chain = f"NSA-{owner}-{port}", f"NSG-{owner}-{port}"
    own = ipaddress.IPv4Address(ip)
    nsg = ["-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", *(_nsg_rule(r) for r in rules), "-j DROP"]
    spoof = [
        "-p udp -m udp --sport 67 -j DROP",  # an instance never answers as a DHCP server
        f"-s {own}/32 -j RETURN",
        "-s 0.0.0.0/32 -d 255.255.255.255/32 -p udp -m udp --sport 68 --dport 67 -j RETURN",
        "-j DROP",
    ]
    _base_ensure()
    dump = _dump(4, "filter")
    batch = _Batch(4, "filter")
    _port_rules_drop(batch, dump, port, owner, legacy=True)
    _sync_chain(batch, dump, nsa, spoof)
    _sync_chain(batch, dump, nsg_chain, nsg)
    _ensure_once(batch, dump, CHAIN_SPOOF, f"-m physdev --physdev-in {port} -j {nsa}")
    _ensure_once(batch, dump, CHAIN_NSG, f"-m physdev --physdev-out {port} -j {nsg_chain}")
    batch.commit()


@_locked
def port_rules_remove(port: str, owner: str) -> None:
    """Remove OWNER's security group and anti-spoofing chains of PORT and their jumps. Idempotent."""
    _check_ifname(port, "port")
    _check_owner(owner)
    dump = _dump(4, "filter")
    batch = _Batch(4, "filter")
    _port_rules_drop(batch, dump, port, owner, legacy=False)
    batch.commit()


def port_chains_list(owner: str) -> set[str]:
    """The ports (interfaces, present or not) that have NSA-OWNER-/NSG-OWNER- chains."""
    _check_owner(owner)
    dump = _dump(4, "filter")
    return _owned(dump, "NSA", owner) | _owned(dump, "NSG", owner)


def legacy_port_chains_list() -> set[str]:
    """The ports that have chains named as older versions did (NSA-PORT, NSG-PORT: no owner).

    Whose they are is known only to the deployment whose instance had that port; see
    port_rules_remove, which removes them with the owner's.
    """
    found = set()
    for chain in _dump(4, "filter"):
        kind, _, name = chain.partition("-")
        if kind in ("NSA", "NSG") and "-" not in name and _IFNAME.fullmatch(name):
            found.add(name)
    return found


def port_counters(ifname: str) -> tuple[int, int]:
    """(rx_bytes, tx_bytes) of a host-side interface: rx is what the instance sent, tx what it got."""
    _check_ifname(ifname)
    base = Path("/sys/class/net") / ifname / "statistics"
    try:
        return int((base / "rx_bytes").read_text()), int((base / "tx_bytes").read_text())
    except OSError as exc:
        raise PlumbingError(f"no counters for {ifname}: {exc}") from exc
