"""Read Nubis settings from the environment, failing with one clear line per bad setting.

Every environment variable Nubis reads passes through here, so a bad value stops
start-up with a message that names the variable instead of a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from core.redaction import redact

BASE_DIR = Path(__file__).resolve().parent.parent


class ConfigError(SystemExit):
    """A setting is missing or malformed.

    It derives from SystemExit so that manage.py, daphne and celery print the one-line
    message and exit non-zero, without a traceback.
    """

    def __init__(self, setting: str, reason: str) -> None:
        self.setting = setting
        self.reason = reason
        super().__init__(f"nubis: configuration error: {setting}: {reason}")


def env_str(name: str, default: str) -> str:
    """Return the variable's value, or the default when it is unset or empty."""
    value = os.environ.get(name, "").strip()
    return value or default


def env_ipv4(name: str) -> str:
    """An IPv4 address in the variable, or "" when it is unset or empty."""
    value = os.environ.get(name, "").strip()
    if not value:
        return ""
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ConfigError(name, f"must be an IPv4 address, not {value!r}") from None


def env_bool(name: str, default: bool) -> bool:
    """Parse a boolean variable; only the usual spellings are accepted."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(name, f"expected a boolean (true/false, 1/0, yes/no, on/off), got {raw!r}")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    """Parse an integer variable that must be at least ``minimum``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"expected an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(name, f"must be at least {minimum}, got {value}")
    return value


def env_choice(name: str, default: str, choices: list[str]) -> str:
    """Parse a variable that must be one of ``choices`` (case-insensitive)."""
    value = env_str(name, default).lower()
    if value not in choices:
        raise ConfigError(name, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    """Parse a comma-separated list, dropping blanks."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


_RATE_UNITS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}


def parse_rate(text: str) -> tuple[int, int]:
    """Parse a rate such as ``600/min`` or ``5/2s`` into (requests, window seconds).

    The unit is s, m, h or d (or sec/second, min/minute, hour, day), optionally preceded by a
    number of units for a longer window: ``100/10s`` is 100 requests per 10 seconds.
    """
    count, sep, period = text.strip().lower().partition("/")
    digits = period.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = period[len(digits) :]
    if not sep or not count.strip().isdigit() or unit not in _RATE_UNITS or (digits and not digits.isdigit()):
        raise ValueError(f"expected <requests>/<period> such as 600/min or 5/2s, got {text!r}")
    requests, multiple = int(count), int(digits or 1)
    if requests < 1 or multiple < 1:
        raise ValueError(f"a rate needs at least 1 request per at least 1 unit, got {text!r}")
    return requests, multiple * _RATE_UNITS[unit]


def env_rate(name: str, default: str) -> str:
    """Read a request rate (``600/min``, ``5/2s``; see parse_rate), checked at start-up."""
    value = env_str(name, default)
    try:
        parse_rate(value)
    except ValueError as exc:
        raise ConfigError(name, str(exc)) from None
    return value


def data_dir() -> Path:
    """Return NUBIS_DATA_DIR (default ``<project>/var``), creating it if needed."""
    path = Path(env_str("NUBIS_DATA_DIR", str(BASE_DIR / "var"))).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("NUBIS_DATA_DIR", f"cannot create {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise ConfigError("NUBIS_DATA_DIR", f"{path} is not writable")
    return path


def env_path(name: str, default: Path | Callable[[], Path]) -> Path:
    """A directory path from the environment (default given, or made by a callable only when the
    variable is unset), created if missing."""
    value = os.environ.get(name, "").strip()
    path = Path(value or (default() if callable(default) else default)).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(name, f"cannot create {path}: {exc.strerror}") from None
    return path


def secret_key(directory: Path) -> str:
    """Return SECRET_KEY from the environment, or one generated once into the data directory (0600)."""
    from_env = os.environ.get("SECRET_KEY", "").strip()
    if from_env:
        if len(from_env) < 32:
            raise ConfigError("SECRET_KEY", "must be at least 32 characters long")
        return from_env
    key_file = directory / "secret_key"
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = key_file.read_text().strip()
        if len(key) < 32:
            raise ConfigError(
                "SECRET_KEY", f"{key_file} is empty or too short; delete it to regenerate"
            ) from None
        return key
    key = secrets.token_urlsafe(50)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


_PG_SCHEMES = {"postgres", "postgresql", "pgsql", "postgresql+psycopg"}


def database_from_url(url: str, *, setting: str = "DATABASE_URL") -> dict[str, Any]:
    """Turn DATABASE_URL into a Django DATABASES entry.

    Supported: ``sqlite:///relative/or/absolute/path.db`` (``sqlite:////abs``) and
    ``postgres://user:password@host:port/name?sslmode=...`` (a host may be a socket dir,
    written percent-encoded, e.g. ``postgres://%2Frun%2Fpostgresql/nubis``).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(setting, f"malformed URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        raw_path = unquote(parts.path)
        if parts.netloc or not raw_path or raw_path == "/":
            raise ConfigError(setting, "sqlite URLs look like sqlite:///path/to/file.db")
        # sqlite:////abs/file.db is absolute; sqlite:///rel/file.db is relative to the project.
        relative = raw_path[1:]
        name = relative if Path(relative).is_absolute() else str(BASE_DIR / relative)
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": name,
            # Writers queue on the database lock instead of failing with "database is locked".
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    if scheme in _PG_SCHEMES:
        name = unquote(parts.path.lstrip("/"))
        if not name or "/" in name:
            raise ConfigError(
                setting, "a PostgreSQL URL needs a database name: postgres://user:pass@host:5432/name"
            )
        host = unquote(parts.hostname or "") if parts.hostname else ""
        if "%2f" in parts.netloc.lower():
            # A percent-encoded socket directory; urlsplit lower-cases hostname, so take it raw.
            host = unquote(parts.netloc.rsplit("@", 1)[-1].split(":")[0])
        options = dict(parse_qsl(parts.query, keep_blank_values=False))
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": host,
            "PORT": str(port or ""),
            "CONN_MAX_AGE": 60,
            "CONN_HEALTH_CHECKS": True,
            "OPTIONS": options,
        }
    if not scheme:
        raise ConfigError(
            setting, f"malformed URL {redact(url)!r}: no scheme (expected sqlite:/// or postgres://)"
        )
    raise ConfigError(setting, f"unsupported scheme {scheme!r} (expected sqlite or postgres)")


