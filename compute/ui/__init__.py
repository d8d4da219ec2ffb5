"""The web UI of compute: the pages of instances, networks, groups and snapshots, and their routes."""
