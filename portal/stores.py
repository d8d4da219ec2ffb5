"""Where the stores that guests read live: images, instance disks, containers' unpacked roots.

QEMU runs as libvirt-qemu, and a container's root is an unprivileged uid of its tenant's mapped
range: both must be able to enter every directory from / down to a store. A checkout in a private
directory (/root is mode 0700, and so is a ``mktemp -d``) keeps them out of its own ``var/``, so
the default stores of such a checkout go to /var/lib/nubis/<checkout>-<hash>/ instead, with a
symlink left in ``var/`` that records the choice (later starts follow it, whatever the modes
then). Read by portal.settings, before Django is set up; checked by the ``stores`` preflight.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import re
import stat
from dataclasses import dataclass
from pathlib import Path

SYSTEM_STORES = Path("/var/lib/nubis")
QEMU_USER = "libvirt-qemu"  # Debian's libvirt runs QEMU as this user
# compute.services.containers.UID_BASE: root of a tenant's containers is this uid or one above it.
CONTAINER_UID_BASE = 200_000


@dataclass(frozen=True)
class GuestUser:
    """A user a store must be reachable by: QEMU's, or the containers' mapped root."""

    label: str
    uid: int
    gids: frozenset[int]


def guest_users(qemu: bool = True, containers: bool = True) -> list[GuestUser]:
    """libvirt-qemu (when this machine has it) and the containers' mapped root.

    The mapped uids belong to no group and own none of the directories above a store, so what
    holds for the first of them holds for all.
    """
    users = []
    if qemu:
        try:
            entry = pwd.getpwnam(QEMU_USER)
        except KeyError:
            pass
        else:
            gids = frozenset(os.getgrouplist(QEMU_USER, entry.pw_gid))
            users.append(GuestUser(f"{QEMU_USER} (uid {entry.pw_uid})", entry.pw_uid, gids))
    if containers:
        users.append(
            GuestUser(
                f"the containers' root (uid {CONTAINER_UID_BASE} and up)",
                CONTAINER_UID_BASE,
                frozenset({CONTAINER_UID_BASE}),
            )
        )
    return users


def blocked_at(path: Path, user: GuestUser) -> Path | None:
    """The first directory from / down to ``path`` that ``user`` may not enter, or None.

    Reads the mode bits (owner, group, others) of each directory of the resolved path; a
    directory not made yet is made later below one the user could enter. POSIX ACLs are not read.
    """
    real = path.resolve()
    for directory in (*reversed(real.parents), real):
        try:
            st = directory.stat()
        except FileNotFoundError:
            return None
        if st.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif st.st_gid in user.gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return directory
    return None


def unreachable(path: Path, users: list[GuestUser]) -> tuple[GuestUser, Path] | None:
    """The first of ``users`` who cannot reach ``path``, with the directory in the way; or None."""
    for user in users:
        blocker = blocked_at(path, user)
        if blocker is not None:
            return user, blocker
    return None


def describe(directory: Path) -> str:
    """``/root is mode 0700 (root:root)``."""
    st = directory.stat()
    owner = f"{_name(pwd.getpwuid, st.st_uid)}:{_name(grp.getgrgid, st.st_gid)}"
    return f"{directory} is mode {stat.S_IMODE(st.st_mode):04o} ({owner})"


def _name(lookup: object, ident: int) -> str:
    try:
        return str(lookup(ident)[0])  # type: ignore[operator]
    except KeyError:
        return str(ident)


def system_home(data_dir: Path) -> Path:
    """/var/lib/nubis/<checkout>-<hash of its data dir>: one per checkout, never shared."""
    real = data_dir.resolve()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", real.parent.name).strip(".-") or "nubis"
    return SYSTEM_STORES / f"{name}-{hashlib.sha256(str(real).encode()).hexdigest()[:8]}"


def default_store(data_dir: Path, checkout_var: Path, name: str) -> Path:
    """The default directory of store ``name`` (``images``, ``instances``): ``<data dir>/<name>``.

    When ``data_dir`` is the checkout's own ``var/`` and guests cannot reach it, the store is
    /var/lib/nubis/<checkout>-<hash>/<name> instead, and ``var/<name>`` a symlink to it. A data
    directory chosen by NUBIS_DATA_DIR is left as it is: the stores preflight reports it.
    """
    local = data_dir / name
    if local.is_symlink():
        return local.resolve()  # chosen at an earlier start
    if data_dir.resolve() != checkout_var.resolve() or unreachable(data_dir, guest_users()) is None:
        return local
    target = system_home(data_dir) / name
    try:
        for directory in (SYSTEM_STORES, target.parent, target):
            if not directory.is_dir():
                directory.mkdir(exist_ok=True)
                directory.chmod(0o755)  # whatever the umask: guests must enter it
        if not local.exists():
            # Another process starting at the same time may have made it.
            with contextlib.suppress(FileExistsError):
                local.symlink_to(target, target_is_directory=True)
    except PermissionError:
        return local  # not root: the stores preflight says what to do
    return target
