"""Periodic tasks of the scheduler (control queue): the admission queue and dynamic allocation."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="scheduler.admission_run")
def admission_run() -> list[str]:
    """Admit waiting requests that now fit, in the queue's order; fail those waiting too long."""
    from scheduler.admission import admission_run as run

    return run()
