"""The lab's plain parts, without starting one: names and addresses, what the relay carries, and the
libvirt configuration each host gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from compute.lab.hostdir import hosts_file, libvirtd_conf, qemu_conf
from compute.lab.relay import loopback_endpoints
from compute.lab.spec import LabError, LabSpec


def test_hosts_take_the_first_addresses_and_the_bridge_the_last(tmp_path: Path) -> None:
    lab = LabSpec(directory=tmp_path, hosts=3, prefix="labh", bridge="nubislab0", subnet="10.77.0.0/24")
    assert [(h.name, h.address, h.veth) for h in lab.host_list()] == [
        ("labh1", "10.77.0.1", "vlabh1"),
        ("labh2", "10.77.0.2", "vlabh2"),
        ("labh3", "10.77.0.3", "vlabh3"),
    ]
    assert lab.gateway == "10.77.0.254"
    assert lab.host("labh2") == lab.host(2)
    second = lab.host(2)
    assert second.peer_uri == "qemu+tcp://10.77.0.2/system"
    assert second.local_uri == f"qemu+unix:///system?socket={tmp_path}/hosts/labh2/run/libvirt-sock"
    # Distinct per host, the same at every boot.
    assert len({h.uuid for h in lab.host_list()}) == 3
    assert LabSpec(directory=tmp_path, hosts=1).host(1).uuid == lab.host(1).uuid
    with pytest.raises(LabError, match="no host"):
        lab.host("labh4")


def test_a_lab_that_cannot_be_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="no room"):
        LabSpec(directory=tmp_path, hosts=6, subnet="10.77.0.0/29")
    with pytest.raises(LabError, match="too long"):
        LabSpec(directory=tmp_path, hosts=3, prefix="averylongprefix")
    with pytest.raises(LabError, match="prefix"):
        LabSpec(directory=tmp_path, hosts=3, prefix="Lab h")
    with pytest.raises(LabError, match="subnet"):
        LabSpec(directory=tmp_path, hosts=3, subnet="10.77.0.1/33")


def test_the_spec_is_kept_in_the_labs_directory(tmp_path: Path) -> None:
    lab = LabSpec(directory=tmp_path, hosts=2, prefix="tx", endpoints=(("127.0.0.1", 5432),))
    assert LabSpec.load(tmp_path) is None
    lab.save()
    assert LabSpec.load(tmp_path) == lab
    assert (tmp_path / "lab.json").stat().st_mode & 0o777 == 0o600


def test_the_relay_carries_loopback_postgres_and_redis_only() -> None:
    assert loopback_endpoints(
        [
            "postgres://nubis:pw@127.0.0.1/nubis",
            "redis://localhost:6380/1",
            "redis://127.0.0.1:6380/2",  # the same endpoint once
            "sqlite:////var/lib/nubis/nubis.sqlite3",
            "postgres://nubis@db.example.org:5433/nubis",  # elsewhere: the lab's routing, not the relay
        ]
    ) == (("127.0.0.1", 5432), ("127.0.0.1", 6380))
    with pytest.raises(LabError, match="Unix socket"):
        loopback_endpoints(["postgres://nubis@%2Frun%2Fpostgresql/nubis"])


def test_each_host_gets_its_own_libvirt_settings(tmp_path: Path) -> None:
    lab = LabSpec(directory=tmp_path, hosts=2)
    host = lab.host(2)
    base = 'listen_tcp = 0\n# listen_addr = "0.0.0.0"\nmax_clients = 5000\n'
    conf = libvirtd_conf(base, host)
    assert "listen_tcp = 0" not in conf  # the machine's value gives way to the lab's
    assert 'listen_addr = "10.77.0.2"' in conf
    assert f'host_uuid = "{host.uuid}"' in conf
    assert "max_clients = 5000" in conf
    assert '# listen_addr = "0.0.0.0"' in conf
    qemu = qemu_conf('cgroup_controllers = [ "cpu" ]\n', host)
    assert 'cgroup_controllers = [ "cpu" ]' not in qemu
    assert "cgroup_controllers = [ ]" in qemu
    assert 'migration_address = "10.77.0.2"' in qemu
    assert hosts_file(lab).splitlines() == ["127.0.0.1\tlocalhost", "10.77.0.1\tlabh1", "10.77.0.2\tlabh2"]
