"""The API's one request parser: JSON, taking the value portal.body_limits already decoded.

Kept apart from portal.body_limits: DRF imports its parser classes while its views module loads,
and body_limits imports that module (through portal.api_errors).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

from rest_framework.parsers import JSONParser

# Where ApiBodyMiddleware leaves the body it checked and decoded, on the Django request.
DECODED_ATTR = "nubis_json_body"


class CheckedJSONParser(JSONParser):
    """DRF's JSON parser, taking the body ApiBodyMiddleware already checked and decoded."""

    def parse(
        self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> Any:
        request = getattr((parser_context or {}).get("request"), "_request", None)
        if request is not None and hasattr(request, DECODED_ATTR):
            return getattr(request, DECODED_ATTR)
        return super().parse(stream, media_type, parser_context)
