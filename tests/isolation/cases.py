"""The building blocks of the persona tables: a case, what each persona must get, and the paths.

routes.py and the routes_*.py modules build their tables from these; nothing here names a route.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.isolation.world import World

Path = Callable[[World], str]


@dataclass(frozen=True)
class Case:
    method: str
    path: Path
    expect: dict[str, int | str]
    data: Callable[[World], dict[str, Any]] | None = None
    # The same route on tenant B's object: every persona of A must get 404 there.
    b_path: Path | None = None
    # A's tenant URL naming B's object (a guessed id): every persona of A must get 404 there too.
    idor_path: Path | None = None
    # A list or page: nothing of B may appear in what A's personas get.
    lists: bool = False
    json: bool = True
    # The audit action a successful call must record (None: a no-op, recorded generically).
    action: str | None = None

    @property
    def mutating(self) -> bool:
        return self.method in {"POST", "PUT", "PATCH", "DELETE"}


def exp(
    anon: int | str, viewer: int, member: int, owner: int, b: int, staff: int, su: int
) -> dict[str, int | str]:
    return dict(
        zip(
            ("anon", "a_viewer", "a_member", "a_owner", "b_member", "staff", "superuser"),
            (anon, viewer, member, owner, b, staff, su),
            strict=True,
        )
    )


# Common shapes.
API_TENANT_READ: dict[str, int | str] = exp(401, 200, 200, 200, 404, 404, 404)
API_OWNER_WRITE: dict[str, int | str] = exp(401, 403, 403, 200, 404, 404, 404)
UI_TENANT_READ: dict[str, int | str] = exp(302, 200, 200, 200, 404, 404, 404)
UI_OWNER_POST: dict[str, int | str] = exp(302, 403, 403, 302, 404, 404, 404)
EVERYONE_200: dict[str, int | str] = exp(200, 200, 200, 200, 200, 200, 200)


def const(path: str) -> Path:
    return lambda w: path


def tenant_base(w: World, side: str, api: bool) -> str:
    """The root of tenant A's (``side`` "a") or B's URLs, in the API or the pages."""
    slug = (w.a if side == "a" else w.b).slug
    return f"/api/v1/tenants/{slug}/" if api else f"/t/{slug}/"


def tenant_path(suffix: str = "", api: bool = True) -> tuple[Path, Path]:
    """A tenant-wide route (a list, a form): A's path and the same under B's URL."""
    return (lambda w: tenant_base(w, "a", api) + suffix), (lambda w: tenant_base(w, "b", api) + suffix)


@dataclass(frozen=True)
class Kind:
    """A kind of tenant object as its URLs name it: ``<section>/<id>/``."""

    section: str
    # The id in the URL of the world's object of that name ("a-vm", "b-snap", ...).
    ref: Callable[[World, str], object]


INSTANCE = Kind("instances", lambda w, name: w.vms[name].uuid)
SNAPSHOT = Kind("snapshots", lambda w, name: w.snaps[name].pk)
OPERATION = Kind("operations", lambda w, name: w.ops[name].uuid)  # by its instance's name
NETWORK = Kind("networks", lambda w, name: w.nets[name].uuid)
SECURITY_GROUP = Kind("security-groups", lambda w, name: w.groups[name].pk)
SECURITY_RULE = Kind("rules", lambda w, name: w.rules[name].pk)
SERVER_GROUP = Kind("server-groups", lambda w, name: w.server_groups[name].pk)
MEMBERSHIP = Kind("members", lambda w, name: (w.a_extra if name == "a-extra" else w.b_extra).pk)
TOKEN = Kind("tokens", lambda w, name: (w.a_token if name == "a-token" else w.b_token).pk)


def object_case(
    method: str,
    expect: dict[str, int | str],
    kind: Kind,
    which: str,
    suffix: str = "",
    *,
    parent: tuple[Kind, str] | None = None,
    api: bool = True,
    guessed: bool = True,
    **kw: Any,
) -> Case:
    """The case on tenant A's object ``a-<which>``, with B's ``b-<which>`` under B's URL and under A's
    URL (a guessed id): A's personas must get 404 on both.

    ``parent`` is the object the URL nests it under (``(INSTANCE, "vm")`` for a snapshot of ``a-vm``),
    always the one of the URL's tenant: the guessed URL keeps A's parent and names B's object.
    ``api=False`` builds the page's URL under /t/ (and sends forms, not JSON).
    ``guessed=False`` leaves the guessed URL out, for a route that refuses some of A's personas by
    their role before it looks the id up: their 403 there tells nothing, but it is not the 404 the
    harness asks for.
    """

    def build(side: str, name: str) -> Path:
        def path(w: World) -> str:
            url = tenant_base(w, side, api)
            if parent is not None:
                up, up_which = parent
                url += f"{up.section}/{up.ref(w, f'{side}-{up_which}')}/"
            return url + f"{kind.section}/{kind.ref(w, name)}/{suffix}"

        return path

    if not api:
        kw.setdefault("json", False)
    return Case(
        method,
        build("a", f"a-{which}"),
        expect,
        b_path=build("b", f"b-{which}"),
        idor_path=build("a", f"b-{which}") if guessed else None,
        **kw,
    )
