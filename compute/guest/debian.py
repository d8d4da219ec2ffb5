"""Build a Debian 12 cloud image from Debian's packages: debootstrap, cloud-init (NoCloud), a qcow2 disk.

The root filesystem comes from ``debootstrap`` with the mirror this machine's apt already uses (none
is written into the project). The disk is made without mounting anything: ``mke2fs -d`` fills an
ext4 partition that starts at 1 MiB, an MBR partition table is written in Python, and GRUB (from the
image's own ``grub-pc-bin``) is embedded in the gap before the partition the way ``grub-install``
does it (boot.img in the MBR, core.img from sector 1), so the disk boots by itself like any cloud
image. The kernel and initramfs are also kept beside the disk, for a direct kernel boot.

The build is cached under the image directory with a manifest (recipe digest, SHA-256), like the
tiny image: a second run with the same recipe reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from compute.containers.rootfs import RootfsError, apt_mirror
from compute.guest.builder import BuildError, _run, cached_manifest, files_sha256

DEBIAN_NAME = "debian-12-cloud"  # "debian-12" is the container image
SUITE = "bookworm"
LOGIN_USER = "debian"  # Debian's cloud-init gives the SSH keys to this default user
# LAB.md §7, plus what booting from the disk and growing it need: GRUB's BIOS modules (embedded by
# hand, see _embed_grub), growpart (cloud-guest-utils, which runs sfdisk from fdisk) and resize2fs.
PACKAGES = (
    "linux-image-amd64",
    "systemd-sysv",
    "udev",
    "cloud-init",
    "openssh-server",
    "ifupdown",
    "isc-dhcp-client",
    "netbase",
    "iproute2",
    "sudo",
    "ca-certificates",
    "qemu-guest-agent",
    # Without it cloud-init stays unconfigured: debootstrap does not resolve the virtual package
    # python3-cryptography needs.
    "python3-cffi-backend",
    "grub-pc-bin",
    "cloud-guest-utils",
    "fdisk",
    "e2fsprogs",
)
DISK_SIZE_MIB = 2048  # the base disk's virtual size; cloud-init grows the root to the instance's disk
PART_OFFSET = 1 << 20  # the root partition starts at 1 MiB (GRUB's core.img lives before it)
ROOT_LABEL = "debian-root"
CMDLINE = f"root=LABEL={ROOT_LABEL} rw console=tty0 console=ttyS0"
# How its guests boot: "disk" (its own GRUB, like an uploaded image) or "kernel" (QEMU loads the
# kernel and initramfs directly). See the README's figures for the choice.
BOOT_MODE = "disk"
# What the guest never needs from the image: documentation, translations, apt's downloaded lists.
PRUNE = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "var/cache/debconf/templates.dat-old",
)

CLOUD_CFG = """\
# Nubis: the config drive is a NoCloud seed (volume cidata); never probe network metadata services.
datasource_list: [ NoCloud, None ]
# Keep the image's apt sources (the mirror the image was built from).
apt:
  preserve_sources_list: true
