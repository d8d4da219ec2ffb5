"""Hostile bodies through the production server (`manage.py serve`: daphne on Twisted) on loopback.

Twisted parses a POST's multipart body itself before daphne hands it on, and answered a malformed
one with a bare `400 Bad Request` (no headers, no body) that Django never saw; a chunked body
carries no Content-Length for Django to refuse on. Both must end as problem+json from the API.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pytest_django import DjangoDbBlocker

from tenants.models import Membership, Role
from tests.conftest import serve_portal, subprocess_env
from tests.factories import add_member, make_tenant, make_token

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

LIMIT = 65536


@dataclass
class Portal:
    port: int
    log: Path
    slug: str
    member_id: int
    token: str

    def call(
        self, method: str, path: str, body: bytes | Iterator[bytes], headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            headers = {"Authorization": f"Bearer {self.token}", **headers}
            chunked = not isinstance(body, bytes)
            conn.request(method, path, body=body, headers=headers, encode_chunked=chunked)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()


@pytest.fixture
def portal(django_db_blocker: DjangoDbBlocker, tmp_path: Path) -> Iterator[Portal]:
    tenant = make_tenant("bodies")
    owner = add_member(tenant, role=Role.OWNER)
    other = add_member(tenant, role=Role.MEMBER)
    token = make_token(tenant, owner, Role.OWNER, "bodies")
    member_id = Membership.objects.get(user=other, tenant=tenant).pk
    log = tmp_path / "web.log"
    with django_db_blocker.unblock():
        env = subprocess_env(NUBIS_MAX_BODY_BYTES=str(LIMIT))
    with serve_portal(log, env) as port:
        yield Portal(port, log, tenant.slug, member_id, token)


# Bodies Twisted's multipart parse fails on ("Not a multipart."): no part opens with the boundary,
# or no boundary is given at all (JSON sent under a form's type, a common client mistake).
MALFORMED_MULTIPART = b"--x\r\nbad"
GOOD_MULTIPART = b'--xyz\r\nContent-Disposition: form-data; name="name"\r\n\r\nvm-1\r\n--xyz--\r\n'


def problem(status: int, headers: dict[str, str], body: bytes, expected: int) -> dict[str, Any]:
    assert status == expected, (status, headers, body[:300])
    assert headers.get("content-type") == "application/problem+json", headers
    parsed: dict[str, Any] = json.loads(body)
    assert parsed["status"] == expected
    return parsed


def test_hostile_bodies_through_daphne_end_as_problems(portal: Portal) -> None:
    instances = f"/api/v1/tenants/{portal.slug}/instances/"
    member = f"/api/v1/tenants/{portal.slug}/members/{portal.member_id}/"
    multipart = {"Content-Type": "multipart/form-data; boundary=xyz"}

    # Twisted used to answer these itself: "HTTP/1.1 400 Bad Request", nothing else.
    refused = problem(*portal.call("POST", instances, MALFORMED_MULTIPART, multipart), 415)
    assert refused["errors"][0]["field"] == "Content-Type"
    no_boundary = {"Content-Type": "multipart/form-data"}
    problem(*portal.call("POST", instances, b'{"name": "vm-1"}', no_boundary), 415)
    # The same body as PATCH reached Django and changed nothing, with 200.
    problem(*portal.call("PATCH", member, MALFORMED_MULTIPART, multipart), 415)
    # A well-formed multipart body is no better.
    problem(*portal.call("POST", instances, GOOD_MULTIPART, multipart), 415)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    problem(*portal.call("POST", instances, b"name=vm-1&flavor=%%", form), 415)

    # Over the limit, declared or chunked (no Content-Length: the size shows only as it is read).
    json_type = {"Content-Type": "application/json"}
    big = b'{"name": "' + b"x" * LIMIT + b'"}'
    declared = problem(*portal.call("POST", instances, big, json_type), 413)
    assert declared["detail"] == f"the request body is larger than the limit of {LIMIT} bytes (64 KiB)"
    chunked = problem(*portal.call("POST", instances, iter([big[:40000], big[40000:]]), json_type), 413)
    assert chunked["detail"] == declared["detail"]

    deep = problem(*portal.call("POST", instances, b"[" * 1000 + b"]" * 1000, json_type), 400)
    assert deep["errors"][0]["rule"] == "max_depth"

    # And a good body still gets through to the view (400: no such flavor or image).
    ok = problem(*portal.call("POST", instances, b'{"name": "vm-1"}', json_type), 400)
    assert {e["field"] for e in ok["errors"]} >= {"flavor", "image"}

    log = portal.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "Internal Server Error" not in log, log[-3000:]


def _send_then_read(port: int, head: bytes, body: Iterator[bytes]) -> tuple[int, dict[str, Any], int]:
    """Send ``head`` then as much of ``body`` as the server takes; returns the answer's status, its
    problem (or {}), and the body bytes sent before the server answered and closed."""
    import socket

    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        try:
            for part in body:
                sock.sendall(part)
                sent += len(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: what is left was never taken
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    head_part, _, payload = answer.partition(b"\r\n\r\n")
    status = int(head_part.split(b" ", 2)[1])
    return status, (json.loads(payload) if payload.startswith(b"{") else {}), sent


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _forever(size: int = 1 << 20) -> Iterator[bytes]:
    block = b"\0" * size
    while True:
        yield block


def test_daphne_refuses_an_upload_over_the_quota_before_it_takes_the_body(portal: Portal) -> None:
    from compute.models import Image
    from tenants.models import Quota, Tenant

    tenant = Tenant.objects.get(slug=portal.slug)
    Quota.objects.for_tenant(tenant).update(max_image_gib=1)
    upload = f"/api/v1/tenants/{portal.slug}/images/?name=big&disk_format=raw"
    headers = {
        "Authorization": f"Bearer {portal.token}",
        "Content-Type": "application/octet-stream",
        "Content-Length": str(3 << 30),
    }
    # The client offers 3 GiB and keeps sending: the server answers on the headers and closes,
    # having taken at most what was in flight (never the body: nothing reaches its disk).
    status, body, sent = _send_then_read(portal.port, _head("POST", upload, headers), _forever())
    assert status == 413
    assert body["errors"][0]["field"] == "image_gib", body
    assert body["errors"][0]["rule"] == "quota", body
    assert sent < 256 << 20, sent  # TCP buffers at most, of 3 GiB
    assert not Image.objects.filter(name="big").exists()

    # Over the server's cap for any API body (here 16 MiB), declared: 413 on the headers too.
    instances = f"/api/v1/tenants/{portal.slug}/instances/"
    json_head = {"Authorization": f"Bearer {portal.token}", "Content-Type": "application/json"}
    status, body, sent = _send_then_read(
        portal.port, _head("POST", instances, {**json_head, "Content-Length": str(1 << 30)}), _forever()
    )
    assert (status, body["errors"][0]["field"], body["errors"][0]["rule"]) == (413, "body", "max_size")
    assert sent < 256 << 20, sent
    # ... and chunked (no length to read): cut off once the cap is passed.
    chunked = {**json_head, "Transfer-Encoding": "chunked"}
    framed = (b"%x\r\n" % len(b) + b + b"\r\n" for b in _forever())
    status, body, sent = _send_then_read(portal.port, _head("POST", instances, chunked), framed)
    assert (status, body["errors"][0]["rule"]) == (413, "max_size")
    assert sent < 256 << 20, sent

    # An upload the tenant has room for is paused for the check, then taken whole.
    image = b"\0" * (1 << 20)
    ok_headers = {**headers, "Content-Length": str(len(image))}
    small = f"/api/v1/tenants/{portal.slug}/images/?name=small&disk_format=raw"
    status, _, _ = _send_then_read(portal.port, _head("POST", small, ok_headers), iter([image]))
    assert status == 201
    assert Image.objects.get(name="small", tenant=tenant).size_bytes == len(image)
    log = portal.log.read_text()
    assert "Traceback" not in log, log[-3000:]
