"""Key pairs: real validation of OpenSSH public keys (fingerprints checked against ssh-keygen), generation
(the private half works), tenant isolation and roles, and what a create request does with key pairs and
user-data (copied into the instance; user-data shown back to members and owners only).

No guest runs: creates are placed on a host row whose queue nobody serves.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from compute.models import CpuMode, Flavor, Image, ImageKind, Instance, KeyPair
from compute.services import keypairs as svc
from core.errors import ServiceError
from security.audit import Actor
from security.models import AuditRecord
from tenants.models import Role, Tenant
from tests.factories import add_member, make_tenant
from tests.scheduler.test_placement import make_host

pytestmark = pytest.mark.django_db

KEYS = {  # name -> ssh-keygen arguments
    "ed25519": ["-t", "ed25519"],
    "rsa2048": ["-t", "rsa", "-b", "2048"],
    "ecdsa256": ["-t", "ecdsa", "-b", "256"],
    "ecdsa384": ["-t", "ecdsa", "-b", "384"],
    "ecdsa521": ["-t", "ecdsa", "-b", "521"],
    "rsa1024": ["-t", "rsa", "-b", "1024"],
    "dsa": ["-t", "dsa"],
}


@pytest.fixture(scope="session")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One key of each kind, made by ssh-keygen (its comment "user@test-<name>")."""
    path = tmp_path_factory.mktemp("keys")
    for name, args in KEYS.items():
        result = subprocess.run(
            ["ssh-keygen", "-q", *args, "-N", "", "-C", f"user@test-{name}", "-f", str(path / name)],
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:  # an ssh-keygen built without DSA: that case is skipped
            (path / f"{name}.missing").write_bytes(result.stderr)
    return path


def ssh_keygen_l(pub: Path) -> tuple[int, str]:
    """Bits and fingerprint as `ssh-keygen -lf` prints them."""
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout
    bits, fingerprint = out.split()[:2]
    return int(bits), fingerprint


def pub(keydir: Path, name: str) -> str:
    return (keydir / f"{name}.pub").read_text()


@pytest.fixture
def tenant() -> Tenant:
    return make_tenant("keys-a")


def api(tenant: Tenant, role: Role = Role.MEMBER) -> APIClient:
    client = APIClient()
    client.force_authenticate(add_member(tenant, role=role))
    return client


def refused(text: str) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        svc.key_parse(text)
    assert caught.value.field == "public_key"
    return caught.value


# -- validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ed25519", "rsa2048", "ecdsa256", "ecdsa384", "ecdsa521"])
def test_valid_keys_get_the_fingerprint_and_bits_ssh_keygen_shows(keydir: Path, name: str) -> None:
    info = svc.key_parse(pub(keydir, name))
    assert (info.bits, info.fingerprint) == ssh_keygen_l(keydir / f"{name}.pub")
    assert info.comment == f"user@test-{name}"
    assert info.public_key == " ".join(pub(keydir, name).split()[:2])


def test_short_rsa_dsa_private_keys_and_garbage_are_refused_with_the_reason(keydir: Path) -> None:
    assert "at least 2048 bits; this one has 1024" in refused(pub(keydir, "rsa1024")).message
    private = refused((keydir / "ed25519").read_text())
    assert private.rule == "private_key"
    assert "PRIVATE key" in private.message
    assert refused((keydir / "rsa2048").read_text()).rule == "private_key"
    if (keydir / "dsa.pub").exists():
        assert "DSA keys are refused" in refused(pub(keydir, "dsa")).message
    assert refused("hello world").rule == "type"
    assert refused("").rule == "required"
    assert "not valid base64" in refused("ssh-ed25519 AAAA!!!! x").message
    assert "no key data" in refused("ssh-ed25519").message
    ed = pub(keydir, "ed25519").split()
    # The type outside says RSA, the blob holds an Ed25519 key.
    assert "holds a 'ssh-ed25519' key" in refused(f"ssh-rsa {ed[1]}").message
    blob = base64.b64decode(ed[1])
    assert "truncated" in refused(f"ssh-ed25519 {base64.b64encode(blob[:-4]).decode()}").message
    assert "after the key" in refused(f"ssh-ed25519 {base64.b64encode(blob + b'xx').decode()}").message
    # authorized_keys options, several keys, too long.
    options = refused(f'command="/bin/ls",no-pty {pub(keydir, "ed25519")}')
    assert options.rule == "options"
    assert "give the key alone" in options.message
    two = refused(pub(keydir, "ed25519") + "\n" + pub(keydir, "ecdsa256"))
    assert (two.rule, "2 lines" in two.message) == ("count", True)
    assert refused("ssh-ed25519 " + "A" * 20000).rule == "length"
    assert "PEM" in refused("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----").message


def test_an_ecdsa_point_off_its_curve_is_refused(keydir: Path) -> None:
    kind, data = pub(keydir, "ecdsa256").split()[:2]
    blob = bytearray(base64.b64decode(data))
    blob[-1] ^= 1  # y changes: the point leaves the curve
    assert "not on the curve" in refused(f"{kind} {base64.b64encode(bytes(blob)).decode()}").message


# -- the API --------------------------------------------------------------------------------------
def test_import_list_show_delete_and_duplicate_names(keydir: Path, tenant: Tenant) -> None:
    client = api(tenant)
    base = f"/api/v1/tenants/{tenant.slug}/keypairs/"
    response = client.post(base, {"name": "laptop", "public_key": pub(keydir, "ed25519")}, format="json")
    assert response.status_code == 201, response.content
    bits, fingerprint = ssh_keygen_l(keydir / "ed25519.pub")
    body = response.json()
    assert (body["bits"], body["fingerprint"], body["key_type"]) == (bits, fingerprint, "ssh-ed25519")
    assert body["comment"] == "user@test-ed25519"
    assert "private_key" not in body
    record = AuditRecord.objects.filter(action="keypair.import").get()
    assert record.detail["fingerprint"] == fingerprint

    again = client.post(base, {"name": "laptop", "public_key": pub(keydir, "rsa2048")}, format="json")
    assert again.status_code == 409
    assert again.json()["errors"][0]["field"] == "name"
    bad_name = client.post(base, {"name": "9lives", "public_key": pub(keydir, "rsa2048")}, format="json")
    assert (bad_name.status_code, bad_name.json()["errors"][0]["field"]) == (400, "name")
    short = client.post(base, {"name": "old", "public_key": pub(keydir, "rsa1024")}, format="json")
    assert short.status_code == 400
    assert short.json()["errors"][0] == {
        "field": "public_key",
        "rule": "rsa_bits",
        "message": "RSA keys need at least 2048 bits; this one has 1024",
    }

    rows = client.get(base).json()["results"]
    assert [r["name"] for r in rows] == ["laptop"]
    shown = client.get(f"{base}{body['id']}/").json()
    assert shown["public_key"].startswith("ssh-ed25519 AAAA")
    assert client.delete(f"{base}{body['id']}/").status_code == 204
    assert not KeyPair.objects.for_tenant(tenant).exists()
    assert client.get(f"{base}{body['id']}/").status_code == 404


def test_a_generated_private_key_gives_back_the_stored_public_key(tenant: Tenant, tmp_path: Path) -> None:
    response = api(tenant).post(f"/api/v1/tenants/{tenant.slug}/keypairs/", {"name": "made"}, format="json")
    assert response.status_code == 201, response.content
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert body["key_type"] == "ssh-ed25519"
    private = tmp_path / "id"
    private.write_text(body["private_key"])
    private.chmod(0o600)
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(private)], capture_output=True, text=True, check=True
    ).stdout
    keypair = KeyPair.objects.for_tenant(tenant).get(name="made")
    assert derived.split()[:2] == keypair.public_key.split()[:2]
    (tmp_path / "id.pub").write_text(derived)
    assert ssh_keygen_l(tmp_path / "id.pub") == (256, keypair.fingerprint)
    # Never stored, never shown again, never audited.
    assert "PRIVATE" not in json.dumps(api(tenant).get(f"/api/v1/tenants/{tenant.slug}/keypairs/").json())
    record = AuditRecord.objects.filter(action="keypair.generate").get()
    assert "PRIVATE" not in json.dumps(record.detail)
    assert not any("PRIVATE" in str(v) for v in KeyPair.objects.for_tenant(tenant).values().get().values())


