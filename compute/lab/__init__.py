"""A lab of several compute hosts on one machine (``manage.py lab``).

Each host is a network namespace on a lab bridge plus private mount, UTS and PID namespaces with
tini as PID 1, its own libvirtd and virtlogd (its own host UUID), its own /run (runc's state,
tenant network state) and cgroup parent, and its own compute agent. Killing a host's tini kills
everything in its PID namespace: its agent, libvirtd, QEMU guests and runc containers.

Plain Python, no Django: ``compute.management.commands.lab`` hands it the settings. The modules:
``spec`` (what a lab is), ``control`` (up, down, kill, start), ``hostdir`` (a host's private
libvirt files and init), ``links`` (bridge, namespaces, cgroups), ``relay`` (PostgreSQL and
Redis on each host's loopback), ``procs`` (processes and PID namespaces).
Nothing is imported here, so ``python -m compute.lab.relay`` loads the relay once.
"""
