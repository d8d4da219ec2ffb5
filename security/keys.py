"""Envelope encryption: the master key behind a small provider interface, and wrapping with it.

The key hierarchy (vSphere's VM encryption, Cinder's per-volume keys): each instance's **data
key** (its disks' LUKS passphrase) is wrapped by its tenant's **tenant key**, which is wrapped by
the **master key**. Only the master key lives outside the database, behind a ``KeyProvider``:

- ``FileKeyProvider`` (the default): ``<NUBIS_DATA_DIR>/keys/master.json``, mode 0600, made on
  first use. It keeps every master key version it made; the current one wraps new keys, older
  ones still unwrap what they wrapped until a rotation has re-wrapped it and retired them.
- A KMS implements the same six methods (for example Vault's transit engine: ``encrypt`` /
  ``decrypt`` / ``rotate`` on a named key, its versions kept by Vault); set ``NUBIS_KEY_PROVIDER``
  to its dotted path.

Wrapping is AES-256-GCM with the wrapped key's context as associated data ("tenant:7",
"instance:<uuid>"): a wrapped key copied to another row does not unwrap. A wrapped value is
``v1:<key id>:<base64 of nonce + ciphertext>``; the key id says which key version to unwrap with.
Nothing here touches the database (security is the bottom floor): the models and the rotation
are in tenants and compute.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.utils.module_loading import import_string

from core.files import write_atomically

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12
FORMAT = "v1"


class KeyUnavailable(Exception):
    """A key could not be used: unknown version, tampered, or wrapped for another context."""


class KeyProvider(Protocol):
    """Holds the master key (its versions) and wraps and unwraps with it; never hands it out."""

    def current_id(self) -> str: ...

    def wrap(self, key: bytes, context: str) -> str: ...

    def unwrap(self, wrapped: str, context: str) -> bytes: ...

    def rotate(self) -> str:
        """Make a new current version (returned); older ones still unwrap."""
        ...

    def versions(self) -> list[str]:
        """Every version it still keeps, the current one among them."""
        ...

    def retire(self, key_id: str) -> None:
        """Forget an old version (once nothing is wrapped with it); the current one stays."""
        ...


def new_key() -> bytes:
    """A fresh random key (a data key or a tenant key)."""
    return secrets.token_bytes(KEY_BYTES)


def seal(key: bytes, key_id: str, plaintext: bytes, context: str) -> str:
    """``plaintext`` wrapped with ``key`` (version ``key_id``), bound to ``context``."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, plaintext, context.encode())
    return f"{FORMAT}:{key_id}:{base64.b64encode(nonce + sealed).decode()}"


def key_id_of(wrapped: str) -> str:
    """The key version that wrapped ``wrapped``."""
    parts = wrapped.split(":", 2)
    if len(parts) != 3 or parts[0] != FORMAT:
        raise KeyUnavailable("not a wrapped key of this format")
    return parts[1]


def open_sealed(key: bytes, wrapped: str, context: str) -> bytes:
    """What ``seal`` wrapped; KeyUnavailable if tampered with or bound to another context."""
    _version, _key_id, body = wrapped.split(":", 2)
    raw = base64.b64decode(body)
    try:
        return AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode())
    except InvalidTag:
        raise KeyUnavailable(
            f"the wrapped key does not open for {context} (tampered, or another's)"
        ) from None


class FileKeyProvider:
    """The master key's versions in a JSON file of mode 0600 (made on first use)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    # -- the file ----------------------------------------------------------------------------------
    def _load(self) -> dict[str, object]:
        if not self.path.exists():
            self._write({"current": "m1", "keys": {"m1": base64.b64encode(new_key()).decode()}}, create=True)
        mode = self.path.stat().st_mode & 0o777
        if mode & 0o077:
            raise KeyUnavailable(f"{self.path} is readable by others (mode {mode:o}); it must be 0600")
        data: dict[str, object] = json.loads(self.path.read_text())
        return data

    def _write(self, data: dict[str, object], create: bool = False) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if create:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process made it first: theirs stands
                return
            with os.fdopen(fd, "w") as out:
                json.dump(data, out)
            return
        write_atomically(self.path, json.dumps(data).encode(), 0o600)

    def _keys(self) -> tuple[str, dict[str, bytes]]:
        data = self._load()
        keys = {k: base64.b64decode(v) for k, v in dict(data["keys"]).items()}  # type: ignore[call-overload]
        return str(data["current"]), keys

    # -- KeyProvider -------------------------------------------------------------------------------
    def current_id(self) -> str:
        return self._keys()[0]

    def versions(self) -> list[str]:
        """Every version the file keeps, the current one among them."""
        return sorted(self._keys()[1], key=lambda k: int(k.lstrip("m")))

    def wrap(self, key: bytes, context: str) -> str:
        current, keys = self._keys()
        return seal(keys[current], current, key, context)

    def unwrap(self, wrapped: str, context: str) -> bytes:
        key_id = key_id_of(wrapped)
        _current, keys = self._keys()
        if key_id not in keys:
            raise KeyUnavailable(
                f"master key {key_id} is unknown to {self.path} (retired, or another cloud's)"
            )
        return open_sealed(keys[key_id], wrapped, context)

    def rotate(self) -> str:
        with self._lock:
            _current, keys = self._keys()
            number = max(int(k.lstrip("m")) for k in keys) + 1
            new_id = f"m{number}"
            encoded = {k: base64.b64encode(v).decode() for k, v in keys.items()}
            encoded[new_id] = base64.b64encode(new_key()).decode()
            self._write({"current": new_id, "keys": encoded})
            return new_id

    def retire(self, key_id: str) -> None:
        with self._lock:
            current, keys = self._keys()
            if key_id == current:
                raise KeyUnavailable(f"{key_id} is the current master key; rotate first")
            encoded = {k: base64.b64encode(v).decode() for k, v in keys.items() if k != key_id}
            self._write({"current": current, "keys": encoded})


@lru_cache(maxsize=1)
def provider() -> KeyProvider:
    """The configured provider (``NUBIS_KEY_PROVIDER``, a dotted path taking no arguments), else
    the file in the data directory."""
    dotted = getattr(settings, "NUBIS_KEY_PROVIDER", "")
    if dotted:
        made: KeyProvider = import_string(dotted)()
        return made
    return FileKeyProvider(Path(settings.DATA_DIR) / "keys" / "master.json")
