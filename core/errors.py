"""Errors that services raise; entry points turn them into 4xx answers that name field and rule."""

from __future__ import annotations


class ServiceError(Exception):
    """A request that breaks a rule; ``field`` names the input, ``rule`` the broken rule."""

    status = 400

    def __init__(self, field: str, rule: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.rule = rule
        self.message = message


class Conflict(ServiceError):
    status = 409


class HostUnavailable(ServiceError):
    """A host's agent did not answer in time (stopped, hung or unreachable): 503, naming the host."""

    status = 503

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        super().__init__("host", "agent", message)


class QuotaExceeded(ServiceError):
    """A claim would take the tenant over one of its limits."""

    status = 409

    def __init__(self, resource: str, limit: int, in_use: int, requested: int) -> None:
        self.resource = resource
        self.limit = limit
        self.in_use = in_use
        self.requested = requested
        self.over_by = in_use + requested - limit
        super().__init__(
            resource,
            "quota",
            f"quota exceeded for {resource}: limit {limit}, in use {in_use}, requested {requested} "
            f"(over by {self.over_by})",
        )


class PriorityNotAllowed(ServiceError):
    status = 409

    def __init__(self, requested: str, allowed: str) -> None:
        super().__init__(
            "priority",
            "quota",
            f"priority class {requested!r} is above the tenant's highest allowed, {allowed!r}",
        )
