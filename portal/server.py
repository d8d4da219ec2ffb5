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

The same request class also refuses a body before it is received (portal.early_refusal): Twisted
spools a whole body to a temporary file before daphne hands the request on, so Django's own
limits would come only after the bytes landed on this server's disk. A body over its route's cap
(declared, or counted as it arrives) is answered 413 at once and the connection closed; an image
upload is first paused while a thread asks whether the tenant has room for its Content-Length.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

logger = logging.getLogger(__name__)


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
            self.nubis_refused = False
            self.nubis_received = 0
            self.nubis_cap: int | None = None
            self.nubis_path = "/"

        def gotLength(self, length: int | None) -> None:
            super().gotLength(length)
            _early_check(self, length)

        def handleContentChunk(self, data: bytes) -> None:
            if self.nubis_refused:
                return
            self.nubis_received += len(data)
            if self.nubis_cap is not None and self.nubis_received > self.nubis_cap:
                from portal import early_refusal

                _refuse(self, early_refusal.too_large(self.nubis_path, self.nubis_cap, None))
                return
            super().handleContentChunk(data)

        def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
            if self.nubis_refused:
                return  # answered already; the connection is closing
            super().requestReceived(command, path, version)

    # HTTPFactory.buildProtocol looks the class up by this name for every new connection.
    http_protocol.WebRequest = RawBodyWebRequest


def _early_check(request: Any, length: int | None) -> None:
    """Right after a request's headers: its body cap, and for an image upload the tenant's room."""
    from twisted.internet import reactor, threads

    from portal import early_refusal

    channel = request.channel
    method = bytes(getattr(channel, "_command", b"")).decode("latin-1")
    request.nubis_path = unquote(urlsplit(bytes(getattr(channel, "_path", b"/")).decode("latin-1")).path)
    try:
        request.nubis_cap, upload = early_refusal.body_cap(method, request.nubis_path)
    except Exception:  # the application answers it as usual
        logger.exception("early refusal: cannot classify %s %s", method, request.nubis_path)
        return
    if length is not None and length > request.nubis_cap:
        refusal = early_refusal.too_large(request.nubis_path, request.nubis_cap, length)
        # After Twisted's own "100 Continue", if the client asked for one.
        clock: Any = reactor
        clock.callLater(0, _refuse, request, refusal)
        request.nubis_refused = True
        return
    if not upload or not length:
        return
    headers = {
        name.decode("latin-1").lower(): values[0].decode("latin-1")
        for name, values in request.requestHeaders.getAllRawHeaders()
    }
    transport = channel.transport
    transport.pauseProducing()  # no more of the body until the answer

    def checked(refusal: Any) -> None:
        if refusal is not None:
            _refuse(request, refusal)
        elif not request.nubis_refused:
            transport.resumeProducing()

    def failed(failure: Any) -> None:  # the view checks again, on the whole body
        logger.error("early refusal: the upload check failed: %s", failure.getErrorMessage())
        transport.resumeProducing()

    deferred = threads.deferToThread(early_refusal.upload_refusal_for, request.nubis_path, headers, length)
    deferred.addCallbacks(checked, failed)


def _refuse(request: Any, refusal: Any) -> None:
    """Answer ``refusal`` and close, whatever of the body has come or is still coming."""
    request.nubis_refused = True
    transport = request.channel.transport
    if getattr(request, "nubis_answered", False) or transport is None:
        return
    request.nubis_answered = True
    request.content.close()  # a spooled temporary file goes now
    reason = HTTPStatus(refusal.status).phrase
    head = (
        f"HTTP/1.1 {refusal.status} {reason}\r\nContent-Type: {refusal.content_type}\r\n"
        f"Content-Length: {len(refusal.body)}\r\nConnection: close\r\n\r\n"
    )
    transport.write(head.encode("latin-1") + refusal.body)
    transport.loseConnection()


def run_daphne(argv: list[str]) -> None:
    """Run daphne's command line with ``argv`` (after turning Twisted's form parsing off)."""
    disable_form_parsing()
    from daphne.cli import CommandLineInterface

    CommandLineInterface().run(argv)
