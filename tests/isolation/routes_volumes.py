"""Persona cases of the volume routes, in the API and the pages (merged into ROUTES).

No agent answers in the harness: a volume's file work (create, delete, resize, snapshots) gets as
far as asking the harness host's agent, and members get its 503; attach and detach are Operations
of the instance, recorded and queued (202).
"""

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

VOLUME = Kind("volumes", lambda w, name: w.volumes[name].uuid)
VOLUME_SNAPSHOT = Kind("snapshots", lambda w, name: w.volume_snaps[name].pk)
_IN_VOLUME = (VOLUME, "vol")

API_MEMBER_AGENT = exp(401, 403, 503, 503, 404, 404, 404)
API_MEMBER_ACT = exp(401, 403, 202, 202, 404, 404, 404)
UI_MEMBER_POST = exp(302, 403, 302, 302, 404, 404, 404)

_api, _api_b = tenant_path("volumes/")
_ui, _ui_b = tenant_path("volumes/", api=False)


def _off(w: object) -> dict[str, str]:
    return {"instance": str(w.vms["a-off"].uuid)}  # type: ignore[attr-defined]


ROUTES: dict[str, list[Case]] = {
    "api-volumes": [
        Case("GET", _api, API_TENANT_READ, b_path=_api_b, lists=True),
        Case(
            "POST", _api, API_MEMBER_AGENT, b_path=_api_b, data=lambda w: {"name": "new-vol", "size_gib": 1}
        ),
    ],
    "api-volume": [
        object_case("GET", API_TENANT_READ, VOLUME, "vol"),
        object_case("DELETE", API_MEMBER_AGENT, VOLUME, "vol"),
    ],
    "api-volume-attach": [
        object_case("POST", API_MEMBER_ACT, VOLUME, "vol", "attach/", data=_off, action="volume.attach"),
    ],
    "api-volume-detach": [
        object_case("POST", API_MEMBER_ACT, VOLUME, "used", "detach/", action="volume.detach"),
    ],
    "api-volume-resize": [
        object_case("POST", API_MEMBER_AGENT, VOLUME, "vol", "resize/", data=lambda w: {"size_gib": 2}),
    ],
    "api-volume-snapshots": [
        object_case("GET", API_TENANT_READ, VOLUME, "vol", "snapshots/", lists=True),
        object_case("POST", API_MEMBER_AGENT, VOLUME, "vol", "snapshots/", data=lambda w: {"name": "s2"}),
    ],
    "api-volume-snapshot": [
        object_case("GET", API_TENANT_READ, VOLUME_SNAPSHOT, "vsnap", parent=_IN_VOLUME),
        object_case("DELETE", API_MEMBER_AGENT, VOLUME_SNAPSHOT, "vsnap", parent=_IN_VOLUME),
    ],
    "ui-volumes": [
        Case("GET", _ui, UI_TENANT_READ, b_path=_ui_b, lists=True, json=False),
        Case(
            "POST",
            _ui,
            exp(302, 403, 503, 503, 404, 404, 404),
            b_path=_ui_b,
            json=False,
            data=lambda w: {"name": "new-vol", "size_gib": "1"},
        ),
    ],
    "ui-volume-action": [
        object_case(
            "POST",
            UI_MEMBER_POST,
            VOLUME,
            "vol",
            "action/",
            data=lambda w: {"action": "attach", **_off(w)},
            action="volume.attach",
            api=False,
        ),
        object_case(
            "POST",
            UI_MEMBER_POST,
            VOLUME,
            "used",
            "action/",
            data=lambda w: {"action": "detach"},
            action="volume.detach",
            api=False,
        ),
    ],
}
