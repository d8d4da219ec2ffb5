"""Build a tiny bootable guest from Debian packages: a kernel, a busybox initramfs and an ext4 disk.

Nothing is downloaded but Debian's own packages (apt-get download): the kernel comes from
linux-image-*-amd64, userland is busybox-static. The result is cached under the image directory
with a manifest that records its SHA-256, so later runs reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KERNEL_META_PACKAGE = "linux-image-amd64"
# Drivers the guest needs for both device models (virtio and emulated e1000/SATA), the balloon,
# the power button and its ext4 disk. Their dependencies are added from modules.dep.
GUEST_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_balloon",
    "e1000",
    "ahci",
    "sd_mod",
    "ext4",
    "crc32c_generic",
    "button",
    "evdev",
)
DISK_SIZE = "64M"


def recipe_digest() -> str:
    """What the build depends on besides the kernel package: a change here means a rebuild."""
    digest = hashlib.sha256()
    for part in (HERE / "init.sh", HERE / "udhcpc.sh"):
        digest.update(part.read_bytes())
    digest.update(" ".join(GUEST_MODULES).encode())
    digest.update(DISK_SIZE.encode())
    return digest.hexdigest()[:16]


class BuildError(RuntimeError):
    """A build step failed; the message says which and why."""


@dataclass(frozen=True)
class GuestImage:
    """A built guest: where its files are and what they hash to."""

    name: str
    directory: str
    kernel: str
    initrd: str
    disk: str
    sha256: str
    size_bytes: int
    kernel_version: str
    os_name: str
    cmdline: str
    recipe: str

    @classmethod
    def load(cls, directory: Path) -> GuestImage | None:
        """The cached build in ``directory``, if it is whole and was made by the current recipe."""
        data = cached_manifest(directory, recipe_digest())
        return None if data is None else cls(**data)


def cached_manifest(directory: Path, recipe: str) -> dict[str, Any] | None:
    """A cached build's manifest: None unless it reads whole, names ``recipe`` (the recipe that
    made it is the current one) and its kernel, initrd and disk are all there."""
    try:
        data = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("recipe") != recipe:
        return None
    if not all(
        isinstance(data.get(key), str) and Path(data[key]).exists() for key in ("kernel", "initrd", "disk")
    ):
        return None
    return data


def _run(args: list[str], step: str, cwd: Path | None = None, stdin: bytes | None = None) -> bytes:
    try:
        proc = subprocess.run(args, cwd=cwd, input=stdin, capture_output=True, check=False, timeout=600)
    except FileNotFoundError:
        raise BuildError(f"{step}: {args[0]} is not installed (run scripts/bootstrap-host)") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise BuildError(
            f"{step}: {' '.join(args[:3])} failed ({proc.returncode}): {err[-1] if err else 'no output'}"
        )
    return proc.stdout


def files_stamp(paths: list[str]) -> tuple[str, ...]:
    """(path, size, mtime) of each file: whether any changed since they were last hashed.

    FileNotFoundError names a missing file."""
    stamp: list[str] = []
    for path in paths:
        st = os.stat(path)
        stamp += [path, str(st.st_size), str(st.st_mtime_ns)]
    return tuple(stamp)


def files_sha256(paths: list[str]) -> tuple[str, int]:
    """SHA-256 over the files in order, and their total size."""
    digest = hashlib.sha256()
    size = 0
    for path in paths:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
    return digest.hexdigest(), size


def _kernel_package() -> str:
    out = _run(["apt-cache", "depends", KERNEL_META_PACKAGE], "find the kernel package").decode()
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            return line.split(":", 1)[1].strip()
    raise BuildError(
        f"find the kernel package: {KERNEL_META_PACKAGE} names no linux-image dependency (apt-get update?)"
    )


def _download(package: str, into: Path) -> Path:
    try:
        _run(["apt-get", "download", package], f"download {package}", cwd=into)
    except BuildError:
        _run(["apt-get", "update", "-q"], "apt-get update")
        _run(["apt-get", "download", package], f"download {package}", cwd=into)
    debs = sorted(into.glob(f"{package}_*.deb"))
    if not debs:
        raise BuildError(f"download {package}: apt-get download left no .deb")
    return debs[-1]


def _module_depends(path: Path) -> list[str]:
    """A module's dependencies, read from the ``depends=`` entry of its .modinfo section."""
    data = path.read_bytes()
    marker = data.find(b"\x00depends=")
    if marker < 0:
        return []
    end = data.index(b"\x00", marker + 1)
    value = data[marker + len(b"\x00depends=") : end].decode()
    return [name.replace("-", "_") for name in value.split(",") if name]