# The hostname in /etc/hosts too (sudo warns without it), whatever the user-data says.
manage_etc_hosts: true
# The image has no locales package (C.UTF-8 is built in): cc_locale would fail and mark cloud-init
# in error.
locale: false
# SSH takes keys only, as in Debian's own cloud images: a password given for the serial console
# (user-data: chpasswd) does not open SSH to password guessing. The user-data may turn it on.
ssh_pwauth: false
"""

GRUB_CFG = f"""\
set timeout=0
set default=0
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
menuentry "Debian GNU/Linux" {{
  linux /vmlinuz {CMDLINE}
  initrd /initrd.img
}}
"""

DPKG_EXCLUDES = """\
# Nubis cloud image: no documentation or translations (kept small; copyrights stay).
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
"""


def recipe_digest() -> str:
    """What the build depends on: a change here means a rebuild."""
    digest = hashlib.sha256()
    for part in (SUITE, " ".join(PACKAGES), str(DISK_SIZE_MIB), CMDLINE, CLOUD_CFG, GRUB_CFG, DPKG_EXCLUDES):
        digest.update(part.encode())
        digest.update(b"\0")
    digest.update(b"debian-recipe-1")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class DebianImage:
    """A built Debian cloud image: its bootable disk, and its kernel and initramfs beside it."""

    name: str
    directory: str
    kernel: str
    initrd: str
    disk: str
    sha256: str  # over the disk alone: what a disk boot uses
    sha256_kernel_boot: str  # over kernel, initramfs and disk, in that order: what a kernel boot uses
    size_bytes: int
    virtual_size_bytes: int
    kernel_version: str
    os_name: str
    cmdline: str
    login_user: str
    recipe: str
    build_seconds: float

    @classmethod
    def load(cls, directory: Path) -> DebianImage | None:
        """The cached build in ``directory``, if it is whole and was made by the current recipe."""
        data = cached_manifest(directory, recipe_digest())
        try:
            return None if data is None else cls(**data)
        except TypeError:  # a manifest of other fields
            return None


def _debootstrap(root: Path, log: Callable[[str], None]) -> None:
    try:
        mirror = apt_mirror()
    except RootfsError as exc:
        raise BuildError(str(exc)) from None
    if not Path("/usr/sbin/debootstrap").exists():
        raise BuildError("debootstrap is not installed (run scripts/bootstrap-host)")
    log(f"debootstrap {SUITE} from the machine's apt mirror (about 2 minutes)")
    args = [
        "/usr/sbin/debootstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        SUITE,
        str(root),
        mirror,
    ]
    proc = subprocess.run(args, capture_output=True, text=True, check=False, timeout=1800)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise BuildError(f"debootstrap failed ({proc.returncode}): {' '.join(tail)}")


def _configure(root: Path) -> None:
    """The files that make the root filesystem a cloud image."""
    etc = root / "etc"
    (etc / "fstab").write_text(f"LABEL={ROOT_LABEL} / ext4 defaults,errors=remount-ro 0 1\n")
    (etc / "cloud" / "cloud.cfg.d" / "90-nubis.cfg").write_text(CLOUD_CFG)
    (etc / "dpkg" / "dpkg.cfg.d" / "01-nubis-nodoc").write_text(DPKG_EXCLUDES)
    # Each guest gets its own identity at first boot: machine id, SSH host keys (cloud-init makes
    # them), hostname (cloud-init sets it from the seed).
    (etc / "machine-id").write_text("")
    (root / "var" / "lib" / "dbus" / "machine-id").unlink(missing_ok=True)
    for key in (etc / "ssh").glob("ssh_host_*"):
        key.unlink()
    (etc / "hostname").write_text("localhost\n")
    (etc / "hosts").write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n")
    resolv = etc / "resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text("")
    # The network: cloud-init's fallback configuration (DHCP on the first NIC, by its MAC) is
    # written for ifupdown under interfaces.d at first boot.
    (etc / "network" / "interfaces").write_text(
        "# cloud-init writes the guest's interfaces to interfaces.d\n"
        "auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n"
    )
    (etc / "network" / "interfaces.d").mkdir(exist_ok=True)
    # The boot loader's menu (GRUB itself is embedded in the disk by _embed_grub).
    grub = root / "boot" / "grub"
    (grub / "i386-pc").mkdir(parents=True, exist_ok=True)
    for module in (root / "usr" / "lib" / "grub" / "i386-pc").iterdir():
        if module.suffix in (".mod", ".lst"):
            shutil.copy2(module, grub / "i386-pc" / module.name)
    (grub / "grub.cfg").write_text(GRUB_CFG)


def _prune(root: Path) -> None:
    for relative in PRUNE:
        target = root / relative
        if not target.is_dir():
            continue
        for entry in target.iterdir():
            if relative == "usr/share/doc" and entry.is_dir() and (entry / "copyright").exists():
                for inner in entry.iterdir():  # keep each package's copyright
                    if inner.name != "copyright":
                        (shutil.rmtree if inner.is_dir() and not inner.is_symlink() else Path.unlink)(inner)
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry.name not in ("partial", "lock"):
                entry.unlink()
    for cache in (root / "var" / "cache" / "apt").glob("*.bin"):
        cache.unlink()
    for log_file in (root / "var" / "log").rglob("*"):  # the build's logs; the directories stay
        if log_file.is_file() or log_file.is_symlink():
            log_file.unlink()
    for dev in (root / "dev").iterdir():  # devtmpfs gives the guest its devices
        if dev.is_dir() and not dev.is_symlink():
            shutil.rmtree(dev)
        else:
            dev.unlink()


def _mbr_partition_entry(start: int, sectors: int) -> bytes:
    """One MBR partition entry: bootable, Linux (0x83), addressed by LBA (CHS saturated)."""
    return struct.pack("<B3sB3sII", 0x80, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff", start, sectors)


def _grub_images(root: Path) -> tuple[bytes, bytes]:
    """GRUB's boot.img and a core.img (with what it needs to find its partition), made by the
    image's own grub-mkimage."""
    _run(
        [
            "chroot",
            str(root),
            "grub-mkimage",
            "-O",
            "i386-pc",
            "-o",
            "/core.img",
            "-p",
            "(hd0,msdos1)/boot/grub",
            "biosdisk",
            "part_msdos",
            "ext2",
        ],
        "make GRUB's core image",
    )
    core = (root / "core.img").read_bytes()
    (root / "core.img").unlink()
    boot = (root / "usr" / "lib" / "grub" / "i386-pc" / "boot.img").read_bytes()
    if len(boot) != 512 or len(core) > PART_OFFSET - 512:
        raise BuildError(f"embed GRUB: boot.img {len(boot)} bytes, core.img {len(core)} bytes do not fit")
    return boot, core


