"""The CLI's plumbing: where the login is kept, and a small JSON client for the REST API (stdlib only)."""

from __future__ import annotations

import json
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

USER_AGENT = "nubis-cli/0.1"
TIMEOUT = 30.0  # seconds per request
UPLOAD_TIMEOUT = 600.0  # seconds of silence an image upload waits (the portal checks the image at the end)


class CliError(Exception):
    """Something that ends the command: the message for stderr and the exit code."""

    exit_code = 1

    def __init__(self, message: str, lines: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.lines = lines or []


class UsageError(CliError):
    exit_code = 2


class ApiError(CliError):
    """A 4xx answer (exit 1); ``problem`` is the RFC 9457 body when there was one."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        detail = str(problem.get("detail") or problem.get("title") or f"HTTP {status}")
        lines = []
        for error in problem.get("errors") or []:
            line = f"{error.get('field') or 'request'}: {error.get('message', '')}"
            if line != detail:  # a service error's detail already reads "field: message"
                lines.append(line)
        super().__init__(detail, lines)
        self.status = status
        self.problem = problem


class ServerError(ApiError):
    """A 5xx answer: the portal is there but failing (exit 3, like no answer at all)."""

    exit_code = 3


class ConnectionFailed(CliError):
    exit_code = 3


# ---- configuration ----------------------------------------------------------------------------


def config_path() -> Path:
    explicit = os.environ.get("NUBIS_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "nubis" / "config.json"


@dataclass
class Config:
    url: str = ""
    token: str = ""
    tenant: str = ""

    @classmethod
    def load(cls) -> Config:
        """The stored login, each field overridden by NUBIS_URL, NUBIS_TOKEN, NUBIS_TENANT when set."""
        stored: dict[str, Any] = {}
        path = config_path()
        if path.exists():
            try:
                stored = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot read {path}: {exc}") from None
        return cls(
            url=os.environ.get("NUBIS_URL") or str(stored.get("url") or ""),
            token=os.environ.get("NUBIS_TOKEN") or str(stored.get("token") or ""),
            tenant=os.environ.get("NUBIS_TENANT") or str(stored.get("tenant") or ""),
        )

    def save(self) -> Path:
        """Write the file with mode 0600 (it holds a secret), atomically: a reader never sees half."""
        path = config_path()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".config-", dir=path.parent)  # mkstemp makes it 0600
        try:
            with os.fdopen(fd, "w") as out:
                json.dump({"url": self.url, "token": self.token, "tenant": self.tenant}, out, indent=2)
                out.write("\n")
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def normalize_url(url: str) -> str:
    """``https://cloud.example/`` or ``…/api/v1/`` → ``https://cloud.example``; only http(s)."""
    url = url.strip().rstrip("/")
    url = url.removesuffix("/api/v1")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"not an http(s) URL: {url!r}")
    return url


# ---- HTTP --------------------------------------------------------------------------------------


class Client:
    """JSON over HTTP to one portal, authenticated with one token."""

    def __init__(self, url: str, token: str) -> None:
        self.base = normalize_url(url)
        self.token = token

    def url(self, path: str) -> str:
        """An API path (``tenants/``) or a link the API returned, always on the configured portal.

        Links (``next``) are re-rooted on our base URL so the token never goes to another origin,
        and a portal behind a proxy that builds links with its inner address still works.
        """
        parts = urllib.parse.urlsplit(path)
        if parts.scheme or path.startswith("/"):
            rest = parts.path + (f"?{parts.query}" if parts.query else "")
            return self.base + rest
        return f"{self.base}/api/v1/{path}"

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url(path), data=data, method=method)  # noqa: S310 - http(s) only
        req.add_header("Accept", "application/json")
        req.add_header("User-Agent", USER_AGENT)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as response:  # noqa: S310 - http(s) only
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise _http_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConnectionFailed(f"cannot reach {self.base}: {reason}") from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ConnectionFailed(f"{self.base} did not answer with JSON: is it a Nubis portal?") from None

    def upload(self, path: str, file: Path, params: dict[str, str]) -> Any:
        """POST ``file`` as an application/octet-stream body, streamed (never read whole)."""
        query = urllib.parse.urlencode(params)
        size = file.stat().st_size
        with file.open("rb") as body:
            req = urllib.request.Request(  # noqa: S310 - http(s) only
                f"{self.url(path)}?{query}", data=body, method="POST"
            )
            req.add_header("Accept", "application/json")
            req.add_header("User-Agent", USER_AGENT)
            req.add_header("Authorization", f"Bearer {self.token}")
            req.add_header("Content-Type", "application/octet-stream")
            req.add_header("Content-Length", str(size))
            try:
                with urllib.request.urlopen(req, timeout=UPLOAD_TIMEOUT) as response:  # noqa: S310
                    raw = response.read()
            except urllib.error.HTTPError as exc:
                raise _http_error(exc) from None
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise ConnectionFailed(f"cannot reach {self.base}: {reason}") from None
        return json.loads(raw)

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def list(self, path: str) -> list[Any]:
        """Every row of a list: a bare JSON array, or pages of ``{"results": [...], "next": …}``."""
        rows: list[Any] = []
        next_path: str | None = path
        seen: set[str] = set()
        while next_path:
            if next_path in seen:  # a server that links a page to itself would loop forever
                raise ConnectionFailed(f"the API's pagination loops at {next_path}")
            seen.add(next_path)
            page = self.get(next_path)
            if isinstance(page, list):
                return rows + page
            if not isinstance(page, dict) or not isinstance(page.get("results"), list):
                raise ConnectionFailed(f"unexpected answer for {path}: neither a list nor a page")
            rows += page["results"]
            next_path = page.get("next") or None
        return rows


def _http_error(exc: urllib.error.HTTPError) -> ApiError:
    try:
        body = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        body = {}
    problem = body if isinstance(body, dict) else {}
    if "detail" not in problem and "title" not in problem:
        problem = {**problem, "detail": f"HTTP {exc.code} {exc.reason}"}
    if exc.code >= 500:
        return ServerError(exc.code, problem)
    return ApiError(exc.code, problem)
