"""Serve the ASGI portal with daphne, after checking that the database and Redis answer."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from portal import preflight, server


class Command(BaseCommand):
    help = "Run the portal (HTTP and websockets) under daphne; refuses to start without database and Redis."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
        parser.add_argument("--access-log", default=None, help="access log file (default: none)")

    def handle(self, *args: Any, **options: Any) -> None:
        preflight.require(["database", "redis"])
        argv = ["--bind", options["bind"], "--port", str(options["port"])]
        if settings.NUBIS_TRUST_PROXY_HEADERS:
            argv.append("--proxy-headers")  # the client's address from the proxy's X-Forwarded-For
        if options["access_log"]:
            argv += ["--access-log", options["access_log"]]
        argv.append("portal.asgi:application")
        server.run_daphne(argv)
