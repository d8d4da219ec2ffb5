"""Template context for every page: the tenant switcher."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from tenants.selectors import tenants_of_user


def tenant_switcher(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    match = getattr(request, "resolver_match", None)
    current = (match.kwargs.get("tenant") if match else None) or request.session.get("tenant")
    return {"nav_tenants": list(tenants_of_user(user).values("slug", "name")), "nav_current_tenant": current}
