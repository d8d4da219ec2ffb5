"""The embedded default (SQLite + local Redis + libvirt) starts a portal the admin can log into."""

from __future__ import annotations

import http.cookiejar
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def manage(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_sqlite_portal_starts_and_admin_logs_in(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "SECRET_KEY"}}
    env |= {"NUBIS_DATA_DIR": str(tmp_path), "REDIS_URL": settings.REDIS_URL}
    manage(env, "migrate", "--noinput", "-v", "0")
    assert (tmp_path / "nubis.sqlite3").exists()
    first = manage(env, "nubis_init")
    password = re.search(r"with password: (\S+)", first)
    assert password is not None, first
    second = manage(env, "nubis_init")
    assert "exists; password unchanged" in second
    assert "password:" not in second
    assert "kept tenant 'demo'" in second
    assert "created flavor 'm1.tiny'" in first
    assert "kept flavor 'm1.tiny'" in second

    port = free_port()
    log = (tmp_path / "web.log").open("wb")
    web = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1)  # noqa: S310
                break
            except OSError:
                assert web.poll() is None, (tmp_path / "web.log").read_text()
                time.sleep(0.1)
        ready = urllib.request.urlopen(base + "/readyz", timeout=10).read().decode()  # noqa: S310
        assert "database: ok (sqlite" in ready
        assert "redis: ok" in ready

        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        login_page = opener.open(base + "/login/", timeout=10).read().decode()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page)
        assert token is not None
        form = urllib.parse.urlencode(
            {"csrfmiddlewaretoken": token.group(1), "username": "admin", "password": password.group(1)}
        ).encode()
        request = urllib.request.Request(base + "/login/", data=form, headers={"Referer": base + "/login/"})  # noqa: S310
        dashboard = opener.open(request, timeout=10).read().decode()
        assert '<h1>Demo <span class="badge">owner</span></h1>' in dashboard
        assert "<code>demo</code>" in dashboard
    finally:
        web.terminate()
        web.wait(timeout=20)
        log.close()
    assert web.returncode is not None


@pytest.mark.slow
def test_host_bootstrap_is_idempotent() -> None:
    first = subprocess.run(
        [str(ROOT / "scripts" / "bootstrap-host")], capture_output=True, text=True, timeout=600, check=False
    )
    assert first.returncode == 0, first.stdout + first.stderr
    second = subprocess.run(
        [str(ROOT / "scripts" / "bootstrap-host")], capture_output=True, text=True, timeout=120, check=False
    )
    assert second.returncode == 0, second.stdout + second.stderr
    out = second.stdout
    assert "packages: all" in out
    assert "virtlogd: already running" in out
    assert "libvirtd: already running" in out
    assert "libvirt: answers on qemu:///system" in out
    if Path("/dev/kvm").exists():
        assert "/dev/kvm: already group kvm, mode 0660" in out
        assert oct(Path("/dev/kvm").stat().st_mode & 0o777) == "0o660"


@pytest.mark.slow
def test_host_bootstrap_names_what_it_could_not_install() -> None:
    env = {**os.environ, "NUBIS_BOOTSTRAP_EXTRA_PACKAGES": "nubis-no-such-package"}
    proc = subprocess.run(
        [str(ROOT / "scripts" / "bootstrap-host")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )
    assert proc.returncode != 0
    assert "bootstrap: FAILED: apt-get install nubis-no-such-package failed" in proc.stderr
    assert "Unable to locate package nubis-no-such-package" in proc.stderr
