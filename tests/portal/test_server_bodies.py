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
