"""The key hierarchy: the master key file (mode 0600, versions, rotation, retirement), tenant keys
wrapped by it, instances' data keys wrapped by those, rotation at both levels keeping every data
key, and crypto-erase when an instance is deleted."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from compute.models import InstanceKey
from compute.services.instances import instance_deleted
from compute.services.keys import instance_key, tenant_key_rotate
from security.keys import FileKeyProvider, KeyUnavailable, key_id_of, provider
from security.models import AuditRecord
from tenants.models import TenantKey
from tenants.services.keys import master_key_rotate, tenant_key
from tests.factories import make_tenant
from tests.scheduler.test_placement import make_instance


@pytest.fixture
def master(tmp_path: Path, settings: Any) -> Iterator[Path]:
    """The default provider, on a master key file of the test's own."""
    settings.DATA_DIR = tmp_path
    provider.cache_clear()
    yield tmp_path / "keys" / "master.json"
    provider.cache_clear()


def test_the_master_key_file_is_private_and_wraps_for_one_context(tmp_path: Path) -> None:
    keys = FileKeyProvider(tmp_path / "keys" / "master.json")
    secret = os.urandom(32)
    wrapped = keys.wrap(secret, "tenant:1")
    assert keys.path.stat().st_mode & 0o777 == 0o600
    assert keys.path.parent.stat().st_mode & 0o777 == 0o700
    assert key_id_of(wrapped) == "m1"
    assert keys.unwrap(wrapped, "tenant:1") == secret
    assert base64.b64encode(secret).decode() not in wrapped
    with pytest.raises(KeyUnavailable, match="tenant:2"):
        keys.unwrap(wrapped, "tenant:2")  # copied onto another tenant's row: it does not open
    body = base64.b64decode(wrapped.split(":", 2)[2])
    tampered = f"v1:m1:{base64.b64encode(body[:-1] + bytes([body[-1] ^ 1])).decode()}"
    with pytest.raises(KeyUnavailable, match="tampered"):
        keys.unwrap(tampered, "tenant:1")
    keys.path.chmod(0o644)
    with pytest.raises(KeyUnavailable, match="0600"):
        keys.unwrap(wrapped, "tenant:1")


def test_a_rotated_master_key_still_unwraps_old_keys_until_retired(tmp_path: Path) -> None:
    keys = FileKeyProvider(tmp_path / "master.json")
    old = keys.wrap(b"k" * 32, "c")
    assert keys.rotate() == "m2"
    assert keys.current_id() == "m2"
    assert key_id_of(keys.wrap(b"k" * 32, "c")) == "m2"
    assert keys.unwrap(old, "c") == b"k" * 32
    with pytest.raises(KeyUnavailable, match="current"):
        keys.retire("m2")
    keys.retire("m1")
    assert keys.versions() == ["m2"]
    assert list(json.loads(keys.path.read_text())["keys"]) == ["m2"]
    with pytest.raises(KeyUnavailable, match="m1 is unknown"):
        keys.unwrap(old, "c")
    assert keys.path.stat().st_mode & 0o777 == 0o600


@pytest.mark.django_db
def test_data_keys_survive_rotations_of_the_master_key_and_of_the_tenant_key(master: Path) -> None:
    tenant = make_tenant("keys")
    vm, other = make_instance(tenant, "vm"), make_instance(tenant, "other")
    data = instance_key(vm)
    assert len(data) == 32
    assert instance_key(vm) == data  # made once
    assert instance_key(other) != data
    row = InstanceKey.objects.for_tenant(tenant).get(instance=vm)
    assert data.hex() not in row.wrapped
    assert base64.b64encode(data).decode() not in row.wrapped
    tkey = TenantKey.objects.get(tenant=tenant)
    assert (tkey.version, tkey.master_id) == (1, "m1")

    # The master key rotates: the tenant key is re-wrapped, the old version retired.
    done = master_key_rotate()
    assert done == {"previous": "m1", "current": "m2", "rewrapped": 1, "retired": ["m1"]}
    assert TenantKey.objects.get(tenant=tenant).master_id == "m2"
    assert "m1" not in json.loads(master.read_text())["keys"]
    assert instance_key(vm) == data

    # The tenant's key rotates: its data keys are re-wrapped with the new one, and say so.
    before = InstanceKey.objects.for_tenant(tenant).get(instance=vm).wrapped
    assert tenant_key_rotate(tenant) == {"version": 2, "rewrapped": 2}
    after = InstanceKey.objects.for_tenant(tenant).get(instance=vm)
    assert (after.tenant_key_version, after.wrapped != before) == (2, True)
    assert instance_key(vm) == data
    assert tenant_key(tenant)[0] == 2
    assert AuditRecord.objects.filter(action="tenant.key_rotated", tenant_id=tenant.pk).count() == 1


@pytest.mark.django_db
def test_deleting_an_instance_destroys_its_data_key_and_the_audit_says_so(master: Path) -> None:
    tenant = make_tenant("erase")
    vm = make_instance(tenant, "doomed")
    instance_key(vm)
    instance_deleted(vm)
    row = InstanceKey.objects.for_tenant(tenant).get(instance=vm)
    assert row.wrapped == ""
    assert row.destroyed is not None
    with pytest.raises(KeyUnavailable, match="destroyed"):
        instance_key(vm)
    record = AuditRecord.objects.get(action="instance.key_destroyed", target_id=str(vm.pk))
    assert record.detail == {"crypto_erase": True}
    # An instance that never had a key leaves no such record.
    plain = make_instance(tenant, "plain")
    instance_deleted(plain)
    assert not AuditRecord.objects.filter(action="instance.key_destroyed", target_id=str(plain.pk)).exists()


@pytest.mark.django_db
def test_the_keys_command_reports_and_rotates(master: Path) -> None:
    tenant = make_tenant("cmd")
    instance_key(make_instance(tenant, "vm"))
    out = StringIO()
    call_command("keys", "status", stdout=out)
    assert "current master key: m1" in out.getvalue()
    assert "m1: wraps 1 tenant key(s)" in out.getvalue()
    assert "data keys: 1 live, 0 destroyed" in out.getvalue()
    out = StringIO()
    call_command("keys", "rotate-master", stdout=out)
    assert "master key m1 -> m2: 1 tenant key(s) re-wrapped; retired: m1" in out.getvalue()
    out = StringIO()
    call_command("keys", "rotate-tenant", "cmd", stdout=out)
    assert "cmd: key v2, 1 data key(s) re-wrapped" in out.getvalue()
    with pytest.raises(Exception, match="no tenant with slug 'nope'"):
        call_command("keys", "rotate-tenant", "nope")
