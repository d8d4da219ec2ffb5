"""Verify the audit trail's hash chain; name every record that was altered, removed or re-linked."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from security.audit import verify_chain


class Command(BaseCommand):
    help = (
        "Verify the audit trail's hash chain. Exits non-zero and names the records if it was tampered with."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        checked, problems = verify_chain()
        for problem in problems:
            self.stderr.write(str(problem))
        if problems:
            raise CommandError(f"audit chain broken: {len(problems)} problem(s) in {checked} record(s)")
        self.stdout.write(f"audit chain intact: {checked} record(s) verified")
