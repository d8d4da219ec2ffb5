"""The Celery application: JSON only, acks late, one queue per compute host plus a control queue."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

CONTROL_QUEUE = "control"

app = Celery("nubis")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def host_queue(host_name: str) -> str:
    """Return the name of the queue that the compute agent of ``host_name`` consumes."""
    if not host_name or any(ch.isspace() for ch in host_name):
        raise ValueError(f"invalid host name for a queue: {host_name!r}")
    return f"host.{host_name}"


@worker_init.connect
def _preflight(**_: Any) -> None:
    """Refuse to start a worker whose database or Redis cannot be reached, with one clear line."""
    from portal import preflight

    preflight.require(["database", "redis"])
