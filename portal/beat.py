"""Celery beat's scheduler: django_celery_beat's DatabaseScheduler, kept alive through a database
outage.

The stock scheduler survives most of an outage: it reads whether the schedule changed, and writes
when tasks last ran, inside ``except DatabaseError``. But its full re-read of the schedule (every
5 minutes, and after a change) is not guarded, so a database that is down at that moment ends
beat's process. Here every tick first drops a connection that is no longer usable, and a tick the
database failed is tried again a few seconds later with a full re-read, instead of ending beat.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

from django.db import DatabaseError, InterfaceError, close_old_connections
from django_celery_beat import schedulers

logger = logging.getLogger("nubis.beat")

RETRY_SECONDS = 2.0  # a tick the database failed runs again this soon


class DatabaseScheduler(schedulers.DatabaseScheduler):
    """django_celery_beat's scheduler whose ticks outlive the database going away."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        close_old_connections()  # a connection the database cut is dropped, not reused
        try:
            return float(super().tick(*args, **kwargs))
        except (DatabaseError, InterfaceError) as exc:
            logger.warning("beat: the database failed (%s); trying again in %.0f s", exc, RETRY_SECONDS)
            close_old_connections()
            # Read the whole schedule again on the next tick (the failed read may have been one).
            self._last_full_sync = datetime.datetime.now() - datetime.timedelta(
                seconds=schedulers.SCHEDULE_SYNC_MAX_INTERVAL
            )
            return RETRY_SECONDS
