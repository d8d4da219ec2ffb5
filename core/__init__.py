"""The bottom floor: infrastructure every app shares, importing nothing first-party.

Errors that services raise, live events sent after commit, the Redis client, Celery queue names,
list specs and cursor pagination, and the versioned querysets the scheduler's host table reads.
See docs/architecture.md for the floors above it.
"""
