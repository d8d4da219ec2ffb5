"""Scheduler test helpers: a small catalog, and instance_create as the API calls it."""

from __future__ import annotations

import pytest

from compute.models import CpuMode, Flavor, Image, ImageKind, Instance
from compute.services.instances import instance_create
from security.audit import Actor
from tenants.models import PriorityClass, Tenant

ACTOR = Actor("scheduler-test", "api", None)


@pytest.fixture
def catalog(db: None) -> dict[str, object]:
    image = Image.objects.create(
        name="q-image", kind=ImageKind.KERNEL, os_name="t", disk_path="/x", sha256="0" * 64
    )
    one = Flavor.objects.create(name="q.one", vcpus=1, ram_mib=256, disk_gib=1, cpu_mode=CpuMode.EMULATED)
    return {"image": image, "one": one}


def create(tenant: Tenant, name: str, priority: int = PriorityClass.NORMAL, **kw: object) -> Instance:
    operation = instance_create(
        actor=ACTOR,
        tenant=tenant,
        name=name,
        flavor=kw.pop("flavor", "q.one"),  # type: ignore[arg-type]
        image="q-image",
        priority=priority,
        network=None,
        **kw,  # type: ignore[arg-type]
    )
    return Instance.objects.for_tenant(tenant).get(pk=operation.instance_id)
