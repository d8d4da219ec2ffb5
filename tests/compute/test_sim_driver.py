"""The simulator driver: an in-memory guest lifecycle, only ever for hosts registered as simulated."""

from __future__ import annotations

import pytest

from compute.drivers.base import DriverError, GuestSpec
from compute.drivers.libvirt import LibvirtDriver
from compute.drivers.sim import NotSimulated, SimHost, SimulatorDriver, driver_for_host
from compute.models import Host


def spec(name: str = "sim-1", ram_mib: int = 512, current: int | None = None) -> GuestSpec:
    return GuestSpec(
        name=name,
        uuid="00000000-0000-0000-0000-000000000001",
        vcpus=1,
        ram_mib=ram_mib,
        current_ram_mib=ram_mib if current is None else current,
        cpu_mode="emulated",
        io_model="virtio",
        balloon=True,
        disk_path=f"/nowhere/{name}/disk.qcow2",
        serial_log="",
        network="",
        vnc_password="",
    )


def test_lifecycle_of_a_simulated_guest() -> None:
    driver = SimulatorDriver(SimHost("sim-a", cpus=8, ram_mib=4096, disk_gib=100, kvm=True))
    assert driver.power_state("sim-1") is None
    driver.create_disk(spec(), base="/base.qcow2", size_gib=2)
    driver.define(spec())
    driver.define(spec())  # twice is harmless
    assert driver.power_state("sim-1") == "stopped"
    driver.start("sim-1")
    driver.start("sim-1")
    assert driver.power_state("sim-1") == "running"
    assert driver.domains["sim-1"].boots == 1
    assert driver.running_memory_mib() == 512
    driver.set_memory("sim-1", 256)
    assert driver.running_memory_mib() == 256
    with pytest.raises(DriverError, match="outside"):
        driver.set_memory("sim-1", 1024)  # above the defined maximum, as libvirt refuses
    with pytest.raises(DriverError, match="running"):
        driver.redefine(spec())
    driver.snapshot_create("sim-1", "before")
    driver.set_memory("sim-1", 128)
    assert driver.shutdown("sim-1", timeout=0) is True
    assert driver.power_state("sim-1") == "stopped"
    assert driver.snapshot_revert("sim-1", "before") == "running"
    assert driver.running_memory_mib() == 256
    driver.reboot("sim-1")
    assert driver.domains["sim-1"].boots == 2
    driver.define(spec("sim-2"))
    driver.define(spec("other-3"))
    assert driver.list_guests("sim-") == ["sim-1", "sim-2"]
    driver.undefine("sim-1")
    driver.undefine("sim-1")
    assert driver.power_state("sim-1") is None
    assert driver.list_guests("sim-") == ["sim-2"]
    driver.remove_files("/nowhere/sim-1")
    assert driver.disks == {}
    with pytest.raises(DriverError, match="no domain"):
        driver.start("sim-1")
    facts = driver.facts()
    assert (facts.cpus, facts.ram_mib, facts.kvm_usable) == (8, 4096, True)
    assert "simulator" in facts.vmm
    assert driver.vnc_port("sim-2") is None


def test_refuses_a_host_not_registered_as_simulated() -> None:
    real = Host(name="real-1", uri="test:///default", simulated=False)
    with pytest.raises(NotSimulated, match="real-1"):
        SimulatorDriver(real)
    with pytest.raises(NotSimulated):
        SimulatorDriver(SimHost("looks-simulated", simulated=False))
    assert isinstance(SimulatorDriver(Host(name="sim-row", uri="sim://", simulated=True)), SimulatorDriver)


def test_driver_for_host_gives_real_hosts_their_real_driver() -> None:
    real = Host(name="real-2", uri="test:///default", simulated=False)
    driver = driver_for_host(real)
    assert type(driver) is LibvirtDriver
    assert driver.uri == "test:///default"  # the host's own URI; constructing it connects nowhere


def test_driver_for_host_keeps_one_simulator_per_simulated_host() -> None:
    host = Host(name="sim-keep", uri="sim://", simulated=True, cpus=4, ram_mib=2048)
    first = driver_for_host(host)
    assert isinstance(first, SimulatorDriver)
    first.define(spec("sim-9"))
    again = driver_for_host(host)
    assert again is first  # the next operation on the host finds its domains
    assert again.power_state("sim-9") == "stopped"
    assert driver_for_host(Host(name="sim-other", uri="sim://", simulated=True)) is not first
