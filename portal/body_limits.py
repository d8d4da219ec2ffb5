"""Bodies of API requests are bounded and JSON; any other body is refused as problem+json.

This runs before anything reads a body (the idempotency layer hashes it, DRF parses it), on every
route under /api/, whatever its method, so a route added later is covered without a word:

- larger than DATA_UPLOAD_MAX_MEMORY_SIZE (NUBIS_MAX_BODY_BYTES): 413, naming the limit. Django
  would raise RequestDataTooBig wherever the body is first read, and answer an HTML 400;
- not ``application/json`` (or JSON in another charset than UTF-8): 415. A multipart or form body
  would otherwise be parsed (and a malformed one fail in its own way) or silently ignored;
- JSON nested deeper than MAX_JSON_DEPTH: 400. The standard decoder recurses once per level, and
  about a thousand levels (under 2 KB) end in a RecursionError, a 500 with a traceback. The depth is
  counted on the raw bytes, before anything decodes them;
- JSON that does not parse (or is not UTF-8, or holds NaN/Infinity, as DRF's strict parser): 400,
  on every route, including those that ignore their body (an action such as ``stop/`` must not
  run on a body its client got wrong). DRF's parser (portal.parsers.CheckedJSONParser) takes the decoded value
  from here rather than decode the body a second time.

A request without a body (no Content-Length, or 0, and no Transfer-Encoding) passes untouched, and
so does a request whose view streams its own body (``streamed_body_methods`` on the view class,
e.g. an image upload): that view reads it in chunks and bounds it itself (a quota,
NUBIS_IMAGE_MAX_GIB), since reading it whole here would hold gigabytes in memory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.http.request import UnreadablePostError
from django.urls import Resolver404, resolve

from portal.api_errors import plain_problem
from portal.parsers import DECODED_ATTR

API_PREFIX = "/api/"
JSON_MEDIA_TYPE = "application/json"
# Nubis's own bodies nest 3 or 4 levels; 32 leaves room and stays far from the decoder's recursion.
MAX_JSON_DEPTH = 32

# A JSON string, escapes included (written unrolled: linear, no backtracking).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
_OPENING = frozenset(b"[{")


def json_too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text nests arrays and objects deeper than ``limit`` (strings ignored)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # not enough brackets to get there: the common case, at C speed
    depth = 0
    for byte in _STRING.sub(b'""', body).translate(None, _NOT_BRACKETS):
        if byte in _OPENING:
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def size_in_words(size: int) -> str:
    """``2621440 bytes (2.5 MiB)``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size} bytes ({size / scale:.3g} {unit})"
    return f"{size} bytes"


def _too_large() -> HttpResponse:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    detail = f"the request body is larger than the limit of {size_in_words(limit)}"
    errors = [{"field": "body", "rule": "max_size", "message": detail}]
    return plain_problem(413, "Content Too Large", detail, "too_large", errors)


def _unsupported(request: HttpRequest, content_type: str) -> HttpResponse:
    named = f"Content-Type {content_type!r}" if content_type else "a body without a Content-Type"
    detail = f"{named} is not accepted: API bodies are {JSON_MEDIA_TYPE} (UTF-8)"
    errors = [{"field": "Content-Type", "rule": "unsupported_media_type", "message": detail}]
    response = plain_problem(415, "Unsupported Media Type", detail, "unsupported_media_type", errors)
    if request.method in ("POST", "PATCH"):
        # RFC 7694 / RFC 5789: say which media type the method accepts.
        response[f"Accept-{request.method.title()}"] = JSON_MEDIA_TYPE
    return response


def _bad_body(detail: str, rule: str) -> HttpResponse:
    errors = [{"field": "body", "rule": rule, "message": detail}]
    return plain_problem(400, "Bad Request", detail, "parse_error", errors)


def _declares_body(request: HttpRequest) -> bool:
    return bool(request.META.get("CONTENT_LENGTH")) or "HTTP_TRANSFER_ENCODING" in request.META


def streams_body(request: HttpRequest) -> bool:
    """Whether the view of the request's route reads this method's body itself, as a stream."""
    try:
        match = resolve(request.path_info, getattr(request, "urlconf", None))
    except Resolver404:
        return False
    view = getattr(match.func, "view_class", None) or getattr(match.func, "cls", None)
    return request.method in getattr(view, "streamed_body_methods", ())


def refusal(request: HttpRequest) -> HttpResponse | None:
    """The problem answer for a body the API does not take, or None when the body is fine."""
    declared = request.META.get("CONTENT_LENGTH") or "0"
    try:
        length = int(declared)
    except ValueError:
        return _bad_body(f"Content-Length {declared!r} is not a number of bytes", "invalid")
    if length > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
        return _too_large()  # refused on the header, before a byte of it is read
    try:
        body = request.body  # bounded by DATA_UPLOAD_MAX_MEMORY_SIZE, chunked bodies too
    except RequestDataTooBig:
        return _too_large()
    except UnreadablePostError as exc:
        return _bad_body(f"the request body could not be read: {exc}", "unreadable")
    if not body:
        return None
    content_type = request.META.get("CONTENT_TYPE", "")
    charset = (request.content_params or {}).get("charset", "utf-8").lower()
    if (request.content_type or "").lower() != JSON_MEDIA_TYPE or charset not in ("utf-8", "utf8"):
        return _unsupported(request, content_type)
    if json_too_deep(body):
        detail = f"the JSON body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels"
        return _bad_body(detail, "max_depth")
    try:
        decoded = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return _bad_body(f"JSON parse error - {exc}", "parse_error")
    setattr(request, DECODED_ATTR, decoded)
    return None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON value")


class ApiBodyMiddleware:
    """Refuse, as problem+json, an API request body that is too large, not JSON, or nested too deep."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(API_PREFIX) and _declares_body(request) and not streams_body(request):
            refused = refusal(request)
            if refused is not None:
                return refused
        return self.get_response(request)
