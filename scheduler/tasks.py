"""Periodic tasks of the scheduler (control queue): the admission queue and dynamic allocation."""

from __future__ import annotations

from typing import Any

from celery import shared_task


@shared_task(name="scheduler.admission_run")
def admission_run() -> list[str]:
    """Admit waiting requests that now fit, in the queue's order; fail those waiting too long."""
    from scheduler.admission import admission_run as run

    return run()


@shared_task(name="scheduler.allocation_adjust")
def allocation_adjust() -> dict[str, Any]:
    """Move dynamic instances' memory toward their measured demand, host by host."""
    from scheduler.allocation import allocation_adjust_all

    return allocation_adjust_all()
