"""Routes of the compute API: the tenant's resources and the staff's hosts, queue, quotas and DRS."""

from django.urls import include, path

from compute.api.views import (
    admin,
    catalog,
    consoles,
    drs,
    floating,
    groups,
    images,
    instances,
    keypairs,
    networks,
    operations,
    snapshots,
    volumes,
)

tenant_urlpatterns = [
    path("flavors/", catalog.FlavorListView.as_view(), name="api-flavors"),
    path("images/", images.ImageListView.as_view(), name="api-images"),
    path("images/<int:pk>/", images.ImageDetailView.as_view(), name="api-image"),
    path("instances/", instances.InstanceListView.as_view(), name="api-instances"),
    path("instances/<uuid:pk>/", instances.InstanceDetailView.as_view(), name="api-instance"),
    path("instances/<uuid:pk>/start/", instances.InstanceStartView.as_view(), name="api-instance-start"),
    path("instances/<uuid:pk>/stop/", instances.InstanceStopView.as_view(), name="api-instance-stop"),
    path("instances/<uuid:pk>/reboot/", instances.InstanceRebootView.as_view(), name="api-instance-reboot"),
    path("instances/<uuid:pk>/resize/", instances.InstanceResizeView.as_view(), name="api-instance-resize"),
    path(
        "instances/<uuid:pk>/migrate/", instances.InstanceMigrateView.as_view(), name="api-instance-migrate"
    ),
    path(
        "instances/<uuid:pk>/console/serial/",
        consoles.SerialConsoleView.as_view(),
        name="api-instance-serial",
    ),
    path("instances/<uuid:pk>/console/vnc/", consoles.VncConsoleView.as_view(), name="api-instance-vnc"),
    path(
        "instances/<uuid:pk>/console/terminal/",
        consoles.TerminalConsoleView.as_view(),
        name="api-instance-terminal",
    ),
    path("instances/<uuid:pk>/snapshots/", snapshots.SnapshotListView.as_view(), name="api-snapshots"),
    path(
        "instances/<uuid:pk>/snapshots/<int:snapshot>/",
        snapshots.SnapshotDetailView.as_view(),
        name="api-snapshot",
    ),
    path(
        "instances/<uuid:pk>/snapshots/<int:snapshot>/revert/",
        snapshots.SnapshotRevertView.as_view(),
        name="api-snapshot-revert",
    ),
    path("instances/<uuid:pk>/logs/", consoles.ContainerLogsView.as_view(), name="api-instance-logs"),
    path("instances/<uuid:pk>/exec/", consoles.ContainerExecView.as_view(), name="api-instance-exec"),
    path(
        "instances/<uuid:pk>/metrics/", instances.InstanceMetricsView.as_view(), name="api-instance-metrics"
    ),
    path(
        "instances/<uuid:pk>/security-groups/",
        instances.InstanceGroupsView.as_view(),
        name="api-instance-groups",
    ),
    path("instances/<uuid:pk>/placement/", instances.PlacementView.as_view(), name="api-instance-placement"),
    path(
        "instances/<uuid:pk>/port-forwards/",
        floating.PortForwardListView.as_view(),
        name="api-instance-port-forwards",
    ),
    path(
        "instances/<uuid:pk>/port-forwards/<int:forward>/",
        floating.PortForwardDetailView.as_view(),
        name="api-instance-port-forward",
    ),
    path("floating-ips/", floating.FloatingIPListView.as_view(), name="api-floating-ips"),
    path("floating-ips/<int:pk>/", floating.FloatingIPDetailView.as_view(), name="api-floating-ip"),
    path(
        "floating-ips/<int:pk>/associate/",
        floating.FloatingIPAssociateView.as_view(),
        name="api-floating-ip-associate",
    ),
    path(
        "floating-ips/<int:pk>/disassociate/",
        floating.FloatingIPDisassociateView.as_view(),
        name="api-floating-ip-disassociate",
    ),
    path("networks/", networks.NetworkListView.as_view(), name="api-networks"),
    path("networks/<uuid:pk>/", networks.NetworkDetailView.as_view(), name="api-network"),
    path("security-groups/", networks.SecurityGroupListView.as_view(), name="api-secgroups"),
    path("security-groups/<int:pk>/", networks.SecurityGroupDetailView.as_view(), name="api-secgroup"),
    path("security-groups/<int:pk>/rules/", networks.RuleListView.as_view(), name="api-secgroup-rules"),
    path(
        "security-groups/<int:pk>/rules/<int:rule>/",
        networks.RuleDetailView.as_view(),
        name="api-secgroup-rule",
    ),
    path("keypairs/", keypairs.KeyPairListView.as_view(), name="api-keypairs"),
    path("keypairs/<int:pk>/", keypairs.KeyPairDetailView.as_view(), name="api-keypair"),
    path("server-groups/", groups.ServerGroupListView.as_view(), name="api-servergroups"),
    path("server-groups/<int:pk>/", groups.ServerGroupDetailView.as_view(), name="api-servergroup"),
    path("queue/", groups.TenantQueueView.as_view(), name="api-queue"),
    path("snapshots/", snapshots.TenantSnapshotListView.as_view(), name="api-tenant-snapshots"),
    path("volumes/", volumes.VolumeListView.as_view(), name="api-volumes"),
    path("volumes/<uuid:pk>/", volumes.VolumeDetailView.as_view(), name="api-volume"),
    path("volumes/<uuid:pk>/attach/", volumes.VolumeAttachView.as_view(), name="api-volume-attach"),
    path("volumes/<uuid:pk>/detach/", volumes.VolumeDetachView.as_view(), name="api-volume-detach"),
    path("volumes/<uuid:pk>/resize/", volumes.VolumeResizeView.as_view(), name="api-volume-resize"),
    path(
        "volumes/<uuid:pk>/snapshots/", volumes.VolumeSnapshotListView.as_view(), name="api-volume-snapshots"
    ),
    path(
        "volumes/<uuid:pk>/snapshots/<int:snapshot>/",
        volumes.VolumeSnapshotDetailView.as_view(),
        name="api-volume-snapshot",
    ),
    path("operations/", operations.OperationListView.as_view(), name="api-operations"),
    path("operations/<uuid:pk>/", operations.OperationDetailView.as_view(), name="api-operation"),
]

