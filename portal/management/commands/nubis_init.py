"""Create the first administrator and a demo tenant; safe to run again (it then changes nothing)."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from compute.models import CpuMode, Flavor, IoModel
from security.audit import Actor, audit_log
from security.models import Source
from tenants.models import Tenant
from tenants.services.members import tenant_create

# A starting catalogue that shows each technique; admins edit or replace it in Django admin.
DEFAULT_FLAVORS: dict[str, dict[str, object]] = {
    "m1.tiny": {
        "vcpus": 1,
        "ram_mib": 256,
        "disk_gib": 1,
        "cpu_mode": CpuMode.EMULATED,
        "io_model": IoModel.VIRTIO,
        "balloon": True,
        "min_ram_mib": 128,
    },
    "m1.tiny-legacy": {
        "vcpus": 1,
        "ram_mib": 256,
        "disk_gib": 1,
        "cpu_mode": CpuMode.EMULATED,
        "io_model": IoModel.EMULATED,
        "balloon": False,
    },
    "m1.small-kvm": {
        "vcpus": 2,
        "ram_mib": 1024,
        "disk_gib": 5,
        "cpu_mode": CpuMode.HARDWARE,
        "io_model": IoModel.VIRTIO,
        "balloon": True,
        "min_ram_mib": 512,
    },
    # For containers: half a CPU, 128 MiB, at most 256 processes.
    "c1.small": {
        "vcpus": 1,
        "ram_mib": 128,
        "disk_gib": 1,
        "cpu_limit_pct": 50,
        "pids_max": 256,
    },
}


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
        for name, spec in DEFAULT_FLAVORS.items():
            _, made = Flavor.objects.get_or_create(name=name, defaults=spec)
            self.stdout.write(f"{'created' if made else 'kept'} flavor {name!r}")
        slug = options["tenant"]
        if Tenant.objects.filter(slug=slug).exists():
            self.stdout.write(f"kept tenant {slug!r}")
        else:
            tenant_create(actor=actor, name=slug.capitalize(), slug=slug, owner_username=username)
            self.stdout.write(f"created tenant {slug!r} with {username!r} as its owner")
