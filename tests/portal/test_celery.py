"""A real Celery worker, on the real Redis, runs tasks end to end; the app is configured for safety."""

from __future__ import annotations

import time

import pytest
from django_celery_beat.models import PeriodicTask

from portal.celery import CONTROL_QUEUE, app, host_queue
from portal.tasks import heartbeat
from tenants.models import Tenant
from tests.conftest import CeleryWorker


@pytest.mark.django_db(transaction=True)
def test_real_worker_runs_a_task_end_to_end(celery_worker: CeleryWorker) -> None:
    Tenant.objects.create(name="Acme", slug="acme")
    Tenant.objects.create(name="Dormant", slug="dormant", active=False)
    result = heartbeat.apply_async(queue=celery_worker.queue)
    payload = result.get(timeout=30)
    assert payload["tenants"] == ["acme"]
    assert result.successful()
    # The worker logs "succeeded" just after it stores the result: give its log a moment.
    line = f"Task portal.tasks.heartbeat[{result.id}] succeeded"
    deadline = time.monotonic() + 10
    while line not in celery_worker.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert line in celery_worker.log.read_text()


def test_serialization_is_json_only_and_delivery_is_at_least_once() -> None:
    conf = app.conf
    assert conf.task_serializer == "json"
    assert conf.result_serializer == "json"
    assert set(conf.accept_content) == {"json"}
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert 0 < conf.task_soft_time_limit < conf.task_time_limit
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit


def test_pickled_messages_are_refused() -> None:
    from kombu.exceptions import ContentDisallowed
    from kombu.serialization import dumps, loads

    content_type, encoding, body = dumps({"x": 1}, serializer="pickle")
    with pytest.raises(ContentDisallowed):
        loads(body, content_type, encoding, accept=app.conf.accept_content)


def test_one_queue_per_host_plus_control() -> None:
    assert app.conf.task_default_queue == CONTROL_QUEUE == "control"
    assert host_queue("node-1") == "host.node-1"
    with pytest.raises(ValueError, match="invalid host name"):
        host_queue("bad name")
    with pytest.raises(ValueError, match="invalid host name"):
        host_queue("")


@pytest.mark.django_db(transaction=True)  # the scheduler closes connections between syncs
def test_beat_uses_the_database_scheduler_editable_in_admin() -> None:
    from portal.beat import DatabaseScheduler

    assert app.conf.beat_scheduler == "portal.beat:DatabaseScheduler"
    DatabaseScheduler(app=app)  # installs the configured schedule into the database
    task = PeriodicTask.objects.get(name="tenant-heartbeat")
    assert task.task == "portal.tasks.heartbeat"
    assert task.interval is not None
    assert task.enabled
