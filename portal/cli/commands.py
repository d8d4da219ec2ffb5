"""What each ``nubis`` command does: one API call or a few, and the output (a table, or JSON)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from portal.cli.client import (
    ApiError,
    Client,
    CliError,
    Config,
    ConnectionFailed,
    ServerError,
    UsageError,
    config_path,
    normalize_url,
)

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
DONE = ("succeeded", "failed")
STDIN = "-"
POLL_RETRIES = 5  # consecutive connection errors or 5xx tolerated while following an operation


class Context:
    """The parsed arguments, the login (file and environment) and, once needed, the API client."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json: bool = bool(getattr(args, "json", False))
        self.config = Config.load()
        self._client: Client | None = None
        self._tenant: str = getattr(args, "tenant", None) or self.config.tenant

    @property
    def client(self) -> Client:
        if self._client is None:
            if not self.config.url or not self.config.token:
                raise UsageError(
                    "not logged in: run `nubis login --url URL --token TOKEN`, or set NUBIS_URL and "
                    "NUBIS_TOKEN"
                )
            self._client = Client(self.config.url, self.config.token)
        return self._client

    @property
    def tenant(self) -> str:
        """The tenant's slug: --tenant, NUBIS_TENANT, the stored one, or the only one the token sees."""
        if not self._tenant:
            self._tenant = only_tenant(self.client.list("tenants/"))
        return self._tenant

    def path(self, rest: str) -> str:
        return f"tenants/{urllib.parse.quote(self.tenant)}/{rest}"


def out(text: str = "") -> None:
    print(text)


