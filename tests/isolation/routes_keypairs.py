"""Persona cases of the key pair routes, in the API and the pages (merged into ROUTES)."""

from __future__ import annotations

from tests.isolation.cases import (
    API_TENANT_READ,
    UI_TENANT_READ,
    Case,
    Kind,
    exp,
    object_case,
    tenant_path,
)

KEYPAIR = Kind("keypairs", lambda w, name: w.keypairs[name].pk)

# A valid key nobody in the world has yet (the world's keys are a-key and b-key).
NEW_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN1YS4cLKVWLv3+n+449YXYz8LLDAjr46t54kBsLILv2 new@harness"

API_MEMBER_CREATE = exp(401, 403, 201, 201, 404, 404, 404)
API_MEMBER_GONE = exp(401, 403, 204, 204, 404, 404, 404)
UI_MEMBER_POST = exp(302, 403, 302, 302, 404, 404, 404)
UI_MEMBER_PAGE = exp(302, 403, 200, 200, 404, 404, 404)
# Generating answers with the page that shows the private key once (no redirect).
UI_MEMBER_GENERATE = exp(302, 403, 200, 200, 404, 404, 404)

_api, _api_b = tenant_path("keypairs/")
_ui, _ui_b = tenant_path("keypairs/", api=False)
_ui_generate, _ui_generate_b = tenant_path("keypairs/generate/", api=False)

ROUTES: dict[str, list[Case]] = {
    "api-keypairs": [
        Case("GET", _api, API_TENANT_READ, b_path=_api_b, lists=True),
        Case(
            "POST",
            _api,
            API_MEMBER_CREATE,
            b_path=_api_b,
            data=lambda w: {"name": "new-key", "public_key": NEW_KEY},
            action="keypair.import",
        ),
        Case(
            "POST",
            _api,
            API_MEMBER_CREATE,
            b_path=_api_b,
            data=lambda w: {"name": "made-key"},
            action="keypair.generate",
        ),
        # a-key's name again: 409 naming the field.
        Case(
            "POST",
            _api,
            exp(401, 403, 409, 409, 404, 404, 404),
            b_path=_api_b,
            data=lambda w: {"name": "a-key", "public_key": NEW_KEY},
        ),
    ],
    "api-keypair": [
        object_case("GET", API_TENANT_READ, KEYPAIR, "key"),
        object_case("DELETE", API_MEMBER_GONE, KEYPAIR, "key", action="keypair.delete"),
    ],
    "ui-keypairs": [
        Case("GET", _ui, UI_TENANT_READ, b_path=_ui_b, lists=True),
        Case(
            "POST",
            _ui,
            UI_MEMBER_POST,
            b_path=_ui_b,
            json=False,
            data=lambda w: {"name": "new-key", "public_key": NEW_KEY},
            action="keypair.import",
        ),
        Case(
            "POST",
            _ui,
            exp(302, 403, 400, 400, 404, 404, 404),
            b_path=_ui_b,
            json=False,
            data=lambda w: {"name": "bad-key", "public_key": "ssh-rsa not-a-key"},
        ),
    ],
    "ui-keypair-generate": [
        Case(
            "POST",
            _ui_generate,
            UI_MEMBER_GENERATE,
            b_path=_ui_generate_b,
            json=False,
            data=lambda w: {"name": "made-key"},
            action="keypair.generate",
        ),
    ],
    "ui-keypair-delete": [
        object_case("GET", UI_MEMBER_PAGE, KEYPAIR, "key", "delete/", api=False),
        object_case("POST", exp(302, 403, 400, 400, 404, 404, 404), KEYPAIR, "key", "delete/", api=False),
        object_case(
            "POST",
            UI_MEMBER_POST,
            KEYPAIR,
            "key",
            "delete/",
            data=lambda w: {"confirm": "a-key"},
            action="keypair.delete",
            api=False,
        ),
    ],
}
