"""Bad input and host failures: a clear error, an instance in error with the cause, the claim released,
and nothing left on the host."""

from __future__ import annotations

import pytest

from compute.models import CpuMode, Flavor, Host, Image, Instance, InstanceState, IoModel, OperationState
from compute.services.instances import instance_create
from core.errors import QuotaExceeded, ServiceError
from security.audit import Actor
from tenants.models import QuotaClaim, Role
from tenants.services.quotas import usage_of
from tests.compute.conftest import domains, wait_operation
from tests.factories import add_member, make_tenant

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def ctx():
    tenant = make_tenant("acme", instances=2)
    user = add_member(tenant, role=Role.MEMBER)
    return tenant, Actor(user.username, "api", user.pk)


def assert_nothing_held(tenant) -> None:
    assert usage_of(tenant) == dict.fromkeys(usage_of(tenant), 0)
    assert not QuotaClaim.objects.for_tenant(tenant).filter(released_at__isnull=True).exists()


@pytest.mark.parametrize(("field", "kwargs"), [("flavor", {"flavor": "nope"}), ("image", {"image": "nope"})])
def test_unknown_flavor_or_image_is_named_and_nothing_is_created(
    ctx, host, image, flavors, field, kwargs
) -> None:
    tenant, actor = ctx
    args = {"flavor": "t.virtio", "image": image.name, **kwargs}
    with pytest.raises(ServiceError) as exc:
        instance_create(actor=actor, tenant=tenant, name="x", **args)
    assert (exc.value.field, exc.value.rule) == (field, "exists")
    assert f"unknown {field} 'nope'" in exc.value.message
    assert not Instance.objects.for_tenant(tenant).exists()
    assert_nothing_held(tenant)


def test_private_flavor_of_another_tenant_is_unknown(ctx, host, image) -> None:
    tenant, actor = ctx
    other = make_tenant("other")
    Flavor.objects.create(name="secret", vcpus=1, ram_mib=128, disk_gib=1, public=False, tenant=other)
    with pytest.raises(ServiceError, match="unknown flavor 'secret'"):
        instance_create(actor=actor, tenant=tenant, name="x", flavor="secret", image=image.name)


def test_quota_exceeded_creates_nothing(ctx, host, image, flavors) -> None:
    tenant, actor = ctx
    big = Flavor.objects.create(name="big", vcpus=64, ram_mib=128, disk_gib=1)
    with pytest.raises(QuotaExceeded, match="quota exceeded for vcpus"):
        instance_create(actor=actor, tenant=tenant, name="x", flavor=big.name, image=image.name)
    assert not Instance.objects.for_tenant(tenant).exists()
    assert_nothing_held(tenant)


def test_image_checksum_mismatch_ends_in_error(ctx, host, image, flavors, no_leftovers) -> None:
    tenant, actor = ctx
    tampered = Image.objects.create(
        name="tampered",
        kind=image.kind,
        os_name=image.os_name,
        kernel_path=image.kernel_path,
        initrd_path=image.initrd_path,
        disk_path=image.disk_path,
        cmdline=image.cmdline,
        sha256="0" * 64,
    )
    op = wait_operation(
        instance_create(actor=actor, tenant=tenant, name="x", flavor="t.virtio", image=tampered.name)
    )
    assert op.state == OperationState.FAILED
    assert "checksum mismatch" in op.error
    instance = Instance.objects.for_tenant(tenant).get(pk=op.instance_id)
    assert instance.state == InstanceState.ERROR
    assert "image tampered checksum mismatch" in instance.fault
    assert instance.domain_name not in domains()
    assert_nothing_held(tenant)


def test_libvirt_error_from_the_host_ends_in_error_with_its_message(ctx, host, image, no_leftovers) -> None:
    tenant, actor = ctx
    # The host claims an IOMMU, so placement lets a passthrough flavor through; libvirt then refuses
    # the PCI device that does not exist.
    Host.objects.filter(pk=host.pk).update(iommu=True)
    Flavor.objects.create(
        name="t.passthrough",
        vcpus=1,
        ram_mib=128,
        disk_gib=1,
        cpu_mode=CpuMode.EMULATED,
        io_model=IoModel.VIRTIO,
        pci_passthrough="0000:7f:1f.7",
    )
    op = wait_operation(
        instance_create(actor=actor, tenant=tenant, name="x", flavor="t.passthrough", image=image.name)
    )
    assert op.state == OperationState.FAILED
    instance = Instance.objects.for_tenant(tenant).get(pk=op.instance_id)
    assert instance.state == InstanceState.ERROR
    # libvirt's own words, e.g. "start: unsupported configuration: host doesn't support VFIO PCI passthrough"
    assert instance.fault.startswith(("start: ", "define: ")), instance.fault
    assert "PCI" in instance.fault
    assert instance.domain_name not in domains()
    assert_nothing_held(tenant)


def test_passthrough_without_iommu_is_refused_at_placement(ctx, host, image) -> None:
    tenant, actor = ctx
    Flavor.objects.create(name="t.pt", vcpus=1, ram_mib=128, disk_gib=1, pci_passthrough="0000:00:1f.0")
    op = instance_create(actor=actor, tenant=tenant, name="x", flavor="t.pt", image=image.name)
    assert op.state == OperationState.FAILED
    instance = Instance.objects.for_tenant(tenant).get(pk=op.instance_id)
    assert instance.state == InstanceState.ERROR
    assert "filter 'capability'" in instance.fault
    assert "no IOMMU for PCI passthrough" in instance.fault
    assert_nothing_held(tenant)


def test_hardware_flavor_needs_a_host_whose_kvm_probe_passed(ctx, host, image) -> None:
    tenant, actor = ctx
    Flavor.objects.create(name="t.kvm", vcpus=1, ram_mib=128, disk_gib=1, cpu_mode=CpuMode.HARDWARE)
    op = instance_create(actor=actor, tenant=tenant, name="x", flavor="t.kvm", image=image.name)
    instance = Instance.objects.for_tenant(tenant).get(pk=op.instance_id)
    assert instance.state == InstanceState.ERROR
    assert "filter 'capability'" in instance.fault
    assert "no working KVM" in instance.fault


def test_invalid_name_is_refused(ctx, host, image, flavors) -> None:
    tenant, actor = ctx
    with pytest.raises(ServiceError) as exc:
        instance_create(actor=actor, tenant=tenant, name="-bad name", flavor="t.virtio", image=image.name)
    assert exc.value.field == "name"
