"""A volume's file on the instance store, made and changed with ``qemu-img`` (never while a guest
has it open: the services only ask for this while the volume is attached to nothing).

Every function is safe to repeat: a file is written under a ``.partial`` name and renamed into
place, so it exists whole or not at all; an existing result is not made again. Formats are always
given explicitly (``-f``): an image is never probed.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compute.drivers.base import DriverError

GIB = 1 << 30
TIMEOUT = 1800.0  # seconds a conversion may take (a large image on a slow store)


@dataclass(frozen=True)
class VolumeSource:
    """What a new volume starts from: an image's disk, or a snapshot inside another volume's file."""

    path: str
    format: str
    snapshot: str = ""


def _run(argv: list[str], what: str, timeout: float = 120.0) -> str:
    for attempt in range(3):
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DriverError(f"{what}: qemu-img did not finish within {timeout:g} s") from None
        if proc.returncode == 0:
            return proc.stdout
        # qemu-img sometimes trips over coarse CPU accounting here ("Unable to get accurate CPU usage").
        if "accurate CPU usage" not in proc.stderr or attempt == 2:
            raise DriverError(f"{what}: {proc.stderr.strip() or f'qemu-img exited {proc.returncode}'}")
    raise AssertionError("unreachable")


def info(path: str, fmt: str = "qcow2") -> dict[str, Any]:
    """``qemu-img info`` of the file, format given (-U: readable while a guest holds it)."""
    out = _run(["qemu-img", "info", "-U", "-f", fmt, "--output=json", path], "volume info")
    data: dict[str, Any] = json.loads(out)
    return data


def virtual_size(path: str, fmt: str = "qcow2") -> int:
    return int(info(path, fmt).get("virtual-size") or 0)


def snapshots(path: str) -> list[str]:
    """The names of the internal snapshots in the qcow2 file."""
    found = info(path).get("snapshots") or []
    return [str(s["name"]) for s in found if isinstance(s, dict)]


def volume_make(path: str, size_gib: int, source: VolumeSource | None = None) -> None:
    """A qcow2 of ``size_gib``: empty, or a copy of ``source`` grown to that size (a source larger
    than the volume is refused)."""
    target = Path(path)
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".partial")
    tmp.unlink(missing_ok=True)
    size = f"{size_gib}G"
    try:
        if source is None:
            _run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp), size], "create volume")
        else:
            have = virtual_size(source.path, source.format)
            if have > size_gib * GIB:
                raise DriverError(
                    f"create volume: the source is {have} bytes, more than the volume's {size_gib} GiB"
                )
            argv = ["qemu-img", "convert", "-q", "-f", source.format, "-O", "qcow2"]
            if source.snapshot:
                argv += ["-l", f"snapshot.name={source.snapshot}"]
            _run([*argv, source.path, str(tmp)], "create volume from its source", TIMEOUT)
            _run(["qemu-img", "resize", "-q", "-f", "qcow2", str(tmp), size], "create volume: grow")
        tmp.rename(target)  # appears whole or not at all
    finally:
        tmp.unlink(missing_ok=True)


def volume_remove(path: str) -> None:
    Path(path).unlink(missing_ok=True)
    Path(path).with_suffix(".partial").unlink(missing_ok=True)


def volume_grow(path: str, size_gib: int) -> None:
    """Grow the volume's file to ``size_gib`` (offline); one already that big is left alone."""
    if not Path(path).exists():
        raise DriverError(f"resize volume: {path} does not exist")
    if virtual_size(path) >= size_gib * GIB:
        return
    _run(["qemu-img", "resize", "-q", "-f", "qcow2", path, f"{size_gib}G"], "resize volume")


def _opts(path: str) -> str:
    """The qcow2 file as --image-opts (``qemu-img snapshot`` takes no -f: the format stays explicit)."""
    return f"driver=qcow2,file.driver=file,file.filename={path.replace(',', ',,')}"


def snapshot_make(path: str, name: str) -> None:
    """An internal qcow2 snapshot named ``name`` (kept if it exists already)."""
    if not Path(path).exists():
        raise DriverError(f"snapshot volume: {path} does not exist")
    if name in snapshots(path):
        return
    _run(["qemu-img", "snapshot", "-q", "--image-opts", "-c", name, _opts(path)], "snapshot volume")


def snapshot_remove(path: str, name: str) -> None:
    if not Path(path).exists() or name not in snapshots(path):
        return
    _run(["qemu-img", "snapshot", "-q", "--image-opts", "-d", name, _opts(path)], "delete volume snapshot")
