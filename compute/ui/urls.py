"""Routes of the compute pages, under /t/<tenant>/."""

from django.urls import path

from compute.ui import (
    consoles,
    floating,
    images,
    keypairs,
    networks,
    secgroups,
    servergroups,
    snapshots,
    volumes,
)
from compute.ui import instance_actions as actions
from compute.ui import instances as pages

tenant_urlpatterns = [
    path("instances/", pages.instance_list, name="ui-instances"),
    path("instances/new/", actions.instance_new, name="ui-instance-new"),
    path("instances/<uuid:pk>/", pages.instance_detail, name="ui-instance"),
    path("instances/<uuid:pk>/row/", pages.instance_row, name="ui-instance-row"),
    path("instances/<uuid:pk>/action/", actions.instance_action, name="ui-instance-action"),
    path("instances/<uuid:pk>/resize/", actions.instance_resize, name="ui-instance-resize"),
    path("instances/<uuid:pk>/snapshot/", actions.instance_snapshot, name="ui-instance-snapshot"),
    path("instances/<uuid:pk>/delete/", actions.instance_delete, name="ui-instance-delete"),
    path("instances/<uuid:pk>/console/", consoles.instance_console, name="instance-console"),
    path("instances/<uuid:pk>/port-forwards/", floating.port_forward_add, name="ui-port-forward-add"),
    path(
        "instances/<uuid:pk>/port-forwards/<int:forward>/delete/",
        floating.port_forward_remove,
        name="ui-port-forward-remove",
    ),
    path("floating-ips/", floating.floating_ips_page, name="ui-floating-ips"),
    path("floating-ips/<int:pk>/associate/", floating.floating_ip_associate, name="ui-floating-ip-associate"),
    path(
        "floating-ips/<int:pk>/disassociate/",
        floating.floating_ip_disassociate,
        name="ui-floating-ip-disassociate",
    ),
    path("floating-ips/<int:pk>/release/", floating.floating_ip_release, name="ui-floating-ip-release"),
    path("networks/", networks.networks_page, name="ui-networks"),
    path("networks/<uuid:pk>/delete/", networks.network_delete, name="ui-network-delete"),
    path("networks/<uuid:pk>/nat/", networks.network_nat, name="ui-network-nat"),
    path("security-groups/", secgroups.secgroups_page, name="ui-secgroups"),
    path("security-groups/<int:pk>/", secgroups.secgroup_page, name="ui-secgroup"),
    path("security-groups/<int:pk>/delete/", secgroups.secgroup_delete, name="ui-secgroup-delete"),
    path("security-groups/<int:pk>/rules/", secgroups.rule_add, name="ui-secgroup-rule-add"),
    path(
        "security-groups/<int:pk>/rules/<int:rule>/delete/",
        secgroups.rule_delete,
        name="ui-secgroup-rule-delete",
    ),
    path("images/", images.images_page, name="ui-images"),
    path("images/upload/", images.image_upload, name="ui-image-upload"),
    path("images/<int:pk>/delete/", images.image_delete, name="ui-image-delete"),
    path("keypairs/", keypairs.keypairs_page, name="ui-keypairs"),
    path("keypairs/generate/", keypairs.keypair_generate, name="ui-keypair-generate"),
    path("keypairs/<int:pk>/delete/", keypairs.keypair_delete, name="ui-keypair-delete"),
    path("server-groups/", servergroups.servergroups_page, name="ui-servergroups"),
    path("server-groups/<int:pk>/delete/", servergroups.servergroup_delete, name="ui-servergroup-delete"),
    path("volumes/", volumes.volumes_page, name="ui-volumes"),
    path("volumes/<uuid:pk>/action/", volumes.volume_action, name="ui-volume-action"),
    path("snapshots/", snapshots.snapshots_page, name="ui-snapshots"),
    path("snapshots/<int:pk>/revert/", snapshots.snapshot_revert, name="ui-snapshot-revert"),
    path("snapshots/<int:pk>/delete/", snapshots.snapshot_delete, name="ui-snapshot-delete"),
]
