"""Tenants (teams), memberships and roles; later quotas, tokens and the scoping machinery."""
