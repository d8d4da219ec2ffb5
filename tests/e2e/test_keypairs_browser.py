"""The key pairs page in Chromium, under the CSP: generate a key pair, download its private key
through the link the page makes in the browser, and check that the key is the one stored."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from compute.models import KeyPair
from tenants.models import Role
from tests.e2e.conftest import log_in
from tests.factories import PASSWORD, add_member, make_tenant, make_user


@pytest.mark.slow
def test_generate_and_download_the_private_key_once(
    browser: Browser, portal_url: str, transactional_db: None, tmp_path: Path
) -> None:
    tenant = make_tenant("keys-ui")
    user = add_member(tenant, make_user("kim"), Role.MEMBER)
    page = log_in(browser, portal_url, user.username, PASSWORD, accept_downloads=True)
    try:
        page.goto(f"/t/{tenant.slug}/keypairs/")
        expect(page.locator("nav.subnav a[aria-current=page]")).to_have_text("Key pairs")
        page.fill("#generate-name", "browser-key")
        page.click("text=Generate key pair")
        link = page.locator("#private-key-download")
        expect(link).to_be_visible()  # shown by static/js/keypairs.js, which the CSP let run
        with page.expect_download() as info:
            link.click()
        download = info.value
        assert download.suggested_filename == "browser-key"
        key = tmp_path / "browser-key"
        download.save_as(str(key))
        key.chmod(0o600)
        derived = subprocess.run(
            ["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, check=True
        ).stdout
        stored = KeyPair.objects.for_tenant(tenant).get(name="browser-key")
        assert derived.split()[:2] == stored.public_key.split()[:2]
        # Back on the list: the key pair with its fingerprint, and no private key anywhere.
        page.click("text=Back to key pairs")
        expect(page.locator("#keypair-" + str(stored.pk))).to_contain_text(stored.fingerprint)
        assert "PRIVATE KEY" not in page.content()
    finally:
        page.context.close()
