"""The `nubis` command line, run in-process against a real portal (`manage.py serve` on loopback) and
the session's compute agent: login, lists, a container's whole life, errors and exit codes."""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from compute.models import (
    CpuMode,
    Flavor,
    FloatingIP,
    FloatingPool,
    Host,
    Image,
    ImageKind,
    Instance,
    InstanceState,
    KeyPair,
    Network,
    PortForward,
)
from portal.cli import main
from tenants.models import Role, Tenant
from tests.factories import add_member, make_tenant, make_token, make_user
from tests.scheduler.test_placement import make_host


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config file of the test's own (not yet written), and none of the overriding variables."""
    path = tmp_path / "home" / "nubis" / "config.json"
    monkeypatch.setenv("NUBIS_CONFIG", str(path))
    for name in ("NUBIS_URL", "NUBIS_TOKEN", "NUBIS_TENANT"):
        monkeypatch.delenv(name, raising=False)
    return path


@pytest.fixture
def tenant_token(transactional_db: None) -> tuple[Tenant, str]:
    """A tenant with a member, and a member token of theirs (members create and delete)."""
    tenant = make_tenant("cli-a")
    user = add_member(tenant, make_user("carol"), Role.MEMBER)
    return tenant, make_token(tenant, user, Role.MEMBER, "cli")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop anything earlier
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_login_keeps_the_token_in_a_0600_file_and_refuses_a_bad_one(
    portal_url: str,
    tenant_token: tuple[Tenant, str],
    config: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant, token = tenant_token
    code, out, err = run(capsys, "login", "--url", portal_url, "--token", "nubis_not-a-real-token")
    assert code == 1
    assert "invalid token" in err
    assert "nubis_not-a-real-token" not in out + err
    assert not config.exists()

    code, out, err = run(capsys, "login", "--url", portal_url + "/api/v1/", "--token", token)
    assert (code, err) == (0, "")
    assert f"tenant {tenant.slug}" in out
    assert token not in out
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert json.loads(config.read_text()) == {"url": portal_url, "token": token, "tenant": tenant.slug}

    code, out, _ = run(capsys, "login", "--url", portal_url, "--token", token, "--tenant", "someone-else")
    assert code == 1  # a tenant the token does not see; the stored login stays
    assert json.loads(config.read_text())["tenant"] == tenant.slug

    code, out, _ = run(capsys, "instances", "list")
    assert code == 0
    assert out.split() == ["NAME", "ID", "KIND", "STATE", "FLAVOR", "ADDRESS"]

    # The environment wins over the file, for scripts.
    monkeypatch.setenv("NUBIS_TOKEN", "nubis_revoked-or-never-was")
    code, out, err = run(capsys, "instances", "list")
    assert code == 1
    assert "invalid token" in err
    assert "nubis_revoked-or-never-was" not in out + err
    monkeypatch.delenv("NUBIS_TOKEN")

    code, out, _ = run(capsys, "logout")
    assert code == 0
    assert not config.exists()
    code, _, err = run(capsys, "instances", "list")
    assert code == 2
    assert "not logged in" in err


def test_a_container_from_create_to_delete(
    portal_url: str,
    tenant_token: tuple[Tenant, str],
    config: Path,
    capsys: pytest.CaptureFixture[str],
    host: Host,
    rootfs_image: Image,
    cflavors: dict[str, Flavor],
    no_leftovers: None,
) -> None:
    tenant, token = tenant_token
    assert run(capsys, "login", "--url", portal_url, "--token", token)[0] == 0

    code, out, _ = run(capsys, "flavors", "list")
    assert code == 0
    assert "c.small" in out
    code, out, _ = run(capsys, "images", "list", "--json")
    assert code == 0
    assert "busybox" in [i["name"] for i in json.loads(out)]

    try:
        code, out, err = run(
            capsys,
            "instances",
            "create",
            "--name",
            "cli-box",
            "--kind",
            "container",
            "--flavor",
            "c.small",
            "--image",
            rootfs_image.name,
            "--network",
            "none",
            "--follow",
            "--interval",
            "0.1",
            "--timeout",
            "120",
        )
        assert (code, err) == (0, ""), out
        assert out.startswith("operation ")
        assert "create: succeeded" in out
        assert out.strip().splitlines()[-1] == "cli-box: running"
        box = Instance.objects.for_tenant(tenant).get(name="cli-box")
        assert box.state == InstanceState.RUNNING
        assert box.host_id == host.pk

        code, out, _ = run(capsys, "instances", "list", "--state", "running")
        assert code == 0
        rows = [line.split() for line in out.strip().splitlines()]
        assert rows[1][:5] == ["cli-box", str(box.uuid), "container", "running", "c.small"]
        assert run(capsys, "instances", "list", "--kind", "vm", "--json")[1].strip() == "[]"

        code, out, _ = run(capsys, "instances", "show", "cli-box", "--json")
        assert code == 0
        shown = json.loads(out)
        assert (shown["id"], shown["state"], shown["flavor"]) == (str(box.uuid), "running", "c.small")
        code, out, _ = run(capsys, "instances", "show", str(box.uuid))
        assert code == 0
        assert "cli-box" in out

        # Without --follow the command prints the operation; `operations follow` takes it from there.
        code, out, _ = run(capsys, "--json", "instances", "stop", "cli-box")
        assert code == 0
        stop = json.loads(out)
        assert stop["kind"] == "stop"
        code, out, _ = run(capsys, "operations", "follow", stop["id"], "--interval", "0.1")
        assert code == 0
        assert out.strip().splitlines()[-1].startswith(f"operation {stop['id']} stop: succeeded")
        box.refresh_from_db()
        assert box.state == InstanceState.STOPPED

        code, out, err = run(capsys, "instances", "delete", "cli-box", "--follow", "--interval", "0.1")
        assert (code, err) == (0, ""), out
        assert "delete: succeeded" in out
        box.refresh_from_db()
        assert box.state == InstanceState.DELETED
        code, out, _ = run(capsys, "instances", "list", "--json")
        assert json.loads(out) == []
        code, _, err = run(capsys, "instances", "show", "cli-box")
        assert code == 1
        assert "no instance 'cli-box'" in err
    finally:
        left = Instance.objects.for_tenant(tenant).exclude(state=InstanceState.DELETED)
        for instance in left:
            main(["instances", "delete", str(instance.uuid), "--follow", "--timeout", "120"])


def test_a_bad_flavor_names_the_field_and_exits_1(
    portal_url: str,
    tenant_token: tuple[Tenant, str],
    config: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Also: a script's login from the environment alone (no file)."""
    tenant, token = tenant_token
    monkeypatch.setenv("NUBIS_URL", portal_url)
    monkeypatch.setenv("NUBIS_TOKEN", token)
    monkeypatch.setenv("NUBIS_TENANT", tenant.slug)
    argv = ["instances", "create", "--name", "x1", "--flavor", "no-such", "--image", "busybox"]
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert out == ""
    assert "flavor: unknown flavor 'no-such'" in err
    assert token not in err

    code, _, err = run(capsys, "--json", *argv)
    assert code == 1
    problem = json.loads(err)
    assert problem["errors"] == [{"field": "flavor", "rule": "exists", "message": "unknown flavor 'no-such'"}]
    assert problem["exit_code"] == 1
    assert not config.exists()
    assert not Instance.objects.for_tenant(tenant).exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_portal_listening_exits_3(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    code, _, err = run(capsys, "login", "--url", url, "--token", "nubis_whatever-it-is")
    assert code == 3
    assert f"cannot reach {url}" in err
    assert "nubis_whatever-it-is" not in err
    assert not config.exists()
    monkeypatch.setenv("NUBIS_URL", url)
    monkeypatch.setenv("NUBIS_TOKEN", "nubis_whatever-it-is")
    assert run(capsys, "--tenant", "t", "instances", "list")[0] == 3
    assert run(capsys, "instances", "bogus")[0] == 2  # usage


class _PagedApi(BaseHTTPRequestHandler):
    """Instances in two pages (the cursor-paginated shape), flavors as a bare array, a failed
    operation, and a 500 for anything else."""

    def do_GET(self) -> None:
        pages = {
            "/api/v1/tenants/t/instances/": {
                "results": [{"name": "one", "id": "1", "kind": "vm", "state": "running"}],
                "next": "http://elsewhere.invalid/api/v1/tenants/t/instances/?cursor=abc",
            },
            "/api/v1/tenants/t/instances/?cursor=abc": {
                "results": [{"name": "two", "id": "2", "kind": "container", "state": "stopped"}],
                "next": None,
            },
            "/api/v1/tenants/t/flavors/": [{"name": "f1", "vcpus": 1}],
            "/api/v1/tenants/t/operations/op1/": {
                "id": "op1",
                "kind": "create",
                "state": "failed",
                "step": "schedule",
                "progress": 10,
                "error": "no valid host: capacity removed the last candidate",
            },
        }
        # The real API ignores what it does not know; so does this one, except its cursor.
        path, _, query = self.path.partition("?")
        cursor = [p for p in query.split("&") if p.startswith("cursor=")]
        body = pages.get(path + ("?" + cursor[0] if cursor else ""))
        if body is None:
            self.send_response(500)
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def paged_api(config: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PagedApi)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("NUBIS_URL", url)
    monkeypatch.setenv("NUBIS_TOKEN", "nubis_paged")
    monkeypatch.setenv("NUBIS_TENANT", "t")
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()


def test_lists_follow_pages_a_failed_operation_exits_1_and_5xx_exits_3(
    paged_api: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "instances", "list", "--json")
    assert code == 0
    assert [r["name"] for r in json.loads(out)] == ["one", "two"]  # `next` re-rooted on our portal
    code, out, _ = run(capsys, "instances", "list", "--kind", "container")
    assert [line.split()[0] for line in out.strip().splitlines()] == ["NAME", "two"]
    code, out, _ = run(capsys, "flavors", "list")
    assert (code, out.split()[4:6]) == (0, ["f1", "1"])
    code, _, err = run(capsys, "images", "list")
    assert code == 3
    assert "HTTP 500" in err
    code, out, err = run(capsys, "operations", "follow", "op1")
    assert code == 1
    assert out.strip() == "operation op1 create: failed 10% (schedule)"
    assert "operation create failed: no valid host: capacity removed the last candidate" in err


def test_key_pairs_and_a_create_with_keys_and_user_data(
    portal_url: str,
    tenant_token: tuple[Tenant, str],
    config: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """keypairs create|import|list|delete, and instances create --key-pair/--user-data (placed on a
    host row whose queue nobody serves: no guest runs)."""
    tenant, token = tenant_token
    Image.objects.create(
        name="cli-rootfs", kind=ImageKind.ROOTFS, os_name="busybox", disk_path="/y", sha256="1" * 64
    )
    Flavor.objects.create(name="cli.small", vcpus=1, ram_mib=128, disk_gib=1, cpu_mode=CpuMode.EMULATED)
    make_host("cli-host", cpus=8, ram_mib=16384)
    assert run(capsys, "login", "--url", portal_url, "--token", token)[0] == 0

    key = tmp_path / "id"
    code, out, err = run(capsys, "keypairs", "create", "made", "--output", str(key))
    assert (code, err) == (0, ""), out
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, check=True)
    made = KeyPair.objects.for_tenant(tenant).get(name="made")
    assert derived.stdout.split()[:2] == made.public_key.split()[:2]
    assert made.fingerprint in out
    # An existing file is never overwritten, and nothing is created then.
    code, _, err = run(capsys, "keypair", "create", "again", "--output", str(key))
    assert code == 2
    assert "exists" in err
    assert not KeyPair.objects.for_tenant(tenant).filter(name="again").exists()

    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(tmp_path / "ec")], check=True)
    code, out, err = run(capsys, "keypairs", "import", "laptop", "--public-key", str(tmp_path / "ec.pub"))
    assert (code, err) == (0, ""), out
    laptop = KeyPair.objects.for_tenant(tenant).get(name="laptop")
    assert out.strip() == f"imported key pair laptop: ecdsa-sha2-nistp256 256 {laptop.fingerprint}"
    code, _, err = run(capsys, "keypairs", "import", "oops", "--public-key", str(tmp_path / "ec"))
    assert code == 1
    assert "public_key: this is a PRIVATE key" in err
    code, out, _ = run(capsys, "keypairs", "list")
    assert [line.split()[0] for line in out.strip().splitlines()] == ["NAME", "laptop", "made"]

    script = tmp_path / "user-data"
    script.write_text("#!/bin/sh\necho from-cli\n")
    create = ["instances", "create", "--name", "keyed", "--kind", "container", "--flavor", "cli.small"]
    create += ["--image", "cli-rootfs", "--network", "none", "--key-pair", "laptop", "--key-pair", "made"]
    code, out, err = run(capsys, *create, "--user-data", str(script))
    assert (code, err) == (0, ""), out
    box = Instance.objects.for_tenant(tenant).get(name="keyed")
    assert [k["name"] for k in box.ssh_keys] == ["laptop", "made"]
    assert box.user_data == "#!/bin/sh\necho from-cli\n"
    code, out, _ = run(capsys, "instances", "show", "keyed", "--json")
    shown = json.loads(out)
    assert shown["key_pairs"] == [
        {"name": "laptop", "fingerprint": laptop.fingerprint},
        {"name": "made", "fingerprint": made.fingerprint},
    ]

    binary = tmp_path / "blob"
    binary.write_bytes(b"\x1f\x8b\x08\x00\xff")
    code, _, err = run(capsys, *create, "--user-data", str(binary))
    assert code == 2
    assert "--user-data" in err
    script.write_text("x" * 17000)
    bare = ["instances", "create", "--kind", "container", "--flavor", "cli.small", "--image", "cli-rootfs"]
    bare += ["--network", "none"]
    code, _, err = run(capsys, *bare, "--name", "big", "--user-data", str(script))
    assert code == 1
    assert "user_data: user_data has 17000 bytes" in err
    code, _, err = run(capsys, *bare, "--name", "nokey", "--key-pair", "nope")
    assert code == 1
    assert "key_pairs: unknown key pair 'nope'" in err

    code, out, _ = run(capsys, "keypairs", "delete", "laptop")
    assert (code, out.strip()) == (0, "deleted key pair laptop")
    assert run(capsys, "keypairs", "delete", "laptop")[0] == 1
    box.refresh_from_db()
    assert [k["name"] for k in box.ssh_keys] == ["laptop", "made"]


def test_floating_ips_and_port_forwards(
    portal_url: str,
    tenant_token: tuple[Tenant, str],
    config: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """floating-ip create|associate|list|disassociate|delete and port-forward add|list|remove, on an
    instance row placed on a host whose queue nobody serves (no NAT is made: the database is checked)."""
    tenant, token = tenant_token
    pool = FloatingPool.objects.create(
        name="ext",
        cidr="198.18.201.0/24",
        interface="nxtcli",
        range_start="198.18.201.10",
        range_end="198.18.201.11",
    )
    host = make_host("cli-nat-host", address="192.0.2.50")
    lan = Network.objects.create(tenant=tenant, name="lan", cidr="10.195.1.0/24", gateway="10.195.1.1")
    flavor = Flavor.objects.create(
        name="cli.nat", vcpus=1, ram_mib=128, disk_gib=1, cpu_mode=CpuMode.EMULATED
    )
    image = Image.objects.create(
        name="cli-nat", kind=ImageKind.KERNEL, os_name="t", disk_path="/y", sha256="2" * 64
    )
    web = Instance.objects.create(
        tenant=tenant,
        name="web",
        flavor=flavor,
        image=image,
        host=host,
        network=lan,
        ip_address="10.195.1.5",
        state=InstanceState.RUNNING,
        vcpus=1,
        ram_mib=128,
        current_ram_mib=128,
        disk_gib=1,
    )
    assert run(capsys, "login", "--url", portal_url, "--token", token)[0] == 0

    code, out, _ = run(capsys, "floating-ip", "list")
    assert (code, out.split()) == (0, ["ID", "ADDRESS", "POOL", "INSTANCE", "PRIVATE"])
    code, out, err = run(capsys, "floating-ip", "create", "--pool", "ext")
    assert (code, err, out.strip()) == (0, "", "allocated 198.18.201.10")
    code, out, err = run(capsys, "floating-ip", "associate", "198.18.201.10", "web")
    assert (code, err, out.strip()) == (0, "", "associated 198.18.201.10 -> web (10.195.1.5)")
    assert FloatingIP.objects.for_tenant(tenant).get().instance == web
    code, out, _ = run(capsys, "floating-ips", "list", "--json")
    assert [(r["address"], r["pool"], r["instance"], r["private_address"]) for r in json.loads(out)] == [
        ("198.18.201.10", "ext", str(web.uuid), "10.195.1.5")
    ]
    code, _, err = run(capsys, "floating-ip", "associate", "198.18.201.10", "nobody")
    assert (code, err.strip()) == (1, "nubis: error: no instance 'nobody' in tenant cli-a")
    code, _, err = run(capsys, "floating-ip", "create", "--pool", "nope")
    assert code == 1
    assert "pool: unknown floating pool 'nope'" in err
    code, out, _ = run(capsys, "floating-ip", "disassociate", "198.18.201.10")
    assert (code, out.strip()) == (0, "disassociated 198.18.201.10")
    assert FloatingIP.objects.for_tenant(tenant).get().instance is None
    code, out, _ = run(capsys, "floating-ip", "delete", "198.18.201.10")
    assert (code, out.strip()) == (0, "released 198.18.201.10")
    assert not FloatingIP.objects.for_tenant(tenant).exists()
    assert run(capsys, "floating-ip", "delete", "198.18.201.10")[0] == 1
    assert not FloatingIP.objects.unscoped().filter(pool=pool).exists()

    code, out, err = run(capsys, "port-forward", "add", "web", "22")
    assert (code, err) == (0, ""), out
    forward = PortForward.objects.for_tenant(tenant).get()
    assert forward.port == 22
    assert out.strip() == f"forwarded 192.0.2.50:{forward.host_port} -> web:22/tcp"
    code, out, _ = run(capsys, "port-forwards", "list", "web")
    assert [line.split() for line in out.strip().splitlines()] == [
        ["ID", "PROTOCOL", "PORT", "REACHED", "AT"],
        [str(forward.pk), "tcp", "22", f"192.0.2.50:{forward.host_port}"],
    ]
    code, _, err = run(capsys, "port-forward", "add", "web", "70000")
    assert code == 1
    assert "port:" in err
    code, _, err = run(capsys, "port-forward", "add", "web", "http")
    assert code == 2  # usage: not a number
    code, out, _ = run(capsys, "port-forward", "remove", "web", "22")
    assert (code, out.strip()) == (0, f"removed 192.0.2.50:{forward.host_port} -> web:22/tcp")
    assert not PortForward.objects.for_tenant(tenant).exists()
    code, _, err = run(capsys, "port-forward", "remove", "web", "22")
    assert (code, err.strip()) == (1, "nubis: error: port 22 of web is not forwarded")
