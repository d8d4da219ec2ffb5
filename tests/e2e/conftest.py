"""Browser tests: the real portal (daphne: HTTP and websockets) on loopback, pointed at the test
database, the session's compute agent, and Debian's headless Chromium driven by Playwright.

Screenshots go to $NUBIS_TEST_ARTIFACTS/e2e (default var/test-artifacts/e2e).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, sync_playwright
from pytest_django import DjangoDbBlocker

from tests.conftest import ROOT, serve_portal, subprocess_env

CHROMIUM = os.environ.get("NUBIS_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("NUBIS_TEST_ARTIFACTS", str(ROOT / "var" / "test-artifacts"))) / "e2e"

# Content-Security-Policy violations seen by any page of the current test (see watch_csp); the
# autouse fixture no_csp_violations fails the test on any.
CSP_VIOLATIONS: list[str] = []

# Runs in every page before its own scripts: reports each violation to the test (and keeps it in
# window.__cspViolations for a test to read).
_CSP_LISTENER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  const text = `${e.effectiveDirective} refused ${e.blockedURI || "inline code"}` +
    ` in ${e.sourceFile || document.location.href}:${e.lineNumber} ${e.sample || ""}`.trimEnd();
  window.__cspViolations.push(text);
  if (window.__nubisCspViolation) window.__nubisCspViolation(text);
});
"""


def watch_csp(context: BrowserContext) -> BrowserContext:
    """Record every CSP violation of the context's pages: the DOM event, and Chromium's console
    message ("Refused to ... because it violates the following Content Security Policy ...")."""

    def on_event(source: dict[str, Any], text: str) -> None:
        CSP_VIOLATIONS.append(f"{source['page'].url}: {text}")

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            CSP_VIOLATIONS.append(f"{message.page.url if message.page else '?'}: {message.text}")

    context.expose_binding("__nubisCspViolation", on_event)
    context.add_init_script(_CSP_LISTENER)
    context.on("console", on_console)
    return context


@pytest.fixture(autouse=True)
def no_csp_violations() -> Iterator[None]:
    """Fail any browser test during which a page broke the Content-Security-Policy."""
    CSP_VIOLATIONS.clear()
    yield
    seen, CSP_VIOLATIONS[:] = list(CSP_VIOLATIONS), []
    assert not seen, "Content-Security-Policy violations:\n" + "\n".join(seen)


@pytest.fixture
def portal_url(
    django_db_setup: None, django_db_blocker: DjangoDbBlocker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`manage.py serve` (daphne) on a free loopback port, on the test database.

    One per test: the flush between transactional tests recreates the content types with new ids,
    and a long-lived server would go on using the ids it cached (quota claims name their holder's
    content type).
    """
    log = tmp_path_factory.mktemp("portal") / "web.log"
    with django_db_blocker.unblock():
        env = subprocess_env()
    with serving_portal(log, env) as url:
        yield url


@contextlib.contextmanager
def serving_portal(log: Path, env: dict[str, str]) -> Iterator[str]:
    """serve_portal, once the application answers /healthz (listening is not yet serving); yields
    its base URL."""
    with serve_portal(log, env) as port:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
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
            # Every context (and so every page) a test opens watches for CSP violations.
            new_context = chromium.new_context

            def watched_context(**options: Any) -> BrowserContext:
                return watch_csp(new_context(**options))

            def watched_page(**options: Any) -> Page:
                return watched_context(**options).new_page()

            chromium.new_context = watched_context  # type: ignore[method-assign]
            chromium.new_page = watched_page  # type: ignore[method-assign]
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
