"""Names of the Celery queues: one per compute host, plus the control queue."""

from __future__ import annotations

CONTROL_QUEUE = "control"


def host_queue(host_name: str) -> str:
    """Return the name of the queue that the compute agent of ``host_name`` consumes."""
    if not host_name or any(ch.isspace() for ch in host_name):
        raise ValueError(f"invalid host name for a queue: {host_name!r}")
    return f"host.{host_name}"
