"""Staff pages beside Django admin, under /staff/: hosts and the admission queue."""

from django.urls import path  # noqa: F401 - the pages add their routes here

urlpatterns: list = []