def _embed_grub(disk: Path, boot: bytes, core: bytes) -> None:
    """GRUB the way grub-install embeds it in an MBR disk: boot.img's code in sector 0 (with the
    partition table), core.img from sector 1. boot.img's default kernel sector is 1 and core.img's
    first block list starts at sector 2, which is where they are put here."""
    sectors = DISK_SIZE_MIB * 2048 - PART_OFFSET // 512
    table = _mbr_partition_entry(PART_OFFSET // 512, sectors) + bytes(48)
    signature = uuid.uuid4().bytes[:4]
    mbr = boot[:440] + signature + b"\0\0" + table + b"\x55\xaa"
    with disk.open("r+b") as handle:
        handle.write(mbr)
        handle.write(core)


def build_debian_image(
    image_dir: Path, name: str = DEBIAN_NAME, *, force: bool = False, log: Callable[[str], None] = print
) -> DebianImage:
    """Build (or reuse from the cache) the Debian cloud image called ``name`` under ``image_dir``."""
    target = image_dir / name
    if not force and (cached := DebianImage.load(target)) is not None:
        log(f"using cached image {name} at {target} (sha256 {cached.sha256[:12]}…)")
        return cached
    began = time.monotonic()
    image_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=image_dir) as tmp:
        work = Path(tmp)
        root = work / "root"
        _debootstrap(root, log)
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        if not kernels:
            raise BuildError("debootstrap: the root has no /boot/vmlinuz-* (linux-image-amd64 missing?)")
        version = kernels[-1].name.removeprefix("vmlinuz-")
        initrd = root / "boot" / f"initrd.img-{version}"
        if not initrd.exists():
            raise BuildError(f"debootstrap: no initramfs for kernel {version} (initramfs-tools failed?)")
        _configure(root)
        # Again, now that /etc/fstab names the root: the initramfs then carries fsck for it.
        _run(["chroot", str(root), "update-initramfs", "-u", "-k", version], "update the initramfs")
        _prune(root)
        out = work / "out"
        out.mkdir()
        shutil.copy2(kernels[-1], out / "vmlinuz")
        shutil.copy2(initrd, out / "initrd.img")
        raw = work / "disk.raw"
        with raw.open("wb") as handle:
            handle.truncate(DISK_SIZE_MIB << 20)
        log("making the ext4 root partition and embedding GRUB")
        boot, core = _grub_images(root)
        fs_blocks = ((DISK_SIZE_MIB << 20) - PART_OFFSET) // 4096
        _run(
            [
                "mke2fs",
                "-q",
                "-t",
                "ext4",
                "-b",
                "4096",
                "-L",
                ROOT_LABEL,
                "-E",
                f"offset={PART_OFFSET}",
                "-d",
                str(root),
                "-F",
                str(raw),
                str(fs_blocks),
            ],
            "make the ext4 root filesystem",
        )
        _embed_grub(raw, boot, core)
        shutil.rmtree(root)  # before the conversion: the root is close to a gigabyte
        qcow2 = out / "disk.qcow2"
        # Compressed clusters: about 250 MB instead of 700; an instance's writes go to its overlay.
        _run(
            ["qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)],
            "convert the disk to qcow2",
        )
        raw.unlink()
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)
    files = [str(target / "vmlinuz"), str(target / "initrd.img"), str(target / "disk.qcow2")]
    sha, size = files_sha256(files[2:])
    sha_kernel_boot, _ = files_sha256(files)
    image = DebianImage(
        name=name,
        directory=str(target),
        kernel=files[0],
        initrd=files[1],
        disk=files[2],
        sha256=sha,
        sha256_kernel_boot=sha_kernel_boot,
        size_bytes=size,
        virtual_size_bytes=DISK_SIZE_MIB << 20,
        kernel_version=version,
        os_name=f"Debian 12 (bookworm), kernel {version}, cloud-init",
        cmdline=CMDLINE,
        login_user=LOGIN_USER,
        recipe=recipe_digest(),
        build_seconds=round(time.monotonic() - began, 1),
    )
    (target / "manifest.json").write_text(json.dumps(asdict(image), indent=2) + "\n")
    os.chmod(target, 0o755)  # noqa: S103 - QEMU runs as libvirt-qemu and must read the image
    log(
        f"built image {name} at {target} in {image.build_seconds:.0f} s: "
        f"{size / 1e6:.0f} MB, sha256 {sha[:12]}…"
    )
    return image
