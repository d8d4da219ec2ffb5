"""Schemathesis fuzzes the live ASGI app from its own OpenAPI schema, as a member's API token.

Every operation gets generated requests (valid and not), then a stateful run follows the links
schemathesis infers between operations (create, then read, change and delete what was created).
Checked on every response: no server error, a documented status code and content type, a body
and headers that match the schema. At least MIN_CASES cases run in all.

Not checked: that every schema-valid request is accepted. A request can be schema-valid and still
be refused by a rule the schema cannot state (an unknown flavor name, a taken name, a full host);
those answer 4xx in the documented problem shape, which the checks above do verify.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from compute.models import CpuMode, Flavor, Image, ImageKind, Network, SecurityGroup, ServerGroup
from tenants.models import Role
from tests.factories import add_member, make_tenant, make_token
from tests.scheduler.test_placement import make_host

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
MIN_CASES = 2000
# The same cases every run, so CI is a stable gate; NUBIS_FUZZ_RANDOM=1 explores new ones.
DERANDOMIZE = os.environ.get("NUBIS_FUZZ_RANDOM") != "1"
EXAMPLES = 25  # per operation (fewer where the schema allows fewer distinct requests)
# Operations that would lock the fuzzer out of its own tenant.
SKIP = {
    ("DELETE", "/api/v1/tenants/{tenant}/tokens/{id}/"),
    ("DELETE", "/api/v1/tenants/{tenant}/members/{id}/"),
}


def _world() -> tuple[str, str]:
    """A tenant with something of each kind to find, and a member's token; (slug, token)."""
    tenant = make_tenant("fuzz", instances=1000, vcpus=1000, ram_mib=10**6, disk_gib=10**5, containers=1000)
    user = add_member(tenant, role=Role.MEMBER)
    secret = make_token(tenant, user, Role.MEMBER, "fuzzer")
    make_host("fuzz-host", cpus=64, ram_mib=262144)
    Flavor.objects.create(name="f.small", vcpus=1, ram_mib=256, disk_gib=1, cpu_mode=CpuMode.EMULATED)
    Image.objects.create(name="f-image", kind=ImageKind.KERNEL, os_name="t", disk_path="/x", sha256="0" * 64)
    Network.objects.create(tenant=tenant, name="f-net", cidr="10.211.0.0/24", gateway="10.211.0.1")
    SecurityGroup.objects.create(tenant=tenant, name="f-sg")
    ServerGroup.objects.create(tenant=tenant, name="f-grp", policy="anti-affinity")
    return tenant.slug, secret


@pytest.fixture
def fuzz_host_answers() -> Iterator[None]:
    """The fuzz host's agent answers consoles, logs and exec (compute.agent_rpc, with this host's
    real drivers) from a thread here; its guests are never made, so what it reads is empty."""
    from compute.agent_rpc import rpc_loop

    stop = threading.Event()
    thread = threading.Thread(target=rpc_loop, args=("fuzz-host", stop), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(5)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_api_survives_fuzzing_and_keeps_to_its_schema(
    monkeypatch: pytest.MonkeyPatch, fuzz_host_answers: None
) -> None:
    # The in-process ASGI transport runs an event loop in this thread around each call; the
    # test's own ORM calls between them are plain synchronous ones.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from portal.asgi import application

    slug, secret = _world()
    headers = {"Authorization": f"Bearer {secret}"}
    schema = schemathesis.openapi.from_asgi("/api/schema/", application)
    stats: Counter[str] = Counter()
    failures: list[str] = []

    def call(case: Any) -> None:
        if "tenant" in (case.path_parameters or {}):
            case.path_parameters["tenant"] = slug  # the fuzzer's own tenant: past the 404, into the views
        response = case.call(headers=headers)
        stats["cases"] += 1
        stats[str(response.status_code)] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except Exception as exc:  # a failure group: keep them all, report at the end
            failures.append(f"{case.method} {case.path} -> {response.status_code}: {str(exc)[:600]}")

    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an invalid operation raises here
        if (operation.method.upper(), operation.path) in SKIP:
            continue

        @given(case=operation.as_strategy())
        @hsettings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=DERANDOMIZE,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Any) -> None:
            call(case)

        fuzz()

    # Stateful: chains of calls along the links inferred from the schema.
    machine = schema.as_state_machine()

    class Calls(machine):  # type: ignore[valid-type,misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": headers}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            stats["stateful"] += 1
            stats["cases"] += 1
            try:
                case.validate_response(response, checks=CHECKS)
            except Exception as exc:
                failures.append(f"stateful {case.method} {case.path}: {str(exc)[:600]}")

    Calls.run(
        settings=hsettings(
            max_examples=60,
            stateful_step_count=8,
            deadline=None,
            database=None,
            derandomize=DERANDOMIZE,
            suppress_health_check=list(HealthCheck),
        )
    )
    print(f"fuzzing: {dict(stats)}")  # noqa: T201 - the figures of the run, for the CI log
    assert stats["cases"] >= MIN_CASES, stats
    assert not failures, "\n\n".join(failures[:15]) + f"\n\n({len(failures)} in all)"
