"""Staff pages beside Django admin, under /staff/: hosts and the admission queue."""

from django.urls import path

from portal import staff_views

urlpatterns = [
    path("hosts/", staff_views.hosts, name="staff-hosts"),
    path("hosts/<int:pk>/maintenance/", staff_views.host_maintenance, name="staff-host-maintenance"),
    path("queue/", staff_views.queue, name="staff-queue"),
]
