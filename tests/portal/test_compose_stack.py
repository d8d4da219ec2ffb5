"""The production compose file, really started: images built here, the stack up, a container
instance created through the API on the stack's own agent, and the whole stack taken down again.

No image registry is reachable from these machines, so the images are built on a Debian base made
by docker/build-base, with the Python wheels made here (docker-compose.local-base.yml). The test
runs its own Docker daemon (own socket, data and exec roots, containerd namespace) with
--iptables=false and --bridge=none: it adds no iptables chain, leaves FORWARD's policy and
ip_forward alone, and makes no docker0. Published ports work through docker-proxy on loopback; the
builds use the host's network. The base's tarball, the wheels and the daemon's data root (the
images and their build cache) are kept under /var/cache/nubis, so a later run rebuilds only what
changed. Everything the test starts is stopped in a finally, and it checks that no Docker chain,
bridge, veth or process is left and that FORWARD's policy is what it was. One run at a time on a
machine: the daemon's paths are fixed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = ["-f", "docker-compose.yml", "-f", "docker-compose.local-base.yml"]
BASE_IMAGE = "nubis-base:bookworm"
CACHE = Path("/var/cache/nubis")
DATA_ROOT = CACHE / "docker" / "data-root"  # the daemon's images and build cache, kept
WHEEL_CACHE = CACHE / "wheels"
# pip for the image's Python: Debian bookworm's python3, as on this machine (a virtual environment of
# it; the project's own may run another 3.11, and markers such as python_full_version differ).
WHEEL_PYTHON = CACHE / "wheels-python"
STATE = Path("/run/nubis-compose-smoke")  # the daemon's socket, pid file and exec root
# Debian's docker client first: it has BuildKit built in (a newer client needs the buildx plugin).
CLIENT_PATH = "/usr/bin:/usr/sbin:/bin:/sbin:/usr/local/bin"
# What the services are waited for, and how long a build may take.
READY_TIMEOUT = 240
# The portal's name, as a real deployment has one: /readyz, the API and web's health check must
# all work with ALLOWED_HOSTS naming it alone.
PORTAL_HOST = "nubis.compose-smoke.test"
BUILD_TIMEOUT = 1200

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="starts a Docker daemon: needs root"),
    pytest.mark.timeout(1800),
]


def log(message: str) -> None:
    print(f"compose-smoke: {message}", flush=True)  # noqa: T201 - progress in CI's log


def execute(
    argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run a command from the project's root, its output captured."""
    return subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def run(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """Run a command from the project's root; on failure, fail with its last lines of output."""
    proc = execute(argv, env=env, timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        pytest.fail(f"{' '.join(argv[:8])} exited {proc.returncode}:\n{tail}")
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def iptables_state() -> dict[str, str]:
    """Docker's traces in iptables (its chains and rules, in any table) and FORWARD's policy.

    Only these: other deployments and test runs on the machine add and remove chains of their own.
    """
    found: dict[str, str] = {}
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("filter", "nat", "mangle", "raw"):
            listing = execute([tool, "-w", "-t", table, "-S"]).stdout
            found[f"{tool} {table}"] = "\n".join(
                line for line in listing.splitlines() if "DOCKER" in line.upper()
            )
        policy = execute([tool, "-w", "-S", "FORWARD"]).stdout.splitlines()
        found[f"{tool} FORWARD policy"] = policy[0] if policy else ""
    return found


def new_iptables_traces(before: dict[str, str]) -> dict[str, list[str]]:
    """Docker's rules and chains (or a FORWARD policy) found now that were not there `before`."""
    added = {}
    for key, now in iptables_state().items():
        earlier = set(before.get(key, "").splitlines())
        lines = [line for line in now.splitlines() if line not in earlier]
        if lines:
            added[key] = lines
    return added


def docker_links() -> list[str]:
    """Bridges Docker makes (docker0, br-<network id>, docker_gwbridge) and veths on them."""
    links = execute(["ip", "-o", "link", "show"]).stdout
    names = []
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        master = line.split(" master ")[1].split()[0] if " master " in line else ""
        if name in {"docker0", "docker_gwbridge"} or name.startswith("br-") or master.startswith("br-"):
            names.append(name)
    return sorted(names)


def compose_command(env: dict[str, str]) -> list[str] | None:
    """`docker compose` (the v2 plugin) where the client has it, else Debian's docker-compose (v1)."""
    if execute(["docker", "compose", "version"], env=env).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose", path=env["PATH"]) else None


def require_docker() -> None:
    """dockerd and a compose client: ./scripts/test installs them (docker.io, docker-compose)."""
    env = {"PATH": CLIENT_PATH}
    missing = [exe for exe in ("dockerd", "docker") if shutil.which(exe, path=CLIENT_PATH) is None]
    if compose_command(env) is None:
        missing.append("docker compose or docker-compose")
    if missing:
        reason = f"{', '.join(missing)} not installed (./scripts/test installs docker.io, docker-compose)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


# Linux capabilities by number (linux/capability.h).
CAPABILITIES = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE",
    "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO",
    "SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME",
    "SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG",
    "WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE",
)

# runc behind a filter: it drops from a container's (or an exec'd process's) capability sets the
# capabilities that root itself lacks, then runs runc as asked.
RUNC_WRAPPER = """#!/usr/bin/python3
import json, os, sys
LACKING = set(%(lacking)r)
args = sys.argv[1:]
def value(flags):
    for i, arg in enumerate(args):
        for flag in flags:
            if arg == flag and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(flag + "="):
                return arg[len(flag) + 1:]
    return None
def strip(path, nested):
    with open(path) as f:
        spec = json.load(f)
    caps = (spec.get("process") or {}).get("capabilities") if nested else spec.get("capabilities")
    for key in list(caps or {}):
        caps[key] = [c for c in caps[key] or [] if c not in LACKING]
    with open(path, "w") as f:
        json.dump(spec, f)
bundle, process = value(("--bundle", "-b")), value(("--process", "-p"))
if bundle and os.path.exists(os.path.join(bundle, "config.json")):
    strip(os.path.join(bundle, "config.json"), True)
if process and os.path.exists(process):
    strip(process, False)
os.execv(%(runc)r, [%(runc)r, *args])
"""


def lacking_capabilities() -> list[str]:
    """The capabilities this kernel has and root's bounding set lacks (CAP_SYS_RESOURCE, say)."""
    status = Path("/proc/self/status").read_text()
    bounding = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("CapBnd:")), 16)
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    names = " ".join(CAPABILITIES).split()[: last + 1]
    return [f"CAP_{name}" for bit, name in enumerate(names) if not bounding >> bit & 1]


