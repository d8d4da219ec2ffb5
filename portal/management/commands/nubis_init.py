"""Create the first administrator and a demo tenant; safe to run again (it then changes nothing)."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from security.audit import Actor, audit_log
from security.models import Source
from tenants.models import Tenant
from tenants.services.members import tenant_create


class Command(BaseCommand):
    help = "Create an admin (its generated password is printed once) and a demo tenant, if missing."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--admin", default="admin", help="username of the administrator (default admin)")
        parser.add_argument("--tenant", default="demo", help="slug of the demo tenant (default demo)")

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        actor = Actor.system("nubis_init", source=Source.CLI)
        username = options["admin"]
        admin = get_user_model().objects.filter(username=username).first()
        if admin is None:
            password = secrets.token_urlsafe(12)
            admin = get_user_model().objects.create_superuser(username=username, email="", password=password)
            audit_log(actor=actor, action="user.create", target=admin, detail={"superuser": True})
            self.stdout.write(f"created admin user {username!r} with password: {password}")
            self.stdout.write(f"  (shown once; change it with: manage.py changepassword {username})")
        else:
            self.stdout.write(f"admin user {username!r} exists; password unchanged")
        slug = options["tenant"]
        if Tenant.objects.filter(slug=slug).exists():
            self.stdout.write(f"kept tenant {slug!r}")
        else:
            tenant_create(actor=actor, name=slug.capitalize(), slug=slug, owner_username=username)
            self.stdout.write(f"created tenant {slug!r} with {username!r} as its owner")
