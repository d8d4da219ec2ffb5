"""Quota claims are a ledger locked per tenant: they never overshoot, even when raced."""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from core.errors import PriorityNotAllowed, QuotaExceeded, ServiceError
from tenants.models import RESOURCES, PriorityClass, Quota, QuotaClaim, Tenant
from tenants.services.quotas import quota_claim, quota_drift, quota_release, usage_of
from tenants.tasks import quota_drift_check
from tests.factories import make_tenant, make_user


@pytest.mark.django_db
def test_new_tenant_gets_the_default_quota(settings) -> None:
    tenant = make_tenant("fresh")
    quota = Quota.objects.for_tenant(tenant).get()
    assert quota.max_instances == settings.NUBIS_DEFAULT_QUOTA["instances"]
    assert quota.max_priority == PriorityClass.NORMAL


@pytest.mark.django_db
def test_claim_within_limits_is_recorded_and_counted() -> None:
    tenant = make_tenant("t", vcpus=8, ram_mib=4096)
    claim = quota_claim(tenant, {"instances": 1, "vcpus": 4, "ram_mib": 2048}, "vm web-1")
    assert claim.active
    assert usage_of(tenant)["vcpus"] == 4
    quota_claim(tenant, {"vcpus": 4}, "vm web-2")
    assert usage_of(tenant) == {
        **dict.fromkeys(usage_of(tenant), 0),
        "instances": 1,
        "vcpus": 8,
        "ram_mib": 2048,
    }


@pytest.mark.django_db
def test_exceeding_claim_names_the_limit_and_the_excess() -> None:
    tenant = make_tenant("t", vcpus=8)
    quota_claim(tenant, {"vcpus": 6}, "vm a")
    with pytest.raises(QuotaExceeded) as exc:
        quota_claim(tenant, {"vcpus": 4, "instances": 1}, "vm b")
    assert exc.value.resource == "vcpus"
    assert (exc.value.limit, exc.value.in_use, exc.value.requested, exc.value.over_by) == (8, 6, 4, 2)
    assert str(exc.value) == "quota exceeded for vcpus: limit 8, in use 6, requested 4 (over by 2)"
    assert QuotaClaim.objects.for_tenant(tenant).count() == 1


@pytest.mark.django_db
def test_release_gives_back_once() -> None:
    tenant = make_tenant("t", instances=1)
    claim = quota_claim(tenant, {"instances": 1}, "x")
    assert quota_release(claim, "deleted") is True
    assert quota_release(claim, "deleted again") is False
    assert claim.release_reason == "deleted"
    assert usage_of(tenant)["instances"] == 0
    quota_claim(tenant, {"instances": 1}, "y")


@pytest.mark.django_db
def test_bad_resources_are_named() -> None:
    tenant = make_tenant("t")
    with pytest.raises(ServiceError, match="unknown resource 'gpus'") as exc:
        quota_claim(tenant, {"gpus": 1}, "x")
    assert exc.value.field == "gpus"
    with pytest.raises(ServiceError, match="vcpus must be a whole number of at least 0"):
        quota_claim(tenant, {"vcpus": -1}, "x")


@pytest.mark.django_db
def test_priority_above_the_quota_class_is_refused() -> None:
    tenant = make_tenant("t")
    quota_claim(tenant, {"instances": 1}, "ok", priority=PriorityClass.NORMAL)
    with pytest.raises(PriorityNotAllowed, match="'High' is above the tenant's highest allowed, 'Normal'"):
        quota_claim(tenant, {"instances": 1}, "too high", priority=PriorityClass.HIGH)


