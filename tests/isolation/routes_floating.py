"""Persona cases of the floating address and port forward routes (merged into ROUTES)."""

from __future__ import annotations

from tests.isolation.cases import (
    API_TENANT_READ,
    INSTANCE,
    Case,
    Kind,
    exp,
    object_case,
    tenant_path,
)

FLOATING_IP = Kind("floating-ips", lambda w, name: w.floating[name].pk)
PORT_FORWARD = Kind("port-forwards", lambda w, name: w.forwards[name].pk)

API_MEMBER_CREATE = exp(401, 403, 201, 201, 404, 404, 404)
API_MEMBER_WRITE = exp(401, 403, 200, 200, 404, 404, 404)
API_MEMBER_GONE = exp(401, 403, 204, 204, 404, 404, 404)

_api, _api_b = tenant_path("floating-ips/")

ROUTES: dict[str, list[Case]] = {
    "api-floating-ips": [
        Case("GET", _api, API_TENANT_READ, b_path=_api_b, lists=True),
        Case(
            "POST", _api, API_MEMBER_CREATE, b_path=_api_b, data=lambda w: {}, action="floating_ip.allocate"
        ),
        Case(
            "POST",
            _api,
            exp(401, 403, 400, 400, 404, 404, 404),
            b_path=_api_b,
            data=lambda w: {"pool": "no-such-pool"},
        ),
    ],
    "api-floating-ip": [
        object_case("GET", API_TENANT_READ, FLOATING_IP, "fip"),
        object_case("DELETE", API_MEMBER_GONE, FLOATING_IP, "fip", action="floating_ip.release"),
    ],
    "api-floating-ip-associate": [
        object_case(
            "POST",
            API_MEMBER_WRITE,
            FLOATING_IP,
            "fip",
            "associate/",
            data=lambda w: {"instance": str(w.vms["a-box"].uuid)},
            action="floating_ip.associate",
        ),
        # B's instance is unknown to A: 400 naming the field, nothing associated.
        object_case(
            "POST",
            exp(401, 403, 400, 400, 404, 404, 404),
            FLOATING_IP,
            "fip",
            "associate/",
            data=lambda w: {"instance": str(w.vms["b-box"].uuid)},
        ),
    ],
    "api-floating-ip-disassociate": [
        object_case("POST", API_MEMBER_WRITE, FLOATING_IP, "fip", "disassociate/", data=lambda w: {}),
    ],
    "api-instance-port-forwards": [
        object_case("GET", API_TENANT_READ, INSTANCE, "box", "port-forwards/"),
        object_case(
            "POST",
            API_MEMBER_CREATE,
            INSTANCE,
            "box",
            "port-forwards/",
            data=lambda w: {"port": 22},
            action="port_forward.create",
        ),
    ],
    "api-instance-port-forward": [
        object_case(
            "DELETE",
            API_MEMBER_GONE,
            PORT_FORWARD,
            "pf",
            parent=(INSTANCE, "box"),
            action="port_forward.delete",
        ),
    ],
}
