"""docker-compose.yml parses, and every service's command names something that exists in the project."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import get_commands

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {"postgres", "redis", "migrate", "web", "worker", "beat", "compute-agent"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def check_command(service: str, argv: list[str]) -> None:
    """Assert that the program and subcommand that ``argv`` runs exist in the project."""
    if argv[:2] == ["python", "manage.py"]:
        assert argv[2] in get_commands(), f"{service}: manage.py has no command {argv[2]!r}"
    elif argv[0] == "celery":
        app = argv[argv.index("-A") + 1]
        assert (ROOT / app / "celery.py").exists(), f"{service}: no Celery app module {app}/celery.py"
        assert argv[argv.index("-A") + 2] in {"worker", "beat"}, f"{service}: unknown celery subcommand"
        if "-Q" in argv:
            for queue in argv[argv.index("-Q") + 1].split(","):
                assert re.fullmatch(r"control|host\.(\$\{NUBIS_HOST_NAME\}|[\w.-]+)", queue), (
                    f"{service}: {queue}"
                )
    elif argv[0] == "redis-server":
        pass  # the redis image's own program
    else:
        pytest.fail(f"{service}: unknown command {argv!r}")


def test_compose_has_every_production_service(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == EXPECTED


def test_every_command_names_something_that_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "command" in service:
            assert isinstance(service["command"], list), f"{name}: use the exec form"
            check_command(name, service["command"])
        else:
            assert "image" in service, f"{name}: neither a command nor an image"
        if "build" in service:
            build = service["build"]
            context = build["context"] if isinstance(build, dict) else build
            assert (ROOT / context / "Dockerfile").exists(), f"{name}: no Dockerfile in {context}"


def test_image_default_command_exists() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert cmd is not None
    check_command("Dockerfile", yaml.safe_load(cmd.group(1)))
    for folder in re.findall(r"^COPY (\w+) \1$", dockerfile, re.MULTILINE):
        assert (ROOT / folder).is_dir(), f"Dockerfile copies missing folder {folder}"


def test_compute_agent_reaches_the_hypervisor(compose: dict[str, Any]) -> None:
    agent = compose["services"]["compute-agent"]
    assert agent["privileged"] is True
    assert "/dev/kvm:/dev/kvm" in agent["devices"]
    # libvirt's sockets (the directory: a restarted libvirtd makes new ones) and runc's state.
    assert "/var/run/libvirt:/var/run/libvirt" in agent["volumes"]
    assert "/run/runc:/run/runc" in agent["volumes"]
    # The agent takes its queue (host.<name>) from the name it is given.
    assert agent["command"] == ["python", "manage.py", "compute_agent"]
    assert "NUBIS_HOST_NAME" in agent["environment"]


def test_app_services_get_their_settings_from_the_environment(compose: dict[str, Any]) -> None:
    for name in ("web", "worker", "beat", "compute-agent", "migrate"):
        env = compose["services"][name]["environment"]
        for key in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY"):
            assert key in env, f"{name} lacks {key}"
        assert "${SECRET_KEY" in env["SECRET_KEY"], f"{name}: SECRET_KEY must not be written in the file"
