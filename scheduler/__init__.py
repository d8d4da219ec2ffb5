"""Placement, allocation policies, the admission queue and DRS; it plans, compute acts."""
