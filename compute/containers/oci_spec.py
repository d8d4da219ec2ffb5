"""The runc config.json of one Nubis container: namespaces, capabilities, seccomp and cgroup limits."""

from __future__ import annotations

from typing import Any

USERNS_SIZE = 65536
ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm", "HOME=/root")
NAMESPACES = ("pid", "mount", "uts", "ipc", "network", "cgroup")
# What `runc spec` grants, plus CAP_NET_RAW (as Docker does) so ping works: it is scoped to the
# container's own network namespace, where the port's anti-spoofing rules still apply.
# CAP_SYS_ADMIN is absent on purpose (mount, unshare, setns, ...): inside a user namespace it
# would still allow tmpfs and proc mounts (LAB.md section 5).
CAPABILITIES = ("CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW")
MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# The syscalls a container process may make; everything else fails with EPERM. runc loads the
# filter at the very end of its init (noNewPrivileges is set), so its own mount and pivot_root
# happen before and stay out of this list, as do unshare, setns, mount, umount2, pivot_root,
# keyctl, bpf, ptrace, kexec, module loading, reboot, swapon and the clock setters. runc's init
# still runs Go code after loading it (hence futex, the epoll family, sigaltstack, ...), and it
# needs fstatfs and statfs to check that /proc/self/fd is on procfs (LAB.md section 5).
# Names this kernel or libseccomp does not know are skipped by runc.
SECCOMP_ALLOW: tuple[str, ...] = (
    "accept",
    "accept4",
    "access",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "clone",
    "clone3",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getxattr",
    "ioctl",
    "kill",
    "lchown",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lseek",
    "lstat",
    "madvise",
    "membarrier",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mmap",
    "mprotect",
    "mremap",
    "msync",
    "munlock",
    "munmap",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pipe",
    "pipe2",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "pselect6",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "sched_getaffinity",
    "sched_getparam",
    "sched_getscheduler",
    "sched_yield",
    "select",
    "sendfile",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_tid_address",
    "setgid",
    "setgroups",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setsid",
    "setsockopt",
    "setuid",
    "shutdown",
    "sigaltstack",
    "socket",
    "socketpair",
    "splice",
    "stat",
    "statfs",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "tkill",
    "truncate",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vfork",
    "wait4",
    "waitid",
    "write",
    "writev",
)


def _mounts() -> list[dict[str, Any]]:
    """`runc spec`'s mounts, plus tmpfs on /tmp and /run: the root itself is read-only."""
    return [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        },
        {
            "destination": "/dev/shm",  # noqa: S108 - a path inside the container
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
        },
        # No size cap: what is written here is charged to the memory cgroup, which is the cap.
        {
            "destination": "/tmp",  # noqa: S108 - a path inside the container
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777"],
        },
        {
            "destination": "/run",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=755"],
        },
    ]


def _resources(
    *,
    memory_bytes: int,
    swap_bytes: int,
    cpu_quota: int,
    cpu_period: int,
    cpu_shares: int,
    pids_max: int,
    blkio_weight: int | None,
) -> dict[str, Any]:
    """linux.resources; OCI's memory.swap is memory plus swap, so ``swap_bytes`` is added on top."""
    resources: dict[str, Any] = {
        # Deny every device node but the ones runc always creates (null, zero, full, tty, random, urandom).
        "devices": [{"allow": False, "access": "rwm"}],
        "memory": {"limit": memory_bytes, "swap": memory_bytes + swap_bytes},
        "cpu": {"quota": cpu_quota, "period": cpu_period, "shares": cpu_shares},
        "pids": {"limit": pids_max},
    }
    # Only BFQ offers a weight; on a host without blkio.weight files runc fails if one is set.
    if blkio_weight is not None:
        resources["blockIO"] = {"weight": blkio_weight}
    return resources


CPU_PERIOD = 100_000  # microseconds of a CFS period: a quota of CPU_PERIOD is one whole CPU


def cgroups_path(parent: str, name: str) -> str:
    """linux.cgroupsPath of container ``name`` under ``parent`` (one host's containers)."""
    return f"/{parent.strip('/')}/{name}"


def oci_config(
    *,
    name: str,
    hostname: str,
    args: list[str],
    rootfs: str = "rootfs",
    memory_bytes: int,
    swap_bytes: int = 0,
    cpu_quota: int,
    cpu_period: int = CPU_PERIOD,
    cpu_shares: int = 1024,
    pids_max: int,
    blkio_weight: int | None = None,
    user_namespace: bool,
    uid_base: int = 100_000,
    netns_path: str | None = None,
    cgroup_parent: str = "nubis",
) -> dict[str, Any]:
    """A runc config.json for container ``name`` running ``args`` on ``rootfs``.

    ``rootfs`` is relative to the bundle or absolute (a read-only tree shared by containers).
    With ``netns_path`` the container joins that network namespace (its port on a tenant
    network); without it, it gets a new one holding only loopback. Its cgroup is
    ``<controller>/<cgroup_parent>/<name>`` (setting NUBIS_CGROUP_PARENT).
    """
    namespaces: list[dict[str, str]] = [{"type": kind} for kind in NAMESPACES]
    if netns_path:
        namespaces = [
            {"type": "network", "path": netns_path} if ns["type"] == "network" else ns for ns in namespaces
        ]
    linux: dict[str, Any] = {
        # Absolute, so the cgroup lands at <controller>/<parent>/<name> wherever the agent itself
        # runs; a relative path would nest under the caller's own cgroup.
        "cgroupsPath": cgroups_path(cgroup_parent, name),
        "namespaces": namespaces,
        "resources": _resources(
            memory_bytes=memory_bytes,
            swap_bytes=swap_bytes,
            cpu_quota=cpu_quota,
            cpu_period=cpu_period,
            cpu_shares=cpu_shares,
            pids_max=pids_max,
            blkio_weight=blkio_weight,
        ),
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
        "seccomp": {
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": list(SECCOMP_ALLOW), "action": "SCMP_ACT_ALLOW"}],
        },
    }
    if user_namespace:
        namespaces.append({"type": "user"})
        mapping = [{"containerID": 0, "hostID": uid_base, "size": USERNS_SIZE}]
        linux["uidMappings"] = mapping
        linux["gidMappings"] = [dict(m) for m in mapping]
    caps = list(CAPABILITIES)
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(args),
            "env": list(ENV),
            "cwd": "/",
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
                "ambient": caps,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": True},
        "hostname": hostname,
        "mounts": _mounts(),
        "linux": linux,
    }
