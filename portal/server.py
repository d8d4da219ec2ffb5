"""The production HTTP server: daphne, with Twisted's own parsing of POST form bodies turned off.

Twisted's ``http.Request.requestReceived`` parses the body of every POST sent as
``multipart/form-data`` or ``application/x-www-form-urlencoded`` into ``request.args``, before
daphne hands the request to the ASGI application. Daphne never uses those args (it passes the raw
body on), but when the multipart parse fails Twisted answers on its own: a bare
``HTTP/1.1 400 Bad Request`` with no headers and no body, and closes the connection. Django never
hears of the request, so the API cannot answer it as problem+json. With the parse off (the
``parsePOSTFormSubmission`` switch Twisted offers for this), every body reaches Django, and the
API refuses a form body with 415 like any other body it does not take (portal.body_limits). It also
spares Twisted from holding a second, parsed copy of every form upload in memory.
"""

from __future__ import annotations

from typing import Any


def disable_form_parsing() -> None:
    """Make daphne's request class tell Twisted not to parse POST form bodies (idempotent)."""
    from daphne import http_protocol

    if getattr(http_protocol.WebRequest, "nubis_raw_bodies", False):
        return

    class RawBodyWebRequest(http_protocol.WebRequest):
        nubis_raw_bodies = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["parsePOSTFormSubmission"] = False
            super().__init__(*args, **kwargs)

    # HTTPFactory.buildProtocol looks the class up by this name for every new connection.
    http_protocol.WebRequest = RawBodyWebRequest


def run_daphne(argv: list[str]) -> None:
    """Run daphne's command line with ``argv`` (after turning Twisted's form parsing off)."""
    disable_form_parsing()
    from daphne.cli import CommandLineInterface

    CommandLineInterface().run(argv)
