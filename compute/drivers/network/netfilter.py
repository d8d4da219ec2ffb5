"""Tenant networks' iptables: bridge netfilter, the NUBIS-* base chains, one chain per network, and
the anti-spoofing and security-group chains of each port.

The iptables layout (``iptables -S`` names):

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
  NUBIS-NETS    first ``-j NUBIS-FIP`` (floating addresses and port forwards: floating.py), then
                ``-i BR -j NBR-OWNER-BR`` and ``-o BR -j NBR-OWNER-BR`` per network (NBR: egress ACCEPT
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

import ipaddress
import itertools
import subprocess
from pathlib import Path

from compute.drivers.network.overlay import underlay_network
from compute.drivers.network.shell import locked, run
from compute.drivers.network.spec import (
    BRIDGE_PREFIX,
    IFNAME,
    NetSpec,
    PlumbingError,
    Rule,
    Subnet,
    check_ifname,
    check_owner,
)

IPTABLES = {4: "iptables", 6: "ip6tables"}
IPTABLES_RESTORE = {4: "iptables-restore", 6: "ip6tables-restore"}
XTABLES_WAIT = "10"  # seconds iptables waits for the xtables lock (-w)
CHAIN_INPUT = "NUBIS-INPUT"
CHAIN_FWD = "NUBIS-FWD"
CHAIN_SPOOF = "NUBIS-SPOOF"
CHAIN_NSG = "NUBIS-NSG"
CHAIN_NETS = "NUBIS-NETS"
CHAIN_POST = "NUBIS-POST"
# Floating addresses and port forwards (compute.drivers.network.floating): their dispatch chains.
CHAIN_FIP = "NUBIS-FIP"
CHAIN_FPRE = "NUBIS-FPRE"
CHAIN_FPOST = "NUBIS-FPOST"
# Bridged frames reach iptables (and so the per-port rules) only while these are 1.
BRIDGE_NF_DIR = Path("/proc/sys/net/bridge")
BRIDGE_NF_KEYS = ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables")
MODPROBE = "modprobe"
_PROTOCOLS = ("tcp", "udp", "icmp", "any")


def _bridge_nf_ensure() -> None:
    """Bridge netfilter on (see bridge_netfilter_ensure); a PlumbingError when it cannot be."""
    why = (
        "the security groups and anti-spoofing rules of tenant networks would not see bridged "
        "traffic and would fail open; refusing to run tenant networks"
    )
    if not (BRIDGE_NF_DIR / BRIDGE_NF_KEYS[0]).exists():
        # A stock Debian kernel has br_netfilter as a module that nothing loads.
        try:
            proc = run([MODPROBE, "br_netfilter"], check=False)
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


def _ipt(family: int, table: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([IPTABLES[family], "-w", XTABLES_WAIT, "-t", table, *args], check=check)


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
        run([IPTABLES_RESTORE[self.family], "-w", XTABLES_WAIT, "--noflush"], input_text=payload)


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


def base_ensure() -> None:
    tenant = f"{BRIDGE_PREFIX}+"
    _bridge_nf_ensure()
    dump = _dump(4, "filter")
    batch = _Batch(4, "filter")
    for chain in (CHAIN_SPOOF, CHAIN_NSG, CHAIN_FIP, CHAIN_NETS):
        if chain not in dump:  # dispatch chains: created once, their content belongs to other calls
            batch.declare(chain)
    for chain, rules in _base_filter_rules().items():
        _sync_chain(batch, dump, chain, rules)
    _ensure_first(batch, dump, "INPUT", f"-i {tenant} -j {CHAIN_INPUT}")
    _ensure_first(batch, dump, "FORWARD", f"-j {CHAIN_FWD}")
    # First in NUBIS-NETS, ahead of the networks' chains (which drop what comes in new), rather than
    # in NUBIS-FWD: every deployment on the host rewrites NUBIS-FWD to its own version's rules.
    _ensure_first(batch, dump, CHAIN_NETS, f"-j {CHAIN_FIP}")
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


@locked
def firewall_base_ensure() -> None:
    """Turn bridge netfilter on, then create the NUBIS-* chains and their jumps at the top of INPUT,
    FORWARD and POSTROUTING (ahead of libvirt's and Docker's).

    Rules are compared with ``iptables -S`` before anything is written, so a second call adds nothing.
    """
    base_ensure()


@locked
def bridge_netfilter_ensure() -> None:
    """Make iptables see bridged frames: load ``br_netfilter`` if needed, set bridge-nf-call-ip(6)tables.

    Without it every ``-m physdev`` rule (security groups, anti-spoofing) is skipped in silence, so
    this raises a PlumbingError saying so when the module cannot be loaded or the sysctl not set.
    """
    _bridge_nf_ensure()


@locked
def firewall_base_remove() -> None:
    """Remove the NUBIS-* base chains and jumps; refuses while any network or port rules remain."""
    tenant = f"{BRIDGE_PREFIX}+"
    dump = _dump(4, "filter")
    nat = _dump(4, "nat")
    busy = [c for c in (CHAIN_SPOOF, CHAIN_NSG, CHAIN_FIP) if dump.get(c)]
    busy += [CHAIN_NETS] if [r for r in dump.get(CHAIN_NETS, []) if r != f"-j {CHAIN_FIP}"] else []
    busy += [CHAIN_POST] if [r for r in nat.get(CHAIN_POST, []) if r != f"-j {CHAIN_FPOST}"] else []
    busy += [c for c in (CHAIN_FPRE, CHAIN_FPOST) if nat.get(c)]
    busy += [c for c in dump if c.startswith(("NBR-", "NSG-", "NSA-", "NFF-"))]
    busy += [c for c in nat if c.startswith(("NFD-", "NFS-"))]
    if busy:
        raise PlumbingError(f"tenant networks or port rules still present ({', '.join(sorted(busy))})")
    batch = _Batch(4, "filter")
    _remove_all(batch, dump, "INPUT", f"-i {tenant} -j {CHAIN_INPUT}")
    _remove_all(batch, dump, "FORWARD", f"-j {CHAIN_FWD}")
    for chain in (CHAIN_INPUT, CHAIN_FWD, CHAIN_SPOOF, CHAIN_NSG, CHAIN_NETS, CHAIN_FIP):
        _drop_chain(batch, dump, chain)
    batch.commit()
    batch = _Batch(4, "nat")
    _remove_all(batch, nat, "POSTROUTING", f"-j {CHAIN_POST}")
    _remove_all(batch, nat, "PREROUTING", f"-j {CHAIN_FPRE}")
    _drop_chain(batch, nat, CHAIN_POST)
    _drop_chain(batch, nat, CHAIN_FPRE)
    _drop_chain(batch, nat, CHAIN_FPOST)
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


def network_firewall_ensure(spec: NetSpec, net: Subnet) -> None:
    bridge, chain = spec.bridge, _net_chain(spec.bridge, spec.owner)
    dump = _dump(4, "filter")
    batch = _Batch(4, "filter")
    # The chain of this bridge by an older version's name: its jumps and itself go.
    for old in _chains_of(dump, "NBR", bridge, spec.owner):
        if old != chain:
            _remove_all(batch, dump, CHAIN_NETS, f"-i {bridge} -j {old}")
            _remove_all(batch, dump, CHAIN_NETS, f"-o {bridge} -j {old}")
            _drop_chain(batch, dump, old)
    # A tenant never reaches the hosts' own network (the tunnels' underlay, libvirt, migrations),
    # NAT egress or not.
    underlay = [f"-d {underlay_network(spec.overlay.local)} -i {bridge} -j DROP"] if spec.overlay else []
    rules = [
        *underlay,
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


def network_firewall_remove(bridge: str, owner: str) -> None:
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
    check_owner(owner)
    return _owned(_dump(4, "filter"), "NBR", owner)


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


@locked
def port_rules_set(port: str, ip: str, rules: list[Rule], owner: str) -> None:
    """Give PORT (veth host end or tap) its security group and bind it to source address IP.

    Chains NSA-OWNER-PORT (anti-spoofing) and NSG-OWNER-PORT (inbound rules) are flushed and
    refilled in one iptables-restore transaction, with their dispatch jumps, so packets see either
    the old rules or the new ones, never a half-built chain. Nothing is written when the rules are
    already in place. OWNER is the deployment's id, so that it finds its chains again.
    """
    check_ifname(port, "port")
    check_owner(owner)
    nsa, nsg_chain = f"NSA-{owner}-{port}", f"NSG-{owner}-{port}"
    own = ipaddress.IPv4Address(ip)
    nsg = ["-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", *(_nsg_rule(r) for r in rules), "-j DROP"]
    spoof = [
        "-p udp -m udp --sport 67 -j DROP",  # an instance never answers as a DHCP server
        f"-s {own}/32 -j RETURN",
        "-s 0.0.0.0/32 -d 255.255.255.255/32 -p udp -m udp --sport 68 --dport 67 -j RETURN",
        "-j DROP",
    ]
    base_ensure()
    dump = _dump(4, "filter")
    batch = _Batch(4, "filter")
    _port_rules_drop(batch, dump, port, owner, legacy=True)
    _sync_chain(batch, dump, nsa, spoof)
    _sync_chain(batch, dump, nsg_chain, nsg)
    _ensure_once(batch, dump, CHAIN_SPOOF, f"-m physdev --physdev-in {port} -j {nsa}")
    _ensure_once(batch, dump, CHAIN_NSG, f"-m physdev --physdev-out {port} -j {nsg_chain}")
    batch.commit()


@locked
def port_rules_remove(port: str, owner: str) -> None:
    """Remove OWNER's security group and anti-spoofing chains of PORT and their jumps. Idempotent."""
    check_ifname(port, "port")
    check_owner(owner)
    dump = _dump(4, "filter")
    batch = _Batch(4, "filter")
    _port_rules_drop(batch, dump, port, owner, legacy=False)
    batch.commit()


def port_chains_list(owner: str) -> set[str]:
    """The ports (interfaces, present or not) that have NSA-OWNER-/NSG-OWNER- chains."""
    check_owner(owner)
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
        if kind in ("NSA", "NSG") and "-" not in name and IFNAME.fullmatch(name):
            found.add(name)
    return found