def test_viewers_read_other_tenants_see_nothing(keydir: Path, tenant: Tenant) -> None:
    other = make_tenant("keys-b")
    theirs = svc.keypair_import(
        actor=Actor.system("test"), tenant=other, name="theirs", public_key=pub(keydir, "ecdsa256")
    )
    mine = svc.keypair_import(
        actor=Actor.system("test"), tenant=tenant, name="mine", public_key=pub(keydir, "ed25519")
    )
    viewer = api(tenant, Role.VIEWER)
    base = f"/api/v1/tenants/{tenant.slug}/keypairs/"
    assert [r["name"] for r in viewer.get(base).json()["results"]] == ["mine"]
    assert viewer.get(f"{base}{mine.pk}/").status_code == 200
    denied = viewer.post(base, {"name": "v", "public_key": pub(keydir, "rsa2048")}, format="json")
    assert denied.status_code == 403
    assert viewer.delete(f"{base}{mine.pk}/").status_code == 403
    member = api(tenant)
    # Another tenant's key pair, by id under our URL or under theirs: 404.
    assert member.get(f"{base}{theirs.pk}/").status_code == 404
    assert member.delete(f"{base}{theirs.pk}/").status_code == 404
    assert member.get(f"/api/v1/tenants/{other.slug}/keypairs/").status_code == 404
    assert KeyPair.objects.for_tenant(other).filter(pk=theirs.pk).exists()


