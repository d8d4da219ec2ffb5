"""A bad setting or an unreachable service stops start-up with one clear line, not a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(args: list[str], tmp_path: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "NUBIS_DATA_DIR": str(tmp_path), **env}
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_one_clear_line(proc: subprocess.CompletedProcess[str], setting: str) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    # Celery adds its own warning about running as root; ours is the one line starting "nubis:".
    lines = [line for line in proc.stderr.splitlines() if line.startswith("nubis:")]
    assert len(lines) == 1, proc.stderr
    assert setting in lines[0]
    return lines[0]


@pytest.mark.parametrize("url", ["postgres//nope", "mysql://root@localhost/nubis", "postgres://u@h:99999/db"])
def test_malformed_database_url_stops_manage_py(tmp_path: Path, url: str) -> None:
    line = assert_one_clear_line(run(["manage.py", "check"], tmp_path, DATABASE_URL=url), "DATABASE_URL")
    assert line.startswith("nubis: configuration error: DATABASE_URL:")


def test_malformed_database_url_stops_the_celery_worker(tmp_path: Path) -> None:
    proc = run(
        ["-m", "celery", "-A", "portal", "worker", "--pool", "solo"], tmp_path, DATABASE_URL="oracle://x/y"
    )
    assert_one_clear_line(proc, "DATABASE_URL")


def test_unreachable_redis_stops_the_web_server(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    proc = run(
        ["manage.py", "serve", "--port", str(closed_port())],
        tmp_path,
        REDIS_URL=url,
        DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3",
    )
    line = assert_one_clear_line(proc, "REDIS_URL")
    assert "cannot reach the redis" in line


def test_unreachable_redis_stops_the_celery_worker(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    proc = run(
        ["-m", "celery", "-A", "portal", "worker", "--pool", "solo"],
        tmp_path,
        REDIS_URL=url,
        DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3",
    )
    line = assert_one_clear_line(proc, "REDIS_URL")
    assert "cannot reach the redis" in line


def test_unreachable_database_is_named(tmp_path: Path) -> None:
    url = f"postgres://nubis@127.0.0.1:{closed_port()}/nubis"
    proc = run(["manage.py", "serve", "--port", str(closed_port())], tmp_path, DATABASE_URL=url)
    line = assert_one_clear_line(proc, "DATABASE_URL")
    assert "cannot reach the database" in line


def test_preflight_prints_one_line_per_dependency(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    proc = run(
        ["manage.py", "preflight"], tmp_path, REDIS_URL=url, DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3"
    )
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["database", "redis", "libvirt"]
    assert lines[0].startswith("database: ok")
    assert lines[1].startswith("redis: FAIL")
    assert lines[2].startswith("libvirt: ok")
    assert "REDIS_URL: redis unreachable" in proc.stderr
