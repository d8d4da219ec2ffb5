"""Keep Aggregate.version moving when its hosts change (the M2M does not save the aggregate)."""

from __future__ import annotations

from typing import Any

from django.db.models import F
from django.db.models.signals import m2m_changed
from django.dispatch import receiver

from scheduler.models import Aggregate


@receiver(m2m_changed, sender=Aggregate.hosts.through)
def aggregate_hosts_changed(sender: Any, instance: Any, action: str, reverse: bool, **kwargs: Any) -> None:
    if not action.startswith("post_"):
        return
    if reverse:  # host.aggregates.add(...): the aggregates are in pk_set (all of them on clear)
        pks = kwargs.get("pk_set") or Aggregate.objects.values_list("pk", flat=True)
        Aggregate.objects.filter(pk__in=list(pks)).update(version=F("version") + 1)
    else:
        Aggregate.objects.filter(pk=instance.pk).update(version=F("version") + 1)
