"""A lab host's private disk: libvirt's configuration, state and cache, and the init it boots with."""

from __future__ import annotations

import pwd
import re
import shlex
import shutil
from pathlib import Path

from compute.lab.spec import LabHost, LabSpec

LIBVIRT_ETC = Path("/etc/libvirt")
LIBVIRT_CACHE = Path("/var/cache/libvirt")
QEMU_STATE = ("channel/target", "checkpoint", "dump", "nvram", "ram", "save", "snapshot")


def _without(text: str, keys: tuple[str, ...]) -> str:
    """A libvirt .conf without the (uncommented) settings ``keys``: the lab's own come after."""
    pattern = re.compile(rf"^\s*({'|'.join(keys)})\s*=")
    return "".join(line for line in text.splitlines(keepends=True) if not pattern.match(line))


def libvirtd_conf(base: str, host: LabHost) -> str:
    # TCP without authentication: a lab on a private bridge only (never a real deployment).
    settings = {
        "listen_tls": "0",
        "listen_tcp": "1",
        "listen_addr": f'"{host.address}"',
        "auth_tcp": '"none"',
        "auth_unix_rw": '"none"',
        "host_uuid": f'"{host.uuid}"',
    }
    own = "".join(f"{key} = {value}\n" for key, value in settings.items())
    return _without(base, tuple(settings)) + "\n# nubis lab host " + host.name + "\n" + own


def qemu_conf(base: str, host: LabHost) -> str:
    # No cgroups for the guests: the hosts share the machine's cgroup tree (and libvirt's default
    # machine slice would mix the hosts' guests); migrations go over the lab bridge.
    settings = {
        "cgroup_controllers": "[ ]",
        "migration_host": f'"{host.address}"',
        "migration_address": f'"{host.address}"',
    }
    own = "".join(f"{key} = {value}\n" for key, value in settings.items())
    return _without(base, tuple(settings)) + "\n# nubis lab host " + host.name + "\n" + own


def prepare(lab: LabSpec, host: LabHost) -> None:
    """Make the host's directory if it is missing; empty its /run/libvirt (a boot starts afresh)."""
    home = host.directory
    run = home / "run"
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    logs = libvirt_logs(host)
    (logs / "qemu").mkdir(parents=True, exist_ok=True)
    (home / "hosts").write_text(hosts_file(lab))
    (home / "resolv.conf").write_text("")  # no resolver: a lookup would stall for about 10 s
    (home / "init.sh").write_text(init_script(lab, host))
    if lab.private_store:
        (home / "store").mkdir(exist_ok=True)
        (home / "store").chmod(0o755)  # QEMU (libvirt-qemu) enters it to reach the disks
    if (home / "etc").exists():
        return
    home.mkdir(parents=True, exist_ok=True)
    # libvirt's configuration without the machine's domains and secrets.
    shutil.copytree(
        LIBVIRT_ETC,
        home / "etc",
        symlinks=True,
        ignore=shutil.ignore_patterns("secrets", "*.xml", "autostart"),
    )
    for keep in ("nwfilter",):  # the stock filters are XML too
        shutil.rmtree(home / "etc" / keep, ignore_errors=True)
        shutil.copytree(LIBVIRT_ETC / keep, home / "etc" / keep, symlinks=True)
    (home / "etc" / "secrets").mkdir(mode=0o700, exist_ok=True)
    for conf, make in (("libvirtd.conf", libvirtd_conf), ("qemu.conf", qemu_conf)):
        base = (LIBVIRT_ETC / conf).read_text() if (LIBVIRT_ETC / conf).exists() else ""
        (home / "etc" / conf).write_text(make(base, host))
    # The QEMU capabilities cache: start-up in about 1 s instead of 2.
    if LIBVIRT_CACHE.exists():
        shutil.copytree(LIBVIRT_CACHE, home / "cache", symlinks=True)
    else:
        (home / "cache").mkdir()
    lib = home / "lib"
    for sub in ("boot", "dnsmasq", "images", "network", *(f"qemu/{s}" for s in QEMU_STATE)):
        (lib / sub).mkdir(parents=True, exist_ok=True)
    try:
        qemu = pwd.getpwnam("libvirt-qemu")
    except KeyError:
        return
    for path in [lib / "qemu", *(lib / "qemu").rglob("*")]:
        shutil.chown(path, qemu.pw_uid, qemu.pw_gid)


def libvirt_logs(host: LabHost) -> Path:
    """The host's /var/log/libvirt: with the lab's logs, so it outlives the host (lab down)."""
    return host.logs / f"{host.name}.libvirt"


def hosts_file(lab: LabSpec) -> str:
    lines = ["127.0.0.1\tlocalhost"] + [f"{h.address}\t{h.name}" for h in lab.host_list()]
    return "\n".join(lines) + "\n"


def init_script(lab: LabSpec, host: LabHost) -> str:
    """The shell tini runs as the host's first process (PID 2; tini is PID 1)."""
    q = shlex.quote
    binds = {
        host.directory / "run": "/run/libvirt",
        host.directory / "hosts": "/etc/hosts",
        host.directory / "resolv.conf": "/etc/resolv.conf",
        host.directory / "etc": "/etc/libvirt",
        host.directory / "lib": "/var/lib/libvirt",
        libvirt_logs(host): "/var/log/libvirt",
        host.directory / "cache": "/var/cache/libvirt",
    }
    if lab.private_store:
        # The host's own instance store, at the path every host uses (a host's local disk).
        binds[host.directory / "store"] = lab.private_store
    mounts = "\n".join(f"mount --bind {q(str(src))} {q(dst)}" for src, dst in binds.items())
    return f"""#!/bin/sh
# Lab host {host.name} ({host.address}): PID 2 of its PID namespace, under tini.
# Its mount namespace is a private copy of the machine's: the image and instance stores are seen
# at the same paths as everywhere else, and what is mounted below is this host's alone.
set -eu
hostname {q(host.name)}
# A /run of its own (libvirt's sockets, runc's state, /run/netns, /run/lock, /run/nubis).
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p /run/libvirt /run/lock /run/netns /run/.cgroup
# /sys for this network namespace (the agent reads /sys/class/net), keeping the cgroup tree.
mount --rbind /sys/fs/cgroup /run/.cgroup
umount -l /sys
mount -t sysfs sysfs /sys
mount --move /run/.cgroup /sys/fs/cgroup
rmdir /run/.cgroup
{mounts}
virtlogd -d
libvirtd -d --listen
echo "lab host {host.name}: libvirtd started"

stop() {{
  for daemon in libvirtd virtlogd; do
    pid=$(cat /run/$daemon.pid 2>/dev/null || true)
    [ -n "$pid" ] || continue
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  echo "lab host {host.name}: stopped"
  exit 0
}}
trap stop TERM INT
set +e
while :; do sleep 3600 & wait $!; done
"""
