"""What each ``nubis`` command does: one API call or a few, and the output (a table, or JSON)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
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
        table(
            rows,
            [
                ("name", "name"),
                ("id", "id"),
                ("kind", "kind"),
                ("format", "disk_format"),
                ("size", "size_bytes"),
                ("owner", "owner"),
                ("public", "public"),
                ("sha256", "sha256"),
            ],
        )
    return 0


def cmd_images_upload(ctx: Context) -> int:
    """Stream FILE to the portal as the body of one request (the options in its query string)."""
    a = ctx.args
    params = {"name": a.name, "disk_format": a.disk_format, "os_name": a.os_name, "login_user": a.login_user}
    params["cloud_init"] = "true" if a.cloud_init else "false"
    path = Path(a.file)
    if not path.is_file():
        raise UsageError(f"{a.file}: no such file")
    image = ctx.client.upload(ctx.path("images/"), path, {k: v for k, v in params.items() if v})
    if ctx.json:
        dump(image)
    else:
        size, sha = image["size_bytes"], image["sha256"]
        out(f"uploaded image {image['name']} (id {image['id']}, {size} bytes, sha256 {sha})")
    return 0


def cmd_images_delete(ctx: Context) -> int:
    ref = ctx.args.image
    rows = ctx.client.list(ctx.path("images/"))
    found = [r for r in rows if r["name"] == ref or str(r["id"]) == ref]
    if not found:
        raise UsageError(f"no image {ref!r} in this tenant")
    ctx.client.request("DELETE", ctx.path(f"images/{found[0]['id']}/"))
    if ctx.json:
        dump({"deleted": found[0]["id"], "name": found[0]["name"]})
    else:
        out(f"deleted image {found[0]['name']}")
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
    if args.key_pairs:
        body["key_pairs"] = args.key_pairs
    if args.user_data is not None:
        body["user_data"] = read_text(args.user_data, "--user-data")
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


# ---- key pairs ---------------------------------------------------------------------------------

KEYPAIR_COLUMNS = [
    ("name", "name"),
    ("id", "id"),
    ("type", "key_type"),
    ("bits", "bits"),
    ("fingerprint", "fingerprint"),
]


def read_text(name: str, option: str) -> str:
    """A file's text (UTF-8), or stdin's for '-'; a usage error naming the option otherwise."""
    try:
        raw = sys.stdin.buffer.read() if name == STDIN else Path(name).read_bytes()
    except OSError as exc:
        raise UsageError(f"{option}: cannot read {name}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{option}: {name} is not UTF-8 text") from None


def find_keypair(ctx: Context, ref: str) -> dict[str, Any]:
    """A key pair by name, or by id when no key pair has that name."""
    query = urllib.parse.urlencode({"name": ref})
    matches = [k for k in ctx.client.list(ctx.path(f"keypairs/?{query}")) if k.get("name") == ref]
    if matches:
        return matches[0]
    if ref.isdigit():
        try:
            found: dict[str, Any] = ctx.client.get(ctx.path(f"keypairs/{ref}/"))
            return found
        except ApiError as exc:
            if exc.status != 404:
                raise
    raise CliError(f"no key pair {ref!r} in tenant {ctx.tenant}")


def cmd_keypairs_list(ctx: Context) -> int:
    rows = ctx.client.list(ctx.path("keypairs/"))
    if ctx.json:
        dump(rows)
    else:
        table(rows, KEYPAIR_COLUMNS)
    return 0


def cmd_keypairs_import(ctx: Context) -> int:
    args = ctx.args
    body = {"name": args.name, "public_key": read_text(args.public_key, "--public-key")}
    keypair = ctx.client.request("POST", ctx.path("keypairs/"), body)
    if ctx.json:
        dump(keypair)
    else:
        line = f"{keypair['key_type']} {keypair['bits']} {keypair['fingerprint']}"
        out(f"imported key pair {keypair['name']}: {line}")
    return 0


def cmd_keypairs_create(ctx: Context) -> int:
    """Generate a key pair; its private key goes to --output (mode 0600, never overwritten) or stdout.

    The file is made before the request, so a key the portal shows only once is never lost to a
    file that cannot be written; it is removed again when the request fails.
    """
    args = ctx.args
    target = Path(args.output) if args.output else None
    fd = None
    if target is not None:
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise UsageError(f"--output: cannot create {target}: {exc.strerror or exc}") from None
    try:
        keypair = ctx.client.request("POST", ctx.path("keypairs/"), {"name": args.name})
    except BaseException:
        if fd is not None and target is not None:
            os.close(fd)
            target.unlink(missing_ok=True)
        raise
    private = str(keypair.get("private_key") or "")
    if fd is not None and target is not None:
        with os.fdopen(fd, "w") as handle:
            handle.write(private)
        keypair = {k: v for k, v in keypair.items() if k != "private_key"}
    if ctx.json:
        dump({**keypair, "private_key_file": str(target)} if target else keypair)
    elif target is not None:
        out(f"created key pair {keypair['name']}: {keypair['fingerprint']}; private key in {target}")
    else:
        sys.stdout.write(private)
    return 0


def cmd_keypairs_delete(ctx: Context) -> int:
    keypair = find_keypair(ctx, ctx.args.keypair)
    ctx.client.request("DELETE", ctx.path(f"keypairs/{keypair['id']}/"))
    if ctx.json:
        dump({"deleted": keypair["id"], "name": keypair["name"]})
    else:
        out(f"deleted key pair {keypair['name']}")
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


# ---- floating addresses ------------------------------------------------------------------------
FLOATING_COLUMNS = [
    ("id", "id"),
    ("address", "address"),
    ("pool", "pool"),
    ("instance", "instance_name"),
    ("private", "private_address"),
]


def find_floating_ip(ctx: Context, ref: str) -> dict[str, Any]:
    """A floating address by its address, or by id."""
    for row in ctx.client.list(ctx.path("floating-ips/")):
        if row.get("address") == ref or str(row.get("id")) == ref:
            found: dict[str, Any] = row
            return found
    raise CliError(f"no floating address {ref!r} in tenant {ctx.tenant}")


def _floating_out(ctx: Context, row: dict[str, Any], what: str) -> None:
    if ctx.json:
        dump(row)
    else:
        target = f" -> {row['instance_name']} ({row['private_address']})" if row.get("instance_name") else ""
        out(f"{what} {row['address']}{target}")


def cmd_floating_list(ctx: Context) -> int:
    rows = ctx.client.list(ctx.path("floating-ips/"))
    if ctx.json:
        dump(rows)
    else:
        table(rows, FLOATING_COLUMNS)
    return 0


def cmd_floating_create(ctx: Context) -> int:
    body = {"pool": ctx.args.pool} if ctx.args.pool else {}
    _floating_out(ctx, ctx.client.request("POST", ctx.path("floating-ips/"), body), "allocated")
    return 0


def cmd_floating_associate(ctx: Context) -> int:
    fip = find_floating_ip(ctx, ctx.args.address)
    instance = find_instance(ctx, ctx.args.instance)
    row = ctx.client.request(
        "POST", ctx.path(f"floating-ips/{fip['id']}/associate/"), {"instance": instance["id"]}
    )
    _floating_out(ctx, row, "associated")
    return 0


def cmd_floating_disassociate(ctx: Context) -> int:
    fip = find_floating_ip(ctx, ctx.args.address)
    row = ctx.client.request("POST", ctx.path(f"floating-ips/{fip['id']}/disassociate/"), {})
    _floating_out(ctx, row, "disassociated")
    return 0


def cmd_floating_delete(ctx: Context) -> int:
    fip = find_floating_ip(ctx, ctx.args.address)
    ctx.client.request("DELETE", ctx.path(f"floating-ips/{fip['id']}/"))
    if ctx.json:
        dump({"deleted": fip["id"], "address": fip["address"]})
    else:
        out(f"released {fip['address']}")
    return 0


# ---- host port forwards --------------------------------------------------------------------------
def _reached_at(row: dict[str, Any]) -> str:
    """Where the outside connects: the host's address (empty: any of the lone host's) and its port."""
    return f"{row.get('address') or 'HOST'}:{row['host_port']}"


def _forwards_path(ctx: Context, instance: dict[str, Any]) -> str:
    return ctx.path(f"instances/{instance['id']}/port-forwards/")


def cmd_forwards_list(ctx: Context) -> int:
    rows = ctx.client.list(_forwards_path(ctx, find_instance(ctx, ctx.args.instance)))
    if ctx.json:
        dump(rows)
    else:
        table(
            [{**r, "reached_at": _reached_at(r)} for r in rows],
            [("id", "id"), ("protocol", "protocol"), ("port", "port"), ("reached at", "reached_at")],
        )
    return 0


def cmd_forwards_add(ctx: Context) -> int:
    instance = find_instance(ctx, ctx.args.instance)
    row = ctx.client.request("POST", _forwards_path(ctx, instance), {"port": ctx.args.port})
    if ctx.json:
        dump(row)
    else:
        out(f"forwarded {_reached_at(row)} -> {instance['name']}:{row['port']}/tcp")
    return 0


def cmd_forwards_remove(ctx: Context) -> int:
    instance = find_instance(ctx, ctx.args.instance)
    path = _forwards_path(ctx, instance)
    found = [r for r in ctx.client.list(path) if r.get("port") == ctx.args.port]
    if not found:
        raise CliError(f"port {ctx.args.port} of {instance['name']} is not forwarded")
    ctx.client.request("DELETE", f"{path}{found[0]['id']}/")
    if ctx.json:
        dump({"deleted": found[0]["id"], "port": ctx.args.port, "host_port": found[0]["host_port"]})
    else:
        out(f"removed {_reached_at(found[0])} -> {instance['name']}:{ctx.args.port}/tcp")
    return 0
