"""Web UI routes for instances, under /t/<tenant>/."""

from django.urls import path

from compute import views_instance_actions as actions
from compute import views_instances as pages

urlpatterns = [
    path("instances/", pages.instance_list, name="ui-instances"),
    path("instances/new/", actions.instance_new, name="ui-instance-new"),
    path("instances/<uuid:pk>/", pages.instance_detail, name="ui-instance"),
    path("instances/<uuid:pk>/row/", pages.instance_row, name="ui-instance-row"),
    path("instances/<uuid:pk>/action/", actions.instance_action, name="ui-instance-action"),
    path("instances/<uuid:pk>/resize/", actions.instance_resize, name="ui-instance-resize"),
    path("instances/<uuid:pk>/snapshot/", actions.instance_snapshot, name="ui-instance-snapshot"),
    path("instances/<uuid:pk>/delete/", actions.instance_delete, name="ui-instance-delete"),
]
