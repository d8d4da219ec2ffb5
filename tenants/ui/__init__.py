"""The web UI of tenants: quota, settings, members, tokens and the audit trail."""
