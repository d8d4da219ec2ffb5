"""DRS: the balancer that keeps the cluster's load even by moving running instances.

``levels`` (migration threshold and automation levels), ``model`` (the cluster as columns, with
measured demand), ``plan`` (the pass: which moves, and why). The scheduler decides and never acts:
compute.services.drs reads the cluster, keeps the plan and starts the moves it may.
"""

from scheduler.drs.levels import (
    AUTOMATION,
    DEFAULT_LEVEL,
    FULL,
    LEVELS,
    MANUAL,
    PARTIAL,
    Threshold,
    threshold,
)
from scheduler.drs.model import Cluster, move_cost
from scheduler.drs.plan import Move, Plan, plan

__all__ = [
    "AUTOMATION",
    "DEFAULT_LEVEL",
    "FULL",
    "LEVELS",
    "MANUAL",
    "PARTIAL",
    "Cluster",
    "Move",
    "Plan",
    "Threshold",
    "move_cost",
    "plan",
    "threshold",
]
