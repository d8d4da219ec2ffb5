#!/bin/busybox sh
# PID 1 of a Nubis test guest: load drivers, bring up the NIC by DHCP, report on the serial console.
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /mnt /etc
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
export PATH=/bin
exec >/dev/ttyS0 2>&1 </dev/null

arg() { sed -n "s/.*\bnubis\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
NAME=$(arg name); [ -n "$NAME" ] || NAME=guest
hostname "$NAME"
echo "NUBIS-BOOT name=$NAME kernel=$(uname -r)"
for mod in $(cat /etc/modules); do insmod "/lib/modules/$mod.ko" 2>/dev/null; done
mdev -s

# Power button -> clean poweroff, so a graceful shutdown from the host works.
mkdir -p /etc/acpi/PWRF
printf '#!/bin/sh\necho NUBIS-POWEROFF\nsync\npoweroff -f\n' > /etc/acpi/PWRF/00000080
chmod +x /etc/acpi/PWRF/00000080
acpid -c /etc/acpi -l /tmp/acpid.log

NET_DRIVER=none; IP=none
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  NET_DRIVER=$(basename "$(readlink /sys/class/net/eth0/device/driver)")
  ip link set eth0 up
  udhcpc -i eth0 -q -n -t 20 -T 1 -s /etc/udhcpc.sh >/tmp/udhcpc.log 2>&1 \
    && IP=$(ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
fi

DISKS=$(ls /sys/block | grep -E '^(vd|sd|hd)' | tr '\n' ',' | sed 's/,$//')
DISK_BUS=none
for d in $(ls /sys/block | grep -E '^(vd|sd)'); do
  case "$(readlink -f /sys/block/$d)" in
    */virtio*) DISK_BUS=virtio ;;
    */ata*) DISK_BUS=sata ;;
    *) DISK_BUS=other ;;
  esac
  break
done
# The first disk carries an ext4 filesystem: mount it, count boots on it (persists across reboots).
for d in vda sda; do
  if [ -b /dev/$d ] && mount -t ext4 /dev/$d /mnt 2>/dev/null; then
    BOOTS=$(( $(cat /mnt/boots 2>/dev/null || echo 0) + 1 )); echo $BOOTS > /mnt/boots; sync
    break
  fi
done
MEM=$(awk '/MemTotal/ {print $2}' /proc/meminfo)
echo "NUBIS-DEVICES net=$NET_DRIVER disks=$DISKS disk_bus=$DISK_BUS"
echo "NUBIS-READY name=$NAME ip=$IP mem_kib=$MEM boots=${BOOTS:-0}"

# Test images only (kernel argument nubis.shell=PORT): a shell on that TCP port, so tests can
# make the guest itself reach out (ping a neighbour). Never set by the default image.
SHELL_PORT=$(arg shell)
if [ -n "$SHELL_PORT" ]; then nc -ll -p "$SHELL_PORT" -e /bin/sh & fi
# Test images only (kernel argument nubis.console=1): a shell on the serial console, for the
# interactive console's tests; a new one when it exits. Never set by the default image.
if [ "$(arg console)" = 1 ]; then
  (while true; do setsid -c sh </dev/ttyS0 >/dev/ttyS0 2>&1; sleep 1; done) &
fi

# Report MemTotal whenever the balloon changes it.
LAST=$MEM
while true; do
  sleep 1
  NOW=$(awk '/MemTotal/ {print $2}' /proc/meminfo)
  if [ "$NOW" != "$LAST" ]; then echo "NUBIS-MEM mem_kib=$NOW"; LAST=$NOW; fi
done
