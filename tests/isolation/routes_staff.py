"""Persona cases of a group of UI routes (merged into routes.ROUTES)."""

from __future__ import annotations

from tests.isolation.routes import Case

ROUTES: dict[str, list[Case]] = {}
