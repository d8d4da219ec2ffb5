"""Processes and namespaces seen from the root namespace: commands, pids, PID namespaces, setns."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from compute.lab.spec import LabError

CLONE_NEWNET = 0x40000000


def run(cmd: Sequence[str], *, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command; a failure (with ``check``) is a LabError naming it and its stderr."""
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{' '.join(cmd)}: {exc}") from None
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {done.stderr.strip() or f'exit code {done.returncode}'}")
    return done


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int | None) -> bool:
    """The process exists and is not a zombie."""
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def pidns(pid: int) -> str | None:
    """The PID namespace of ``pid`` ("pid:[4026532...]"), or None when it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def children(pid: int) -> list[int]:
    """The direct children of ``pid``."""
    tasks = list(Path(f"/proc/{pid}/task").glob("*"))
    if tasks and (tasks[0] / "children").exists():
        found: list[int] = []
        for task in tasks:
            try:
                found += [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
        return found
    return [p for p in all_pids() if _ppid(p) == pid]  # a kernel without CONFIG_PROC_CHILDREN


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def members(namespace: str) -> list[int]:
    """Every live process whose PID namespace is ``namespace`` (not the nested ones: see in_tree)."""
    return [pid for pid in all_pids() if pidns(pid) == namespace and alive(pid)]


NS_GET_PARENT = 0xB702  # _IO(0xb7, 0x2): the parent of a PID namespace


def _inode(namespace: str) -> int:
    return int(namespace.split("[", 1)[1].rstrip("]"))


def in_tree(pid: int, namespace: str) -> bool:
    """``pid`` lives in PID namespace ``namespace`` or in one nested in it (a container's)."""
    own = pidns(pid)
    if own is None:
        return False
    if own == namespace:
        return True
    want = _inode(namespace)
    try:
        fd = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY)
    except OSError:
        return False
    try:
        while True:
            try:
                parent = fcntl.ioctl(fd, NS_GET_PARENT)
            except OSError:  # the top, or a namespace we may not see
                return False
            os.close(fd)
            fd = parent
            if os.fstat(fd).st_ino == want:
                return True
    finally:
        os.close(fd)


def tree_members(namespace: str) -> list[int]:
    """Every live process in ``namespace`` or a namespace nested in it: what dies with its init."""
    return [pid for pid in all_pids() if in_tree(pid, namespace) and alive(pid)]


def wait_child(parent: int, timeout: float, what: str) -> int:
    """The first child of ``parent`` (a fork that unshare or nsenter makes), once it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = children(parent)
        if found:
            return found[0]
        if not alive(parent):
            break
        time.sleep(0.02)
    raise LabError(f"{what}: no process started")


def kill(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_gone(check: Iterable[int], timeout: float) -> bool:
    """Wait until none of ``check`` is alive; True if they all went within ``timeout``."""
    pids = list(check)
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop(pids: Sequence[int], grace: float) -> bool:
    """SIGTERM ``pids``, and SIGKILL what is left after ``grace`` seconds; True if all went gently."""
    kill(pids, signal.SIGTERM)
    if wait_gone(pids, grace):
        return True
    kill(pids, signal.SIGKILL)
    wait_gone(pids, 10)
    return False


_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int, nstype: int) -> None:
    """setns(2) for the calling thread (Python 3.11 has no os.setns)."""
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")
