"""The Celery application: JSON only, acks late, one queue per compute host plus a control queue."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_init

from core.queues import CONTROL_QUEUE, host_queue

__all__ = ["CONTROL_QUEUE", "app", "host_queue"]

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("nubis")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def _preflight(**_: Any) -> None:
    """Refuse to start a worker whose database or Redis cannot be reached, with one clear line."""
    from portal import preflight

    preflight.require(["database", "redis"])
