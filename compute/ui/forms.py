"""Forms of the instance pages: the create form and the small action forms.

They only shape input; every rule (names, quota, kinds, capacity) is the services' to check, and
their errors come back onto the form's fields (``add_service_error``).
"""

from __future__ import annotations

from typing import Any

from django import forms

from compute.models import Allocation, CpuMode, Flavor, InstanceKind, IoModel
from compute.selectors import flavors_for, images_for, keypairs_for, networks_for
from core.errors import ServiceError
from tenants.models import PriorityClass, Tenant

DEFAULT_NETWORK_CHOICE = "__default__"
NO_NETWORK_CHOICE = "__none__"


def flavor_summary(flavor: Flavor) -> str:
    """What a flavor gives, and how it is virtualised, in plain words."""
    cpu = (
        "hardware-assisted CPU (KVM: near-native speed, needs a host whose KVM works)"
        if flavor.cpu_mode == CpuMode.HARDWARE
        else "software-emulated CPU (QEMU TCG: runs on any host, several times slower)"
    )
    io = (
        "paravirtual virtio disk and network (fast)"
        if flavor.io_model == IoModel.VIRTIO
        else "emulated e1000 network card and SATA disk (slower, for guests without virtio drivers)"
    )
    if flavor.allocation == Allocation.DYNAMIC and flavor.min_ram_mib:
        memory = f"memory follows demand between {flavor.min_ram_mib} and {flavor.ram_mib} MiB"
    elif flavor.balloon:
        memory = "memory balloon (can be lowered while running)"
    else:
        memory = "fixed memory"
    parts = [f"{flavor.vcpus} vCPU, {flavor.ram_mib} MiB RAM, {flavor.disk_gib} GiB disk", cpu, io, memory]
    if flavor.pci_passthrough:
        parts.append(f"PCI device {flavor.pci_passthrough} passed through (needs an IOMMU)")
    return "; ".join(parts)


class InstanceCreateForm(forms.Form):
    name = forms.CharField(
        max_length=63, help_text="1-63 letters, digits or hyphens, starting with a letter."
    )
    kind = forms.ChoiceField(choices=InstanceKind.choices, initial=InstanceKind.VM, widget=forms.RadioSelect)
    flavor = forms.ChoiceField()
    image = forms.ChoiceField()
    network = forms.ChoiceField(required=False)
    server_group = forms.ChoiceField(required=False)
    priority = forms.ChoiceField(initial=str(PriorityClass.NORMAL))
    allocation = forms.ChoiceField(
        required=False,
        choices=[("", "As the flavor says"), *Allocation.choices],
        widget=forms.RadioSelect,
        initial="",
    )
    wait = forms.BooleanField(
        required=False,
        label="Wait if full",
        help_text="When no host has room, wait in the admission queue instead of failing.",
    )
    key_pairs = forms.MultipleChoiceField(
        required=False,
        label="Key pairs",
        help_text="Their public keys may log in over SSH (a VM needs an image with cloud-init).",
    )
    user_data = forms.CharField(
        required=False,
        strip=False,
        widget=forms.Textarea,
        label="User data",
        help_text="cloud-init user-data: a #cloud-config document or a script, at most 16 KiB.",
    )

    def __init__(self, tenant: Tenant, max_priority: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.flavors = list(flavors_for(tenant))
        self.images = list(images_for(tenant))
        from compute.models import ServerGroup

        self._choices("flavor", [(f.name, f.name) for f in self.flavors])
        self._choices("image", [(i.name, f"{i.name} ({i.os_name})") for i in self.images])
        self._choices(
            "network",
            [
                (DEFAULT_NETWORK_CHOICE, "default (made on first use)"),
                (NO_NETWORK_CHOICE, "none (a VM: the host's NAT; a container: loopback only)"),
                *((n.name, f"{n.name} ({n.cidr})") for n in networks_for(tenant)),
            ],
        )
        groups = ServerGroup.objects.for_tenant(tenant)
        self._choices("server_group", [("", "none"), *((g.name, f"{g.name} ({g.policy})") for g in groups)])
        self._choices("priority", [(str(p.value), p.label) for p in PriorityClass if p <= max_priority])
        self._choices(
            "key_pairs", [(k.name, f"{k.name} ({k.key_type}, {k.fingerprint})") for k in keypairs_for(tenant)]
        )

    def _choices(self, name: str, choices: list[tuple[str, str]]) -> None:
        field = self.fields[name]
        assert isinstance(field, forms.ChoiceField)  # noqa: S101 - a programming error, not input
        field.choices = choices

    def service_kwargs(self) -> dict[str, Any]:
        """The cleaned form as instance_create's keyword arguments."""
        data = self.cleaned_data
        network: str | None = data.get("network") or DEFAULT_NETWORK_CHOICE
        if network == DEFAULT_NETWORK_CHOICE:
            from compute.services.instances import DEFAULT_NETWORK

            network = DEFAULT_NETWORK
        elif network == NO_NETWORK_CHOICE:
            network = None
        return {
            "name": data["name"],
            "kind": data["kind"],
            "flavor": data["flavor"],
            "image": data["image"],
            "network": network,
            "server_group": data.get("server_group") or None,
            "priority": int(data["priority"]),
            "allocation": data.get("allocation") or None,
            "wait": bool(data.get("wait")),
            "key_pairs": list(data.get("key_pairs") or []),
            "user_data": data.get("user_data") or "",
        }


def add_service_error(form: forms.Form, exc: ServiceError) -> None:
    """Put a service's error on the field it names, or on the form when the field is not on it."""
    field = exc.field if exc.field in form.fields else None
    if exc.rule == "quota":  # the flavor decides the size, the kind which count is claimed
        field = "kind" if exc.field in ("instances", "containers") else "flavor"
    form.add_error(field, exc.message)


class ResizeForm(forms.Form):
    memory_mib = forms.IntegerField(required=False, min_value=1, label="Memory now (MiB)")
    vcpus = forms.IntegerField(required=False, min_value=1, label="vCPUs")
    ram_mib = forms.IntegerField(required=False, min_value=1, label="RAM (MiB)")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        online = data.get("memory_mib") is not None
        offline = data.get("vcpus") is not None or data.get("ram_mib") is not None
        if online == offline:
            raise forms.ValidationError("Give either the memory now (online), or vCPUs and RAM (offline).")
        if offline and (data.get("vcpus") is None or data.get("ram_mib") is None):
            raise forms.ValidationError("An offline resize needs both vCPUs and RAM.")
        return data
