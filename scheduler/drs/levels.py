"""The balancer's knobs: the five migration-threshold levels and the three automation levels.

vSphere DRS has a migration threshold of five levels, from "apply only what is mandatory" to
"aggressive", and measures imbalance as the standard deviation of host load. Nubis keeps that shape
and states each level's numbers (``Threshold``), so a recommendation can say which goal it serves.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Threshold:
    """One migration-threshold level: what "balanced enough" means and how small a move may be.

    - ``target_std``: the standard deviation of host load the pass brings the cluster under
      (None: no imbalance goal, only hot hosts are relieved).
    - ``hot``: a host above this load is relieved even when the deviation is under its target.
    - ``slack``: a host above ``slack`` times the level evening out can reach is relieved too (None:
      no such goal). That level is the lower bound of the maximum load (the average load per
      resource, or the largest instance on its host), or the hosts' average load when that is
      higher (hosts of different shapes, see ``Cluster.even``).
    - ``min_gain``: a move must lower the load gap it works on by at least this much (a share of
      a host): smaller moves are not worth a migration, and refusing them is a hysteresis.
    """

    level: int
    name: str
    target_std: float | None
    hot: float
    slack: float | None
    min_gain: float

    def ceiling(self, bound: float) -> float:
        """The highest host load this level accepts, for a cluster that evening out brings to
        ``bound`` at best."""
        ceilings = [max(self.hot, bound)]
        if self.slack is not None:
            ceilings.append(bound * self.slack)
        return min(ceilings)

    def as_dict(self) -> dict[str, object]:
        return {
            "level": self.level,
            "name": self.name,
            "target_std": self.target_std,
            "hot": self.hot,
            "slack": self.slack,
            "min_gain": self.min_gain,
        }


LEVELS: dict[int, Threshold] = {
    1: Threshold(1, "conservative: only relieve hosts above 90%", None, 0.90, None, 0.05),
    2: Threshold(2, "careful: deviation under 0.20, hosts under 85%", 0.20, 0.85, None, 0.04),
    3: Threshold(3, "moderate: deviation under 0.10, hosts under 85%", 0.10, 0.85, None, 0.03),
    4: Threshold(4, "eager: deviation under 0.05, hosts within 10% of the best", 0.05, 0.80, 1.10, 0.02),
    5: Threshold(5, "aggressive: deviation under 0.02, hosts within 5% of the best", 0.02, 0.80, 1.05, 0.01),
}
DEFAULT_LEVEL = 3


def threshold(level: int) -> Threshold:
    """The threshold of ``level`` (1..5); ValueError names the range otherwise."""
    try:
        return LEVELS[int(level)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"the migration threshold is a level from 1 to 5, not {level!r}") from None


# Automation levels, most conservative first (a move between hosts of two levels takes the lower).
MANUAL = "manual"
PARTIAL = "partial"
FULL = "full"
AUTOMATION = (MANUAL, PARTIAL, FULL)
AUTOMATION_NAMES = {
    MANUAL: "manual: where new instances go and migrations are recommended, staff apply them",
    PARTIAL: "partially automated: initial placement automatic, migrations recommended",
    FULL: "fully automated: migrations run",
}


def strictest(*levels: str) -> str:
    """The most conservative of ``levels`` (manual before partial before full)."""
    return min(levels, key=AUTOMATION.index)
