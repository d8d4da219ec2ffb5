"""OpenAPI schema additions: every operation documents the problem responses it can give.

drf-spectacular documents each view's success; the errors come from one exception handler
(portal/api_errors.py) and one middleware layer (authentication, throttling, idempotency), so they
are added here, once, as RFC 9457 problem details.
"""

from __future__ import annotations

from typing import Any

from compute.services.host_rpc import SCHEMA_EXTENSION

PROBLEM: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details; `errors` names each field and the rule it broke.",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "field": {"type": "string"},
                    "rule": {"type": "string"},
                    "message": {"type": "string"},
                },
                "required": ["field", "rule", "message"],
            },
        },
    },
    "required": ["type", "title", "status", "detail"],
}

ALWAYS = {
    "400": "Invalid request: the errors name each field and rule.",
    "401": "Not authenticated.",
    "403": "Authenticated, but the role or permission is too low.",
    "404": "No such object in this tenant (another tenant's objects answer 404 too).",
    "405": "Method not allowed.",
    "406": "No acceptable representation.",
    "429": "Over the rate limit; Retry-After says when to retry.",
}
# What an operation marked with host_rpc.SCHEMA_EXTENSION (it asks the instance's host agent) adds.
HOST_AGENT = {
    "503": "The instance's host agent did not answer in time (stopped, hung or unreachable); the "
    "problem names the host, Retry-After says when to ask again.",
}
WRITES = {
    "409": "Conflict with the current state (busy, in use, a taken name, over a quota).",
    "413": "The request body is larger than the server's limit (2.5 MiB unless configured).",
    "415": "Unsupported media type: API bodies are application/json (UTF-8).",
    "422": "The Idempotency-Key was used before for a different request.",
}


def problem_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: add the problem responses to every operation."""
    result.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM
    content = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for methods in result.get("paths", {}).values():
        for method, operation in methods.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            codes = dict(ALWAYS)
            if method in ("post", "put", "patch", "delete"):
                codes |= WRITES
            if operation.pop(SCHEMA_EXTENSION, False):
                codes |= HOST_AGENT
            for code, description in codes.items():
                operation["responses"].setdefault(code, {"description": description, "content": content})
    return result
