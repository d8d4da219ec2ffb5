"""Publish live events to browsers, after the surrounding transaction commits, to one tenant's group."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction


def tenant_group(tenant_id: int) -> str:
    """Return the Channels group that every websocket of a member of the tenant joins."""
    return f"tenant.{int(tenant_id)}"


def send_now(group: str, event: dict[str, Any]) -> None:
    """Send one event to a group immediately (use publish() inside transactions)."""
    layer = get_channel_layer()
    if layer is None:  # pragma: no cover - CHANNEL_LAYERS is always configured
        raise RuntimeError("no channel layer configured")
    async_to_sync(layer.group_send)(group, {"type": "nubis.event", "event": event})


def publish(tenant_id: int, event: dict[str, Any]) -> None:
    """Send the event to the tenant's group once the current transaction commits.

    Outside a transaction on_commit runs the callback at once, so this is safe anywhere.
    """
    group = tenant_group(tenant_id)
    transaction.on_commit(lambda: send_now(group, event))
