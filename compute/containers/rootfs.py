"""Build a minimal busybox root filesystem, pack it into a tarball and check it against its manifest."""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")
DIRECTORIES = ("bin", "sbin", "proc", "sys", "dev", "tmp", "run", "etc", "root", "mnt")
# Bumped whenever the tree below changes, so a cached build of an older recipe is rebuilt.
RECIPE = 2
INIT = "/sbin/nubis-init"
# PID 1 of a Nubis container: says it is ready (the logs show it), exits on SIGTERM (a PID 1
# without a handler ignores it), and reaps children while it waits.
INIT_SCRIPT = """#!/bin/sh
trap 'echo "nubis: container stopping"; exit 0' TERM INT
echo "nubis: container ready ($(hostname))"
while :; do
    sleep 3600 &
    wait $!
done
"""


class RootfsError(RuntimeError):
    """A root filesystem could not be built, or a tarball does not match its manifest."""


def _applets(busybox: Path) -> list[str]:
    """The applet names this busybox binary provides, as `busybox --list` prints them."""
    try:
        out = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RootfsError(f"{busybox} --list: {exc}") from None
    # Names with a slash could escape bin/; busybox never prints them, but the list is input.
    return [name for name in out.split() if name and "/" not in name and name != "busybox"]


def build_busybox_rootfs(dest: Path, busybox: Path = BUSYBOX) -> Path:
    """Make ``dest`` a root filesystem: static busybox, its applet links and the usual mount points."""
    dest.mkdir(mode=0o755, parents=True, exist_ok=True)
    for name in DIRECTORIES:
        (dest / name).mkdir(mode=0o755, exist_ok=True)
    # /tmp is world-writable with the sticky bit, like on any Linux.
    (dest / "tmp").chmod(0o1777)
    (dest / "root").chmod(0o700)
    target = dest / "bin" / "busybox"
    shutil.copy2(busybox, target)
    target.chmod(0o755)
    for applet in _applets(busybox):
        link = dest / "bin" / applet
        if not link.is_symlink() and not link.exists():
            link.symlink_to("busybox")
    etc = dest / "etc"
    (etc / "hostname").write_text("nubis\n")
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    (etc / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    init = dest / INIT.lstrip("/")
    init.write_text(INIT_SCRIPT)
    init.chmod(0o755)
    return dest


DEBOOTSTRAP = Path("/usr/sbin/debootstrap")
DEBIAN_SUITE = "bookworm"


def apt_mirror() -> str:
    """The Debian mirror this machine's apt already uses (none is written into the project)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split()
            # one-line format ("deb URL suite ...") and deb822 ("URIs: URL")
            candidates = words[1:2] if words[:1] == ["deb"] else words[1:] if words[:1] == ["URIs:"] else []
            for url in candidates:
                if url.rstrip("/").endswith("/debian"):
                    return url
    raise RootfsError("no Debian mirror in /etc/apt/sources.list*: debootstrap needs one")


def build_debian_rootfs(dest: Path, suite: str = DEBIAN_SUITE, log: Any = print) -> Path:
    """A minimal Debian (debootstrap --variant=minbase) with the Nubis init, at ``dest``."""
    if not DEBOOTSTRAP.exists():
        raise RootfsError(f"{DEBOOTSTRAP} is not installed (apt-get install debootstrap)")
    mirror = apt_mirror()
    log(f"debootstrap {suite} from {mirror} (a few minutes the first time)")
    proc = subprocess.run(
        [str(DEBOOTSTRAP), "--variant=minbase", suite, str(dest), mirror],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RootfsError(f"debootstrap failed: {' '.join(tail)}")
    # What a container gets from the host and its runtime is not part of the image.
    for transient in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (dest / transient).glob("*"):
            if entry.is_file():
                entry.unlink()
    for device in (dest / "dev").iterdir():
        if device.is_dir() and not device.is_symlink():
            shutil.rmtree(device)
        else:
            device.unlink()
    init = dest / INIT.lstrip("/")
    init.write_text(INIT_SCRIPT)
    init.chmod(0o755)
    return dest


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Owner root, fixed mtime: the same tree gives the same tarball and hash."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    return info


def pack(rootfs: Path, tarball: Path, recipe: str | int = RECIPE) -> dict[str, Any]:
    """Pack ``rootfs`` into ``tarball`` and write manifest.json beside it; return the manifest."""
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball, "w:gz", compresslevel=6) as tar:
        # Sorted so the archive order, and so the hash, does not depend on directory order.
        for path in sorted(rootfs.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(rootfs)), recursive=False, filter=_normalise)
    manifest: dict[str, Any] = {
        "recipe": recipe,
        "init": INIT,
        "tarball": tarball.name,
        "sha256": sha256_of(tarball),
        "size_bytes": tarball.stat().st_size,
    }
    (tarball.parent / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def verify(tarball: Path, manifest: dict[str, Any] | Path) -> None:
    """Raise RootfsError unless ``tarball`` has the size and SHA-256 its manifest records."""
    data = json.loads(manifest.read_text()) if isinstance(manifest, Path) else manifest
    try:
        size = os.stat(tarball).st_size
    except OSError as exc:
        raise RootfsError(f"{tarball}: {exc.strerror}") from None
    if size != data["size_bytes"]:
        raise RootfsError(f"{tarball}: size {size} does not match the manifest's {data['size_bytes']}")
    digest = sha256_of(tarball)
    if digest != data["sha256"]:
        raise RootfsError(f"{tarball}: sha256 {digest} does not match the manifest's {data['sha256']}")


def _tar_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """tarfile's ``tar`` filter, for a Python without extraction filters (3.11 before 3.11.4, as
    Debian 12's 3.11.2, the production image's): leading slashes stripped, nothing outside
    ``dest`` even through a link already extracted, no set-id, sticky or group/other write bits."""
    name = member.name.lstrip("/" + os.sep)
    if os.path.isabs(name):
        raise tarfile.ExtractError(f"{member.name}: an absolute path")
    target = os.path.realpath(os.path.join(dest, name))
    if os.path.commonpath([target, dest]) != dest:
        raise tarfile.ExtractError(f"{member.name}: would land outside the tree, at {target}")
    filtered = copy.copy(member)
    filtered.name = name
    if member.mode is not None:
        filtered.mode = member.mode & 0o755
    return filtered


def _extract_all(tar: tarfile.TarFile, dest: Path) -> None:
    if hasattr(tarfile, "tar_filter"):
        tar.extractall(dest, filter="tar")
    else:  # checked one by one as extracted: a path is resolved through the links made before it
        real = os.path.realpath(dest)
        members = (_tar_filter(member, real) for member in tar)
        tar.extractall(dest, members=members)  # noqa: S202 - each member filtered as above


def unpack(tarball: Path, dest: Path, uid: int = 0, gid: int = 0) -> Path:
    """Extract ``tarball`` into ``dest`` (made atomically: a half-extracted tree is never seen there).

    Entries are checked by tarfile's ``tar`` filter: nothing lands outside ``dest``, even through
    a link, and set-id bits are dropped (absolute symlinks stay: a Debian tree has them, and they
    resolve inside the container). The tree is then owned by ``uid``:``gid``, the mapped root.
    """
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Unique per call: an agent's threads may unpack the same tree at once.
    partial = dest.with_name(f".{dest.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
    try:
        with tarfile.open(tarball, "r:*") as tar:
            _extract_all(tar, partial)
        partial.chmod(0o755)
        if uid or gid:
            os.lchown(partial, uid, gid)
            for dirpath, dirnames, filenames in os.walk(partial):
                for entry in (*dirnames, *filenames):
                    os.lchown(os.path.join(dirpath, entry), uid, gid)
        partial.rename(dest)
    except (OSError, tarfile.TarError) as exc:
        if not dest.exists():  # else another worker finished the same tree first
            raise RootfsError(f"unpack {tarball.name}: {exc}") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return dest


@contextmanager
def tree_lock(directory: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold ``directory``'s lock file: shared while a create unpacks or picks a tree, exclusive
    while the collector removes trees (flock: every process and thread on this machine sees it)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def file_stamp(path: Path) -> tuple[int, int]:
    """(size, modification time in ns) of a file: whether it changed since it was last checked."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def verify_image_files(tarball: Path, sha256: str, size_bytes: int) -> None:
    """The tarball must match the manifest beside it (if there is one) and the recorded checksum."""
    manifest = tarball.parent / "manifest.json"
    if manifest.exists():
        verify(tarball, manifest)
    verify(tarball, {"sha256": sha256, "size_bytes": size_bytes})


def make_dirs(*directories: Path) -> None:
    """Create the directories that are missing, each reachable by anyone (0755): a container's
    mapped root must be able to reach its tree."""
    for directory in directories:
        if not directory.exists():
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o755)


def is_home(home: Path) -> bool:
    return home.is_dir()


def trees(home: Path) -> list[tuple[str, bool]]:
    """The unpacked trees under ``home``: (name, whether it is a real directory), sorted by name."""
    return [(p.name, p.is_dir() and not p.is_symlink()) for p in sorted(home.iterdir())]


def retire(home: Path, name: str) -> Path:
    """Move a tree out of sight at once (``.<name>.<random>.gc``), to be removed later."""
    doomed = home / f".{name}.{uuid.uuid4().hex[:8]}.gc"
    (home / name).rename(doomed)
    return doomed


def remove_trees(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
