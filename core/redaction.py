"""Hide what must not be shown: the password in a URL, for messages and logs."""

from __future__ import annotations

from urllib.parse import urlsplit


def redact(url: str) -> str:
    """Hide the password in a URL for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url
