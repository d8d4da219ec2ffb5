"""Drivers: the only code that touches hypervisors and container runtimes."""
