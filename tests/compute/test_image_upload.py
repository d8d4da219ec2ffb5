"""Images tenants upload: streamed to the store, checked as untrusted input, private to their tenant.

The refused images are made the way an attacker would: a qcow2 whose backing file or external
data file names /etc/shadow (the CVE-2024-32498 class). Such a qcow2 is never made with
``qemu-img create -o data_file=/etc/shadow``: that command creates (truncates!) the data file it
names. The data-file name is written into the header by hand instead, and the backing file is
named with ``-u`` (qemu-img does not open it).
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import os
import shutil
import socket
import struct
import subprocess
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
from rest_framework.test import APIClient

from compute.guest.builder import GuestImage
from compute.guest.image_check import ImageRejected, check_image
from compute.models import Image, ImageState, Instance
from compute.services import image_upload as uploads
from security.audit import Actor
from tenants.models import QuotaClaim, Role
from tenants.services.quotas import usage_of
from tests.compute.conftest import wait_for, wait_marker
from tests.factories import add_member, make_tenant

pytestmark = pytest.mark.django_db(transaction=True)

SHADOW = Path("/etc/shadow")
MIB = 1 << 20


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def store(settings) -> Iterator[Path]:
    """An upload directory of this test's own, in the image store (QEMU reads it)."""
    path = Path(settings.NUBIS_IMAGE_DIR) / f"uploads-test-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    settings.NUBIS_IMAGE_UPLOAD_DIR = path
    shadow_before = _sha(SHADOW)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        assert _sha(SHADOW) == shadow_before, "/etc/shadow changed during the test"


@pytest.fixture(scope="session")
def crafted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Hostile and broken images, plus a tiny valid qcow2."""
    d = tmp_path_factory.mktemp("crafted")

    def qemu_img(*args: str) -> None:
        subprocess.run(["qemu-img", *args], check=True, capture_output=True, cwd=d)

    qemu_img("create", "-q", "-f", "qcow2", "valid.qcow2", "16M")
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", str(SHADOW), "-F", "raw", "backing.qcow2", "1M")
    # A data file of our own, named with as many bytes as "/etc/shadow" pads to, then renamed in the header.
    qemu_img("create", "-q", "-f", "qcow2", "-o", "data_file=datafile.raw", "datafile.qcow2", "1M")
    (d / "datafile.raw").unlink()
    _rename_data_file(d / "datafile.qcow2", str(SHADOW).encode())
    # A canary data file: a watch on it proves the checks never open the file a header names.
    canary = d / "canary.dat"
    canary.write_bytes(b"CANARY-" * 100)
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={d / 'madeit.raw'}", "canary-image.qcow2", "1M")
    (d / "madeit.raw").unlink()
    _rename_data_file(d / "canary-image.qcow2", str(canary).encode())
    # A qcow2 with data, cut short.
    qemu_img("create", "-q", "-f", "qcow2", "full.qcow2", "8M")
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 6M", str(d / "full.qcow2")],
        check=True,
        capture_output=True,
    )
    data = (d / "full.qcow2").read_bytes()
    (d / "truncated.qcow2").write_bytes(data[: len(data) // 2])
    (d / "random.bin").write_bytes(os.urandom(256 * 1024))
    (d / "empty.bin").write_bytes(b"")
    (d / "raw.img").write_bytes(b"\0" * MIB)
    return {p.stem: p for p in d.iterdir() if p != canary} | {"canary": canary}


def _rename_data_file(image: Path, name: str | bytes) -> None:
    """Point the qcow2's external data file extension at ``name`` (which must pad to the same length)."""
    raw = bytearray(image.read_bytes())
    header_length = struct.unpack(">I", raw[100:104])[0]
    offset = header_length
    while True:
        kind, length = struct.unpack(">II", raw[offset : offset + 8])
        assert kind != 0, "no data-file extension"
        padded = (length + 7) & ~7
        if kind == 0x44415441:
            new = name if isinstance(name, bytes) else name.encode()
            assert (len(new) + 7) & ~7 == padded, (new, length)
            raw[offset + 4 : offset + 8] = struct.pack(">I", len(new))
            raw[offset + 8 : offset + 8 + padded] = new.ljust(padded, b"\0")
            image.write_bytes(bytes(raw))
            return
        offset += 8 + padded


