"""The production settings behind the TLS proxy (NUBIS_HTTPS=1): Django's deployment check passes
at warning level, plain HTTP is redirected except the health check, and HTTPS answers carry HSTS
and secure cookies. Run as the portal runs: a fresh process on portal.settings."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, django
django.setup()
from django.test import Client
client = Client()
plain = client.get("/login/")
health = client.get("/healthz")
tls = client.get("/login/", HTTP_X_FORWARDED_PROTO="https")
print(json.dumps({
    "plain": [plain.status_code, plain.get("Location", "")],
    "health_redirected": health.status_code in (301, 302),
    "tls": [tls.status_code, tls.get("Strict-Transport-Security", "")],
    "csrf_cookie_secure": bool(tls.cookies.get("csrftoken") and tls.cookies["csrftoken"]["secure"]),
}))
"""


def production(tmp_path: Path, **env: str) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "cloud.example.org,testserver",
        "NUBIS_DATA_DIR": str(tmp_path),
        **env,
    }


def manage(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_deployment_check_passes_behind_the_tls_proxy_and_fails_without_it(tmp_path: Path) -> None:
    https = manage(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"], production(tmp_path, NUBIS_HTTPS="1")
    )
    assert https.returncode == 0, https.stdout + https.stderr
    assert "no issues" in https.stdout
    plain = manage(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], production(tmp_path))
    assert plain.returncode != 0
    assert "security.W004" in plain.stderr  # no HSTS: the check is doing its work


def test_plain_http_is_redirected_but_the_health_check_and_https_carries_hsts(tmp_path: Path) -> None:
    probe = manage(["-c", PROBE], production(tmp_path, NUBIS_HTTPS="1", NUBIS_HSTS_SECONDS="600"))
    assert probe.returncode == 0, probe.stderr[-3000:]
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    assert seen["plain"] == [301, "https://testserver/login/"]
    assert seen["health_redirected"] is False
    assert seen["tls"] == [200, "max-age=600; includeSubDomains; preload"]
    assert seen["csrf_cookie_secure"] is True
