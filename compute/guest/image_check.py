"""Check an uploaded disk image before anything boots it: untrusted bytes, its format given, never guessed.

An uploaded image is hostile input. The checks, in order, each refusing with the field and reason:

1. Its header is read here, in Python, before QEMU opens the file at all. A qcow2 is refused when
   it names a backing file or an external data file (the header's backing offset, incompatible
   feature bit 2 or a data-file header extension): opening such an image makes QEMU open the file
   it names, and a data file pointing at a host file (``/etc/shadow``) is how OpenStack's
   CVE-2024-32498 leaked host files into images. A raw upload whose first bytes are the magic of
   another format (qcow2's ``QFI\\xfb``, VMDK, VHDX, LUKS, ...) is refused, so that QEMU never
   meets a qcow2 header through a disk declared raw. An empty file is refused.
2. ``qemu-img info -f <declared format> --output=json --force-share``: the format always given,
   never probed; the answer is checked again (no backing file, no data file, not encrypted, the
   virtual size under the bound).
3. ``qemu-img check -f qcow2``: a corrupted or truncated qcow2 is refused (leaked clusters, which
   waste space but harm nothing, are not).

qemu-img runs under ``prlimit`` (address space and CPU time, as OpenStack's oslo processutils
does for ``qemu-img info``) and a wall-clock timeout, since a crafted image can make it loop or
allocate without bound. This is host work that the web process does: the image store is a
directory the web process writes and the hosts read, and qemu-img here only reads a file the
upload just wrote. No libvirt, no driver.
"""

from __future__ import annotations

import json
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ServiceError

QEMU_IMG_ADDRESS_SPACE = 1 << 30  # bytes; qemu-img info/check of a sane image needs far less
QEMU_IMG_CPU_SECONDS = 30
QEMU_IMG_TIMEOUT = 60.0  # wall clock, for an image that makes qemu-img wait rather than compute

QCOW2_MAGIC = b"QFI\xfb"
_QCOW2_INCOMPAT_DIRTY = 1 << 0
_QCOW2_INCOMPAT_CORRUPT = 1 << 1
_QCOW2_INCOMPAT_DATA_FILE = 1 << 2
_QCOW2_INCOMPAT_KNOWN = 0b11111  # dirty, corrupt, data file, compression type, extended L2
_EXT_END = 0x00000000
_EXT_DATA_FILE = 0x44415441
_EXT_BACKING_FORMAT = 0xE2792ACA

# Other formats' signatures (offset, bytes, name): found at the start of a "raw" upload, they mean
# the bytes are not raw, and a guest must never see them through a disk QEMU takes as raw.
MAGICS: tuple[tuple[int, bytes, str], ...] = (
    (0, QCOW2_MAGIC, "qcow2 (or qcow)"),
    (0, b"QED\x00", "QED"),
    (0, b"KDMV", "VMDK"),
    (0, b"# Disk DescriptorFile", "VMDK descriptor"),
    (0, b"vhdxfile", "VHDX"),
    (0, b"conectix", "VHD (dynamic)"),
    (0, b"LUKS\xba\xbe", "LUKS"),
    (0, b"WithoutFreeSpace", "Parallels"),
    (0, b"WithouFreSpacExt", "Parallels"),
    (0, b"Bochs Virtual HD Image", "Bochs"),
    (0, b"#!/bin/sh\n#V2.0 Format", "cloop"),
    (0x40, b"\x7f\x10\xda\xbe", "VDI"),
)
MAGIC_SPAN = 512


class ImageRejected(ServiceError):
    """An uploaded image that must not be used; ``field`` and ``rule`` say which check refused it."""


@dataclass(frozen=True)
class ImageFacts:
    """What the checks learned of an accepted image."""

    disk_format: str
    virtual_size: int
    actual_size: int


def _reject(rule: str, message: str, field: str = "body") -> ImageRejected:
    return ImageRejected(field, rule, message)


def foreign_format(head: bytes) -> str | None:
    """The name of the image format whose signature ``head`` (the file's first bytes) carries."""
    for offset, magic, name in MAGICS:
        if head[offset : offset + len(magic)] == magic:
            return name
    return None


