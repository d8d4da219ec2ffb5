"""Benchmark: a Debian cloud VM through the portal against raw libvirt, request to SSH answering.

The Debian series of bench/vm_provision.py. Both paths boot the project's Debian 12 cloud image
(``manage.py build_guest_image --debian``, built and cached on first use) on libvirt's NAT network,
with the same key in a NoCloud config drive:

- portal: POST /api/v1/tenants/<slug>/instances/ with ``key_pairs`` (in-process DRF client) to a
  real compute agent subprocess; the agent makes the overlay and the config drive, defines and
  starts the domain;
- raw: the portal's own domain XML (``domain_xml(guest_spec(...))`` with a fresh name and UUID) on
  a fresh overlay and a config drive made before the clock starts, ``defineXML`` + ``create()``.

"Ready" is SSH answering: ``ssh -i KEY debian@ADDRESS true`` succeeds from this machine, the
address being the guest's DHCP lease on libvirt's NAT network. The paths alternate VM by VM, as in
vm_provision. Under TCG a boot takes one to two minutes: the default is 5 VMs per path.

    .venv/bin/python bench/vm_provision_debian.py [--count 5]

Writes bench/results/vm_provision_debian.json. It reports; it asserts nothing about timings.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import libvirt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.vm_provision import ROOT, Bench, BenchError, Env, parse_args, run_main

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from compute.drivers.base import GuestSpec
    from compute.models import Flavor, Image
    from tenants.models import Tenant

DEFAULT_OUTPUT = ROOT / "bench" / "results" / "vm_provision_debian.json"
SSH_TIMEOUT_S = 3


class DebianBench(Bench):
    NAME = "vm_provision_debian"
    READY_MEANS = "ssh -i KEY debian@ADDRESS true succeeds (sshd up, cloud-init gave the key)"
    FLAVOR = (1024, 3)

    def __init__(self, env: Env, args: Any) -> None:
        super().__init__(env, args)
        self.key = env.data_dir / f"bench-key-{env.tag}"
        self.keypair = f"bench-{env.tag}"
        self.addresses: dict[str, str] = {}  # domain -> its lease, once known
        self.next_try: dict[str, float] = {}

    def register_image(self) -> Image:
        from compute.guest.debian import build_debian_image
        from compute.services.images import image_register_debian

        built = build_debian_image(self.env.image_dir, log=lambda line: self.log(f"image: {line}"))
        return image_register_debian(built)

    def tenant_ready(self, tenant: Tenant, user: User) -> None:
        from compute.services.keypairs import keypair_import
        from security.audit import Actor

        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.keypair, "-f", str(self.key)],
            check=True,
            timeout=30,
        )
        public = self.key.with_suffix(".pub").read_text()
        actor = Actor(user.username, "api", user.pk)
        keypair_import(actor=actor, tenant=tenant, name=self.keypair, public_key=public)

    def create_body(self, name: str, flavor: Flavor, image: Image) -> dict[str, Any]:
        # No tenant network: libvirt's NAT network, which this machine reaches, like the raw path.
        return super().create_body(name, flavor, image) | {"key_pairs": [self.keypair], "network": None}

    def raw_prepared(self, spec: GuestSpec, workdir: Path) -> GuestSpec:
        """The raw guest's config drive, made as the agent makes it (same key, its own identity)."""
        from compute.drivers.seed import write_seed

        seed = workdir / "seed.iso"
        public = self.key.with_suffix(".pub").read_text().strip()
        meta = {"instance-id": spec.uuid, "local-hostname": spec.name, "public-keys": [public]}
        user_data = "#cloud-config\n" + json.dumps({"hostname": spec.name, "manage_etc_hosts": True}) + "\n"
        write_seed(seed, json.dumps(meta) + "\n", user_data)
        return dataclasses.replace(spec, seed_path=str(seed))

    def is_ready(self, domain: str, serial: Path) -> bool:
        now = time.monotonic()
        if now < self.next_try.get(domain, 0.0):
            return False
        self.next_try[domain] = now + 1.0  # at most one attempt a second per guest
        address = self.addresses.get(domain) or self.lease_of(domain)
        if address is None:
            return False
        self.addresses[domain] = address
        command = [
            "ssh",
            "-i",
            str(self.key),
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={SSH_TIMEOUT_S}",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            f"debian@{address}",
            "true",
        ]
        try:
            done = subprocess.run(command, capture_output=True, timeout=SSH_TIMEOUT_S + 5, check=False)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    def lease_of(self, domain: str) -> str | None:
        """The guest's address: libvirt's NAT network's DHCP lease for its MAC."""
        dom = self.domain(domain)
        if dom is None or self.conn is None:
            return None
        root = ET.fromstring(dom.XMLDesc(0))  # noqa: S314 (libvirt's own XML)
        macs = {m.get("address", "").lower() for m in root.findall("./devices/interface/mac")}
        try:
            leases = self.conn.networkLookupByName("default").DHCPLeases()
        except libvirt.libvirtError as exc:
            raise BenchError(f"libvirt's default network: {exc}") from exc
        for lease in leases:
            if str(lease.get("mac", "")).lower() in macs and lease.get("ipaddr"):
                return str(lease["ipaddr"])
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, default_count=5, default_output=DEFAULT_OUTPUT, default_timeout=600.0)
    return run_main("vm_provision_debian", lambda env: DebianBench(env, args))


if __name__ == "__main__":
    sys.exit(main())
