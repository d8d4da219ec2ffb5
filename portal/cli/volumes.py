"""``nubis volume ...``: persistent volumes (list, create, attach, detach, resize, delete, snapshot)."""

from __future__ import annotations

import argparse
import urllib.parse
from typing import Any

from portal.cli.client import ApiError, CliError
from portal.cli.commands import UUID_RE, Context, _after_action, dump, find_instance, out, table

VOLUME_COLUMNS = [
    ("name", "name"),
    ("id", "id"),
    ("GiB", "size_gib"),
    ("state", "state"),
    ("attached to", "instance_name"),
    ("device", "device"),
]


def find_volume(ctx: Context, ref: str) -> dict[str, Any]:
    """A volume by id or by name."""
    if UUID_RE.match(ref):
        try:
            found: dict[str, Any] = ctx.client.get(ctx.path(f"volumes/{ref.lower()}/"))
            return found
        except ApiError as exc:
            if exc.status != 404:
                raise
    query = urllib.parse.urlencode({"name": ref})
    matches = [v for v in ctx.client.list(ctx.path(f"volumes/?{query}")) if v.get("name") == ref]
    if not matches:
        raise CliError(f"no volume {ref!r} in tenant {ctx.tenant}")
    return matches[0]


def _show(ctx: Context, volume: dict[str, Any], said: str) -> int:
    if ctx.json:
        dump(volume)
    else:
        out(f"{said} {volume['name']}: {volume['state']}, {volume['size_gib']} GiB")
    return 0


def cmd_list(ctx: Context) -> int:
    rows = ctx.client.list(ctx.path("volumes/"))
    if ctx.json:
        dump(rows)
    else:
        table(rows, VOLUME_COLUMNS)
    return 0


def cmd_create(ctx: Context) -> int:
    args = ctx.args
    body: dict[str, Any] = {"name": args.name}
    if args.size is not None:
        body["size_gib"] = args.size
    if args.image:
        body["image"] = args.image
    if args.snapshot is not None:
        body["snapshot"] = args.snapshot
    return _show(ctx, ctx.client.request("POST", ctx.path("volumes/"), body), "created volume")


def cmd_attach(ctx: Context) -> int:
    volume = find_volume(ctx, ctx.args.volume)
    instance = find_instance(ctx, ctx.args.instance)
    body = {"instance": instance["id"]}
    operation = ctx.client.request("POST", ctx.path(f"volumes/{volume['id']}/attach/"), body)
    return _after_action(ctx, operation, show_instance=False)


def cmd_detach(ctx: Context) -> int:
    volume = find_volume(ctx, ctx.args.volume)
    operation = ctx.client.request("POST", ctx.path(f"volumes/{volume['id']}/detach/"))
    return _after_action(ctx, operation, show_instance=False)


def cmd_resize(ctx: Context) -> int:
    volume = find_volume(ctx, ctx.args.volume)
    body = {"size_gib": ctx.args.size}
    return _show(
        ctx, ctx.client.request("POST", ctx.path(f"volumes/{volume['id']}/resize/"), body), "resized"
    )


def cmd_delete(ctx: Context) -> int:
    volume = find_volume(ctx, ctx.args.volume)
    ctx.client.request("DELETE", ctx.path(f"volumes/{volume['id']}/"))
    if ctx.json:
        dump({"deleted": volume["id"], "name": volume["name"]})
    else:
        out(f"deleted volume {volume['name']}")
    return 0


def cmd_snapshot(ctx: Context) -> int:
    volume = find_volume(ctx, ctx.args.volume)
    base = ctx.path(f"volumes/{volume['id']}/snapshots/")
    if ctx.args.delete is not None:
        ctx.client.request("DELETE", f"{base}{ctx.args.delete}/")
        if ctx.json:
            dump({"deleted": ctx.args.delete, "volume": volume["id"]})
        else:
            out(f"deleted snapshot {ctx.args.delete} of {volume['name']}")
        return 0
    if not ctx.args.name:
        rows = ctx.client.list(base)
        if ctx.json:
            dump(rows)
        else:
            table(rows, [("name", "name"), ("id", "id"), ("GiB", "size_gib"), ("created", "created")])
        return 0
    snap = ctx.client.request("POST", base, {"name": ctx.args.name})
    if ctx.json:
        dump(snap)
    else:
        out(f"took snapshot {snap['name']} (id {snap['id']}) of {volume['name']}")
    return 0


def add_parser(top: Any, common: argparse.ArgumentParser, followed: argparse.ArgumentParser) -> None:
    """The ``volume`` command and its actions."""
    vol = top.add_parser("volumes", aliases=["volume"], help="persistent volumes").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    vol.add_parser("list", parents=[common], help="the tenant's volumes").set_defaults(handler=cmd_list)
    create = vol.add_parser("create", parents=[common], help="create a volume")
    create.add_argument("name")
    create.add_argument("--size", type=int, metavar="GIB", help="its size (default: the source's)")
    create.add_argument("--image", metavar="NAME|ID", help="a copy of this image's disk")
    create.add_argument("--snapshot", type=int, metavar="ID", help="a copy of this volume snapshot")
    create.set_defaults(handler=cmd_create)
    attach = vol.add_parser("attach", parents=[common, followed], help="attach a volume to a VM")
    attach.add_argument("volume", metavar="NAME|ID")
    attach.add_argument("instance", metavar="VM")
    attach.set_defaults(handler=cmd_attach)
    detach = vol.add_parser("detach", parents=[common, followed], help="detach a volume from its VM")
    detach.add_argument("volume", metavar="NAME|ID")
    detach.set_defaults(handler=cmd_detach)
    resize = vol.add_parser("resize", parents=[common], help="grow a volume (while attached to nothing)")
    resize.add_argument("volume", metavar="NAME|ID")
    resize.add_argument("size", type=int, metavar="GIB")
    resize.set_defaults(handler=cmd_resize)
    delete = vol.add_parser("delete", parents=[common], help="delete a volume")
    delete.add_argument("volume", metavar="NAME|ID")
    delete.set_defaults(handler=cmd_delete)
    snap = vol.add_parser(
        "snapshot", parents=[common], help="take (NAME), list (no NAME) or --delete snapshots"
    )
    snap.add_argument("volume", metavar="VOLUME")
    snap.add_argument("name", nargs="?", metavar="NAME")
    snap.add_argument("--delete", type=int, metavar="ID", help="delete this snapshot instead")
    snap.set_defaults(handler=cmd_snapshot)
