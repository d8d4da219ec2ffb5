"""Check that the database, Redis and libvirt answer; one line each, non-zero exit on failure."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from compute.services.preflight import check_libvirt
from portal import preflight

# The portal's checks, and libvirt's from the compute layer (this command is not the web process).
CHECKS = {
    "database": preflight.CHECKS["database"],
    "redis": preflight.CHECKS["redis"],
    "libvirt": check_libvirt,
    "stores": preflight.CHECKS["stores"],
}
DEFAULT_CHECKS = ["database", "redis", "libvirt"]


class Command(BaseCommand):
    help = (
        "Check the dependencies Nubis needs (database, redis, libvirt; with --only, also stores: "
        "whether QEMU and containers can reach the image and instance directories) and print one "
        "line each."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--only",
            default=",".join(DEFAULT_CHECKS),
            help=f"comma-separated subset of: {', '.join(CHECKS)} (default {','.join(DEFAULT_CHECKS)})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        names = [n.strip() for n in options["only"].split(",") if n.strip()]
        unknown = [n for n in names if n not in CHECKS]
        if unknown:
            raise CommandError(
                f"--only: unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}"
            )
        results = [CHECKS[name]() for name in names]
        for result in results:
            self.stdout.write(result.line())
        failed = [r for r in results if not r.ok]
        if failed:
            raise CommandError(", ".join(f"{r.setting}: {r.name} unreachable" for r in failed))
