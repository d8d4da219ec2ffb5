"""Host commands of the network driver: one mutation at a time per host (threads and processes),
``ip`` (in the root namespace or a named one) and /proc/sys, each failure a PlumbingError with the
command's own stderr.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import shlex
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from compute.drivers.network.spec import PlumbingError

IP = "ip"
LOCK_PATH = Path("/run/lock/nubis-network.lock")
CMD_TIMEOUT = 30.0
_P = ParamSpec("_P")
_R = TypeVar("_R")


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


def host_lock() -> contextlib.AbstractContextManager[None]:
    """Hold the host's network lock across several calls (a check of the database and what it
    decides): the driver's own calls inside it take it again without waiting."""
    return _host_lock.held()


def locked(function: Callable[_P, _R]) -> Callable[_P, _R]:
    # iptables batches are computed from a dump of the current rules, so two concurrent callers would
    # otherwise both add the same missing rule.
    @functools.wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with _host_lock.held():
            return function(*args, **kwargs)

    return wrapper


def run(
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


def run_ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    prefix = [IP, "-n", netns] if netns else [IP]
    return run([*prefix, *args], check=check)


def ip_json(*args: str, netns: str | None = None) -> list[dict[str, Any]]:
    out = run_ip("-j", *args, netns=netns).stdout
    data = json.loads(out) if out.strip() else []
    return data if isinstance(data, list) else []


def link_info(name: str, netns: str | None = None) -> dict[str, Any] | None:
    """`ip -d link show` of one link, or None if it does not exist."""
    argv = [IP, *(["-n", netns] if netns else []), "-j", "-d", "link", "show", "dev", name]
    proc = run(argv, check=False)
    if proc.returncode != 0:
        if "does not exist" in proc.stderr:
            return None
        raise _command_error(argv, proc)
    data = json.loads(proc.stdout or "[]")
    return data[0] if data else None


def link_kind(info: dict[str, Any]) -> str | None:
    kind = info.get("linkinfo", {}).get("info_kind")
    return str(kind) if kind else None


def link_addresses(name: str, netns: str | None = None) -> list[str]:
    """The IPv4 addresses of a link as ``address/prefixlen``."""
    found: list[str] = []
    for link in ip_json("-4", "addr", "show", "dev", name, netns=netns):
        for addr in link.get("addr_info", []):
            if addr.get("family") == "inet":
                found.append(f"{addr['local']}/{addr['prefixlen']}")
    return found


def addresses_set(name: str, wanted: str, netns: str | None = None) -> None:
    """Make WANTED ("a.b.c.d/len") the only IPv4 address of a link."""
    # Stale addresses go first: deleting a primary address also deletes the secondaries of its
    # subnet, which would take a freshly added WANTED with it.
    for address in link_addresses(name, netns=netns):
        if address != wanted:
            run_ip("addr", "del", address, "dev", name, netns=netns)
    if wanted not in link_addresses(name, netns=netns):
        run_ip("addr", "replace", wanted, "dev", name, netns=netns)


def sysctl_set(key: str, value: str) -> None:
    """Write /proc/sys/KEY (slashes) unless it already holds VALUE; a missing key is left alone."""
    path = Path("/proc/sys") / key
    try:
        if path.read_text().strip() != value:
            path.write_text(value)
    except FileNotFoundError:
        return  # e.g. the kernel has no IPv6
    except OSError as exc:
        raise PlumbingError(f"cannot set {path} to {value}: {exc}") from exc
