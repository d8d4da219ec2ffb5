"""Audit, encryption keys, backups, vulnerability scanning, patching and incidents."""
