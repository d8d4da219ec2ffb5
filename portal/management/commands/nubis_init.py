"""Create the first administrator and a demo tenant; safe to run again (it then changes nothing)."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from tenants.models import Membership, Role, Tenant


class Command(BaseCommand):
    help = "Create an admin (its generated password is printed once) and a demo tenant, if missing."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--admin", default="admin", help="username of the administrator (default admin)")
        parser.add_argument("--tenant", default="demo", help="slug of the demo tenant (default demo)")

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        user_model = get_user_model()
        username = options["admin"]
        admin = user_model.objects.filter(username=username).first()
        if admin is None:
            password = secrets.token_urlsafe(12)
            admin = user_model.objects.create_superuser(username=username, email="", password=password)
            self.stdout.write(f"created admin user {username!r} with password: {password}")
            self.stdout.write("  (shown once; change it with: manage.py changepassword " + username + ")")
        else:
            self.stdout.write(f"admin user {username!r} exists; password unchanged")
        slug = options["tenant"]
        tenant, created = Tenant.objects.get_or_create(slug=slug, defaults={"name": slug.capitalize()})
        self.stdout.write(f"{'created' if created else 'kept'} tenant {tenant.slug!r}")
        _, joined = Membership.objects.get_or_create(user=admin, tenant=tenant, defaults={"role": Role.OWNER})
        if joined:
            self.stdout.write(f"made {username!r} owner of {tenant.slug!r}")
