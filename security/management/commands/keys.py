"""The key hierarchy (security.keys): what wraps what, and rotating the master key or a tenant's."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from compute.models import InstanceKey
from compute.services.keys import tenant_key_rotate
from security.audit import Actor
from security.ca import ca_pem
from security.keys import KeyUnavailable, provider
from tenants.models import Tenant, TenantKey
from tenants.services.keys import master_key_rewrap, master_key_rotate


class Command(BaseCommand):
    help = (
        "status: the master key's versions and how many keys each wraps; "
        "rotate-master: a new master key version, every tenant key re-wrapped, old versions retired; "
        "rewrap: finish a rotation cut short; rotate-tenant SLUG: a new key for one tenant, its "
        "instances' data keys re-wrapped; ca: the hosts' CA certificate (PEM), made on first use."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["status", "rotate-master", "rewrap", "rotate-tenant", "ca"])
        parser.add_argument("tenant", nargs="?", help="rotate-tenant: the tenant's slug")

    def handle(self, *args: Any, **options: Any) -> None:
        actor = Actor.system("manage.py keys")
        action = options["action"]
        try:
            if action == "rotate-master":
                done = master_key_rotate()
                self.stdout.write(
                    f"master key {done['previous']} -> {done['current']}: {done['rewrapped']} tenant key(s) "
                    f"re-wrapped; retired: {', '.join(done['retired']) or 'none'}"
                )
            elif action == "ca":
                self.stdout.write(ca_pem().decode(), ending="")
            elif action == "rewrap":
                self.stdout.write(f"{master_key_rewrap()} tenant key(s) re-wrapped")
            elif action == "rotate-tenant":
                tenant = Tenant.objects.filter(slug=options["tenant"] or "").first()
                if tenant is None:
                    raise CommandError(f"tenant: no tenant with slug {options['tenant']!r}")
                done = tenant_key_rotate(tenant, actor)
                self.stdout.write(
                    f"{tenant.slug}: key v{done['version']}, {done['rewrapped']} data key(s) re-wrapped"
                )
            else:
                self._status()
        except KeyUnavailable as exc:
            raise CommandError(str(exc)) from None

    def _status(self) -> None:
        keys = provider()
        self.stdout.write(f"provider: {type(keys).__name__}; current master key: {keys.current_id()}")
        for master_id in sorted(set(TenantKey.objects.values_list("master_id", flat=True))):
            count = TenantKey.objects.filter(master_id=master_id).count()
            self.stdout.write(f"  {master_id}: wraps {count} tenant key(s)")
        live = InstanceKey.objects.unscoped().filter(destroyed__isnull=True).count()
        gone = InstanceKey.objects.unscoped().filter(destroyed__isnull=False).count()
        self.stdout.write(f"data keys: {live} live, {gone} destroyed (crypto-erased)")
