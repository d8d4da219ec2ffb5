"""Host-side plumbing of isolated tenant networks (bridges, veths, iptables, dnsmasq); see plumbing.py."""
