"""Publish live events to browsers, after the surrounding transaction commits, to one tenant's group
(or to the staff's: ``publish_staff``).

Events leave through one background thread per process that owns an event loop and so keeps its
Redis connections: the caller does not wait for Redis (a fresh loop and connection per event
cost the agent and the API several milliseconds each), and events keep their order.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import queue
import threading
from typing import Any

from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)
FLUSH_AT_EXIT = 5.0  # seconds a finishing process waits for its last events to leave


def tenant_group(tenant_id: int) -> str:
    """Return the Channels group that every websocket of a member of the tenant joins."""
    return f"tenant.{int(tenant_id)}"


# Every websocket of a staff user joins it too: the staff pages' events (DRS), never a tenant's.
STAFF_GROUP = "staff"


class _Sender:
    """A daemon thread sending queued (group, message) pairs in order on its own event loop."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def submit(self, group: str, message: dict[str, Any]) -> None:
        self._ensure_running()
        self._queue.put((group, message))

    def flush(self, timeout: float = FLUSH_AT_EXIT) -> bool:
        """Wait until every queued event was sent (or failed); False if ``timeout`` ran out."""
        done = threading.Event()
        pending = self._queue

        def wait() -> None:
            pending.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        return done.wait(timeout)

    def _ensure_running(self) -> None:
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
                return
            if self._pid != os.getpid():  # a forked child: the parent's thread and queue are not ours
                self._queue = queue.Queue()
                atexit.register(self.flush)
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="nubis-events", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        layer = get_channel_layer()
        while True:
            group, message = self._queue.get()
            try:
                if layer is not None:
                    loop.run_until_complete(layer.group_send(group, message))
            except Exception:  # a lost live event must not take the sender down
                logger.exception("event to %s not sent", group)
            finally:
                self._queue.task_done()


_sender = _Sender()


def send_now(group: str, event: dict[str, Any]) -> None:
    """Send one event to a group now, in order, without waiting (use publish() in transactions)."""
    _sender.submit(group, {"type": "nubis.event", "event": event})


def flush(timeout: float = FLUSH_AT_EXIT) -> bool:
    """Wait for this process's queued events to leave (tests, and processes about to exit)."""
    return _sender.flush(timeout)


def publish(tenant_id: int, event: dict[str, Any]) -> None:
    """Send the event to the tenant's group once the current transaction commits.

    Outside a transaction on_commit runs the callback at once, so this is safe anywhere.
    """
    group = tenant_group(tenant_id)
    transaction.on_commit(lambda: send_now(group, event))


def publish_staff(event: dict[str, Any]) -> None:
    """Send the event to the staff's group once the current transaction commits."""
    transaction.on_commit(lambda: send_now(STAFF_GROUP, event))
