"""Browser tests: the real portal (daphne: HTTP and websockets) on loopback, pointed at the test
database, the session's compute agent, and Debian's headless Chromium driven by Playwright.

Screenshots go to $NUBIS_TEST_ARTIFACTS/e2e (default var/test-artifacts/e2e).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from pytest_django import DjangoDbBlocker

from tests.conftest import ROOT, subprocess_env

CHROMIUM = os.environ.get("NUBIS_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("NUBIS_TEST_ARTIFACTS", str(ROOT / "var" / "test-artifacts"))) / "e2e"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def portal_url(
    django_db_setup: None, django_db_blocker: DjangoDbBlocker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`manage.py serve` (daphne) on a free loopback port, on the test database.

    One per test: the flush between transactional tests recreates the content types with new ids,
    and a long-lived server would go on using the ids it cached (quota claims name their holder's
    content type).
    """
    port = _free_port()
    log = tmp_path_factory.mktemp("portal") / "web.log"
    with django_db_blocker.unblock():
        env = subprocess_env()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--bind", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"the portal exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:  # noqa: S310 - loopback
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the portal did not answer in 60 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium from Debian's package (the test command installs it; missing fails).

    Per module: Playwright's sync API keeps an asyncio loop running in the test thread while it
    is open, which later tests' asyncio.run() would trip over. While it runs, Django would also
    refuse the tests' own (synchronous) ORM calls as "async unsafe": allowed for these modules only.
    """
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (the test command does)")
    before = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
            )
            yield chromium
            chromium.close()
    finally:
        if before is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = before


def log_in(browser: Browser, portal_url: str, username: str, password: str, **context: object) -> Page:
    """A new browser context (its own cookies), logged in through the login form."""
    page = browser.new_context(base_url=portal_url, **context).new_page()  # type: ignore[arg-type]
    page.set_default_timeout(30_000)
    page.goto("/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/t/[^/]+/$"))
    return page


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
