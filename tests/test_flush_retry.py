"""The transactional tests' flush runs again when PostgreSQL aborts it in a deadlock, and only then."""

from __future__ import annotations

import pytest
from django.core.management.base import CommandError
from django.db import OperationalError
from django.test import TransactionTestCase

from tests import conftest


def _failing(times: int, cause: Exception) -> tuple[list[int], object]:
    calls: list[int] = []

    def flush(self: TransactionTestCase) -> None:
        calls.append(1)
        if len(calls) <= times:
            raise CommandError("Database test_nubis couldn't be flushed.") from cause

    return calls, flush


def test_a_deadlocked_flush_runs_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls, flush = _failing(2, OperationalError("deadlock detected"))
    monkeypatch.setattr(conftest, "_flush_tables", flush)
    conftest._flush_tables_retrying_deadlocks(TransactionTestCase())
    assert len(calls) == 3


def test_other_flush_errors_and_endless_deadlocks_are_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    calls, flush = _failing(1, OperationalError("relation does not exist"))
    monkeypatch.setattr(conftest, "_flush_tables", flush)
    with pytest.raises(CommandError):
        conftest._flush_tables_retrying_deadlocks(TransactionTestCase())
    assert len(calls) == 1
    calls, flush = _failing(99, OperationalError("deadlock detected"))
    monkeypatch.setattr(conftest, "_flush_tables", flush)
    with pytest.raises(CommandError):
        conftest._flush_tables_retrying_deadlocks(TransactionTestCase())
    assert len(calls) == 5
