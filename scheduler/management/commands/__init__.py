"""Management commands of the scheduler: ``simulate``."""
