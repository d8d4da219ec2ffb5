"""Run the compute agent of this host: register and probe it, heartbeat, and work its Celery queue."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, replace
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from compute.agent_rpc import withdraw
from compute.agent_threads import rejoin_after_fence, start_threads
from compute.drivers.base import DriverError
from compute.drivers.network import PlumbingError
from compute.models import Host, Image
from compute.services.agent import resume_interrupted
from compute.services.guests import guest_spec_for_probe
from compute.services.hosts import host_heartbeat, host_register
from compute.services.ports import host_networks_sync, local_routes
from compute.services.preflight import require_agent
from compute.services.reconcile import reconcile_host
from compute.tasks import local_driver
from core.queues import host_queue

logger = logging.getLogger("nubis.agent")


class Command(BaseCommand):
    help = "Run this host's compute agent: probe and register the host, heartbeat, and consume host.<name>."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--name", default=settings.NUBIS_HOST_NAME, help="host name (default NUBIS_HOST_NAME)"
        )
        parser.add_argument("--concurrency", type=int, default=4, help="operations run at once (default 4)")
        parser.add_argument(
            "--kvm-probe",
            choices=["auto", "always", "never"],
            default="auto",
            help="boot a probe guest under KVM: auto = when never probed or older than a day",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        require_agent()
        name = options["name"]
        driver = local_driver()
        known = Host.objects.filter(name=name).first()
        stale = known is None or known.probed_at is None or (timezone.now() - known.probed_at).days >= 1
        probe = options["kvm_probe"] == "always" or (options["kvm_probe"] == "auto" and stale)
        image = Image.objects.filter(kernel_path__gt="").order_by("created").first()
        started = time.monotonic()
        try:
            facts = driver.facts(
                probe_kvm=probe,
                probe_image=guest_spec_for_probe(image) if image else None,
                scratch=settings.NUBIS_INSTANCE_DIR,
            )
            driver.ensure_network(settings.NUBIS_LIBVIRT_NETWORK)
        except DriverError as exc:
            raise SystemExit(f"nubis: LIBVIRT_URI: {exc}") from None
        if known is not None and not probe:
            # Keep the last probe's verdict on KVM rather than forgetting it.
            facts = replace(
                facts,
                kvm_usable=known.kvm_usable,
                kvm_probe_detail=known.kvm_probe_detail,
                paging=known.paging,
            )
        host = host_register(name=name, uri=settings.LIBVIRT_URI, facts=asdict(facts))
        host_heartbeat(name, routes=local_routes())  # the subnet allocator avoids them from now on
        self.stdout.write(
            f"agent {name}: {host.cpus} CPUs, {host.ram_mib} MiB, KVM usable: {host.kvm_usable} "
            f"({host.kvm_probe_detail}), TCG: {host.tcg_available}, paging: {host.paging}, "
            f"IOMMU: {host.iommu}, "
            f"{host.vmm} [{time.monotonic() - started:.1f} s]"
        )
        destroyed = rejoin_after_fence(name)
        if destroyed:
            self.stdout.write(f"agent {name}: fenced while away; destroyed {destroyed} before rejoining")
        resumed = resume_interrupted(host)
        if resumed:
            self.stdout.write(f"agent {name}: re-queued {resumed} interrupted operation(s)")
        report = reconcile_host(host, driver)
        self.stdout.write(f"agent {name}: reconciled at start: {report.as_dict()}")
        try:
            self.stdout.write(f"agent {name}: networks: {host_networks_sync(host)}")
        except PlumbingError as exc:
            raise SystemExit(f"nubis: tenant networks: {exc}") from None
        stop = threading.Event()
        start_threads(name, facts, stop)
        try:
            # The project's Celery app (portal.celery, made current when Django loaded the project).
            current_app.worker_main(
                argv=[
                    "worker",
                    "-Q",
                    host_queue(name),
                    "-n",
                    f"agent@{name}",
                    "--pool",
                    "threads",
                    "--concurrency",
                    str(options["concurrency"]),
                    "--without-gossip",
                    "--without-mingle",
                    "--loglevel",
                    "INFO",
                ]
            )
        finally:
            stop.set()
            withdraw(name)  # callers fail at once instead of waiting for an answer
