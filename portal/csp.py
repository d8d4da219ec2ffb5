"""Content-Security-Policy on every HTML answer: scripts, styles and connections from this origin only.

Every script and stylesheet the UI, the admin and the API docs use is a file served from here
(vendored, no CDN), and no template carries inline scripts, inline event handlers, style
attributes or ``javascript:`` URLs, so the policy needs no ``'unsafe-inline'`` and no nonces.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse

HEADER = "Content-Security-Policy"

# Directive -> sources. connect-src also gets the websocket origin of the request (see policy_for).
DIRECTIVES: dict[str, tuple[str, ...]] = {
    "default-src": ("'self'",),
    "script-src": ("'self'",),
    "style-src": ("'self'",),
    # noVNC draws the remote cursor from a data: URL; Swagger UI's icons are data: SVGs.
    "img-src": ("'self'", "data:"),
    "font-src": ("'self'",),
    "connect-src": ("'self'",),
    "object-src": ("'none'",),
    "base-uri": ("'self'",),
    "form-action": ("'self'",),
    "frame-ancestors": ("'none'",),
}


def policy_for(request: HttpRequest) -> str:
    """The policy for one answer: the fixed directives, plus this host's websocket origins.

    CSP Level 3 lets ``'self'`` match ws:/wss: on the same host, but older browsers need the
    websocket origin spelled out. ``get_host()`` has been checked against ALLOWED_HOSTS (its
    syntax too), so it is safe to put in a header.
    """
    try:
        host: str | None = request.get_host()
    except DisallowedHost:
        host = None  # the answer is Django's 400 for that host; 'self' alone will do
    parts = []
    for name, sources in DIRECTIVES.items():
        if name == "connect-src" and host is not None:
            sources = (*sources, f"ws://{host}", f"wss://{host}")
        parts.append(f"{name} {' '.join(sources)}")
    return "; ".join(parts)


class ContentSecurityPolicyMiddleware:
    """Add the policy to every HTML response that does not already carry one.

    JSON and other non-HTML answers get none: a browser does not run them as a page's scripts.
    With DEBUG on, Django's own error pages (inline styles and scripts) are left without one.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        content_type = response.get("Content-Type", "")
        if settings.DEBUG and response.status_code >= 400:
            return response
        if content_type.split(";", 1)[0].strip().lower() == "text/html" and HEADER not in response:
            response[HEADER] = policy_for(request)
        return response
