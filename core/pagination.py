"""Keyset (cursor) pagination, filtering and ordering for every list of the API.

A list view declares one ``ListSpec`` (its orderings and filters) and calls ``spec.page(request,
queryset)``; the answer is ``{"results": [...], "next": url | null, "previous": url | null}``.

Why keyset rather than page numbers: page N with OFFSET reads and throws away every row before
it, and the page count needs a COUNT over the whole list. A cursor names the last row seen (its
ordering values and its pk), so the next page is one range read, costs the same at page 1 and at
page 1,000, and neither skips nor repeats a row when rows are added between requests.

The cursor is opaque to clients: the JSON of the last row's key, base64-encoded and signed with
the secret key and the list's path, so a changed or borrowed cursor answers 400 naming ``cursor``
rather than running an arbitrary query.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cache
from typing import Any, Literal

from django.core import signing
from django.db.models import F, Q, QuerySet
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
RESERVED = frozenset({"cursor", "page_size", "ordering"})
_KEY = "page_key_{}"  # annotation names carrying the ordering values read back for the cursor

FilterKind = Literal["str", "uuid", "bool", "ip", "int"]
_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})


def invalid(param: str, message: str) -> serializers.ValidationError:
    """A 400 problem naming the query parameter."""
    return serializers.ValidationError({param: [message]})


@dataclass(frozen=True)
class Filter:
    """One query parameter that narrows a list: an exact value, or any of several (``a,b`` or repeated)."""

    param: str
    path: str = ""  # the lookup path; empty: the parameter's own name
    choices: Sequence[str] = ()  # for choice fields: any other value answers 400
    kind: FilterKind = "str"
    help: str = ""

    def q(self, raw: list[str]) -> Q:
        """The condition for the raw values given (already split on commas)."""
        path = self.path or self.param
        if self.kind == "bool":
            if len(raw) != 1 or raw[0].lower() not in _TRUE | _FALSE:
                raise invalid(self.param, "must be true or false")
            return Q(**{path: raw[0].lower() in _TRUE})
        values: list[Any] = []
        for value in raw:  # none holds a NUL: the middleware portal.query_strings refused those
            if self.choices and value not in self.choices:
                raise invalid(self.param, f"unknown value {value!r}; one of: {', '.join(self.choices)}")
            if self.kind == "uuid":
                try:
                    values.append(uuid.UUID(value))
                except ValueError:
                    raise invalid(self.param, f"{value!r} is not a UUID") from None
            elif self.kind == "ip":  # the database would refuse a malformed address (inet)
                try:
                    values.append(str(ipaddress.ip_address(value)))
                except ValueError:
                    raise invalid(self.param, f"{value!r} is not an IP address") from None
            elif self.kind == "int":  # the database would refuse a non-number (integer column)
                if not value.isdigit() or len(value) > 18:
                    raise invalid(self.param, f"{value!r} is not a whole number")
                values.append(int(value))
            else:
                values.append(value)
        return Q(**{path: values[0]}) if len(values) == 1 else Q(**{f"{path}__in": values})

    def parameter(self) -> OpenApiParameter:
        """Its OpenAPI declaration."""
        if self.kind == "bool":
            return OpenApiParameter(self.param, bool, description=self.help or f"Only where {self.param} is.")
        kind = OpenApiTypes.UUID if self.kind == "uuid" else int if self.kind == "int" else str
        help_text = self.help or f"Only rows with this {self.param.replace('_', ' ')}"
        return OpenApiParameter(
            self.param,
            kind,
            description=f"{help_text} (several: comma-separated).",
            enum=list(self.choices) or None,
            many=True,
            explode=False,
        )


@dataclass(frozen=True)
class Page:
    """One page of rows, with the links to its neighbours."""

    rows: list[Any]
    next: str | None
    previous: str | None

    def response(self, results: Any) -> Response:
        """The list's answer, given the serialized rows."""
        return Response({"results": results, "next": self.next, "previous": self.previous})


