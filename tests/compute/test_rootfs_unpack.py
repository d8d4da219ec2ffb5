"""Unpacking a container image on a Python without tarfile's extraction filters.

The production image runs Debian 12's Python 3.11.2, whose tarfile has no ``filter=``: unpack()
then checks each entry itself, as the ``tar`` filter would. Here tarfile's filters are taken
away for the test, so this Python behaves as that one.
"""

from __future__ import annotations

import io
import stat
import tarfile
from pathlib import Path

import pytest

from compute.containers.rootfs import RootfsError, unpack


def make_tar(path: Path, entries: list[tarfile.TarInfo | tuple[str, bytes, int]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                name, data, mode = entry
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), mode
                tar.addfile(info, io.BytesIO(data))
    return path


def symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


@pytest.fixture(params=["filters", "no filters"])
def python(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "no filters":
        monkeypatch.delattr(tarfile, "tar_filter")
    return str(request.param)


def test_a_tree_unpacks_with_set_id_bits_dropped(python: str, tmp_path: Path) -> None:
    tarball = make_tar(
        tmp_path / "ok.tar.gz",
        [("bin/tool", b"#!/bin/sh\n", 0o4755), ("/etc/motd", b"hi\n", 0o666), symlink("sh", "/bin/tool")],
    )
    tree = unpack(tarball, tmp_path / "tree")
    assert (tree / "bin" / "tool").read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE((tree / "bin" / "tool").stat().st_mode) == 0o755  # no setuid
    assert stat.S_IMODE((tree / "etc" / "motd").stat().st_mode) == 0o644  # no group/other write
    assert (tree / "sh").is_symlink()  # absolute links stay: they resolve inside the container


@pytest.mark.parametrize(
    "entries",
    [
        [("../escape", b"x", 0o644)],
        [symlink("abs", str(Path("/tmp"))), ("abs/planted", b"x", 0o644)],
        [symlink("up", ".."), ("up/planted", b"x", 0o644)],
    ],
    ids=["dot-dot", "through an absolute link", "through a relative link"],
)
def test_nothing_lands_outside_the_tree(python: str, tmp_path: Path, entries: list) -> None:
    box = tmp_path / "box"
    box.mkdir()
    tarball = make_tar(tmp_path / "bad.tar.gz", entries)
    with pytest.raises(RootfsError, match=r"unpack bad\.tar\.gz"):
        unpack(tarball, box / "tree")
    assert not (box / "tree").exists()
    assert not (box / "escape").exists()
    assert not (box / "planted").exists()
    assert not Path("/tmp/planted").exists()
    assert [p.name for p in box.iterdir()] == []  # no partial tree left either
