"""The `nubis` command line, run in-process against a real portal (`manage.py serve` on loopback) and
the session's compute agent: login, lists, a container's whole life, errors and exit codes."""

from __future__ import annotations

import json
import socket
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from compute.models import Flavor, Host, Image, Instance, InstanceState
from portal.cli import main
from tenants.models import Role, Tenant
from tests.factories import add_member, make_tenant, make_token, make_user


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
