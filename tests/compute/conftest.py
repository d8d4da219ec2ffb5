"""The compute tests' helpers, where their modules import them from.

The fixtures themselves (the session's compute agent, images, flavors, no_leftovers) live in
tests/compute_fixtures.py, a plugin of the root conftest: every test directory (compute,
scheduler, e2e) then shares one agent and one set of them.
"""

from tests.compute_fixtures import (
    DEADLINE,
    Agent,
    container_traces,
    containers,
    domains,
    forget_host,
    instance_dir_of,
    libvirt_conn,
    remove_network_leftovers,
    serial_log,
    serial_text,
    start_agent,
    wait_for,
    wait_marker,
    wait_operation,
)

__all__ = [
    "DEADLINE",
    "Agent",
    "container_traces",
    "containers",
    "domains",
    "forget_host",
    "instance_dir_of",
    "libvirt_conn",
    "remove_network_leftovers",
    "serial_log",
    "serial_text",
    "start_agent",
    "wait_for",
    "wait_marker",
    "wait_operation",
]
