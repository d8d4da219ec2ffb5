"""What a lab is: its directory, its hosts' names and addresses, its bridge; kept in ``lab.json``."""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.files import write_atomically

DEFAULT_PREFIX = "labh"
DEFAULT_BRIDGE = "nubislab0"
DEFAULT_SUBNET = "10.77.0.0/24"
IFNAMSIZ = 15  # the longest interface name Linux takes
# Host UUIDs derive from this namespace and the host name: distinct per host (libvirt refuses a
# migration between two daemons with the same one) and the same every time the host boots.
UUID_NAMESPACE = uuid.UUID("6f1c4a52-0d0b-4c55-9d3e-6c1b2a7e4b10")


class LabError(Exception):
    """A lab command that cannot be done; the message says what and why."""


@dataclass(frozen=True)
class LabHost:
    """One compute host of the lab: a network namespace with its own libvirtd and agent."""

    index: int
    name: str
    address: str
    prefixlen: int
    directory: Path  # its private disk: libvirt's /etc, /var/lib and /var/cache, and its /run/libvirt
    logs: Path

    @property
    def veth(self) -> str:
        """The root namespace's end of its link (its own end is eth0)."""
        return f"v{self.name}"

    @property
    def netns(self) -> Path:
        return Path("/run/netns") / self.name

    @property
    def uuid(self) -> str:
        return str(uuid.uuid5(UUID_NAMESPACE, self.name))

    @property
    def libvirt_socket(self) -> Path:
        return self.directory / "run" / "libvirt-sock"

    @property
    def local_uri(self) -> str:
        """Its libvirtd from the root namespace (the socket in its private /run/libvirt)."""
        return f"qemu+unix:///system?socket={self.libvirt_socket}"

    @property
    def peer_uri(self) -> str:
        """Its libvirtd from the other hosts (and the root namespace): TCP on the lab bridge."""
        return f"qemu+tcp://{self.address}/system"

    @property
    def agent_log(self) -> Path:
        return self.logs / f"{self.name}.agent.log"

    @property
    def host_log(self) -> Path:
        return self.logs / f"{self.name}.host.log"


@dataclass(frozen=True)
class LabSpec:
    """A lab of ``hosts`` hosts named ``<prefix>1..<prefix>N`` on ``bridge`` in ``subnet``."""

    directory: Path
    hosts: int
    prefix: str = DEFAULT_PREFIX
    bridge: str = DEFAULT_BRIDGE
    subnet: str = DEFAULT_SUBNET
    # (address, port) in the root namespace that each host reaches on its own loopback (the relay).
    endpoints: tuple[tuple[str, int], ...] = field(default=())
    # The instance store's path when each host has its own there (a directory of the host's mounted
    # over it): moves then copy the disks along. Empty: the store is the machine's, shared.
    private_store: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9-]*", self.prefix):
            raise LabError(
                f"prefix {self.prefix!r}: lower-case letters, digits and '-', starting with a letter"
            )
        if self.hosts < 1:
            raise LabError("a lab has at least one host")
        if len(f"v{self.prefix}{self.hosts}") > IFNAMSIZ:
            raise LabError(
                f"prefix {self.prefix!r} is too long: interface v{self.prefix}{self.hosts} > 15 characters"
            )
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", self.bridge):
            raise LabError(f"bridge {self.bridge!r}: an interface name of at most 15 characters")
        try:
            network = ipaddress.IPv4Network(self.subnet)
        except ValueError as exc:
            raise LabError(f"subnet {self.subnet!r}: {exc}") from None
        # The hosts take .1 .. .N, the bridge the last address before the broadcast one.
        if self.hosts > network.num_addresses - 3:
            raise LabError(f"subnet {self.subnet} has no room for {self.hosts} hosts and the bridge")

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> str:
        """The bridge's address in the root namespace."""
        return str(self.network.broadcast_address - 1)

    @property
    def logs(self) -> Path:
        return self.directory / "logs"

    def host_list(self) -> list[LabHost]:
        return [self.host(i) for i in range(1, self.hosts + 1)]

    def host(self, which: int | str) -> LabHost:
        """Host by index (1..N) or by name."""
        if isinstance(which, str):
            names = {f"{self.prefix}{i}": i for i in range(1, self.hosts + 1)}
            if which not in names:
                raise LabError(f"no host {which!r} in this lab (hosts: {', '.join(names)})")
            which = names[which]
        name = f"{self.prefix}{which}"
        return LabHost(
            index=which,
            name=name,
            address=str(self.network.network_address + which),
            prefixlen=self.network.prefixlen,
            directory=self.directory / "hosts" / name,
            logs=self.logs,
        )

    # -- lab.json ---------------------------------------------------------------------------------
    def save(self) -> None:
        data = asdict(self)
        data["directory"] = str(self.directory)
        data["endpoints"] = [list(e) for e in self.endpoints]
        write_private(self.directory / "lab.json", json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> LabSpec | None:
        """The lab kept in ``directory``, or None when there is none."""
        try:
            data = json.loads((directory / "lab.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LabError(f"{directory / 'lab.json'}: {exc}") from None
        data["directory"] = Path(data["directory"])
        data["endpoints"] = tuple((str(h), int(p)) for h, p in data.get("endpoints", []))
        return cls(**data)

    def same_network(self, other: LabSpec) -> bool:
        return (self.prefix, self.bridge, self.subnet) == (other.prefix, other.bridge, other.subnet)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0600: the agents' environment holds the database password)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text.encode(), 0o600)
