"""Say what this deployment's tenant networks left on the host, and remove it with --purge."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from compute.drivers.network import PlumbingError
from compute.services.network_leftovers import leftovers, leftovers_purge
from compute.services.ports import chain_owner


class Command(BaseCommand):
    help = (
        "List the bridges, dnsmasq, network namespaces and iptables chains this deployment "
        "(NUBIS_DOMAIN_PREFIX) left on the host; --purge removes them."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--purge", action="store_true", help="remove them (refused while instances run)")

    def handle(self, *args: Any, **options: Any) -> None:
        who = f"deployment {settings.NUBIS_DOMAIN_PREFIX!r} (chain owner id {chain_owner()})"
        try:
            if options["purge"]:
                removed = leftovers_purge()
                self.stdout.write(f"removed for {who}: {', '.join(removed) or 'nothing was left'}")
                return
            left = leftovers()
        except PlumbingError as exc:
            raise CommandError(f"tenant networks of {who}: {exc}") from None
        if left.empty():
            self.stdout.write(f"tenant networks: nothing of {who} is left on this host")
            return
        self.stdout.write(f"tenant networks: left on this host by {who}:")
        for line in left.lines():
            self.stdout.write(f"  {line}")
        self.stdout.write("  the agent takes them over when it starts again; remove them with --purge")
