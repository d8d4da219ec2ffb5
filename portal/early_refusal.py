"""Refusals the HTTP server gives on a request's headers alone, before it receives the body.

Daphne (Twisted) receives a whole request body, spooling a large one to a temporary file, before
the application hears of the request; Django's ASGI handler then reads it again. So a limit Django
enforces (portal.body_limits, an upload's quota) would come only after the bytes landed on the
server's disk. portal.server asks this module as soon as a request's headers are in:

- ``body_cap``: the most any request to that route may send (an image upload: NUBIS_IMAGE_MAX_GIB;
  anything else: a few times NUBIS_MAX_BODY_BYTES, which Django then enforces exactly). Past it,
  413 at once, and the connection closes.
- ``upload_refusal`` (run in a thread: it reads the database): for an image upload by a member of
  the tenant, the 413 the upload view would answer on its Content-Length (the tenant's image_gib
  left). A request it cannot place (no such tenant, no credentials, not a member) gets no early
  answer: the view answers it as usual, the body bounded by ``body_cap``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from html import escape
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib import auth
from django.db import close_old_connections
from django.http import HttpRequest
from django.http.cookie import parse_cookie
from django.urls import Resolver404, resolve

from compute.services.image_upload import UploadTooLarge, max_upload_bytes, upload_refusal
from portal.api_errors import problem_body
from portal.body_limits import size_in_words
from tenants.models import Role, Tenant

# (URL name, method) of the routes whose body is an image upload.
UPLOAD_ROUTES = {("api-images", "POST"), ("ui-image-upload", "POST")}
MULTIPART_SLACK = 1 << 20  # a form upload's boundaries and other fields around the file
OTHER_BODIES_FACTOR = 4  # of NUBIS_MAX_BODY_BYTES: Django's own check answers below that
OTHER_BODIES_FLOOR = 16 << 20


@dataclass(frozen=True)
class Refusal:
    """A complete answer: status, content type and body."""

    status: int
    content_type: str
    body: bytes


def _route(path: str) -> tuple[str, dict[str, Any]] | None:
    try:
        match = resolve(path)
    except Resolver404:
        return None
    return str(match.url_name), dict(match.kwargs)


def body_cap(method: str, path: str) -> tuple[int, bool]:
    """The most bytes a request to this route may send at all, and whether it is an image upload."""
    route = _route(path)
    if route is not None and (route[0], method) in UPLOAD_ROUTES:
        return max_upload_bytes() + MULTIPART_SLACK, True
    return max(settings.DATA_UPLOAD_MAX_MEMORY_SIZE * OTHER_BODIES_FACTOR, OTHER_BODIES_FLOOR), False


def too_large(path: str, cap: int, length: int | None) -> Refusal:
    """413 for a body over ``body_cap`` (declared, or counted as it came)."""
    size = "" if length is None else f" ({size_in_words(length)})"
    detail = f"the request body{size} is larger than this server takes for it, {size_in_words(cap)}"
    return _refusal(path, UploadTooLarge("body", "max_size", detail))


def upload_refusal_for(path: str, headers: dict[str, str], length: int) -> Refusal | None:
    """The upload view's own 413 for this Content-Length, when the request is a member's upload.

    ``headers``: the request's headers, lower-case names. Runs in a thread of its own.
    """
    close_old_connections()
    try:
        route = _route(path)
        if route is None:
            return None
        tenant = Tenant.objects.filter(slug=str(route[1].get("tenant", "")), active=True).first()
        if tenant is None or not _may_upload(headers, tenant):
            return None
        refusal = upload_refusal(tenant, length)
        return None if refusal is None else _refusal(path, refusal)
    finally:
        close_old_connections()


def _may_upload(headers: dict[str, str], tenant: Tenant) -> bool:
    from tenants.access import membership_role
    from tenants.services.tokens import TokenRejected, token_authenticate

    scheme, _, secret = headers.get("authorization", "").partition(" ")
    if scheme.lower() in ("bearer", "token") and secret:
        try:
            token = token_authenticate(secret.strip())
        except TokenRejected:
            return False
        role = membership_role(token.created_by, tenant)
        return (
            token.tenant_id == tenant.pk
            and role is not None
            and role.at_least(Role.MEMBER)
            and Role(token.role).at_least(Role.MEMBER)
        )
    request = HttpRequest()
    request.COOKIES = parse_cookie(headers.get("cookie", ""))
    engine = import_module(settings.SESSION_ENGINE)
    request.session = engine.SessionStore(request.COOKIES.get(settings.SESSION_COOKIE_NAME))
    role = membership_role(auth.get_user(request), tenant)
    return role is not None and role.at_least(Role.MEMBER)


def _refusal(path: str, exc: UploadTooLarge) -> Refusal:
    message = f"{exc.field}: {exc.message}"
    if path.startswith("/api/"):
        errors = [{"field": exc.field, "rule": exc.rule, "message": exc.message}]
        body = problem_body(413, "Content Too Large", message, exc.rule, errors)
        return Refusal(413, "application/problem+json", json.dumps(body).encode())
    page = (
        "<!doctype html><html lang=en><meta charset=utf-8><title>Too large</title>"
        f"<h1>Upload refused</h1><p>{escape(exc.message)}</p>"
        "<p>Go back and choose a smaller image, or ask an admin for more image quota.</p></html>"
    )
    return Refusal(413, "text/html; charset=utf-8", page.encode())