@dataclass(frozen=True)
class ListSpec:
    """How one endpoint's list may be ordered and filtered.

    ``orderings`` maps a public name to the field paths it sorts by (non-null fields); ``-name``
    sorts the other way. The primary key always breaks ties, so every row has a unique place.
    """

    orderings: Mapping[str, tuple[str, ...]]
    default: str
    filters: tuple[Filter, ...] = field(default=())

    def __post_init__(self) -> None:
        assert self.default.removeprefix("-") in self.orderings, self.default  # noqa: S101 - a coding error
        assert not RESERVED & {f.param for f in self.filters}  # noqa: S101

    @property
    def allowed(self) -> list[str]:
        """Every accepted value of ``ordering``."""
        return [v for name in self.orderings for v in (name, f"-{name}")]

    def parameters(self) -> list[OpenApiParameter]:
        """The OpenAPI declaration of its query parameters."""
        return [
            OpenApiParameter(
                "cursor", str, description="Where the page starts: the `next` or `previous` link's cursor."
            ),
            OpenApiParameter(
                "page_size", int, description=f"Rows per page, 1-{MAX_PAGE_SIZE} (default {PAGE_SIZE})."
            ),
            OpenApiParameter(
                "ordering",
                str,
                enum=self.allowed,
                description=f"Sort key, `-` for descending; ties go by id (default `{self.default}`).",
            ),
            *(f.parameter() for f in self.filters),
        ]

    def filtered(self, request: Request, queryset: QuerySet[Any]) -> QuerySet[Any]:
        """The queryset narrowed by the request's filter parameters."""
        params = request.query_params
        for flt in self.filters:
            raw = [v.strip() for value in params.getlist(flt.param) for v in value.split(",") if v.strip()]
            if flt.param in params and not raw:
                raise invalid(flt.param, "must not be empty")
            if raw:
                queryset = queryset.filter(flt.q(raw))
        return queryset

    def ordering(self, request: Request) -> str:
        """The requested ordering (400 naming ``ordering`` for one not allowed here)."""
        ordering = request.query_params.get("ordering") or self.default
        if ordering not in self.allowed:
            raise invalid("ordering", f"unknown ordering {ordering!r}; allowed: {', '.join(self.allowed)}")
        return ordering

    def page(self, request: Request, queryset: QuerySet[Any]) -> Page:
        """Filter, order and cut one page out of ``queryset`` with a single query."""
        size = page_size(request)
        ordering = self.ordering(request)
        descending = ordering.startswith("-")
        paths = self.orderings[ordering.removeprefix("-")]
        keys = [_KEY.format(i) for i in range(len(paths))]
        queryset = self.filtered(request, queryset).annotate(
            **{key: F(path) for key, path in zip(keys, paths, strict=True)}
        )
        names = [*keys, "pk"]
        salt = f"nubis.cursor:{request.path}"
        position = read_cursor(request, salt, ordering, len(names))
        backwards = position is not None and position[1]
        if position is not None:
            queryset = queryset.filter(beyond(names, position[0], descending != backwards))
        sort = [f"-{n}" if descending != backwards else n for n in names]
        rows = list(queryset.order_by(*sort)[: size + 1])
        more = len(rows) > size
        rows = rows[:size]
        if backwards:
            rows.reverse()

        def link(row: Any, back: bool) -> str:
            key = [encode(getattr(row, k)) for k in keys] + [encode(row.pk)]
            token = signing.Signer(salt=salt).sign_object({"o": ordering, "k": key, "b": back})
            return replace_query_param(request.build_absolute_uri(), "cursor", token)

        # Forwards, a next page exists when the read found one row more; a previous one whenever
        # the page started at a cursor. Backwards, the other way round.
        has_next = more if not backwards else bool(rows)
        has_previous = (position is not None and bool(rows)) if not backwards else more
        return Page(
            rows=rows,
            next=link(rows[-1], False) if has_next and rows else None,
            previous=link(rows[0], True) if has_previous and rows else None,
        )


def page_size(request: Request) -> int:
    """The requested page size (400 naming ``page_size`` outside 1 to the maximum)."""
    raw = request.query_params.get("page_size", str(PAGE_SIZE))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise invalid("page_size", f"must be a whole number from 1 to {MAX_PAGE_SIZE}")
    return int(raw)


def encode(value: Any) -> Any:
    """A key value as JSON (the database reads ISO dates and UUID strings back in lookups)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def read_cursor(request: Request, salt: str, ordering: str, length: int) -> tuple[list[Any], bool] | None:
    """The position and direction in the request's cursor, or None at the start."""
    raw = request.query_params.get("cursor")
    if raw is None:
        return None
    try:
        data = signing.Signer(salt=salt).unsign_object(raw)
    except (signing.BadSignature, ValueError):
        raise invalid("cursor", "is not a cursor of this list; follow the next or previous link") from None
    if not (isinstance(data, dict) and isinstance(data.get("k"), list) and len(data["k"]) == length):
        raise invalid("cursor", "is not a cursor of this list; follow the next or previous link")
    if data.get("o") != ordering:
        raise invalid("cursor", f"belongs to ordering {data.get('o')!r}, not {ordering!r}")
    return data["k"], bool(data.get("b"))


def beyond(names: list[str], values: list[Any], lower: bool) -> Q:
    """Rows strictly after the key (names, values) in lexicographic order: below it when ``lower``.

    ``(a, b, pk) > (x, y, p)`` is ``a > x or (a = x and (b > y or (b = y and pk > p)))``; the
    leading ``a >= x`` says the same once more, in a form the planner can match to an index.
    """
    op = "lt" if lower else "gt"
    result = Q()
    for i, name in enumerate(names):
        term = Q(**{f"{name}__{op}": values[i]})
        for j in range(i):
            term &= Q(**{names[j]: values[j]})
        result |= term
    return Q(**{f"{names[0]}__{op}e": values[0]}) & result


class ListSchema(AutoSchema):
    """The OpenAPI view of a list endpoint: its GET answers a page, and is named ``…_list`` as a list."""

    def get_operation_id(self) -> str:
        operation_id = super().get_operation_id()
        if self.method == "GET" and operation_id.endswith("_retrieve"):
            return operation_id.removesuffix("_retrieve") + "_list"
        return operation_id


@cache
def paginated(serializer: type[serializers.BaseSerializer[Any]]) -> type[serializers.Serializer[Any]]:
    """A serializer of one page of ``serializer`` rows: the list's type in the OpenAPI schema."""
    name = serializer.__name__.removesuffix("Serializer")
    link = "URL of the {} page (same filters and ordering), or null when there is none."
    attrs: dict[str, Any] = {
        "__doc__": f"One page of {name} rows.",
        "__module__": serializer.__module__,
        "results": serializer(many=True, read_only=True),
        "next": serializers.URLField(allow_null=True, help_text=link.format("next")),
        "previous": serializers.URLField(allow_null=True, help_text=link.format("previous")),
    }
    return type(f"Paginated{name}ListSerializer", (serializers.Serializer,), attrs)
