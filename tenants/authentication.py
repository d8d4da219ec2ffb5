"""DRF authentication with tenant-bound API tokens: ``Authorization: Bearer nubis_…``."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from tenants.access import membership_role
from tenants.models import ApiToken
from tenants.services.tokens import TokenRejected, token_authenticate


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """Authenticate as the token's creator, acting with the token's tenant and role."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, ApiToken] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() not in (b"bearer", b"token"):
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer <token>'.")
        try:
            token = token_authenticate(header[1].decode("ascii", errors="replace"))
        except TokenRejected as exc:
            raise exceptions.AuthenticationFailed(str(exc)) from None
        if membership_role(token.created_by, token.tenant) is None:
            raise exceptions.AuthenticationFailed("the token's owner is no longer a member of its tenant")
        return token.created_by, token

    def authenticate_header(self, request: Request) -> str:
        return f'{self.keyword} realm="api"'


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.authentication.ApiTokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A tenant-bound Nubis API token (nubis_…).",
        }
