"""Persona cases of the image routes, in the API and the pages (merged into ROUTES).

Uploads are sent refused (a JSON body to the API: 415; an empty file to the form: 400), so that
no persona's case writes a file into the shared image store; tests/compute/test_image_upload.py
uploads for real.
"""

from __future__ import annotations

import io

from tests.isolation.cases import (
    API_TENANT_READ,
    UI_TENANT_READ,
    Case,
    Kind,
    exp,
    object_case,
    tenant_path,
)

IMAGE = Kind("images", lambda w, name: w.images[name].pk)

API_MEMBER_GONE = exp(401, 403, 204, 204, 404, 404, 404)
UI_MEMBER_POST = exp(302, 403, 302, 302, 404, 404, 404)
UI_MEMBER_PAGE = exp(302, 403, 200, 200, 404, 404, 404)

_api, _api_b = tenant_path("images/")
_ui, _ui_b = tenant_path("images/", api=False)
_ui_upload, _ui_upload_b = tenant_path("images/upload/", api=False)


def _empty_file() -> io.BytesIO:
    f = io.BytesIO(b"")
    f.name = "empty.raw"
    return f


ROUTES: dict[str, list[Case]] = {
    "api-image": [
        object_case("GET", API_TENANT_READ, IMAGE, "upload"),
        object_case("DELETE", API_MEMBER_GONE, IMAGE, "upload", action="image.delete"),
    ],
    "ui-images": [Case("GET", _ui, UI_TENANT_READ, b_path=_ui_b, lists=True)],
    "ui-image-upload": [
        Case(
            "POST",
            _ui_upload,
            exp(302, 403, 400, 400, 404, 404, 404),
            b_path=_ui_upload_b,
            json=False,
            data=lambda w: {"name": "new-image", "disk_format": "raw", "image": _empty_file()},
        ),
    ],
    "ui-image-delete": [
        object_case("GET", UI_MEMBER_PAGE, IMAGE, "upload", "delete/", api=False),
        object_case("POST", exp(302, 403, 400, 400, 404, 404, 404), IMAGE, "upload", "delete/", api=False),
        object_case(
            "POST",
            UI_MEMBER_POST,
            IMAGE,
            "upload",
            "delete/",
            data=lambda w: {"confirm": "a-upload"},
            action="image.delete",
            api=False,
        ),
    ],
}

# The list and the upload of the API (api-images) are in tests/isolation/routes.py.
UPLOAD_CASE = Case(
    "POST",
    _api,
    exp(401, 403, 415, 415, 404, 404, 404),
    b_path=_api_b,
    data=lambda w: {"name": "new-image"},
)
