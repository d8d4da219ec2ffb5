"""Container groundwork: busybox root filesystems and OCI runtime specs for runc."""
