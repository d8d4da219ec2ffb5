"""Web UI routes for networks, security groups, server groups and snapshots, under /t/<tenant>/."""

from django.urls import path

from compute import views_networks as nets
from compute import views_secgroups as groups
from compute import views_servergroups as sgroups
from compute import views_snapshots as snaps

urlpatterns = [
    path("networks/", nets.networks_page, name="ui-networks"),
    path("networks/<uuid:pk>/delete/", nets.network_delete, name="ui-network-delete"),
    path("networks/<uuid:pk>/nat/", nets.network_nat, name="ui-network-nat"),
    path("security-groups/", groups.secgroups_page, name="ui-secgroups"),
    path("security-groups/<int:pk>/", groups.secgroup_page, name="ui-secgroup"),
    path("security-groups/<int:pk>/delete/", groups.secgroup_delete, name="ui-secgroup-delete"),
    path("security-groups/<int:pk>/rules/", groups.rule_add, name="ui-secgroup-rule-add"),
    path(
        "security-groups/<int:pk>/rules/<int:rule>/delete/",
        groups.rule_delete,
        name="ui-secgroup-rule-delete",
    ),
    path("server-groups/", sgroups.servergroups_page, name="ui-servergroups"),
    path("server-groups/<int:pk>/delete/", sgroups.servergroup_delete, name="ui-servergroup-delete"),
    path("snapshots/", snaps.snapshots_page, name="ui-snapshots"),
    path("snapshots/<int:pk>/revert/", snaps.snapshot_revert, name="ui-snapshot-revert"),
    path("snapshots/<int:pk>/delete/", snaps.snapshot_delete, name="ui-snapshot-delete"),
]