def _module_closure(moddir: Path, wanted: tuple[str, ...]) -> list[Path]:
    """The wanted modules and their dependencies, dependencies first.

    The package ships no modules.dep (depmod makes it on install), so dependencies come from
    each module's own metadata.
    """
    by_name = {p.name.split(".ko")[0].replace("-", "_"): p for p in moddir.rglob("*.ko")}
    ordered: list[Path] = []

    def visit(name: str) -> None:
        path = by_name.get(name)
        if path is None or path in ordered:
            return  # built into this kernel, or already placed
        for dep in _module_depends(path):
            visit(dep)
        ordered.append(path)

    for name in wanted:
        visit(name)
    return ordered


def build_guest_image(
    image_dir: Path, name: str = "nubis-tiny", *, force: bool = False, log: Callable[[str], None] = print
) -> GuestImage:
    """Build (or reuse from the cache) the guest called ``name`` under ``image_dir``."""
    target = image_dir / name
    if not force and (cached := GuestImage.load(target)) is not None:
        log(f"using cached image {name} at {target} (sha256 {cached.sha256[:12]}…)")
        return cached
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise BuildError("busybox: /bin/busybox is missing (install busybox-static)")
    image_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=image_dir) as tmp:
        work = Path(tmp)
        package = _kernel_package()
        log(f"kernel package: {package}")
        deb = _download(package, work)
        root = work / "kernel"
        _run(["dpkg-deb", "-x", str(deb), str(root)], f"unpack {deb.name}")
        vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
        if not vmlinuz:
            raise BuildError(f"unpack {deb.name}: no boot/vmlinuz-* inside")
        version = vmlinuz[-1].name.removeprefix("vmlinuz-")
        moddir = root / "lib" / "modules" / version

        initramfs = work / "initramfs"
        for sub in ("bin", "etc", "lib/modules", "proc", "sys", "dev", "tmp", "mnt"):
            (initramfs / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy2(busybox, initramfs / "bin" / "busybox")
        shutil.copy2(HERE / "init.sh", initramfs / "init")
        shutil.copy2(HERE / "udhcpc.sh", initramfs / "etc" / "udhcpc.sh")
        os.chmod(initramfs / "init", 0o755)  # noqa: S103 - executables in the guest
        os.chmod(initramfs / "etc" / "udhcpc.sh", 0o755)  # noqa: S103
        modules = _module_closure(moddir, GUEST_MODULES)
        names = []
        for module in modules:
            flat = module.name.split(".ko")[0]
            shutil.copy2(module, initramfs / "lib" / "modules" / f"{flat}.ko")
            names.append(flat)
        (initramfs / "etc" / "modules").write_text("\n".join(names) + "\n")
        log(f"initramfs: busybox + {len(names)} modules")
        listing = _run(["find", ".", "-mindepth", "1"], "list the initramfs", cwd=initramfs)
        archive = _run(
            ["cpio", "-o", "-H", "newc", "--quiet"], "pack the initramfs", cwd=initramfs, stdin=listing
        )
        out = work / "out"
        out.mkdir()
        gz = _run(["gzip", "-9", "-n"], "compress the initramfs", stdin=archive)
        (out / "initrd.img").write_bytes(gz)
        shutil.copy2(vmlinuz[-1], out / "vmlinuz")

        content = work / "disk-content"
        content.mkdir()
        (content / "README").write_text("Nubis test guest disk.\n")
        _run(
            [
                "mke2fs",
                "-q",
                "-t",
                "ext4",
                "-L",
                "nubis",
                "-d",
                str(content),
                "-F",
                str(work / "disk.raw"),
                DISK_SIZE,
            ],
            "make the ext4 disk",
        )
        _run(
            [
                "qemu-img",
                "convert",
                "-q",
                "-f",
                "raw",
                "-O",
                "qcow2",
                str(work / "disk.raw"),
                str(out / "disk.qcow2"),
            ],
            "convert the disk to qcow2",
        )

        if target.exists():
            shutil.rmtree(target)
        out.rename(target)
        files = [str(target / "vmlinuz"), str(target / "initrd.img"), str(target / "disk.qcow2")]
        sha, size = files_sha256(files)
        image = GuestImage(
            name=name,
            directory=str(target),
            kernel=files[0],
            initrd=files[1],
            disk=files[2],
            sha256=sha,
            size_bytes=size,
            kernel_version=version,
            os_name=f"Debian kernel {version} + busybox",
            cmdline="console=ttyS0 quiet loglevel=3",
            recipe=recipe_digest(),
        )
        (target / "manifest.json").write_text(json.dumps(asdict(image), indent=2) + "\n")
    os.chmod(target, 0o755)  # noqa: S103 - QEMU runs as libvirt-qemu and must read the image
    log(f"built image {name} at {target}: {size / 1e6:.1f} MB, sha256 {sha[:12]}…")
    return image
