"""Host liveness and the capability record."""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from compute.drivers.base import GuestSpec, HostFacts
from compute.drivers.domain_xml import domain_xml
from compute.models import Host, HostState
from compute.services.hosts import host_heartbeat, host_register, hosts_mark_down
from compute.tasks import local_driver

pytestmark = pytest.mark.django_db


def test_stale_host_goes_down_and_comes_back_with_its_heartbeat(settings) -> None:
    settings.NUBIS_HOST_HEARTBEAT_TIMEOUT = 30
    fresh = Host.objects.create(name="fresh", uri="x", heartbeat_at=timezone.now())
    stale = Host.objects.create(name="stale", uri="x", heartbeat_at=timezone.now() - timedelta(seconds=31))
    Host.objects.create(name="off", uri="x", state=HostState.MAINTENANCE, heartbeat_at=None)
    assert hosts_mark_down() == ["stale"]
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert (stale.state, fresh.state) == (HostState.DOWN, HostState.ENABLED)
    assert host_heartbeat("stale") is True
    stale.refresh_from_db()
    assert stale.state == HostState.ENABLED
    assert host_heartbeat("nobody") is False


def test_real_host_facts_are_recorded() -> None:
    facts = local_driver().facts(probe_kvm=False)
    host = host_register(name="here", uri="qemu:///system", facts=asdict(facts))
    assert host.cpus >= 1
    assert host.ram_mib > 1024
    assert host.tcg_available is True
    assert host.vmm.startswith("QEMU ")
    assert "libvirt" in host.vmm
    assert host.paging in {"ept", "npt", "shadow", "none"}
    assert host.kvm_usable is False  # not probed: KVM counts only after a probe guest booted under it


# Every way a KVM probe can end without a usable KVM, each with its reason after the prefix. Which
# one a machine gives depends on its CPU and kernel: a nested KVM that hangs the guest ("did not
# boot"), one that kills it ("died"), or QEMU aborting at start on an AMD host
# ("probe failed: probe start: internal error: ... kvm_buf_set_msrs: Assertion ... failed").
PROBE_FAILURES = (
    "probe guest did not boot under KVM within ",
    "probe guest died under KVM",
    "probe failed: ",
)


def assert_probe_failure_recorded(detail: str) -> None:
    """The probe said why KVM is not usable, in one of the shapes it has, with a reason."""
    prefix = next((p for p in PROBE_FAILURES if detail.startswith(p)), None)
    assert prefix is not None, f"not a probe failure: {detail!r}"
    if prefix == "probe failed: ":
        assert len(detail.removeprefix(prefix).strip()) > 10, f"no reason recorded: {detail!r}"


def probe_leftovers(scratch: Path) -> list[str]:
    files = [p.name for p in scratch.iterdir() if p.name.startswith("nubis-kvm-probe")]
    return files + local_driver().list_guests("nubis-kvm-probe")


@pytest.mark.slow
def test_kvm_probe_boots_a_guest_under_kvm_and_reports_what_it_saw(built_image) -> None:
    from compute.models import Image
    from compute.services.guests import guest_spec_for_probe

    image = Image(
        kernel_path=built_image.kernel,
        initrd_path=built_image.initrd,
        disk_path=built_image.disk,
        cmdline=built_image.cmdline,
    )
    scratch = Path(settings.NUBIS_INSTANCE_DIR)  # QEMU (libvirt-qemu) must be able to reach the probe's disk
    scratch.mkdir(parents=True, exist_ok=True)
    facts: HostFacts = local_driver().facts(
        probe_kvm=True, probe_image=guest_spec_for_probe(image), scratch=scratch
    )
    if facts.kvm_usable:
        assert "booted under KVM" in facts.kvm_probe_detail
        assert facts.paging in {"ept", "npt", "shadow"}
    elif facts.kvm_device and "offers no kvm domain type" not in facts.kvm_probe_detail:
        # These machines: /dev/kvm exists, but no probe guest runs under the nested KVM; how it
        # fails differs between CPU vendors and kernels, and each way is recorded with its reason.
        assert_probe_failure_recorded(facts.kvm_probe_detail)
        assert facts.paging == "none"
    else:
        assert facts.kvm_probe_detail, facts
        assert facts.paging == "none"
    assert probe_leftovers(scratch) == []


@pytest.mark.slow
def test_a_probe_that_cannot_start_records_why_and_leaves_nothing(built_image) -> None:
    """QEMU refusing to start (as it does on AMD hosts here) is a failed probe with its reason."""
    from compute.models import Image
    from compute.services.guests import guest_spec_for_probe

    scratch = Path(settings.NUBIS_INSTANCE_DIR)
    scratch.mkdir(parents=True, exist_ok=True)
    missing = str(scratch / "no-such-kernel")
    image = Image(
        kernel_path=missing,
        initrd_path=built_image.initrd,
        disk_path=built_image.disk,
        cmdline=built_image.cmdline,
    )
    driver = local_driver()
    usable, detail = driver._probe_kvm(guest_spec_for_probe(image), scratch)
    assert usable is False
    assert detail.startswith("probe failed: probe start: "), detail
    assert_probe_failure_recorded(detail)
    assert "no-such-kernel" in detail  # the cause, as libvirt or QEMU gave it
    assert probe_leftovers(scratch) == []


def test_domain_xml_for_hardware_mode_uses_kvm_and_host_cpu() -> None:
    spec = GuestSpec(
        name="n",
        uuid="00000000-0000-0000-0000-000000000001",
        vcpus=2,
        ram_mib=256,
        current_ram_mib=128,
        cpu_mode="hardware",
        io_model="virtio",
        balloon=True,
        disk_path="/d",
        serial_log="/s",
        network="default",
        vnc_password="pw",
        kernel="/k",
        initrd="/i",
        cmdline="c",
        pci_devices=("0000:03:00.1",),
    )
    xml = domain_xml(spec)
    assert xml.startswith('<domain type="kvm">')
    assert '<cpu mode="host-passthrough"' in xml
    assert '<currentMemory unit="MiB">128</currentMemory>' in xml
    assert '<memballoon model="virtio"><stats period="2" /></memballoon>' in xml
    assert '<address domain="0x0000" bus="0x03" slot="0x00" function="0x1" />' in xml
    assert '<graphics type="vnc" listen="127.0.0.1" autoport="yes" passwd="pw" />' in xml
