"""Content-Security-Policy: on every HTML page (UI, staff, admin, API docs, login and lockout),
strict enough that no inline code runs, and no page of ours needs inline code to work."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.test import Client, override_settings
from rest_framework.test import APIClient

from portal.csp import HEADER
from tests.factories import make_user
from tests.isolation.routes import Case, all_http_cases
from tests.isolation.world import PERSONAS, World, build_world

ROOT = Path(__file__).resolve().parents[2]

POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self' ws://testserver wss://testserver; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)

# What a strict policy refuses, as it appears in markup.
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>", re.I)
STYLE_ELEMENT = re.compile(r"<style\b", re.I)
STYLE_ATTRIBUTE = re.compile(r"<[a-z][^>]*\sstyle\s*=", re.I)
EVENT_HANDLER = re.compile(r"<[a-z][^>]*\son[a-z]+\s*=", re.I)
JAVASCRIPT_URL = re.compile(r"(href|src|action)\s*=\s*[\"']?\s*javascript:", re.I)


def inline_code(html: str) -> list[str]:
    """Every construct in the page that the policy would block."""
    found = []
    for name, pattern in (
        ("inline script", INLINE_SCRIPT),
        ("style element", STYLE_ELEMENT),
        ("style attribute", STYLE_ATTRIBUTE),
        ("event handler attribute", EVENT_HANDLER),
        ("javascript: URL", JAVASCRIPT_URL),
    ):
        found += [f"{name}: {m.group(0)[:120]}" for m in pattern.finditer(html)]
    return found


def test_the_markup_check_finds_what_the_policy_blocks() -> None:
    """The check above is what the page walk relies on: it must see each kind of inline code."""
    assert len(inline_code('<script>alert(1)</script><script type="module">x</script>')) == 2
    assert inline_code('<script src="/static/x.js" defer></script>') == []
    assert inline_code('<script id="d" type="application/json">{"a": 1}</script>') == []
    assert inline_code("<style>p {}</style>")
    assert inline_code('<div class="x" style="width:1%">')
    assert inline_code('<button type="button" onclick="go()">')
    assert inline_code('<a href="javascript:void(0)">')
    assert inline_code('<p data-style="a" title="onclick">') == []


def _pages(world: World) -> list[tuple[str, str, Client]]:
    """(route, path, client) for every GET route, as the first persona allowed to read it."""
    clients: dict[str, Client] = {}
    pages = []
    for key, cases in sorted(all_http_cases().items()):
        for case in cases:
            if case.method != "GET":
                continue
            persona = _reader(case)
            if persona is None:
                continue
            if persona not in clients:
                clients[persona] = APIClient()
                if persona != "anon":
                    clients[persona].force_login(world.users[persona])
            pages.append((key, case.path(world), clients[persona]))
    return pages


def _reader(case: Case) -> str | None:
    for persona in ("superuser", "a_owner", "staff", *PERSONAS):
        if case.expect.get(persona) == 200:
            return persona
    return None


@pytest.mark.django_db
def test_every_html_page_carries_the_policy_and_no_inline_code() -> None:
    world = build_world()
    html_pages = json_pages = 0
    problems = []
    for key, path, client in _pages(world):
        response = client.get(path, HTTP_ACCEPT="text/html,application/xhtml+xml,*/*;q=0.8")
        if response.status_code != 200:
            problems.append(f"{key} {path}: status {response.status_code}")
            continue
        content_type = response["Content-Type"].split(";")[0]
        if content_type == "text/html":
            html_pages += 1
            if response.get(HEADER) != POLICY:
                problems.append(f"{key} {path}: {HEADER} is {response.get(HEADER)!r}")
            problems += [f"{key} {path}: {p}" for p in inline_code(response.content.decode())]
        else:
            assert HEADER not in response, f"{key} {path} ({content_type}) has a policy"
        if path.startswith("/api/v1/"):  # the same route, asked for JSON as API clients do
            response = client.get(path, HTTP_ACCEPT="application/json")
            assert response["Content-Type"].startswith("application/json"), (key, path)
            assert HEADER not in response, f"{key} {path} (JSON) has a policy"
            json_pages += 1
    assert not problems, "\n".join(problems)
    assert html_pages > 60, html_pages  # UI, staff, admin and docs pages: the walk really walked
    assert json_pages > 10, json_pages


@pytest.mark.django_db
def test_the_login_page_and_the_lockout_page_carry_the_policy() -> None:
    client = Client()
    response = client.get("/login/")
    assert response[HEADER] == POLICY
    assert inline_code(response.content.decode()) == []
    make_user("locked")
    with override_settings(AXES_FAILURE_LIMIT=1):
        response = client.post("/login/", {"username": "locked", "password": "wrong"})
    assert response.status_code == 429
    assert response[HEADER] == POLICY
    assert inline_code(response.content.decode()) == []


@pytest.mark.django_db
def test_the_api_docs_load_their_start_up_script_from_a_file() -> None:
    client = Client()
    page = client.get("/api/docs/")
    html = page.content.decode()
    assert page[HEADER] == POLICY
    assert inline_code(html) == []
    script_url = re.findall(r'<script src="([^"]+)"', html)[-1]
    assert "script=" in script_url
    script = client.get(script_url.replace("&amp;", "&"))
    assert script.status_code == 200
    assert script["Content-Type"].startswith("application/javascript")
    assert "SwaggerUIBundle" in script.content.decode()
    assert "/api/schema/" in script.content.decode()
    # No validator badge: on any host but localhost, Swagger UI would load it from
    # validator.swagger.io, an image the policy refuses.
    assert '"validatorUrl": null' in script.content.decode()


@pytest.mark.django_db
def test_a_refused_form_gets_a_page_that_needs_no_inline_code() -> None:
    """Django's own CSRF failure page has an inline style element: ours replaces it."""
    client = Client(enforce_csrf_checks=True)
    response = client.post("/login/", {"username": "someone", "password": "x"})
    assert response.status_code == 403
    html = response.content.decode()
    assert "Form refused (403)" in html
    assert response[HEADER] == POLICY
    assert inline_code(html) == []


@pytest.mark.django_db
def test_json_answers_carry_no_policy() -> None:
    client = APIClient()
    client.force_login(make_user("reader"))
    for path in ("/api/v1/tenants/", "/api/schema/?format=json", "/readyz?format=json"):
        response = client.get(path, HTTP_ACCEPT="application/json")
        assert response["Content-Type"].startswith(("application/json", "application/vnd.oai.openapi")), path
        assert HEADER not in response, path


@pytest.mark.django_db
def test_the_websocket_origin_follows_the_host() -> None:
    response = Client().get("/login/", HTTP_HOST="localhost:8000")
    assert "connect-src 'self' ws://localhost:8000 wss://localhost:8000;" in response[HEADER]


def test_no_template_or_script_of_ours_holds_inline_code() -> None:
    """Templates are checked as source too: a branch the page walk does not reach still counts."""
    problems = []
    for path in sorted((ROOT / "templates").rglob("*.html")):
        problems += [f"{path.relative_to(ROOT)}: {p}" for p in inline_code(path.read_text())]
    for path in sorted((ROOT / "static" / "js").rglob("*.js")):
        text = path.read_text()
        for needle in (
            'setAttribute("style"',
            "setAttribute('style'",
            "javascript:",
            "eval(",
            "new Function",
        ):
            if needle in text:
                problems.append(f"{path.relative_to(ROOT)}: {needle}")
        problems += [f"{path.relative_to(ROOT)}: {p}" for p in inline_code(text)]
    assert not problems, "\n".join(problems)