def dump(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    """Aligned columns: (heading, key) pairs; missing values show as '-'."""
    cells = [[heading.upper() for heading, _ in columns]]
    cells += [[_cell(row.get(key)) for _, key in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for r in cells:
        out("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def only_tenant(tenants: list[dict[str, Any]], wanted: str = "") -> str:
    slugs = [str(t.get("slug")) for t in tenants]
    if wanted:
        if wanted not in slugs:
            raise CliError(f"tenant {wanted!r} is not visible to this token (it sees: {', '.join(slugs)})")
        return wanted
    if len(slugs) == 1:
        return slugs[0]
    if not slugs:
        raise CliError("this token sees no tenant")
    raise UsageError(f"this login sees several tenants ({', '.join(slugs)}): pass --tenant SLUG")


# ---- login -------------------------------------------------------------------------------------


def cmd_login(ctx: Context) -> int:
    args = ctx.args
    # '-' reads it from stdin: keeps the secret out of the process list and shell history.
    from_stdin = args.token == STDIN
    token = sys.stdin.readline().strip() if from_stdin else args.token.strip()
    if not token:
        raise UsageError("the token is empty")
    client = Client(normalize_url(args.url), token)
    slug = only_tenant(client.list("tenants/"), args.tenant or "")
    config = Config(url=client.base, token=token, tenant=slug)
    path = config.save()
    if ctx.json:
        dump({"url": config.url, "tenant": slug, "config": str(path)})
    else:
        out(f"logged in to {config.url}, tenant {slug} (saved in {path})")
    return 0


def cmd_logout(ctx: Context) -> int:
    path = config_path()
    existed = path.exists()
    path.unlink(missing_ok=True)
    out(f"logged out (removed {path})" if existed else "not logged in")
    return 0


# ---- catalog -----------------------------------------------------------------------------------


def cmd_flavors(ctx: Context) -> int:
    rows = ctx.client.list(ctx.path("flavors/"))
    if ctx.json:
        dump(rows)
    else:
        table(rows, [("name", "name"), ("vcpus", "vcpus"), ("ram_mib", "ram_mib"), ("disk_gib", "disk_gib")])
    return 0


def cmd_images(ctx: Context) -> int:
    rows = ctx.client.list(ctx.path("images/"))
    if ctx.json:
        dump(rows)
    else:
        table(rows, [("name", "name"), ("kind", "kind"), ("os", "os_name"), ("size", "size_bytes")])
    return 0


# ---- instances ---------------------------------------------------------------------------------

INSTANCE_COLUMNS = [
    ("name", "name"),
    ("id", "id"),
    ("kind", "kind"),
    ("state", "state"),
    ("flavor", "flavor"),
    ("address", "ip_address"),
]


def find_instance(ctx: Context, ref: str) -> dict[str, Any]:
    """An instance by id or by name (names may look like ids: an id that answers 404 is tried as one)."""
    if UUID_RE.match(ref):
        try:
            found: dict[str, Any] = ctx.client.get(ctx.path(f"instances/{ref.lower()}/"))
            return found
        except ApiError as exc:
            if exc.status != 404:
                raise
    query = urllib.parse.urlencode({"name": ref})
    matches = [i for i in ctx.client.list(ctx.path(f"instances/?{query}")) if i.get("name") == ref]
    if not matches:
        raise CliError(f"no instance {ref!r} in tenant {ctx.tenant}")
    return matches[0]


def cmd_instances_list(ctx: Context) -> int:
    args = ctx.args
    query = urllib.parse.urlencode({k: v for k, v in (("state", args.state), ("kind", args.kind)) if v})
    rows = ctx.client.list(ctx.path("instances/") + (f"?{query}" if query else ""))
    # Filtered here as well: the API may not know these parameters.
    rows = [
        r
        for r in rows
        if (not args.state or r.get("state") == args.state) and (not args.kind or r.get("kind") == args.kind)
    ]
    if ctx.json:
        dump(rows)
    else:
        table(rows, INSTANCE_COLUMNS)
    return 0


def cmd_instances_show(ctx: Context) -> int:
    instance = find_instance(ctx, ctx.args.instance)
    if ctx.json:
        dump(instance)
        return 0
    width = max(map(len, instance), default=0)
    for key, value in instance.items():
        out(f"{key.ljust(width)}  {_cell(value)}")
    return 0


def cmd_instances_create(ctx: Context) -> int:
    args = ctx.args
    body: dict[str, Any] = {
        "name": args.name,
        "flavor": args.flavor,
        "image": args.image,
        "kind": args.kind,
        "wait": args.wait_if_full,
    }
    if args.network is not None:
        body["network"] = None if args.network.lower() == "none" else args.network
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    operation = ctx.client.request("POST", ctx.path("instances/"), body, headers)
    return _after_action(ctx, operation, show_instance=True)


def cmd_instances_delete(ctx: Context) -> int:
    instance = find_instance(ctx, ctx.args.instance)
    operation = ctx.client.request("DELETE", ctx.path(f"instances/{instance['id']}/"))
    return _after_action(ctx, operation, show_instance=False)


def action_command(kind: str) -> Callable[[Context], int]:
    def cmd(ctx: Context) -> int:
        instance = find_instance(ctx, ctx.args.instance)
        operation = ctx.client.request("POST", ctx.path(f"instances/{instance['id']}/{kind}/"))
        return _after_action(ctx, operation, show_instance=True)

    return cmd


def _after_action(ctx: Context, operation: dict[str, Any], show_instance: bool) -> int:
    """Print the Operation the API answered with; with --follow, follow it and show the result."""
    if not ctx.args.follow:
        if ctx.json:
            dump(operation)
        else:
            out(operation_line(operation))
        if operation.get("state") == "failed":
            reason = operation.get("error") or "no reason given"
            raise CliError(f"operation {operation.get('kind')} failed: {reason}")
        return 0
    if not ctx.json:
        out(operation_line(operation))
    final = follow(ctx, str(operation["id"]), ctx.args.interval, ctx.args.timeout, start=operation)
    if ctx.json:
        dump(final)
    elif show_instance and final.get("instance_id"):
        instance = ctx.client.get(ctx.path(f"instances/{final['instance_id']}/"))
        address = f" {instance['ip_address']}" if instance.get("ip_address") else ""
        out(f"{instance['name']}: {instance['state']}{address}")
    return 0


# ---- operations --------------------------------------------------------------------------------


def operation_line(op: dict[str, Any]) -> str:
    line = f"operation {op.get('id')} {op.get('kind')}: {op.get('state')}"
    if op.get("progress") is not None:
        line += f" {op['progress']}%"
    if op.get("step"):
        line += f" ({op['step']})"
    return line


def follow(
    ctx: Context, op_id: str, interval: float, timeout: float | None, start: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Poll an Operation until it ends, printing each change; a failure raises with its error."""
    deadline = time.monotonic() + timeout if timeout else None
    last = _key(start) if start else None
    op = start
    failures = 0
    while op is None or op.get("state") not in DONE:
        if op is not None:
            if deadline is not None and time.monotonic() > deadline:
                raise CliError(f"operation {op_id} is still {op.get('state')} after {timeout:g} s")
            time.sleep(interval)
        try:
            op = ctx.client.get(ctx.path(f"operations/{urllib.parse.quote(op_id)}/"))
        except (ConnectionFailed, ServerError):
            failures += 1  # a portal restarting under us: try a few more times
            if failures > POLL_RETRIES:
                raise
            op = op or {"state": "pending"}
            continue
        failures = 0
        if _key(op) != last and not ctx.json:
            out(operation_line(op))
        last = _key(op)
    if op.get("state") == "failed":
        raise CliError(f"operation {op.get('kind')} failed: {op.get('error') or 'no reason given'}")
    return op


def _key(op: dict[str, Any]) -> tuple[Any, ...]:
    return (op.get("state"), op.get("step"), op.get("progress"))


def cmd_operations_follow(ctx: Context) -> int:
    op = follow(ctx, ctx.args.operation, ctx.args.interval, ctx.args.timeout)
    if ctx.json:
        dump(op)
    return 0


def cmd_operations_show(ctx: Context) -> int:
    op = ctx.client.get(ctx.path(f"operations/{urllib.parse.quote(ctx.args.operation)}/"))
    if ctx.json:
        dump(op)
    else:
        out(operation_line(op))
        if op.get("error"):
            out(f"error: {op['error']}")
    return 0
