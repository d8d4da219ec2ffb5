"""Staff pages beside Django admin, under /staff/: hosts, the admission queue and DRS."""

from django.urls import path

from portal import staff_drs, staff_views

urlpatterns = [
    path("hosts/", staff_views.hosts, name="staff-hosts"),
    path("hosts/<int:pk>/maintenance/", staff_views.host_maintenance, name="staff-host-maintenance"),
    path("queue/", staff_views.queue, name="staff-queue"),
    path("drs/", staff_drs.drs, name="staff-drs"),
    path("drs/run/", staff_drs.drs_run, name="staff-drs-run"),
    path("drs/what-if/", staff_drs.drs_what_if_run, name="staff-drs-what-if"),
    path("drs/recommendations/<int:pk>/apply/", staff_drs.drs_apply_one, name="staff-drs-apply"),
    path("drs/passes/<int:pk>/apply/", staff_drs.drs_apply_pass, name="staff-drs-apply-all"),
    path("drs/placements/apply/", staff_drs.drs_place_waiting, name="staff-drs-place-all"),
    path("drs/placements/<int:pk>/apply/", staff_drs.drs_place_one, name="staff-drs-place"),
    path("drs/placements/<int:pk>/reject/", staff_drs.drs_reject_one, name="staff-drs-place-reject"),
]