def _race(
    tenant: Tenant, workers: int, resources: dict[str, int]
) -> tuple[list[QuotaClaim], list[Exception]]:
    """Run ``workers`` claims at once, each on its own database connection."""
    barrier = threading.Barrier(workers)
    claims: list[QuotaClaim] = []
    errors: list[Exception] = []
    lock = threading.Lock()

    def claim() -> None:
        try:
            barrier.wait(timeout=30)
            made = quota_claim(tenant, resources, "race")
            with lock:
                claims.append(made)
        except Exception as exc:
            with lock:
                errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=claim) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return claims, errors


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_claims_against_a_quota_of_five() -> None:
    assert connection.vendor == "postgresql", "the race test is meant for PostgreSQL"
    tenant = make_tenant("race", instances=5)
    claims, errors = _race(tenant, 50, {"instances": 1})
    assert len(claims) == 5
    assert len(errors) == 45
    assert all(isinstance(e, QuotaExceeded) and e.resource == "instances" and e.limit == 5 for e in errors)
    assert all("limit 5" in str(e) for e in errors)
    assert usage_of(tenant)["instances"] == 5


@pytest.mark.django_db(transaction=True)
def test_usage_never_goes_over_with_releases_mixed_in() -> None:
    tenant = make_tenant("race", instances=5)
    rng = random.Random(7)
    live: list[QuotaClaim] = []
    outcomes: Counter[str] = Counter()
    for _round in range(20):
        for claim in rng.sample(live, k=rng.randint(0, len(live))):
            quota_release(claim)
            live.remove(claim)
        before = usage_of(tenant)["instances"]
        claims, errors = _race(tenant, 12, {"instances": 1})
        assert not [e for e in errors if not isinstance(e, QuotaExceeded)], errors
        assert len(claims) == 5 - before
        live += claims
        outcomes.update(granted=len(claims), refused=len(errors))
        assert usage_of(tenant)["instances"] == len(live) <= 5
    assert outcomes["granted"] > 5
    assert outcomes["refused"] > 0


@pytest.mark.django_db
def test_admin_quota_change_applies_to_the_next_claim(admin_client: Client, admin_user: User) -> None:
    tenant = make_tenant("t", instances=1)
    quota_claim(tenant, {"instances": 1}, "first")
    with pytest.raises(QuotaExceeded):
        quota_claim(tenant, {"instances": 1}, "second")
    quota = Quota.objects.for_tenant(tenant).get()
    form = {f"max_{r}": getattr(quota, f"max_{r}") for r in RESOURCES}
    form |= {"max_instances": 3, "max_priority": PriorityClass.NORMAL}
    response = admin_client.post(f"/admin/tenants/quota/{quota.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    quota_claim(tenant, {"instances": 1}, "second")
    quota_claim(tenant, {"instances": 1}, "third")
    with pytest.raises(QuotaExceeded, match="limit 3"):
        quota_claim(tenant, {"instances": 1}, "fourth")


@pytest.mark.django_db
def test_admin_quota_list_shows_usage_bars(admin_client: Client) -> None:
    tenant = make_tenant("barred", vcpus=10)
    quota_claim(tenant, {"vcpus": 7}, "x")
    html = admin_client.get("/admin/tenants/quota/").content.decode()
    assert 'title="7 of 10"' in html
    assert '<meter min="0" max="10" value="7" low="7.0" high="9.0" optimum="0">70%</meter>' in html


@pytest.mark.django_db
def test_drift_check_reports_claims_whose_holder_is_gone() -> None:
    tenant = make_tenant("drifty")
    holder = make_user()  # any row can hold a claim; compute will use its instances
    # backup_gib: a resource no usage source reports yet, so only the orphan check applies here.
    claim = quota_claim(tenant, {"backup_gib": 1}, "held", holder=holder)
    assert quota_drift(tenant) == []
    holder.delete()
    drifts = quota_drift(tenant)
    assert [d.kind for d in drifts] == ["orphan-claim"]
    assert drifts[0].detail["claim"] == claim.pk
    report = quota_drift_check()
    assert report["tenants_with_drift"] == 1
    assert report["drift"]["drifty"][0]["kind"] == "orphan-claim"


@pytest.mark.django_db
def test_drift_check_compares_the_ledger_with_real_instances() -> None:
    tenant = make_tenant("ghostly")
    quota_claim(tenant, {"instances": 1, "vcpus": 2}, "an instance that was never made")
    [drift] = quota_drift(tenant)
    assert drift.kind == "usage-mismatch"
    assert drift.detail["instances"] == {"ledger": 1, "real": 0}
    assert drift.detail["vcpus"] == {"ledger": 2, "real": 0}