# -- create requests ------------------------------------------------------------------------------
@pytest.fixture
def catalog() -> dict[str, Any]:
    vm_image = Image.objects.create(
        name="k-image", kind=ImageKind.KERNEL, os_name="Test", disk_path="/x", sha256="0" * 64
    )
    # A copy of the test image row that says it reads a NoCloud seed.
    cloud = Image.objects.create(
        name="k-cloud", kind=ImageKind.DISK, os_name="Test", disk_path="/x", sha256="2" * 64, cloud_init=True
    )
    rootfs = Image.objects.create(
        name="k-rootfs", kind=ImageKind.ROOTFS, os_name="busybox", disk_path="/y", sha256="1" * 64
    )
    Flavor.objects.create(name="k.small", vcpus=1, ram_mib=256, disk_gib=1, cpu_mode=CpuMode.EMULATED)
    make_host("k-host", cpus=8, ram_mib=16384)
    return {"vm": vm_image, "cloud": cloud, "rootfs": rootfs}


def create(client: APIClient, tenant: Tenant, **body: Any) -> Any:
    request = {"name": "web", "flavor": "k.small", "image": "k-rootfs", "kind": "container", "network": None}
    return client.post(f"/api/v1/tenants/{tenant.slug}/instances/", {**request, **body}, format="json")


def first_error(response: Any) -> dict[str, str]:
    error: dict[str, str] = response.json()["errors"][0]
    return error


def test_create_copies_the_keys_and_a_later_delete_leaves_them(
    keydir: Path, tenant: Tenant, catalog: dict[str, Any]
) -> None:
    actor = Actor.system("test")
    laptop = svc.keypair_import(actor=actor, tenant=tenant, name="laptop", public_key=pub(keydir, "ed25519"))
    ci = svc.keypair_import(actor=actor, tenant=tenant, name="ci", public_key=pub(keydir, "rsa2048"))
    client = api(tenant)
    response = create(
        client, tenant, key_pairs=["laptop", str(ci.pk), "laptop"], user_data="#!/bin/sh\necho hi\n"
    )
    assert response.status_code == 202, response.content
    box = Instance.objects.for_tenant(tenant).get(name="web")
    assert box.ssh_keys == [
        {"name": "laptop", "fingerprint": laptop.fingerprint, "public_key": laptop.public_key},
        {"name": "ci", "fingerprint": ci.fingerprint, "public_key": ci.public_key},
    ]
    assert box.user_data == "#!/bin/sh\necho hi\n"
    record = AuditRecord.objects.filter(action="instance.create").get()
    assert record.detail["key_pairs"] == ["laptop", "ci"]
    assert "echo hi" not in json.dumps(record.detail)

    assert client.delete(f"/api/v1/tenants/{tenant.slug}/keypairs/{laptop.pk}/").status_code == 204
    box.refresh_from_db()
    assert [k["name"] for k in box.ssh_keys] == ["laptop", "ci"]
    shown = client.get(f"/api/v1/tenants/{tenant.slug}/instances/{box.uuid}/").json()
    assert shown["key_pairs"] == [
        {"name": "laptop", "fingerprint": laptop.fingerprint},
        {"name": "ci", "fingerprint": ci.fingerprint},
    ]


