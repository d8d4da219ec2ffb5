"""Settings come from the environment and fail with one clear line naming the setting."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from portal import config


def test_sqlite_url_gets_immediate_transactions_and_a_path() -> None:
    db = config.database_from_url("sqlite:////tmp/nubis-x/db.sqlite3")
    assert db["ENGINE"] == "django.db.backends.sqlite3"
    assert db["NAME"] == "/tmp/nubis-x/db.sqlite3"
    assert db["OPTIONS"]["transaction_mode"] == "IMMEDIATE"


def test_relative_sqlite_path_is_under_the_project() -> None:
    db = config.database_from_url("sqlite:///var/x.db")
    assert db["NAME"] == str(config.BASE_DIR / "var" / "x.db")


def test_postgres_url_is_split_into_its_parts() -> None:
    db = config.database_from_url("postgres://nubis:p%40ss@db.internal:6543/nubis?sslmode=require")
    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert (db["USER"], db["PASSWORD"], db["HOST"], db["PORT"], db["NAME"]) == (
        "nubis",
        "p@ss",
        "db.internal",
        "6543",
        "nubis",
    )
    assert db["OPTIONS"] == {"sslmode": "require"}


def test_postgres_socket_directory_host() -> None:
    db = config.database_from_url("postgres://%2Frun%2FPostgres/nubis")
    assert db["HOST"] == "/run/Postgres"
    assert db["PORT"] == ""


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("not a url", "no scheme"),
        ("mysql://u@h/db", "unsupported scheme 'mysql'"),
        ("postgres://u@h:notaport/db", "malformed URL"),
        ("postgres://u@h:5432/", "needs a database name"),
        ("sqlite://", "sqlite URLs look like"),
    ],
)
def test_malformed_database_url_names_the_setting(url: str, reason: str) -> None:
    with pytest.raises(config.ConfigError) as exc:
        config.database_from_url(url)
    assert exc.value.setting == "DATABASE_URL"
    assert reason in str(exc.value)
    assert str(exc.value.code).startswith("nubis: configuration error: DATABASE_URL: ")


def test_password_is_redacted_in_messages() -> None:
    assert config.redact("postgres://u:secret@h/db") == "postgres://u:***@h/db"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:6379/0", "unsupported scheme 'http'"),
        ("redis://127.0.0.1:99999/0", "malformed URL"),
        ("redis://127.0.0.1:6379/zero", "database number must be an integer"),
        ("redis:///0", "needs a host"),
    ],
)
def test_malformed_redis_url_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, url: str, reason: str
) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(config.ConfigError) as exc:
        config.redis_url()
    assert exc.value.setting == "REDIS_URL"
    assert reason in str(exc.value)


def test_redis_url_defaults_to_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert config.redis_url() == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("yes", True), ("Off", False), ("", False)])
def test_env_bool(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv("DEBUG", raw)
    assert config.env_bool("DEBUG", False) is expected


def test_env_bool_rejects_other_words(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEBUG", "maybe")
    with pytest.raises(config.ConfigError, match="DEBUG: expected a boolean"):
        config.env_bool("DEBUG", False)


def test_env_int_checks_minimum(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUBIS_X", "0")
    with pytest.raises(config.ConfigError, match="NUBIS_X: must be at least 1"):
        config.env_int("NUBIS_X", 5, minimum=1)
    monkeypatch.setenv("NUBIS_X", "x")
    with pytest.raises(config.ConfigError, match="expected an integer"):
        config.env_int("NUBIS_X", 5)


def test_secret_key_is_generated_once_with_mode_0600(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SECRET_KEY", raising=False)
    first = config.secret_key(tmp_path)
    key_file = tmp_path / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(first) >= 50
    assert config.secret_key(tmp_path) == first


def test_secret_key_from_environment_wins_and_writes_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SECRET_KEY", "k" * 40)
    assert config.secret_key(tmp_path) == "k" * 40
    assert not (tmp_path / "secret_key").exists()
    monkeypatch.setenv("SECRET_KEY", "short")
    with pytest.raises(config.ConfigError, match="SECRET_KEY: must be at least 32"):
        config.secret_key(tmp_path)


def test_unwritable_data_dir_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("NUBIS_DATA_DIR", str(blocker / "sub"))
    with pytest.raises(config.ConfigError, match="NUBIS_DATA_DIR: cannot create"):
        config.data_dir()
