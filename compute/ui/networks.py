"""Tenant pages for networks, under /t/<tenant>/networks/, and the helpers their sibling pages share.

Each page of this family (networks, security groups, server groups, snapshots) lists what the
tenant has and, for members and owners, holds the forms that change it. A POST calls one service:
on success it redirects back with a message (POST/redirect/GET); on a ServiceError it re-renders
the page with the error next to the field it names, answering the error's status. Deleting a
network or a group goes through a confirmation page first, as deleting an instance does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from compute.models import Instance, InstanceState, Network
from compute.selectors import networks_for
from compute.services import networks as svc
from core.errors import ServiceError
from security.audit import Actor
from tenants.access import require_role, tenant_for_request
from tenants.models import Role, Tenant

# What a page's forms hold: a form name -> the fields an error may be shown next to.
Forms = dict[str, tuple[str, ...]]


def live_instances(tenant: Tenant) -> Any:
    """The tenant's instances that still hold something (a network, a group), by name."""
    return Instance.objects.for_tenant(tenant).exclude(state=InstanceState.DELETED).order_by("name")


def error_context(
    exc: ServiceError | None, form: str | None, forms: Forms, row: Any = None
) -> dict[str, Any]:
    """Where an error shows: next to its field in ``form``, or in the form's general slot.

    The form "row" is the one of a table row (delete, toggle): ``row`` says which object's.
    """
    if exc is None or form is None:
        return {"error": exc, "errors": {}, "error_in": None, "error_row": None}
    slot = exc.field if exc.field in forms.get(form, ()) else "other"
    return {"error": exc, "errors": {form: {slot: exc}}, "error_in": form, "error_row": row}


def page(
    request: HttpRequest,
    template: str,
    context: dict[str, Any],
    forms: Forms,
    *,
    error: ServiceError | None = None,
    form: str | None = None,
    row: Any = None,
) -> HttpResponse:
    """Render a page; with an error, refill the forms from the POST and answer the error's status.

    ``context["defaults"]`` holds the values the forms start with when there is no error.
    """
    context = {
        **context,
        **error_context(error, form, forms, row),
        "is_member": context["role"].at_least(Role.MEMBER),
        "values": request.POST if error is not None else context.get("defaults", {}),
    }
    return render(request, template, context, status=error.status if error else 200)


def run(
    request: HttpRequest,
    action: Callable[[], Any],
    success: Callable[[Any], str],
    done: Callable[[Any], HttpResponse],
    failed: Callable[[ServiceError], HttpResponse],
) -> HttpResponse:
    """Call one service; redirect with a message on success, re-render with the error otherwise."""
    try:
        result = action()
    except ServiceError as exc:
        return failed(exc)
    messages.success(request, success(result))
    return done(result)


def confirm_delete(
    request: HttpRequest,
    tenant: Tenant,
    *,
    what: str,
    name: str,
    consequence: str,
    remedy: str,
    back: str,
    in_use: Callable[[], ServiceError | None],
    delete: Callable[[], Any],
    done: str,
) -> HttpResponse:
    """GET: the page confirming a delete (type the name); POST: delete, then go to ``done``.

    As the instance's delete page does: a POST without the name typed re-shows the page with the
    error next to the field (400). Something in use is never offered for deletion: the page names
    what uses it, and a POST answers 409 with the same words, whether the page saw it in use or
    the service (under its lock) did. ``remedy`` says what to do about it.
    """
    context = {
        "tenant": tenant,
        "what": what,
        "name": name,
        "consequence": consequence,
        "remedy": remedy,
        "back": back,
    }
    template = "compute/networks/delete.html"
    if request.method == "GET":
        return render(request, template, {**context, "refused": in_use()})
    if request.POST.get("confirm") != name:
        refused = in_use()
        if refused is not None:
            return render(request, template, {**context, "refused": refused}, status=refused.status)
        return render(request, template, {**context, "error": f"type {name} to confirm"}, status=400)
    try:
        delete()
    except ServiceError as exc:
        return render(request, template, {**context, "refused": exc}, status=exc.status)
    messages.success(request, f"Deleted {what} {name}.")
    return redirect(done)


# -- networks ----------------------------------------------------------------------------------
NETWORK_FORMS: Forms = {"create": ("name", "cidr", "nat_egress")}


def _networks_page(
    request: HttpRequest,
    tenant: Tenant,
    role: Role,
    error: ServiceError | None = None,
    form: str = "create",
    row: Any = None,
) -> HttpResponse:
    networks = networks_for(tenant).prefetch_related(
        Prefetch("instances", queryset=live_instances(tenant), to_attr="live")
    )
    context = {"tenant": tenant, "role": role, "networks": networks}
    return page(
        request, "compute/networks/networks.html", context, NETWORK_FORMS, error=error, form=form, row=row
    )


def _network(tenant: Tenant, pk: Any) -> Network:
    return get_object_or_404(networks_for(tenant), uuid=pk)


def _flag(raw: str | None, field: str) -> bool:
    """A form's yes/no value (a checkbox sends "on"), or a ServiceError naming the field."""
    value = (raw or "").strip().lower()
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no"):
        return False
    raise ServiceError(field, "choice", f"{field} must be on or off, not {raw!r}")


@login_required
@require_http_methods(["GET", "POST"])
def networks_page(request: HttpRequest, tenant: str) -> HttpResponse:
    """List the tenant's networks; a POST creates one (members and owners)."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    if request.method == "GET":
        return _networks_page(request, obj, role)
    require_role(role, Role.MEMBER, obj)
    data = request.POST
    return run(
        request,
        lambda: svc.network_create(
            actor=Actor.from_request(request),
            tenant=obj,
            name=data.get("name", "").strip(),
            cidr=data.get("cidr", "").strip(),
            nat_egress=_flag(data.get("nat_egress", "off"), "nat_egress"),
        ),
        lambda n: f"Created network {n.name} ({n.cidr}, gateway {n.gateway}).",
        lambda n: redirect("ui-networks", tenant=obj.slug),
        lambda exc: _networks_page(request, obj, role, exc),
    )


@login_required
@require_http_methods(["GET", "POST"])
def network_delete(request: HttpRequest, tenant: str, pk: Any) -> HttpResponse:
    """GET: the confirmation page; POST: delete a network no live instance is on."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    network = _network(obj, pk)
    require_role(role, Role.MEMBER, obj)
    networks = reverse("ui-networks", kwargs={"tenant": obj.slug})
    return confirm_delete(
        request,
        obj,
        what="network",
        name=network.name,
        consequence=f"Its subnet {network.cidr} becomes free for another network.",
        remedy="Delete the instances on it first: an instance stays on the network it was created on.",
        back=networks,
        in_use=lambda: svc.network_in_use(network),
        delete=lambda: svc.network_delete(actor=Actor.from_request(request), network=network),
        done=networks,
    )


@login_required
@require_POST
def network_nat(request: HttpRequest, tenant: str, pk: Any) -> HttpResponse:
    """Turn a network's NAT egress on or off (the form sends the wanted value)."""
    obj, role = tenant_for_request(request, tenant, Role.VIEWER)
    network = _network(obj, pk)
    require_role(role, Role.MEMBER, obj)
    return run(
        request,
        lambda: svc.network_update(
            actor=Actor.from_request(request),
            network=network,
            nat_egress=_flag(request.POST.get("nat_egress"), "nat_egress"),
        ),
        lambda n: f"NAT egress of {n.name} is {'on' if n.nat_egress else 'off'}.",
        lambda _: redirect("ui-networks", tenant=obj.slug),
        lambda exc: _networks_page(request, obj, role, exc, form="row", row=network.uuid),
    )
