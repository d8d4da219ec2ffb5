"""The web process never loads libvirt, a driver or the agent's tasks: it asks the hosts' agents.

A fresh interpreter starts the ASGI application, loads every view of every route (as if each URL
had been asked for once) and every websocket consumer, serves a request through the application,
and reports what it holds in ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import asyncio, json, sys

from portal.asgi import application
from django.urls import URLPattern, URLResolver, get_resolver
from portal.routing import websocket_urlpatterns

def walk(patterns):
    for p in patterns:
        if isinstance(p, URLResolver):
            walk(p.url_patterns)
        elif isinstance(p, URLPattern):
            p.callback  # imports the view's module

walk(get_resolver().url_patterns)
for route in websocket_urlpatterns:
    route.callback

async def get(path):
    sent = []
    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": [(b"host", b"localhost")], "scheme": "http",
             "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000), "asgi": {"version": "3.0"},
             "http_version": "1.1", "root_path": ""}
    messages = [{"type": "http.request", "body": b"", "more_body": False}]
    async def receive():
        if messages:
            return messages.pop()
        await asyncio.sleep(3600)  # the client stays until the answer is sent
    async def send(message):
        sent.append(message)
    await application(scope, receive, send)
    return sent[0]["status"]

status = asyncio.run(get("/healthz"))

def loaded():
    return sorted(m for m in sys.modules
                  if m == "libvirt" or m == "compute.tasks" or m.startswith("compute.drivers"))

before = loaded()
import compute.tasks  # the control: the agent's side does load them
print(json.dumps({"status": status, "modules": len(sys.modules), "loaded": before, "control": loaded()}))
"""


def test_the_asgi_app_loads_no_driver_no_libvirt_and_no_agent_task() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] == 200
    assert report["modules"] > 500  # Django, DRF, Channels and every app's views really loaded
    assert report["loaded"] == []
    # The check sees them when they are there: the agent's tasks bring the drivers and libvirt.
    assert "libvirt" in report["control"]
    assert any(m.startswith("compute.drivers") for m in report["control"])