class OpenWatch:
    """inotify on one file: whether anything opened or read it while the watch was on."""

    IN_ACCESS, IN_OPEN, IN_NONBLOCK = 0x1, 0x20, 0o4000

    def __init__(self, path: Path) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(self.IN_NONBLOCK)
        assert self.fd >= 0
        assert self.libc.inotify_add_watch(self.fd, str(path).encode(), self.IN_ACCESS | self.IN_OPEN) >= 0

    def events(self) -> int:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return 0
        finally:
            os.close(self.fd)
        return len(data)


def _client(tenant, role: Role = Role.MEMBER) -> APIClient:
    client = APIClient()
    client.force_authenticate(add_member(tenant, role=role))
    return client


def _upload(client: APIClient, slug: str, body: bytes, **params: str):
    url = f"/api/v1/tenants/{slug}/images/?{urlencode(params)}"
    return client.generic("POST", url, body, content_type="application/octet-stream")  # type: ignore[arg-type]


def _answer(conn: socket.socket) -> str:
    """The whole HTTP answer (status, headers and a body of Content-Length bytes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode(errors="replace")


def _nothing_left(tenant, store: Path) -> None:
    assert not Image.objects.filter(tenant=tenant).exists()
    assert usage_of(tenant)["image_gib"] == 0
    assert list(store.iterdir()) == []


def _store_holds_no_shadow(store: Path) -> None:
    lines = [line for line in SHADOW.read_bytes().splitlines() if len(line) > 8]
    assert lines
    for path in store.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(line in data for line in lines), f"{path} holds bytes of /etc/shadow"


@pytest.mark.parametrize(
    ("name", "declared", "field", "rule"),
    [
        ("backing", "qcow2", "body", "backing_file"),
        ("datafile", "qcow2", "body", "data_file"),
        ("truncated", "qcow2", "body", "corrupt"),
        ("random", "qcow2", "disk_format", "format_mismatch"),
        ("empty", "qcow2", "body", "empty"),
        ("valid", "raw", "disk_format", "format_mismatch"),
    ],
)
def test_bad_images_are_refused_and_leave_nothing(crafted, store, name, declared, field, rule) -> None:
    tenant = make_tenant("acme")
    client = _client(tenant)
    response = _upload(client, "acme", crafted[name].read_bytes(), name="bad", disk_format=declared)
    assert response.status_code == 400, response.content
    error = response.json()["errors"][0]
    assert (error["field"], error["rule"]) == (field, rule), error
    assert error["message"]
    _nothing_left(tenant, store)
    _store_holds_no_shadow(store)


def test_shadow_is_named_in_the_refusal_reason(crafted, store) -> None:
    tenant = make_tenant("acme")
    client = _client(tenant)
    backing = _upload(client, "acme", crafted["backing"].read_bytes(), name="b", disk_format="qcow2").json()
    assert "backing file" in backing["detail"]
    data = _upload(client, "acme", crafted["datafile"].read_bytes(), name="d", disk_format="qcow2").json()
    assert "external data file" in data["detail"]
    assert "CVE-2024-32498" in data["detail"]


def test_the_checks_never_open_the_file_a_header_names(crafted, store) -> None:
    """The data file named inside the image is never opened, let alone copied into the store."""
    tenant = make_tenant("acme")
    watch = OpenWatch(crafted["canary"])
    response = _upload(
        _client(tenant), "acme", crafted["canary-image"].read_bytes(), name="c", disk_format="qcow2"
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["rule"] == "data_file"
    assert watch.events() == 0, "the canary data file named in the image was opened"
    # The same for the checker alone, on a copy in the store: refused, the file unchanged.
    copy = store / "copy.qcow2"
    shutil.copy(crafted["datafile"], copy)
    before = _sha(copy)
    with pytest.raises(ImageRejected) as refused:
        check_image(copy, "qcow2", 1 << 40)
    assert refused.value.rule == "data_file"
    assert _sha(copy) == before
    copy.unlink()
    _store_holds_no_shadow(store)


def test_a_valid_raw_image_is_accepted_with_its_checksum(crafted, store) -> None:
    tenant = make_tenant("acme")
    body = crafted["raw"].read_bytes()
    response = _upload(_client(tenant), "acme", body, name="plain", disk_format="raw", os_name="zeros")
    assert response.status_code == 201, response.content
    image = response.json()
    assert image["sha256"] == hashlib.sha256(body).hexdigest()
    assert (image["disk_format"], image["state"], image["public"], image["owner"]) == (
        "raw",
        "active",
        False,
        "acme",
    )
    assert image["virtual_size_bytes"] == image["size_bytes"] == len(body)
    assert usage_of(tenant)["image_gib"] == 1
    assert [p.name for p in store.iterdir()] == [Path(Image.objects.get(pk=image["id"]).disk_path).name]
    again = _upload(_client(tenant), "acme", body, name="plain", disk_format="raw")
    assert again.status_code == 400
    assert again.json()["errors"][0]["field"] == "name"


def test_bad_options_name_the_field(crafted, store) -> None:
    tenant = make_tenant("acme")
    client = _client(tenant)
    body = crafted["raw"].read_bytes()
    assert (
        _upload(client, "acme", body, name="ok", disk_format="vmdk").json()["errors"][0]["field"]
        == "disk_format"
    )
    assert _upload(client, "acme", body, name="1x", disk_format="raw").json()["errors"][0]["field"] == "name"
    bad_flag = _upload(client, "acme", body, name="ok", disk_format="raw", cloud_init="maybe")
    assert bad_flag.json()["errors"][0]["field"] == "cloud_init"
    wrong_type = client.post("/api/v1/tenants/acme/images/?name=ok&disk_format=raw", {"a": 1}, format="json")
    assert wrong_type.status_code == 415
    viewer = _upload(_client(tenant, Role.VIEWER), "acme", body, name="ok", disk_format="raw")
    assert viewer.status_code == 403
    _nothing_left(tenant, store)


def test_an_upload_over_the_quota_is_refused_before_its_body_is_read(live_server, store) -> None:
    """The refusal comes on the headers: the client sent 64 KiB of a declared 5 GiB, and the store
    never got a byte."""
    from tests.factories import make_token

    tenant = make_tenant("acme", image_gib=2)
    token = make_token(tenant, add_member(tenant, role=Role.MEMBER))
    url = urlsplit(live_server.url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as conn:
        head = (
            f"POST /api/v1/tenants/acme/images/?name=big&disk_format=raw HTTP/1.1\r\n"
            f"Host: {url.hostname}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {5 << 30}\r\n\r\n"
        )
        conn.sendall(head.encode() + b"\0" * 65536)
        answer = _answer(conn)
    assert answer.startswith("HTTP/1.1 413"), answer[:300]
    assert "image_gib" in answer
    assert "limit 2" in answer
    _nothing_left(tenant, store)


def test_a_body_of_unknown_length_stops_at_the_quota(store) -> None:
    tenant = make_tenant("acme", image_gib=1)
    limit_before = 1 << 30

    class Endless(io.RawIOBase):
        read_sizes: list[int] = []

        def read(self, n: int = -1) -> bytes:
            self.read_sizes.append(n)
            return b"\0" * n

    stream = Endless()
    with pytest.raises(uploads.UploadTooLarge) as refused:
        uploads.image_upload(
            actor=Actor.system("test"),
            tenant=tenant,
            name="endless",
            disk_format="raw",
            stream=stream,  # type: ignore[arg-type]
            length=None,
        )
    assert refused.value.status == 413
    assert refused.value.field == "body"
    assert sum(stream.read_sizes) <= limit_before + uploads.CHUNK
    assert max(stream.read_sizes) <= uploads.CHUNK
    _nothing_left(tenant, store)
    assert not QuotaClaim.objects.for_tenant(tenant).filter(released_at__isnull=True).exists()


def test_an_upload_is_streamed_in_bounded_memory(live_server, store) -> None:
    """96 MiB through a real HTTP connection: Python's allocations stay under 8 MiB at their peak."""
    from tests.factories import make_token

    tenant = make_tenant("acme")
    token = make_token(tenant, add_member(tenant, role=Role.MEMBER))
    url = urlsplit(live_server.url)
    size = 96 * MIB
    block = (b"nubis" * (MIB // 5 + 1))[:MIB]
    tracemalloc.start()
    try:
        with socket.create_connection((url.hostname, url.port), timeout=120) as conn:
            head = (
                f"POST /api/v1/tenants/acme/images/?name=stream&disk_format=raw HTTP/1.1\r\n"
                f"Host: {url.hostname}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
            )
            conn.sendall(head.encode())
            for _ in range(size // MIB):
                conn.sendall(block)
            answer = _answer(conn)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer.startswith("HTTP/1.1 201"), answer[:500]
    assert peak < 8 * MIB, f"peak of {peak / MIB:.1f} MiB while uploading {size / MIB:.0f} MiB"
    image = Image.objects.get(tenant=tenant, name="stream")
    assert image.size_bytes == size
    assert image.sha256 == hashlib.sha256(block * (size // MIB)).hexdigest()


# -- a bootable upload ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bootable_qcow2(built_image: GuestImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A disk that boots on its own: the tiny guest's kernel and initramfs on a FAT file system
    with SYSLINUX in its boot sector (Debian's syslinux, mtools and dosfstools)."""
    for tool in ("syslinux", "mcopy", "mkfs.vfat"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run scripts/bootstrap-host (syslinux, mtools, dosfstools)")
    d = tmp_path_factory.mktemp("bootable")
    raw = d / "disk.raw"
    with raw.open("wb") as f:
        f.truncate(24 * MIB)
    subprocess.run(["mkfs.vfat", "-n", "NUBISBOOT", str(raw)], check=True, capture_output=True)
    config = d / "syslinux.cfg"
    config.write_text(
        f"DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL vmlinuz\n"
        f"  APPEND initrd=initrd.img {built_image.cmdline}\n"
    )
    for source, target in (
        (built_image.kernel, "vmlinuz"),
        (built_image.initrd, "initrd.img"),
        (config, "syslinux.cfg"),
    ):
        subprocess.run(["mcopy", "-i", str(raw), str(source), f"::{target}"], check=True, capture_output=True)
    subprocess.run(["syslinux", "--install", str(raw)], check=True, capture_output=True)
    qcow2 = d / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True
    )
    return qcow2


@pytest.mark.slow
def test_an_uploaded_qcow2_boots_privately_and_is_deleted(
    host, flavors, bootable_qcow2, store, no_leftovers
) -> None:
    acme, other = make_tenant("acme"), make_tenant("other")
    client, stranger = _client(acme), _client(other)
    body = bootable_qcow2.read_bytes()
    response = _upload(
        client, "acme", body, name="my-disk", disk_format="qcow2", os_name="busybox on syslinux"
    )
    assert response.status_code == 201, response.content
    image = response.json()
    assert image["sha256"] == hashlib.sha256(body).hexdigest()
    assert (image["kind"], image["owner"], image["public"]) == ("disk", "acme", False)
    assert "my-disk" in {i["name"] for i in client.get("/api/v1/tenants/acme/images/").json()["results"]}

    # Another tenant neither sees it nor uses it nor deletes it.
    assert "my-disk" not in {
        i["name"] for i in stranger.get("/api/v1/tenants/other/images/").json()["results"]
    }
    assert stranger.get(f"/api/v1/tenants/other/images/{image['id']}/").status_code == 404
    assert stranger.delete(f"/api/v1/tenants/other/images/{image['id']}/").status_code == 404
    for ref in ("my-disk", image["id"]):
        used = stranger.post(
            "/api/v1/tenants/other/instances/",
            {"name": "x", "flavor": "t.virtio", "image": ref},
            format="json",
        )
        assert used.status_code == 400
        assert used.json()["errors"][0] == {
            "field": "image",
            "rule": "exists",
            "message": f"unknown image {str(ref)!r}",
        }

    # It boots from its own disk (no kernel of ours): SYSLINUX, then the guest's ready marker.
    created = client.post(
        "/api/v1/tenants/acme/instances/",
        {"name": "from-upload", "flavor": "t.virtio", "image": "my-disk"},
        format="json",
    )
    assert created.status_code == 202, created.json()
    vm_id = created.json()["instance_id"]
    wait_for(
        lambda: client.get(f"/api/v1/tenants/acme/instances/{vm_id}/").json()["state"] == "running", "running"
    )
    instance = Instance.objects.for_tenant(acme).get(uuid=vm_id)
    text = wait_marker(instance, "NUBIS-READY")
    assert "SYSLINUX" in text or "NUBIS-BOOT" in text

    # Not deleted while an instance uses it (named); deleted once it is gone, with its file and claim.
    busy = client.delete(f"/api/v1/tenants/acme/images/{image['id']}/")
    assert busy.status_code == 409
    assert "from-upload" in busy.json()["detail"]
    assert client.delete(f"/api/v1/tenants/acme/instances/{vm_id}/").status_code == 202
    wait_for(lambda: client.get(f"/api/v1/tenants/acme/instances/{vm_id}/").status_code == 404, "delete")
    path = Path(Image.objects.get(pk=image["id"]).disk_path)
    assert path.exists()
    assert client.delete(f"/api/v1/tenants/acme/images/{image['id']}/").status_code == 204
    assert not path.exists()
    assert usage_of(acme)["image_gib"] == 0
    assert Image.objects.get(pk=image["id"]).state == ImageState.DELETED  # kept for its instance's history
    assert client.get(f"/api/v1/tenants/acme/images/{image['id']}/").status_code == 404


def test_staff_make_an_upload_public_and_it_keeps_its_owner(crafted, store) -> None:
    from django.contrib.auth import get_user_model

    acme, other = make_tenant("acme"), make_tenant("other")
    image_id = _upload(
        _client(acme), "acme", crafted["raw"].read_bytes(), name="shared", disk_format="raw"
    ).json()["id"]
    staff = get_user_model().objects.create_superuser("root-admin", "r@example.org", "pw-123456789")
    admin = APIClient()
    admin.force_login(staff)
    changelist = "/admin/compute/image/"
    done = admin.post(changelist, {"action": "make_public", "_selected_action": [image_id]})
    assert done.status_code == 302
    image = Image.objects.get(pk=image_id)
    assert image.public
    assert image.tenant == acme
    seen = _client(other).get("/api/v1/tenants/other/images/").json()["results"]
    assert [i["owner"] for i in seen if i["name"] == "shared"] == ["acme"]
    # The owner cannot delete it while it is public (other tenants may use it).
    assert _client(acme).delete(f"/api/v1/tenants/acme/images/{image_id}/").status_code == 409
    admin.post(changelist, {"action": "make_private", "_selected_action": [image_id]})
    assert not Image.objects.get(pk=image_id).public
    assert "shared" not in {
        i["name"] for i in _client(other).get("/api/v1/tenants/other/images/").json()["results"]
    }


# -- the UI's upload form -----------------------------------------------------------------------


def _ui(tenant, role: Role = Role.MEMBER):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(add_member(tenant, role=role))
    page = client.get(f"/t/{tenant.slug}/images/")
    assert page.status_code == 200
    return client, client.cookies["csrftoken"].value


def test_the_upload_form_streams_checks_and_lists_the_image(crafted, store) -> None:
    tenant = make_tenant("acme")
    client, token = _ui(tenant)
    url = "/t/acme/images/upload/"
    body = crafted["valid"].read_bytes()
    with crafted["valid"].open("rb") as f:
        done = client.post(
            url, {"csrfmiddlewaretoken": token, "name": "from-form", "disk_format": "qcow2", "image": f}
        )
    assert done.status_code == 302, done.content[:2000]
    image = Image.objects.get(tenant=tenant, name="from-form")
    assert image.sha256 == hashlib.sha256(body).hexdigest()
    assert image.state == ImageState.ACTIVE
    listed = client.get("/t/acme/images/").content.decode()
    assert "from-form" in listed
    assert image.sha256 in listed
    assert [p.name for p in store.iterdir()] == [Path(image.disk_path).name]  # nothing staged left

    with crafted["datafile"].open("rb") as f:
        refused = client.post(
            url, {"csrfmiddlewaretoken": token, "name": "evil", "disk_format": "qcow2", "image": f}
        )
    assert refused.status_code == 400
    assert 'data-rule="data_file"' in refused.content.decode()
    assert not Image.objects.filter(name="evil").exists()
    assert [p.name for p in store.iterdir()] == [Path(image.disk_path).name]

    with crafted["raw"].open("rb") as f:
        no_token = client.post(url, {"name": "x", "disk_format": "raw", "image": f})
    assert no_token.status_code == 403
    assert [p.name for p in store.iterdir()] == [Path(image.disk_path).name]

    deleted = client.post(
        f"/t/acme/images/{image.pk}/delete/", {"csrfmiddlewaretoken": token, "confirm": "from-form"}
    )
    assert deleted.status_code == 302
    assert list(store.iterdir()) == []
    assert usage_of(tenant)["image_gib"] == 0


def test_the_upload_form_refuses_a_file_over_the_quota_before_reading_it(store) -> None:
    tenant = make_tenant("acme", image_gib=1)
    client, token = _ui(tenant)
    uploads.image_upload(
        actor=Actor.system("test"),
        tenant=tenant,
        name="first",
        disk_format="raw",
        stream=io.BytesIO(b"\0" * 512),
        length=512,
    )
    big = io.BytesIO(b"\0" * 1024)
    big.name = "big.raw"
    refused = client.post(
        "/t/acme/images/upload/",
        {"csrfmiddlewaretoken": token, "name": "second", "disk_format": "raw", "image": big},
    )
    assert refused.status_code == 413
    assert 'data-field="image_gib"' in refused.content.decode()
    assert Image.objects.filter(tenant=tenant).count() == 1
    assert len(list(store.iterdir())) == 1


def test_the_cli_uploads_lists_and_deletes_an_image(
    live_server, crafted, store, capsys, monkeypatch, tmp_path
) -> None:
    from portal.cli import main
    from tests.factories import make_token

    tenant = make_tenant("acme")
    token = make_token(tenant, add_member(tenant, role=Role.MEMBER))
    monkeypatch.setenv("NUBIS_CONFIG", str(tmp_path / "cli.json"))
    monkeypatch.setenv("NUBIS_URL", live_server.url)
    monkeypatch.setenv("NUBIS_TOKEN", token)
    monkeypatch.setenv("NUBIS_TENANT", "acme")
    path = crafted["valid"]
    assert main(["image", "upload", str(path), "--name", "cli-disk", "--format", "qcow2"]) == 0
    assert hashlib.sha256(path.read_bytes()).hexdigest() in capsys.readouterr().out
    assert main(["images", "list"]) == 0
    listed = capsys.readouterr().out
    assert "cli-disk" in listed
    assert "qcow2" in listed
    assert main(["image", "upload", str(crafted["backing"]), "--name", "evil", "--format", "qcow2"]) == 1
    assert "backing file" in capsys.readouterr().err
    assert main(["image", "delete", "cli-disk"]) == 0
    assert list(store.iterdir()) == []


def test_uploads_cut_off_are_swept_after_the_stale_time(store, settings) -> None:
    import time
    from datetime import timedelta

    from django.utils import timezone

    settings.NUBIS_IMAGE_UPLOAD_STALE_SECONDS = 3600
    tenant = make_tenant("acme", image_gib=5)
    begun = {
        name: uploads.image_upload_begin(
            actor=Actor.system("test"), tenant=tenant, name=name, disk_format="raw", length=10 * MIB
        )[0]
        for name in ("dead", "alive")
    }
    Image.objects.filter(pk__in=[i.pk for i in begun.values()]).update(
        created=timezone.now() - timedelta(hours=2)
    )
    # The dead upload's web process stopped writing two hours ago; the live one writes now.
    partials = {}
    for name, age in (("dead", 7200), ("alive", 0)):
        path = Path(begun[name].disk_path)
        partials[name] = path.with_name(f".{path.name}.partial")
        partials[name].write_bytes(b"\0" * MIB)
        os.utime(partials[name], (time.time() - age, time.time() - age))
    old_form, new_form = store / ".staged-old.partial", store / ".staged-new.partial"
    for staged in (old_form, new_form):
        staged.write_bytes(b"\0")
    os.utime(old_form, (time.time() - 7200, time.time() - 7200))

    assert sorted(uploads.uploads_sweep()) == [".staged-old.partial", "dead"]
    assert not Image.objects.filter(pk=begun["dead"].pk).exists()
    assert not partials["dead"].exists()
    assert not old_form.exists()
    assert Image.objects.get(pk=begun["alive"].pk).state == ImageState.UPLOADING
    assert partials["alive"].exists()
    assert new_form.exists()
    assert usage_of(tenant)["image_gib"] == 1  # the live upload's claim only
    assert uploads.uploads_sweep() == []  # nothing more to undo
