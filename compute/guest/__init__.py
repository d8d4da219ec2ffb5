"""Tiny bootable Linux guests built from Debian packages (kernel + busybox initramfs + ext4 disk)."""
