"""The bottom floor: infrastructure every app shares, importing nothing first-party.

Errors that services raise, live events sent after commit, the Redis client, Celery queue names,
list specs and cursor pagination, the versioned querysets the scheduler's host table reads, and
writing a file atomically.
See docs/architecture.md for the floors above it.
"""
