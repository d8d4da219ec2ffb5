"""API routes of the compute app, mounted under /api/v1/tenants/<tenant>/."""

from django.urls import path

from compute import api, api_groups, api_networks

urlpatterns = [
    path("flavors/", api.FlavorListView.as_view(), name="api-flavors"),
    path("images/", api.ImageListView.as_view(), name="api-images"),
    path("instances/", api.InstanceListView.as_view(), name="api-instances"),
    path("instances/<uuid:pk>/", api.InstanceDetailView.as_view(), name="api-instance"),
    path("instances/<uuid:pk>/start/", api.InstanceStartView.as_view(), name="api-instance-start"),
    path("instances/<uuid:pk>/stop/", api.InstanceStopView.as_view(), name="api-instance-stop"),
    path("instances/<uuid:pk>/reboot/", api.InstanceRebootView.as_view(), name="api-instance-reboot"),
    path("instances/<uuid:pk>/resize/", api.InstanceResizeView.as_view(), name="api-instance-resize"),
    path("instances/<uuid:pk>/console/serial/", api.SerialConsoleView.as_view(), name="api-instance-serial"),
    path("instances/<uuid:pk>/console/vnc/", api.VncConsoleView.as_view(), name="api-instance-vnc"),
    path("instances/<uuid:pk>/snapshots/", api.SnapshotListView.as_view(), name="api-snapshots"),
    path(
        "instances/<uuid:pk>/snapshots/<int:snapshot>/", api.SnapshotDetailView.as_view(), name="api-snapshot"
    ),
    path(
        "instances/<uuid:pk>/snapshots/<int:snapshot>/revert/",
        api.SnapshotRevertView.as_view(),
        name="api-snapshot-revert",
    ),
    path("instances/<uuid:pk>/logs/", api.ContainerLogsView.as_view(), name="api-instance-logs"),
    path("instances/<uuid:pk>/exec/", api.ContainerExecView.as_view(), name="api-instance-exec"),
    path(
        "instances/<uuid:pk>/metrics/",
        api_networks.InstanceMetricsView.as_view(),
        name="api-instance-metrics",
    ),
    path(
        "instances/<uuid:pk>/security-groups/",
        api_networks.InstanceGroupsView.as_view(),
        name="api-instance-groups",
    ),
    path(
        "instances/<uuid:pk>/placement/", api_networks.PlacementView.as_view(), name="api-instance-placement"
    ),
    path("networks/", api_networks.NetworkListView.as_view(), name="api-networks"),
    path("networks/<uuid:pk>/", api_networks.NetworkDetailView.as_view(), name="api-network"),
    path("security-groups/", api_networks.SecurityGroupListView.as_view(), name="api-secgroups"),
    path("security-groups/<int:pk>/", api_networks.SecurityGroupDetailView.as_view(), name="api-secgroup"),
    path("security-groups/<int:pk>/rules/", api_networks.RuleListView.as_view(), name="api-secgroup-rules"),
    path(
        "security-groups/<int:pk>/rules/<int:rule>/",
        api_networks.RuleDetailView.as_view(),
        name="api-secgroup-rule",
    ),
    path("server-groups/", api_groups.ServerGroupListView.as_view(), name="api-servergroups"),
    path("server-groups/<int:pk>/", api_groups.ServerGroupDetailView.as_view(), name="api-servergroup"),
    path("queue/", api_groups.TenantQueueView.as_view(), name="api-queue"),
    path("snapshots/", api.TenantSnapshotListView.as_view(), name="api-tenant-snapshots"),
    path("operations/", api.OperationListView.as_view(), name="api-operations"),
    path("operations/<uuid:pk>/", api.OperationDetailView.as_view(), name="api-operation"),
]
