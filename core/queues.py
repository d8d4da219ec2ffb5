"""Names of the Celery queues (one per compute host, plus the control queue), and of each host's
request list for quick calls that must not wait behind its operations (compute.services.host_rpc)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from celery import current_app
from django.db import transaction

logger = logging.getLogger(__name__)

CONTROL_QUEUE = "control"
# A send fails fast when the broker is down (one quick retry for a connection it had dropped):
# Celery's defaults would hold the caller (a web request) for many seconds. What was not sent is
# sent again by whoever owns the promise: the operations outbox, or the periodic task that redoes
# the same work.
SEND_OPTIONS: dict[str, object] = {
    "retry": True,
    "retry_policy": {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2},
    # Nobody waits on these tasks' results: with a result backend, Celery would otherwise reach
    # Redis once more per send and, with Redis down, retry that for 20 seconds.
    "ignore_result": True,
}


def host_queue(host_name: str) -> str:
    """Return the name of the queue that the compute agent of ``host_name`` consumes."""
    if not host_name or any(ch.isspace() for ch in host_name):
        raise ValueError(f"invalid host name for a queue: {host_name!r}")
    return f"host.{host_name}"


def rpc_queue(host_name: str) -> str:
    """Return the name of the Redis list of requests that ``host_name``'s agent answers at once."""
    host_queue(host_name)  # the same check of the name
    return f"rpc.{host_name}"


def send_task(name: str, *, queue: str, args: tuple[object, ...] = (), **options: object) -> None:
    """Send the Celery task ``name`` to ``queue`` now, by name; raises when the broker is down.

    By name, so that the sender (the web process, a service) never imports the module that
    defines the task: the agent's tasks import the drivers and libvirt, which the web must not load.
    The project's Celery app is the current one once Django has loaded ``portal``.
    """
    current_app.send_task(name, args=args, queue=queue, **{**SEND_OPTIONS, **options})  # type: ignore[arg-type]


@dataclass(frozen=True)
class TaskSend:
    """A task to send by name, as an on-commit callback: tests can read what it will send."""

    name: str
    queue: str
    args: tuple[object, ...] = ()
    options: dict[str, object] = field(default_factory=dict)

    def __call__(self) -> None:
        # After commit: a broker that is down must not turn the committed request into an error.
        try:
            send_task(self.name, queue=self.queue, args=self.args, **self.options)
        except Exception as exc:  # kombu's OperationalError, a Redis or socket error
            logger.warning("task %s to %s not sent (the broker failed: %s)", self.name, self.queue, exc)


def send_task_after_commit(
    name: str, *, queue: str, args: tuple[object, ...] = (), **options: object
) -> None:
    """Send the task once the surrounding transaction commits (at once outside a transaction)."""
    transaction.on_commit(TaskSend(name, queue, tuple(args), dict(options)))
