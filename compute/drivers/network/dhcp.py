"""DHCP of tenant networks: one dnsmasq per bridge (no DNS), its state directory and its reservations."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shlex
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from compute.drivers.network.shell import CMD_TIMEOUT, locked
from compute.drivers.network.spec import NetSpec, PlumbingError, Subnet, normal_mac, parse_spec

DNSMASQ = "/usr/sbin/dnsmasq"
DNSMASQ_STOP_TIMEOUT = 3.0
DHCP_LEASE_TIME = "12h"
_NOT_HOSTNAME = re.compile(r"[^a-z0-9-]+")


def _pid_file(state_dir: Path) -> Path:
    return Path(state_dir) / "dnsmasq.pid"


def _hosts_file(spec: NetSpec) -> Path:
    return Path(spec.state_dir) / "hosts"


def _leases_file(spec: NetSpec) -> Path:
    return Path(spec.state_dir) / "leases"


def _dhcp_range(net: Subnet) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    first = net.network.network_address + 1
    last = net.network.broadcast_address - 1
    if net.gateway < last:
        return net.gateway + 1, last
    return first, last - 1  # the gateway is the last host address


def _dnsmasq_argv(spec: NetSpec, net: Subnet) -> list[str]:
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
        # The gateway is always the router, as in other clouds: a floating address or port forward
        # given to a running VM must work at once, not at its next lease renewal. Without NAT
        # egress the host's firewall keeps the network in (NUBIS-FWD), whatever the guest's routes.
        f"--dhcp-option=option:router,{net.gateway}",
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


def _netns_of(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def dnsmasq_processes(bridge: str, state_dir: Path) -> dict[int, list[str]]:
    """Live dnsmasq processes of this network: those using its pid file or serving its bridge, in
    this network namespace (another namespace's bridge of that name is another host's)."""
    markers = {f"--pid-file={_pid_file(state_dir)}", f"--interface={bridge}"}
    here = _netns_of("self")
    found: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        argv = _process_argv(pid)
        if (
            argv
            and Path(argv[0]).name == "dnsmasq"
            and markers & set(argv)
            and _process_alive(pid)
            and _netns_of(pid) == here
        ):
            found[pid] = argv
    return found


def dnsmasq_pids(bridge: str, state_dir: Path) -> list[int]:
    """The live dnsmasq processes serving BRIDGE or using the pid file in STATE_DIR."""
    return sorted(dnsmasq_processes(bridge, state_dir))


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


def stop_processes(pids: Sequence[int]) -> None:
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


def state_dir_prepare(spec: NetSpec) -> None:
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


def dnsmasq_ensure(spec: NetSpec, net: Subnet) -> None:
    argv = _dnsmasq_argv(spec, net)
    processes = dnsmasq_processes(spec.bridge, spec.state_dir)
    current = _dnsmasq_pid(spec)
    # Keep the running one only if it is the pid file's process and has exactly today's options
    # (a NAT toggle changes the router option); any other match is a leftover that would answer too.
    # (A dnsmasq outliving its bridge follows a re-created one through netlink: no restart needed.)
    keep = current if current is not None and processes.get(current) == argv else None
    stop_processes([pid for pid in processes if pid != keep])
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


def _dhcp_hostname(name: str) -> str:
    """NAME as a DNS label dnsmasq accepts: lower case, runs of other characters as "-", at most 63."""
    return _NOT_HOSTNAME.sub("-", name.lower())[:63].strip("-")


@locked
def dhcp_hosts_set(spec: NetSpec, hosts: list[tuple[str, str, str]]) -> None:
    """Replace the network's DHCP reservations (mac, ip, hostname) and make dnsmasq reread them.

    Hostnames (e.g. instance names) are reduced to a valid DNS label, or left out if nothing is left.
    """
    net = parse_spec(spec)
    lines: list[str] = []
    seen_macs: set[str] = set()
    seen_ips: set[ipaddress.IPv4Address] = set()
    for mac, ip, hostname in hosts:
        mac = normal_mac(mac)
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