def runtime_options() -> list[str]:
    """dockerd options so that docker-compose.yml's privileged agent can start on this machine.

    A privileged container is given every capability Docker knows, and runc fails to start it
    ("unable to apply caps: operation not permitted") where root's bounding set lacks one, as in
    a sandbox without CAP_SYS_RESOURCE. There, the daemon's runtime is runc behind a filter that
    leaves those out; everything else `privileged` means (devices, an unmasked /proc, which runc
    inside the agent needs to mount a container's /proc) stays as docker-compose.yml says.
    """
    lacking = lacking_capabilities()
    if not lacking:
        return []
    runc = shutil.which("runc", path=CLIENT_PATH) or "/usr/sbin/runc"
    wrapper = STATE / "runc-bounded"
    wrapper.write_text(RUNC_WRAPPER % {"lacking": lacking, "runc": runc})
    wrapper.chmod(0o755)
    log(f"root lacks {', '.join(lacking)}: containers run without it (runtime {wrapper})")
    return [f"--add-runtime=runc-bounded={wrapper}", "--default-runtime=runc-bounded"]


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first (the daemon's netns files, say)."""
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point == str(path) or point.startswith(f"{path}/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line names ``text`` (to find what the daemon left running)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def storage_driver() -> str:
    """overlay2 where the kernel has overlayfs; else vfs, which copies a whole tree per layer."""
    execute(["modprobe", "overlay"])  # built in, or a module nothing has loaded yet
    return "overlay2" if "overlay" in Path("/proc/filesystems").read_text().split() else "vfs"


@dataclass
class Daemon:
    """A private dockerd: nothing of it touches iptables, docker0, or another Docker on the machine."""

    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return f"unix://{STATE}/docker.sock"

    def start(self) -> None:
        self.clear()  # what a run killed before its clean-up left
        STATE.mkdir(parents=True, exist_ok=True)
        DATA_ROOT.mkdir(parents=True, exist_ok=True)
        argv = [
            "dockerd",
            f"--storage-driver={storage_driver()}",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--bridge=none",
            f"--data-root={DATA_ROOT}",
            f"--exec-root={STATE}/exec",
            f"--pidfile={STATE}/dockerd.pid",
            f"--host={self.host}",
            # A system containerd, if one runs, keeps a system Docker's containers apart from these.
            "--containerd-namespace=nubis-smoke",
            "--containerd-plugins-namespace=nubis-smoke-plugins",
            *runtime_options(),
        ]
        with (STATE / "dockerd.log").open("ab") as logfile:
            self.proc = subprocess.Popen(
                argv,
                stdout=logfile,
                stderr=logfile,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={"PATH": CLIENT_PATH},
            )
        self.env = {"PATH": CLIENT_PATH, "DOCKER_HOST": self.host}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            if execute(["docker", "version"], env=self.env, timeout=30).returncode == 0:
                # The data root is this test's alone: containers, networks and volumes of a
                # killed run go (the images and the build cache stay).
                left = execute(["docker", "ps", "-aq"], env=self.env).stdout.split()
                if left:
                    execute(["docker", "rm", "--force", "--volumes", *left], env=self.env)
                execute(["docker", "network", "prune", "--force"], env=self.env)
                execute(["docker", "volume", "prune", "--force"], env=self.env)
                return
            time.sleep(0.2)
        tail = (STATE / "dockerd.log").read_text(errors="replace").splitlines()[-10:]
        pytest.fail("dockerd did not answer:\n" + "\n".join(tail))

    def stop(self) -> None:
        """SIGTERM (dockerd stops its containerd too), SIGKILL after 30 s; then its traces."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        self.clear()

    @staticmethod
    def clear() -> None:
        """Kill what still runs from STATE (a containerd or shim after its daemon was killed, or a
        daemon of a run killed before its clean-up), then unmount and remove STATE."""
        for pid in processes_mentioning(str(STATE)):
            log(f"killing pid {pid}, a leftover of this test's daemon")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for point in mounts_under(STATE):
            execute(["umount", "-l", point])
        shutil.rmtree(STATE, ignore_errors=True)


def make_wheels() -> float:
    """The dependencies' wheels for the image's Python, kept in WHEEL_CACHE and copied into the
    build context; fetched from the package index only when the cache lacks some.

    libvirt-python is left out: the image has Debian's binding (python3-libvirt), which meets it.
    """
    started = time.monotonic()
    python = WHEEL_PYTHON / "bin" / "python"
    if not python.exists():
        run(["/usr/bin/python3", "-m", "venv", "--clear", str(WHEEL_PYTHON)])
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pip = [str(python), "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", str(WHEEL_CACHE)]
    wanted = ["setuptools>=77", "wheel", *(d for d in deps if not d.startswith("libvirt-python"))]
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    if execute([*pip, "--no-index", "--find-links", str(WHEEL_CACHE), *wanted], timeout=300).returncode:
        log("fetching wheels from the package index")
        run([*pip, *wanted], timeout=900)
    target = ROOT / "docker" / "wheels"
    for wheel in WHEEL_CACHE.glob("*.whl"):
        shutil.copy2(wheel, target / wheel.name)
    return time.monotonic() - started


def clear_wheels() -> None:
    for wheel in (ROOT / "docker" / "wheels").glob("*.whl"):
        wheel.unlink()


def http(method: str, url: str, token: str = "", body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """One request to the stack's web container (on a loopback port); JSON in and out."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback only
    request.add_header("Accept", "application/json")
    request.add_header("Host", PORTAL_HOST)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, text.decode(errors="replace")


@dataclass
class Stack:
    env: dict[str, str]
    web: str
    compose: list[str]  # the client and its -f arguments
    figures: dict[str, float]
    token: str = ""

    def __call__(self, *args: str, timeout: float = 600) -> str:
        return run([*self.compose, *args], env=self.env, timeout=timeout)

    def quietly(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return execute([*self.compose, *args], env=self.env, timeout=timeout)

    @property
    def instances(self) -> str:
        return f"{self.web}/api/v1/tenants/demo/instances/"

    def wait_ready(self) -> dict[str, Any]:
        """Poll /readyz until PostgreSQL and Redis both answer ok; return its report."""
        deadline = time.monotonic() + READY_TIMEOUT
        last: Any = None
        while time.monotonic() < deadline:
            try:
                status, last = http("GET", f"{self.web}/readyz?format=json")
                if status == 200 and last["ready"]:
                    return dict(last)
            except (OSError, ValueError, TypeError):
                pass
            time.sleep(1)
        logs = self.quietly("logs", "--tail", "20", "web", "migrate").stdout
        pytest.fail(f"/readyz not ready after {READY_TIMEOUT} s: {last}\n{logs}")

    def health(self, service: str, timeout: float = 90) -> tuple[str, str]:
        """The health of ``service``'s container once its check passed or failed (or at timeout),
        with what the last check printed."""
        (container,) = self("ps", "-q", service).split()
        deadline = time.monotonic() + timeout
        health: dict[str, Any] = {"Status": "starting", "Log": []}
        while health["Status"] == "starting" and time.monotonic() < deadline:
            time.sleep(1)
            inspect = ["docker", "inspect", "-f", "{{json .State.Health}}", container]
            health = json.loads(run(inspect, env=self.env))
        last = health["Log"][-1]["Output"].strip() if health["Log"] else ""
        return str(health["Status"]), last

    def wait_state(self, uuid: str, want: str, timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        body: Any = None
        while time.monotonic() < deadline:
            try:
                status, body = http("GET", f"{self.instances}{uuid}/", self.token)
            except OSError:
                status = 0
            if status == 200 and body["state"] == want:
                return dict(body)
            if status == 200 and body["state"] in {"error", "failed"}:
                break
            time.sleep(1)
        logs = self.quietly("logs", "--tail", "30", "compute-agent").stdout
        pytest.fail(f"instance {uuid} not {want} after {timeout} s: {body}\nagent log:\n{logs}")

    def delete_instances(self) -> None:
        """Delete every instance of the demo tenant through the API, and wait for it."""
        if not self.token:
            return
        try:
            status, listing = http("GET", self.instances, self.token)
            if status != 200:
                return
            for item in listing["results"]:
                http("DELETE", f"{self.instances}{item['id']}/", self.token)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                _, listing = http("GET", self.instances, self.token)
                if all(item["state"] == "deleted" for item in listing["results"]):
                    return
                time.sleep(1)
        except (OSError, KeyError, TypeError):
            return


def since(started: float) -> float:
    return round(time.monotonic() - started, 1)


@pytest.fixture
def stack() -> Iterator[Stack]:
    require_docker()
    iptables_before, links_before = iptables_state(), docker_links()
    daemon = Daemon()
    data_dir = Path(tempfile.mkdtemp(prefix="nubis-compose-", dir="/tmp"))
    data_dir.chmod(0o755)  # QEMU (libvirt-qemu) and a container's mapped root must traverse it
    figures: dict[str, float] = {}
    stack = None
    started = time.monotonic()
    try:
        daemon.start()
        figures["dockerd"] = since(started)
        step = time.monotonic()
        run([str(ROOT / "docker" / "build-base"), BASE_IMAGE], env=daemon.env, timeout=900)
        figures["base"] = since(step)
        figures["wheels"] = round(make_wheels(), 1)
        pid = os.getpid()
        web_port = free_port()
        env = {
            **daemon.env,
            # docker-compose v1 builds through the docker client, with BuildKit (v2 always does).
            "COMPOSE_DOCKER_CLI_BUILD": "1",
            "DOCKER_BUILDKIT": "1",
            "COMPOSE_PROJECT_NAME": f"nubissmoke{pid}",
            "POSTGRES_PASSWORD": secrets.token_urlsafe(16),
            "SECRET_KEY": secrets.token_urlsafe(50),
            "ALLOWED_HOSTS": PORTAL_HOST,
            "NUBIS_HOST_NAME": f"compose-smoke-{pid}",
            "NUBIS_DATA_DIR": str(data_dir),
            # No other deployment's reconciler on this libvirt and runc takes its instances for its own.
            "NUBIS_DOMAIN_PREFIX": f"nbsmoke{pid}-",
            # The suite's own PostgreSQL and Redis may hold 5432 and 6379: the stack takes free ports.
            "NUBIS_POSTGRES_PORT": str(free_port()),
            "NUBIS_REDIS_PORT": str(free_port()),
            "NUBIS_WEB_BIND": "127.0.0.1",
            "NUBIS_WEB_PORT": str(web_port),
        }
        compose = compose_command(env)
        assert compose is not None
        # Only the variables above: no .env a developer keeps beside docker-compose.yml.
        (STATE / "compose.env").write_text("")
        stack = Stack(
            env,
            f"http://127.0.0.1:{web_port}",
            [*compose, "--env-file", str(STATE / "compose.env"), *FILES],
            figures,
        )
        step = time.monotonic()
        # The images as the compose files define them; the other services use web's image.
        stack("build", "postgres", "redis", "web", timeout=BUILD_TIMEOUT)
        figures["images"] = since(step)
        yield stack
    finally:
        step = time.monotonic()
        if stack is not None:
            # The instance's container runs under the host's runc, outside the agent's container:
            # delete it through the API first, then take the stack and its volumes down.
            stack.delete_instances()
            stack.quietly("down", "--volumes", "--remove-orphans", "--timeout", "20")
            prefix = stack.env["NUBIS_DOMAIN_PREFIX"]
            for leftover in execute(["runc", "list", "-q"]).stdout.split():
                if leftover.startswith(prefix):
                    log(f"removing container {leftover}, left by the stack")
                    execute(["runc", "delete", "--force", leftover])
        if daemon.proc is not None:
            # Dangling images (of earlier code) and their build cache would pile up in the kept
            # data root; the cache of what the images are made of stays.
            execute(["docker", "image", "prune", "--force"], env=daemon.env)
            execute(["docker", "builder", "prune", "--force"], env=daemon.env)
        daemon.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        clear_wheels()
        figures["teardown"] = since(step)
        figures["total"] = since(started)
        log(f"timings (s): {figures}")
        assert processes_mentioning(str(STATE)) == [], "a Docker process is left running"
        # Only what this run made counts: a run killed before its teardown may have left Docker's
        # bridges and rules, which this run's daemon (same data root) may clear on its way.
        left = sorted(set(docker_links()) - set(links_before))
        assert left == [], f"a Docker bridge or veth is left behind: {left}"
        assert new_iptables_traces(iptables_before) == {}, "Docker's iptables traces were added"


TOKEN_SCRIPT = """
from django.contrib.auth import get_user_model
from security.audit import Actor
from tenants.models import Role, Tenant
from tenants.services.tokens import token_create
admin = get_user_model().objects.get(username="admin")
tenant = Tenant.objects.get(slug="demo")
_, raw = token_create(actor=Actor.system("compose-smoke"), tenant=tenant, creator_id=admin.pk,
                      creator_role=Role.OWNER, name="compose-smoke", role="member")
print("TOKEN=" + raw)
"""


def test_compose_stack_runs_a_container_and_keeps_it_across_down_and_up(stack: Stack) -> None:
    figures = stack.figures
    step = time.monotonic()
    stack("up", "-d", "--no-build")
    report = stack.wait_ready()
    figures["up"] = since(step)
    assert {name: check["ok"] for name, check in report["checks"].items()} == {
        "database": True,
        "redis": True,
    }, report

    step = time.monotonic()
    stack("exec", "-T", "web", "python", "manage.py", "nubis_init")
    stack("exec", "-T", "compute-agent", "python", "manage.py", "build_container_image")
    out = stack("exec", "-T", "web", "python", "manage.py", "shell", "-c", TOKEN_SCRIPT)
    stack.token = next(line[6:] for line in out.splitlines() if line.startswith("TOKEN="))
    figures["init"] = since(step)

    step = time.monotonic()
    body = {"name": "smoke", "flavor": "c1.small", "image": "busybox", "kind": "container", "network": None}
    deadline = time.monotonic() + 120
    while True:  # the agent registers its host a few seconds after it starts
        status, answer = http("POST", stack.instances, stack.token, body)
        if status == 202 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert status == 202, answer
    _, listing = http("GET", stack.instances, stack.token)
    (instance,) = [i for i in listing["results"] if i["name"] == "smoke"]
    stack.wait_state(instance["id"], "running")
    figures["container running"] = since(step)
    name = stack.env["NUBIS_DOMAIN_PREFIX"] + instance["id"]
    assert json.loads(run(["runc", "state", name]))["status"] == "running"
    # Its health check passes with ALLOWED_HOSTS naming the portal alone.
    health, output = stack.health("web")
    assert health == "healthy", output

    step = time.monotonic()
    stack("down", "--timeout", "20")
    assert stack("ps", "-q").strip() == ""
    figures["down"] = since(step)
    step = time.monotonic()
    stack("up", "-d", "--no-build")
    stack.wait_ready()
    after = stack.wait_state(instance["id"], "running", timeout=120)
    figures["up again"] = since(step)
    assert after["name"] == "smoke"
    # The container itself outlived the agent's container (runc's state is the host's /run/runc).
    assert json.loads(run(["runc", "state", name]))["status"] == "running"
