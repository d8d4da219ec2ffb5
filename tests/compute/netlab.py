"""Helpers of the network tests that build hosts and instances out of network namespaces."""

from __future__ import annotations

import subprocess

# A udhcpc hook that prints the lease it got (udhcpc runs it with the lease in the environment).
UDHCPC_SCRIPT = '#!/bin/sh\n[ "$1" = bound ] && echo "LEASE ip=$ip router=$router"\nexit 0\n'


def sh(*argv: str, check: bool = True, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
    return proc


def in_ns(netns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", netns, *argv, check=check)


def pings(pairs: list[tuple[str, str]]) -> list[bool]:
    """Ping (netns, address) pairs at once, one echo each with a 1 s wait; True where it answered."""
    procs = [
        subprocess.Popen(
            ["ip", "netns", "exec", ns, "ping", "-n", "-c1", "-W1", ip],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for ns, ip in pairs
    ]
    return [proc.wait(timeout=10) == 0 for proc in procs]
