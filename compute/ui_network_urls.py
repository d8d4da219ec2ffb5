"""Web UI routes for networks, security groups and server groups, under /t/<tenant>/."""

from django.urls import path  # noqa: F401 - the pages add their routes here

urlpatterns: list = []
