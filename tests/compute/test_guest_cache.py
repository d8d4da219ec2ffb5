"""A cached guest image build is used only when its manifest is whole, of the current recipe, and
its files are all there (the tiny image's and the Debian image's caches share the check)."""

from __future__ import annotations

import json
from pathlib import Path

from compute.guest.builder import cached_manifest


def _build(directory: Path, recipe: str = "r1", **changes: object) -> None:
    data: dict[str, object] = {"name": "x", "recipe": recipe}
    for key in ("kernel", "initrd", "disk"):
        path = directory / key
        path.write_bytes(b"x")
        data[key] = str(path)
    data.update(changes)
    (directory / "manifest.json").write_text(json.dumps(data))


def test_a_whole_build_of_the_current_recipe_is_used(tmp_path: Path) -> None:
    _build(tmp_path)
    data = cached_manifest(tmp_path, "r1")
    assert data is not None
    assert data["name"] == "x"


def test_an_old_recipe_a_missing_file_or_a_bad_manifest_means_a_rebuild(tmp_path: Path) -> None:
    assert cached_manifest(tmp_path, "r1") is None  # nothing built
    _build(tmp_path)
    assert cached_manifest(tmp_path, "r2") is None
    (tmp_path / "initrd").unlink()
    assert cached_manifest(tmp_path, "r1") is None
    _build(tmp_path, disk=None)
    assert cached_manifest(tmp_path, "r1") is None
    (tmp_path / "manifest.json").write_text('{"recipe": "r1", "kernel"')
    assert cached_manifest(tmp_path, "r1") is None
    (tmp_path / "manifest.json").write_text('["r1"]')
    assert cached_manifest(tmp_path, "r1") is None