def test_unknown_and_other_tenants_key_pairs_are_refused_naming_the_field(
    keydir: Path, tenant: Tenant, catalog: dict[str, Any]
) -> None:
    other = make_tenant("keys-b")
    theirs = svc.keypair_import(
        actor=Actor.system("test"), tenant=other, name="theirs", public_key=pub(keydir, "ed25519")
    )
    client = api(tenant)
    for ref in ("theirs", str(theirs.pk), "nope"):
        response = create(client, tenant, key_pairs=[ref])
        assert response.status_code == 400
        assert first_error(response) == {
            "field": "key_pairs",
            "rule": "exists",
            "message": f"unknown key pair {ref!r}",
        }
    assert not Instance.objects.for_tenant(tenant).exists()


def test_user_data_limits_and_images_that_do_not_read_it(
    keydir: Path, tenant: Tenant, catalog: dict[str, Any]
) -> None:
    svc.keypair_import(
        actor=Actor.system("t"), tenant=tenant, name="laptop", public_key=pub(keydir, "ed25519")
    )
    client = api(tenant)
    big = create(client, tenant, user_data="é" * 8193)  # 16,386 bytes in UTF-8
    assert (big.status_code, first_error(big)["field"], first_error(big)["rule"]) == (
        400,
        "user_data",
        "length",
    )
    assert "16386 bytes" in first_error(big)["message"]
    binary = create(client, tenant, user_data="\x1f\x8b\x08 gzip")
    assert (binary.status_code, first_error(binary)["field"], first_error(binary)["rule"]) == (
        400,
        "user_data",
        "text",
    )
    nul = create(client, tenant, user_data="a\x00b")
    assert (nul.status_code, first_error(nul)["field"]) == (400, "user_data")
    # A VM from an image without cloud-init: refused, naming the field given.
    vm = {"kind": "vm", "image": "k-image"}
    keys = create(client, tenant, key_pairs=["laptop"], **vm)
    assert (keys.status_code, first_error(keys)["field"], first_error(keys)["rule"]) == (
        400,
        "key_pairs",
        "image",
    )
    assert "does not read SSH keys or user-data" in first_error(keys)["message"]
    script = create(client, tenant, user_data="#cloud-config\n", **vm)
    assert (script.status_code, first_error(script)["field"]) == (400, "user_data")
    assert not Instance.objects.for_tenant(tenant).exists()
    # The same request with a cloud image: accepted, and exactly 16 KiB passes.
    ok = create(client, tenant, key_pairs=["laptop"], user_data="x" * 16384, kind="vm", image="k-cloud")
    assert ok.status_code == 202, ok.content
    assert len(Instance.objects.for_tenant(tenant).get(name="web").user_data) == 16384


def test_user_data_is_shown_to_members_and_owners_only_and_only_in_the_detail(
    tenant: Tenant, catalog: dict[str, Any]
) -> None:
    member = api(tenant)
    assert create(member, tenant, user_data="#cloud-config\nsecret: 42\n").status_code == 202
    box = Instance.objects.for_tenant(tenant).get(name="web")
    url = f"/api/v1/tenants/{tenant.slug}/instances/"
    assert member.get(f"{url}{box.uuid}/").json()["user_data"] == "#cloud-config\nsecret: 42\n"
    assert api(tenant, Role.OWNER).get(f"{url}{box.uuid}/").json()["user_data"].endswith("42\n")
    viewer = api(tenant, Role.VIEWER)
    shown = viewer.get(f"{url}{box.uuid}/").json()
    assert "user_data" not in shown
    assert shown["key_pairs"] == []
    for client in (member, viewer):
        listed = client.get(url).json()["results"]
        assert [r["name"] for r in listed] == ["web"]
        assert "user_data" not in listed[0]
        assert "secret: 42" not in json.dumps(listed)
    assert not AuditRecord.objects.filter(detail__icontains="secret: 42").exists()


# -- the pages ------------------------------------------------------------------------------------
def page_client(tenant: Tenant, role: Role = Role.MEMBER) -> Client:
    client = Client()
    client.force_login(add_member(tenant, role=role))
    return client


