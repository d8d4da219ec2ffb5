"""``nubis``: the portal's command line for scripts (standard library only).

Exit codes: 0 done, 1 the API refused (4xx) or the operation failed, 2 usage, 3 no answer or 5xx.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from portal.cli import commands as c
from portal.cli import volumes as cli_volumes
from portal.cli.client import ApiError, CliError

__all__ = ["main"]

EPILOG = (
    "The login is kept in $NUBIS_CONFIG or ~/.config/nubis/config.json (mode 0600); NUBIS_URL, "
    "NUBIS_TOKEN and NUBIS_TENANT override it. Exit codes: 0 ok, 1 API error or failed operation, "
    "2 usage, 3 connection error or server error."
)


def build_parser() -> argparse.ArgumentParser:
    # Options accepted before and after the command; SUPPRESS keeps a subcommand's absent option
    # from overwriting one given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable")
    common.add_argument("--tenant", default=argparse.SUPPRESS, metavar="SLUG", help="the tenant to act in")
    following = argparse.ArgumentParser(add_help=False)
    following.add_argument("--interval", type=float, default=0.5, help="seconds between polls (0.5)")
    following.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    followed = argparse.ArgumentParser(add_help=False, parents=[following])
    followed.add_argument("--follow", action="store_true", help="follow the operation to its end")

    parser = argparse.ArgumentParser(prog="nubis", description="Nubis from the command line.", epilog=EPILOG)
    parser.add_argument("--json", action="store_true", default=False, help="machine-readable output")
    parser.add_argument("--tenant", default=None, metavar="SLUG", help="the tenant to act in")
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    login = top.add_parser("login", parents=[common], help="check a token and keep it")
    login.add_argument("--url", required=True, help="the portal, e.g. https://cloud.example")
    login.add_argument("--token", required=True, help="an API token (nubis_…); '-' reads it from stdin")
    login.set_defaults(handler=c.cmd_login)
    top.add_parser("logout", parents=[common], help="forget the stored login").set_defaults(
        handler=c.cmd_logout
    )

    inst = top.add_parser("instances", help="VMs and containers").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    ls = inst.add_parser("list", parents=[common], help="the tenant's instances")
    ls.add_argument("--state", help="only this state (running, stopped, …)")
    ls.add_argument("--kind", choices=["vm", "container"], help="only this kind")
    ls.set_defaults(handler=c.cmd_instances_list)
    show = inst.add_parser("show", parents=[common], help="one instance")
    show.add_argument("instance", metavar="NAME|ID")
    show.set_defaults(handler=c.cmd_instances_show)
    create = inst.add_parser("create", parents=[common, followed], help="create an instance")
    create.add_argument("--name", required=True)
    create.add_argument("--flavor", required=True, help="flavor name or id")
    create.add_argument("--image", required=True, help="image name or id")
    create.add_argument("--kind", choices=["vm", "container"], default="vm")
    create.add_argument("--network", metavar="NAME|none", help="a tenant network, or none (default: default)")
    create.add_argument("--wait-if-full", action="store_true", help="queue when no host has room")
    create.add_argument("--idempotency-key", metavar="KEY", help="a retried create returns the first one")
    create.add_argument(
        "--key-pair",
        dest="key_pairs",
        action="append",
        metavar="NAME",
        help="a key pair whose public key may log in (repeatable)",
    )
    create.add_argument(
        "--user-data",
        metavar="FILE",
        help="cloud-init user-data (UTF-8 text, at most 16 KiB); '-' reads stdin",
    )
    create.set_defaults(handler=c.cmd_instances_create)
    delete = inst.add_parser("delete", parents=[common, followed], help="delete an instance")
    delete.add_argument("instance", metavar="NAME|ID")
    delete.set_defaults(handler=c.cmd_instances_delete)
    for kind in ("start", "stop", "reboot"):
        action = inst.add_parser(kind, parents=[common, followed], help=f"{kind} an instance")
        action.add_argument("instance", metavar="NAME|ID")
        action.set_defaults(handler=c.action_command(kind))

    keys = top.add_parser("keypairs", aliases=["keypair"], help="SSH key pairs").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    keys.add_parser("list", parents=[common], help="the tenant's key pairs").set_defaults(
        handler=c.cmd_keypairs_list
    )
    key_new = keys.add_parser("create", parents=[common], help="generate an Ed25519 key pair")
    key_new.add_argument("name")
    key_new.add_argument(
        "--output", metavar="FILE", help="write the private key here (mode 0600); default: stdout"
    )
    key_new.set_defaults(handler=c.cmd_keypairs_create)
    key_import = keys.add_parser("import", parents=[common], help="import an OpenSSH public key")
    key_import.add_argument("name")
    key_import.add_argument(
        "--public-key", required=True, metavar="FILE", help="the .pub file; '-' reads stdin"
    )
    key_import.set_defaults(handler=c.cmd_keypairs_import)
    key_delete = keys.add_parser("delete", parents=[common], help="delete a key pair")
    key_delete.add_argument("keypair", metavar="NAME|ID")
    key_delete.set_defaults(handler=c.cmd_keypairs_delete)

    fips = top.add_parser(
        "floating-ip", aliases=["floating-ips"], help="floating addresses (reachable from outside)"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    fips.add_parser("list", parents=[common], help="the tenant's floating addresses").set_defaults(
        handler=c.cmd_floating_list
    )
    fip_new = fips.add_parser("create", parents=[common], help="allocate an address from a pool")
    fip_new.add_argument("--pool", help="the pool's name; default: the cloud's first")
    fip_new.set_defaults(handler=c.cmd_floating_create)
    fip_assoc = fips.add_parser("associate", parents=[common], help="NAT it to an instance")
    fip_assoc.add_argument("address", metavar="ADDRESS|ID")
    fip_assoc.add_argument("instance", metavar="INSTANCE")
    fip_assoc.set_defaults(handler=c.cmd_floating_associate)
    for name, handler, text in (
        ("disassociate", c.cmd_floating_disassociate, "take it off its instance"),
        ("delete", c.cmd_floating_delete, "release it to its pool"),
    ):
        sub = fips.add_parser(name, parents=[common], help=text)
        sub.add_argument("address", metavar="ADDRESS|ID")
        sub.set_defaults(handler=handler)

    forwards = top.add_parser(
        "port-forward", aliases=["port-forwards"], help="host ports forwarded to an instance (tcp)"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    fwd_list = forwards.add_parser("list", parents=[common], help="an instance's port forwards")
    fwd_list.add_argument("instance", metavar="INSTANCE")
    fwd_list.set_defaults(handler=c.cmd_forwards_list)
    for name, handler, text in (
        ("add", c.cmd_forwards_add, "forward a free host port to PORT of the instance"),
        ("remove", c.cmd_forwards_remove, "stop forwarding to PORT of the instance"),
    ):
        sub = forwards.add_parser(name, parents=[common], help=text)
        sub.add_argument("instance", metavar="INSTANCE")
        sub.add_argument("port", type=int, metavar="PORT", help="the instance's tcp port")
        sub.set_defaults(handler=handler)

    cli_volumes.add_parser(top, common, followed)

    ops = top.add_parser("operations", help="asynchronous operations").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    fol = ops.add_parser("follow", parents=[common, following], help="poll an operation until it ends")
    fol.add_argument("operation", metavar="ID")
    fol.set_defaults(handler=c.cmd_operations_follow)
    op_show = ops.add_parser("show", parents=[common], help="an operation's state")
    op_show.add_argument("operation", metavar="ID")
    op_show.set_defaults(handler=c.cmd_operations_show)

    for name, handler in (("flavors", c.cmd_flavors), ("images", c.cmd_images)):
        aliases = ["image"] if name == "images" else []
        section = top.add_parser(name, aliases=aliases, help=f"the {name} the tenant may use").add_subparsers(
            dest="action", required=True, metavar="ACTION"
        )
        section.add_parser("list", parents=[common], help=f"list {name}").set_defaults(handler=handler)
        if name == "images":
            up = section.add_parser("upload", parents=[common], help="upload a qcow2 or raw disk (streamed)")
            up.add_argument("file", metavar="FILE")
            up.add_argument("--name", required=True)
            up.add_argument("--format", dest="disk_format", required=True, choices=["qcow2", "raw"])
            up.add_argument("--os-name", default="")
            up.add_argument("--cloud-init", action="store_true", help="its guests run cloud-init (NoCloud)")
            up.add_argument("--login-user", default="")
            up.set_defaults(handler=c.cmd_images_upload)
            rm = section.add_parser("delete", parents=[common], help="delete an uploaded image of the tenant")
            rm.add_argument("image", metavar="NAME|ID")
            rm.set_defaults(handler=c.cmd_images_delete)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return exc.code if isinstance(exc.code, int) else 2
    secrets = [getattr(args, "token", None) or ""]
    try:
        ctx = c.Context(args)
        secrets.append(ctx.config.token)
        code: int = args.handler(ctx)
        return code
    except CliError as exc:
        _report(exc, bool(args.json), secrets)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def _report(exc: CliError, as_json: bool, secrets: list[str]) -> None:
    """The error on stderr: the problem's detail and each field's message; never a token."""
    if as_json:
        body: dict[str, Any] = dict(exc.problem) if isinstance(exc, ApiError) else {"detail": exc.message}
        body["exit_code"] = exc.exit_code
        text = json.dumps(body, indent=2, sort_keys=True)
    else:
        text = "\n".join([f"nubis: error: {exc.message}", *(f"  {line}" for line in exc.lines)])
    for secret in (s for s in secrets if len(s) >= 8):  # a real token; "x" would mangle the text
        text = text.replace(secret, "[token]")
    print(text, file=sys.stderr)
