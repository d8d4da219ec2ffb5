"""Web UI routes for instances, under /t/<tenant>/."""

from django.urls import path  # noqa: F401 - the pages add their routes here

urlpatterns: list = []
