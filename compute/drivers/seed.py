"""The NoCloud seed of a cloud-init guest (its "config drive"): an ISO 9660 image labelled cidata.

cloud-init's NoCloud datasource finds a filesystem whose label is ``cidata`` and reads ``meta-data``
and ``user-data`` (and, when given, ``network-config``) from it. The seed lives in the instance's
directory on the instance store, beside its disk, and is attached read-only as a CD-ROM.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from compute.drivers.base import DriverError

GENISOIMAGE = "genisoimage"
VOLUME_ID = "cidata"
SEED_NAME = "seed.iso"


def write_seed(path: Path, meta_data: str, user_data: str, network_config: str = "") -> None:
    """Write the seed ISO at ``path`` (replacing one that is there): whole or not at all."""
    if shutil.which(GENISOIMAGE) is None:
        raise DriverError(f"config drive: {GENISOIMAGE} is not installed (run scripts/bootstrap-host)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".seed-", dir=path.parent) as tmp:
        content = Path(tmp) / "content"
        content.mkdir()
        files = {"meta-data": meta_data, "user-data": user_data}
        if network_config:
            files["network-config"] = network_config
        for name, text in files.items():
            (content / name).write_text(text)
        partial = Path(tmp) / SEED_NAME
        args = [
            GENISOIMAGE,
            "-quiet",
            "-output",
            str(partial),
            "-volid",
            VOLUME_ID,
            "-joliet",
            "-rock",
            *sorted(files),
        ]
        try:
            proc = subprocess.run(args, cwd=content, capture_output=True, text=True, check=False, timeout=60)
        except subprocess.TimeoutExpired:
            raise DriverError("config drive: genisoimage did not finish within 60 s") from None
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            raise DriverError(f"config drive: genisoimage failed: {lines[-1] if lines else proc.returncode}")
        os.chmod(partial, 0o644)  # QEMU (libvirt-qemu) reads it; it holds nothing secret of the host
        partial.rename(path)


def read_seed_file(path: Path, name: str) -> str:
    """One file of a seed ISO (``meta-data``, ``user-data``), read back with isoinfo: for checks."""
    proc = subprocess.run(
        ["isoinfo", "-R", "-i", str(path), "-x", f"/{name}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if proc.returncode != 0:
        raise DriverError(f"config drive: cannot read {name} from {path}: {proc.stderr.strip()}")
    return proc.stdout
