"""The UI shell, admin login and the API documents."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tenants.models import Membership, Role, Tenant


@pytest.fixture
def admin_user(db: None) -> User:
    return User.objects.create_superuser("admin", password="correct-horse-battery")


def test_dashboard_requires_login(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


@pytest.mark.django_db
def test_login_page_has_labelled_fields(client: Client) -> None:
    html = client.get("/login/").content.decode()
    assert '<label for="id_username">' in html
    assert '<label for="id_password">' in html


def test_admin_logs_in_and_sees_their_tenants(client: Client, admin_user: User) -> None:
    tenant = Tenant.objects.create(name="Demo", slug="demo")
    Membership.objects.create(user=admin_user, tenant=tenant, role=Role.OWNER)
    Tenant.objects.create(name="Other", slug="other")
    response = client.post("/login/", {"username": "admin", "password": "correct-horse-battery"})
    assert response.status_code == 302
    landing = client.get("/")
    assert landing.status_code == 302
    assert landing["Location"] == "/t/demo/"
    page = client.get("/t/demo/").content.decode()
    assert "<code>demo</code>" in page
    assert "<code>other</code>" not in page
    assert client.get("/admin/").status_code == 200


def test_wrong_password_is_refused(client: Client, admin_user: User) -> None:
    response = client.post("/login/", {"username": "admin", "password": "wrong"})
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()
    assert client.get("/").status_code == 302


@pytest.mark.django_db
def test_api_root_links_schema_and_docs(client: Client) -> None:
    data = client.get("/api/v1/", HTTP_ACCEPT="application/json").json()
    assert data["schema"].endswith("/api/schema/")
    assert data["docs"].endswith("/api/docs/")


@pytest.mark.django_db
def test_openapi_schema_is_openapi_3(client: Client) -> None:
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert "/api/v1/" in schema["paths"]


@pytest.mark.django_db
def test_api_docs_load_assets_from_this_server_only(client: Client) -> None:
    html = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in html
    assert "cdn" not in html.lower()
    assert "/static/drf_spectacular_sidecar/" in html


@pytest.mark.django_db
def test_static_assets_are_served_by_the_app(client: Client) -> None:
    response = client.get("/static/vendor/htmx/htmx.min.js")
    assert response.status_code == 200
    assert b"htmx" in b"".join(response.streaming_content)  # type: ignore[attr-defined]