def redis_url(name: str = "REDIS_URL", default: str = "redis://127.0.0.1:6379/0") -> str:
    """Validate REDIS_URL's shape (scheme, port, database number) and return it."""
    url = env_str(name, default)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ConfigError(name, f"malformed URL ({exc})") from None
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise ConfigError(
            name, f"unsupported scheme {parts.scheme!r} (expected redis://, rediss:// or unix://)"
        )
    if parts.scheme != "unix":
        if not parts.hostname:
            raise ConfigError(name, "a Redis URL needs a host: redis://127.0.0.1:6379/0")
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            raise ConfigError(name, f"the database number must be an integer, got {db!r}")
    return url


def fail(setting: str, reason: str) -> None:
    """Print one line naming the setting and exit non-zero (for start-up checks)."""
    print(f"nubis: {setting}: {reason}", file=sys.stderr)  # noqa: T201
    raise SystemExit(2)


def env_port_range(name: str, default: str) -> tuple[int, int]:
    """A range of TCP ports ``LOW-HIGH`` (1-65535, LOW <= HIGH)."""
    value = env_str(name, default)
    low, sep, high = value.partition("-")
    try:
        first, last = int(low), int(high if sep else low)
    except ValueError:
        raise ConfigError(name, f"expected LOW-HIGH (e.g. 30000-30999), got {value!r}") from None
    if not 1 <= first <= last <= 65535:
        raise ConfigError(name, f"expected 1 <= LOW <= HIGH <= 65535, got {value!r}")
    return first, last