admin_urlpatterns = [
    path("hosts/", admin.AdminHostListView.as_view(), name="api-admin-hosts"),
    path(
        "hosts/<int:pk>/maintenance/",
        admin.AdminHostMaintenanceView.as_view(),
        name="api-admin-host-maintenance",
    ),
    path("queue/", admin.AdminQueueView.as_view(), name="api-admin-queue"),
    path("quotas/", admin.AdminQuotaListView.as_view(), name="api-admin-quotas"),
    path("tenants/<slug:tenant>/quota/", admin.AdminQuotaView.as_view(), name="api-admin-quota"),
    path("drs/", drs.AdminDrsView.as_view(), name="api-admin-drs"),
    path("drs/passes/", drs.AdminDrsPassListView.as_view(), name="api-admin-drs-passes"),
    path("drs/what-if/", drs.AdminDrsWhatIfView.as_view(), name="api-admin-drs-what-if"),
    path("drs/passes/<int:pk>/", drs.AdminDrsPassView.as_view(), name="api-admin-drs-pass"),
    path("drs/passes/<int:pk>/apply/", drs.AdminDrsPassApplyView.as_view(), name="api-admin-drs-pass-apply"),
    path(
        "drs/recommendations/",
        drs.AdminDrsRecommendationListView.as_view(),
        name="api-admin-drs-recommendations",
    ),
    path(
        "drs/recommendations/<int:pk>/apply/",
        drs.AdminDrsRecommendationApplyView.as_view(),
        name="api-admin-drs-recommendation-apply",
    ),
    path("drs/placements/", drs.AdminDrsPlacementListView.as_view(), name="api-admin-drs-placements"),
    path(
        "drs/placements/apply/",
        drs.AdminDrsPlacementApplyAllView.as_view(),
        name="api-admin-drs-placements-apply",
    ),
    path(
        "drs/placements/<int:pk>/apply/",
        drs.AdminDrsPlacementApplyView.as_view(),
        name="api-admin-drs-placement-apply",
    ),
    path(
        "drs/placements/<int:pk>/reject/",
        drs.AdminDrsPlacementRejectView.as_view(),
        name="api-admin-drs-placement-reject",
    ),
    path("instances/<uuid:uuid>/drs-pin/", drs.AdminInstancePinView.as_view(), name="api-admin-instance-pin"),
]

urlpatterns = [
    path("admin/", include(admin_urlpatterns)),
    path("tenants/<slug:tenant>/", include(tenant_urlpatterns)),
]
