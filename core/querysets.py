"""Querysets of rows that carry a ``version``, which the scheduler's host table reads to stay fresh."""

from __future__ import annotations

from typing import Any

from django.db import models


class VersionedQuerySet(models.QuerySet[Any]):
    """Rows whose ``version`` the scheduler's host table reads: an update moves it, unless it
    changes only ``live_fields`` (which the table re-reads every time anyway)."""

    live_fields: frozenset[str] = frozenset()

    def update(self, **kwargs: Any) -> int:
        if set(kwargs) - self.live_fields - {"version"}:
            kwargs.setdefault("version", models.F("version") + 1)
        return super().update(**kwargs)


def count_save(obj: Any, kwargs: dict[str, Any]) -> None:
    """Move ``obj.version`` for the save about to happen (and save it, when fields are named)."""
    obj.version = (obj.version or 0) + 1
    if kwargs.get("update_fields") is not None:
        kwargs["update_fields"] = {*kwargs["update_fields"], "version"}
