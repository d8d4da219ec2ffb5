"""Tenant pages for key pairs, under /t/<tenant>/keypairs/: list, import, generate, delete.

Built like the network pages (compute.ui.networks): a POST calls one service and redirects with a
message, or re-renders the page with the error next to the field it names. Generating is the
exception: its answer is the page that shows the private key, once (no redirect, so the key never
passes through the session's messages), marked not to be cached.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from compute.models import KeyPair
from compute.selectors import keypairs_for
from compute.services import keypairs as svc
from compute.ui.networks import Forms, confirm_delete, page, run
from core.errors import ServiceError
from security.audit import Actor
from tenants.access import require_role, tenant_for_request
from tenants.models import Role, Tenant

KEYPAIR_FORMS: Forms = {"import": ("name", "public_key"), "generate": ("name",)}


def _keypairs_page(
    request: HttpRequest, tenant: Tenant, role: Role, error: ServiceError | None = None, form: str = "import"
) -> HttpResponse:
    context = {"tenant": tenant, "role": role, "keypairs": keypairs_for(tenant), "form_name": form}
    return page(request, "compute/keypairs.html", context, KEYPAIR_FORMS, error=error, form=form)


def _keypair(tenant: Tenant, pk: int) -> KeyPair:
    return get_object_or_404(keypairs_for(tenant), pk=pk)


@login_required
@require_http_methods(["GET", "POST"])
def keypairs_page(request: HttpRequest, tenant: str) -> HttpResponse:
    """List the tenant's key pairs; a POST imports a public key (members and owners)."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    if request.method == "GET":
        return _keypairs_page(request, obj, role)
    require_role(role, Role.MEMBER, obj)
    return run(
        request,
        lambda: svc.keypair_import(
            actor=Actor.from_request(request),
            tenant=obj,
            name=request.POST.get("name", "").strip(),
            public_key=request.POST.get("public_key", ""),
        ),
        lambda k: f"Imported key pair {k.name} ({k.key_type}, {k.fingerprint}).",
        lambda _: redirect("ui-keypairs", tenant=obj.slug),
        lambda exc: _keypairs_page(request, obj, role, exc),
    )


@login_required
@require_POST
def keypair_generate(request: HttpRequest, tenant: str) -> HttpResponse:
    """Generate an Ed25519 key pair and show its private key, this once."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    require_role(role, Role.MEMBER, obj)
    try:
        keypair, private_key = svc.keypair_generate(
            actor=Actor.from_request(request), tenant=obj, name=request.POST.get("name", "").strip()
        )
    except ServiceError as exc:
        return _keypairs_page(request, obj, role, exc, form="generate")
    context: dict[str, Any] = {"tenant": obj, "keypair": keypair, "private_key": private_key}
    response = render(request, "compute/keypairs_generated.html", context)
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_http_methods(["GET", "POST"])
def keypair_delete(request: HttpRequest, tenant: str, pk: int) -> HttpResponse:
    """GET: the confirmation page; POST: delete the key pair (instances keep their copy)."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    keypair = _keypair(obj, pk)
    require_role(role, Role.MEMBER, obj)
    keypairs = reverse("ui-keypairs", kwargs={"tenant": obj.slug})
    return confirm_delete(
        request,
        obj,
        what="key pair",
        name=keypair.name,
        consequence=f"New instances can no longer be given the key {keypair.fingerprint}; the instances "
        "created with it keep it.",
        remedy="",
        back=keypairs,
        in_use=lambda: None,
        delete=lambda: svc.keypair_delete(actor=Actor.from_request(request), keypair=keypair),
        done=keypairs,
    )
