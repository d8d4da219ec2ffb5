"""The admission queue's policy: who goes first when room frees up (no Django; times are seconds).

Three rules, in this order:
1. **Overdue first.** A request that has waited ``max_wait`` or longer is overdue. Overdue
   requests go before all others, oldest first, and nothing behind an overdue request is admitted
   before it: the room that frees up is kept for it. That bounds every wait, whatever the stream
   of higher-priority requests (no starvation).
2. **Priority with aging.** Otherwise the higher effective priority goes first: the request's
   class plus one level per ``aging_seconds`` waited, up to the top class.
3. **Fair share.** Within a level, the tenant with the smaller dominant share (its largest share of
   any one resource of the cloud, as in dominant resource fairness) goes first; then the older.

Before a request is overdue, a smaller request behind it may take room it cannot use (backfill).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

Vector = tuple[float, float, float]  # vCPUs, RAM MiB, disk GiB


@dataclass(frozen=True)
class Waiting:
    """One request in the queue."""

    key: int
    tenant_id: int
    priority: int  # PriorityClass value: 0 low .. 3 critical
    enqueued_at: float
    demand: Vector


@dataclass(frozen=True)
class QueuePolicy:
    aging_seconds: float = 120.0
    max_wait: float = 600.0
    top: int = 3  # the highest priority class

    def __post_init__(self) -> None:
        if self.aging_seconds <= 0 or self.max_wait <= 0:
            raise ValueError("aging_seconds and max_wait must be positive")

    def effective_priority(self, w: Waiting, now: float) -> float:
        """The class plus the levels gained by waiting, capped at the top class."""
        return min(float(self.top), w.priority + max(now - w.enqueued_at, 0.0) / self.aging_seconds)

    def overdue(self, w: Waiting, now: float) -> bool:
        return now - w.enqueued_at >= self.max_wait


def dominant_shares(usage: Mapping[int, Sequence[float]], capacity: Sequence[float]) -> dict[int, float]:
    """Each tenant's dominant share: its largest fraction of any one resource of the cloud."""
    return {
        tenant: max((u / c if c > 0 else 0.0) for u, c in zip(used, capacity, strict=True))
        for tenant, used in usage.items()
    }


def order(
    waiting: Iterable[Waiting], now: float, policy: QueuePolicy, shares: Mapping[int, float]
) -> list[Waiting]:
    """The queue in admission order at ``now``."""

    def key(w: Waiting) -> tuple[int, int, float, float, int]:
        if policy.overdue(w, now):
            return (0, 0, 0.0, w.enqueued_at, w.key)
        level = int(policy.effective_priority(w, now))
        return (1, -level, shares.get(w.tenant_id, 0.0), w.enqueued_at, w.key)

    return sorted(waiting, key=key)


def admission_pass(
    waiting: Iterable[Waiting],
    now: float,
    policy: QueuePolicy,
    usage: dict[int, list[float]],
    capacity: Sequence[float],
    try_place: Callable[[Waiting], bool],
) -> list[Waiting]:
    """Admit what fits, in order; returns the admitted requests.

    ``try_place`` claims room for one request and says whether it got it. ``usage`` (what each
    tenant holds, per resource) is updated as requests are admitted, so fair share follows along.
    """
    pending = list(waiting)
    admitted: list[Waiting] = []
    # Room only shrinks during a pass, so a request that did not fit is not tried again.
    refused: set[int] = set()
    while pending:
        ranked = order(pending, now, policy, dominant_shares(usage, capacity))
        chosen = None
        for w in ranked:
            if w.key not in refused:
                if try_place(w):
                    chosen = w
                    break
                refused.add(w.key)
            if policy.overdue(w, now):
                return admitted  # keep the room that frees up for the overdue request
        if chosen is None:
            return admitted
        admitted.append(chosen)
        pending.remove(chosen)
        held = usage.setdefault(chosen.tenant_id, [0.0, 0.0, 0.0])
        for i, amount in enumerate(chosen.demand):
            held[i] += amount
    return admitted


def position(
    waiting: Iterable[Waiting], key: int, now: float, policy: QueuePolicy, shares: Mapping[int, float]
) -> int | None:
    """1-based place of request ``key`` in the current order (None: not waiting)."""
    for i, w in enumerate(order(waiting, now, policy, shares), start=1):
        if w.key == key:
            return i
    return None
