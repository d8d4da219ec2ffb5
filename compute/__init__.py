"""Hosts, flavors, images, instances and operations; the drivers that act on hypervisors."""