def qcow2_header_refusal(path: Path) -> ImageRejected | None:
    """Read a qcow2 header without QEMU: why it must be refused, or None when nothing in it
    names another file. Only the header and its extensions are read (a few KiB at most)."""
    with path.open("rb") as f:
        head = f.read(104)
        if len(head) < 72 or head[:4] != QCOW2_MAGIC:
            return _reject("format", "the file is not a qcow2 image (no qcow2 header)", "disk_format")
        version, backing_offset, backing_size = struct.unpack(">IQI", head[4:20])
        if version not in (2, 3):
            return _reject("format", f"unsupported qcow2 version {version} (2 or 3 only)", "disk_format")
        if backing_offset or backing_size:
            return _reject(
                "backing_file",
                "the qcow2 image names a backing file; an uploaded image must stand alone",
            )
        crypt_method = struct.unpack(">I", head[32:36])[0]
        if crypt_method:
            return _reject("encrypted", "the qcow2 image is encrypted; upload an unencrypted image")
        if version == 2:
            ext_offset = 72
        else:
            if len(head) < 104:
                return _reject("corrupt", "the qcow2 header is truncated")
            incompatible = struct.unpack(">Q", head[72:80])[0]
            header_length = struct.unpack(">I", head[100:104])[0]
            if incompatible & _QCOW2_INCOMPAT_DATA_FILE:
                return _reject(
                    "data_file",
                    "the qcow2 image uses an external data file (the CVE-2024-32498 class of "
                    "attack); an uploaded image must hold its own data",
                )
            if incompatible & _QCOW2_INCOMPAT_CORRUPT:
                return _reject("corrupt", "the qcow2 image is marked corrupt")
            if incompatible & _QCOW2_INCOMPAT_DIRTY:
                return _reject("corrupt", "the qcow2 image is marked dirty (not closed cleanly)")
            if incompatible & ~_QCOW2_INCOMPAT_KNOWN:
                return _reject("format", f"the qcow2 image needs unknown features {incompatible:#x}")
            if not 104 <= header_length <= 4096:
                return _reject("corrupt", f"implausible qcow2 header length {header_length}")
            ext_offset = header_length
        f.seek(ext_offset)
        for _ in range(64):  # a real image has a handful of extensions
            raw = f.read(8)
            if len(raw) < 8:
                return _reject("corrupt", "the qcow2 header extensions are truncated")
            kind, length = struct.unpack(">II", raw)
            if kind == _EXT_END:
                return None
            if kind == _EXT_DATA_FILE:
                return _reject(
                    "data_file",
                    "the qcow2 image names an external data file (the CVE-2024-32498 class of "
                    "attack); an uploaded image must hold its own data",
                )
            if kind == _EXT_BACKING_FORMAT:
                return _reject("backing_file", "the qcow2 image names a backing file format")
            if length > 65536:
                return _reject("corrupt", f"implausible qcow2 header extension length {length}")
            f.seek((length + 7) & ~7, 1)
    return _reject("corrupt", "too many qcow2 header extensions")


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    """Run qemu-img with an address-space and CPU-time limit and a timeout."""
    cmd = [
        "prlimit",
        f"--as={QEMU_IMG_ADDRESS_SPACE}",
        f"--cpu={QEMU_IMG_CPU_SECONDS}",
        "--",
        "qemu-img",
        *args,
    ]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=QEMU_IMG_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise _reject("timeout", f"qemu-img {args[0]} took longer than {QEMU_IMG_TIMEOUT:.0f} s") from None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else "no message"


def qemu_img_info(path: Path, disk_format: str) -> dict[str, Any]:
    """``qemu-img info`` of the file read as ``disk_format`` (never probed)."""
    proc = qemu_img("info", "-f", disk_format, "--output=json", "--force-share", str(path))
    if proc.returncode != 0:
        message = _first_line(proc.stderr).removeprefix("qemu-img: ")
        return {"error": message}
    info: dict[str, Any] = json.loads(proc.stdout)
    return info


def check_image(path: Path, disk_format: str, max_virtual_size: int) -> ImageFacts:
    """Check the image at ``path`` declared as ``disk_format``; raise ImageRejected naming the reason."""
    if disk_format not in ("qcow2", "raw"):
        raise _reject("choice", f"disk_format must be qcow2 or raw, got {disk_format!r}", "disk_format")
    actual = path.stat().st_size
    if actual == 0:
        raise _reject("empty", "the image is empty (0 bytes)")
    with path.open("rb") as f:
        head = f.read(MAGIC_SPAN)
    found = foreign_format(head)
    if disk_format == "raw":
        if found is not None:
            raise _reject(
                "format_mismatch",
                f"the image was declared raw but its bytes are a {found} image; declare its real format",
                "disk_format",
            )
        if actual % 512:
            raise _reject("size", f"a raw disk is a whole number of 512-byte sectors; got {actual} bytes")
    else:
        if found is None or found != "qcow2 (or qcow)":
            named = f"a {found} image" if found else "not a qcow2 image (no qcow2 header)"
            raise _reject("format_mismatch", f"the image was declared qcow2 but is {named}", "disk_format")
        refusal = qcow2_header_refusal(path)
        if refusal is not None:
            raise refusal
    info = qemu_img_info(path, disk_format)
    if "error" in info:
        raise _reject("invalid", f"qemu-img cannot read it as {disk_format}: {info['error']}")
    _check_info(info, disk_format, max_virtual_size)
    if disk_format == "qcow2":
        _check_consistency(path)
    return ImageFacts(disk_format, int(info["virtual-size"]), actual)


def _check_info(info: dict[str, Any], disk_format: str, max_virtual_size: int) -> None:
    """The header checks again, as QEMU read it (in case the Python reading missed a way)."""
    if info.get("format") != disk_format:
        raise _reject("format_mismatch", f"qemu-img read it as {info.get('format')!r}", "disk_format")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise _reject("backing_file", "the image names a backing file; an uploaded image must stand alone")
    specific = (info.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file") or specific.get("data-file-raw"):
        raise _reject(
            "data_file",
            "the image uses an external data file (the CVE-2024-32498 class of attack)",
        )
    if info.get("encrypted"):
        raise _reject("encrypted", "the image is encrypted; upload an unencrypted image")
    if specific.get("corrupt"):
        raise _reject("corrupt", "the qcow2 image is marked corrupt")
    virtual = int(info.get("virtual-size") or 0)
    if virtual <= 0:
        raise _reject("size", "the image has no virtual size")
    if virtual > max_virtual_size:
        raise _reject(
            "max_virtual_size",
            f"the image's virtual size of {virtual} bytes is over the limit of {max_virtual_size} bytes",
        )


def _check_consistency(path: Path) -> None:
    """``qemu-img check``: 0 clean, 3 leaked clusters only (harmless); anything else is refused."""
    proc = qemu_img("check", "-f", "qcow2", "--output=json", "--force-share", str(path))
    if proc.returncode in (0, 3):
        return
    detail = ""
    try:
        report = json.loads(proc.stdout)
        detail = f"{report.get('corruptions', 0)} corruptions, {report.get('check-errors', 0)} check errors"
    except ValueError:
        detail = _first_line(proc.stderr).removeprefix("qemu-img: ")
    raise _reject("corrupt", f"the qcow2 image is corrupted or truncated ({detail})")