def test_the_key_pairs_page_imports_generates_and_deletes(keydir: Path, tenant: Tenant) -> None:
    client = page_client(tenant)
    url = f"/t/{tenant.slug}/keypairs/"
    bad = client.post(url, {"name": "old", "public_key": pub(keydir, "rsa1024")})
    assert bad.status_code == 400
    text = bad.content.decode()
    assert 'id="import-key-error" data-field="public_key" data-rule="rsa_bits"' in text
    assert "at least 2048 bits; this one has 1024" in text
    assert "ssh-rsa AAAA" in text  # the form keeps what was pasted
    # A private key pasted by mistake is refused and not echoed back into the form.
    private = client.post(url, {"name": "oops", "public_key": (keydir / "ed25519").read_text()})
    assert private.status_code == 400
    assert "this is a PRIVATE key" in private.content.decode()
    assert "BEGIN OPENSSH PRIVATE KEY" not in private.content.decode()
    done = client.post(url, {"name": "laptop", "public_key": pub(keydir, "ecdsa384")})
    assert (done.status_code, done["Location"]) == (302, url)
    listing = client.get(url).content.decode()
    bits, fingerprint = ssh_keygen_l(keydir / "ecdsa384.pub")
    assert fingerprint in listing
    assert "<code>ecdsa-sha2-nistp384</code>" in listing
    assert f"<td>{bits}</td>" in listing

    made = client.post(f"{url}generate/", {"name": "fresh"})
    assert made.status_code == 200
    assert made["Cache-Control"] == "no-store"
    page = made.content.decode()
    assert "-----BEGIN OPENSSH PRIVATE KEY-----" in page
    assert 'data-source="private-key"' in page
    assert "js/keypairs.js" in page
    assert "<script>" not in page  # CSP: no inline scripts
    assert "PRIVATE KEY" not in client.get(url).content.decode()
    taken = client.post(f"{url}generate/", {"name": "fresh"})
    assert taken.status_code == 409
    assert 'id="generate-name-error" data-field="name" data-rule="unique"' in taken.content.decode()

    keypair = KeyPair.objects.for_tenant(tenant).get(name="laptop")
    delete = f"{url}{keypair.pk}/delete/"
    assert "Type <strong>laptop</strong> to confirm" in client.get(delete).content.decode()
    assert client.post(delete, {}).status_code == 400
    gone = client.post(delete, {"confirm": "laptop"})
    assert (gone.status_code, gone["Location"]) == (302, url)
    assert list(KeyPair.objects.for_tenant(tenant).values_list("name", flat=True)) == ["fresh"]


def test_viewers_see_the_page_without_forms_and_cannot_post(keydir: Path, tenant: Tenant) -> None:
    svc.keypair_import(
        actor=Actor.system("t"), tenant=tenant, name="laptop", public_key=pub(keydir, "ed25519")
    )
    viewer = page_client(tenant, Role.VIEWER)
    url = f"/t/{tenant.slug}/keypairs/"
    page = viewer.get(url)
    assert page.status_code == 200
    assert "laptop" in page.content.decode()
    assert "Import key" not in page.content.decode()
    assert viewer.post(url, {"name": "v", "public_key": pub(keydir, "rsa2048")}).status_code == 403
    assert viewer.post(f"{url}generate/", {"name": "v"}).status_code == 403
    assert KeyPair.objects.for_tenant(tenant).count() == 1


def test_the_create_form_takes_key_pairs_and_user_data(
    keydir: Path, tenant: Tenant, catalog: dict[str, Any]
) -> None:
    laptop = svc.keypair_import(
        actor=Actor.system("t"), tenant=tenant, name="laptop", public_key=pub(keydir, "ed25519")
    )
    client = page_client(tenant)
    url = f"/t/{tenant.slug}/instances/new/"
    form = client.get(url).content.decode()
    assert 'name="key_pairs" multiple' in form
    assert f"laptop (ssh-ed25519, {laptop.fingerprint})" in form
    assert 'name="user_data"' in form
    body = {
        "name": "web",
        "flavor": "k.small",
        "network": "__none__",
        "priority": "1",
        "key_pairs": ["laptop"],
    }
    refused = client.post(url, {**body, "kind": "vm", "image": "k-image"})
    assert refused.status_code == 400
    assert 'id="id_key_pairs-error"' in refused.content.decode()
    assert "does not read SSH keys or user-data" in refused.content.decode()
    made = client.post(url, {**body, "kind": "vm", "image": "k-cloud", "user_data": "#cloud-config\nx: 1\n"})
    assert made.status_code == 302, made.content.decode()[:2000]
    vm = Instance.objects.for_tenant(tenant).get(name="web")
    assert [k["fingerprint"] for k in vm.ssh_keys] == [laptop.fingerprint]
    assert vm.user_data == "#cloud-config\nx: 1\n"
    assert "x: 1" in client.get(made["Location"]).content.decode()
    assert "x: 1" not in page_client(tenant, Role.VIEWER).get(made["Location"]).content.decode()
