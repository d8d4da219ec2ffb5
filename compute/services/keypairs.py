"""Key pairs of a tenant: SSH public keys, imported (validated for real) or generated here.

An imported key is parsed the way OpenSSH reads an ``authorized_keys`` line: the type, the base64
blob and the type embedded in the blob must agree, and the key material must be what the type says
(an Ed25519 key of 32 bytes, an ECDSA point on its curve, an RSA modulus of at least 2048 bits).
The fingerprint is the one ``ssh-keygen -lf`` prints (``SHA256:`` and unpadded base64). A generated
key pair is made by ``ssh-keygen`` in a private temporary directory (the ``cryptography`` package is
not one of the project's dependencies); its private half is handed back once and never stored.

An instance keeps a copy of its keys as they were at create time (Instance.ssh_keys), so deleting a
key pair changes no instance.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from django.db import IntegrityError, transaction

from compute.models import KeyPair
from compute.services.lifecycle import NAME_RULE, name_is_valid
from core.errors import Conflict, ServiceError
from security.audit import Actor, audit_log
from tenants.models import Tenant

MAX_KEY_CHARS = 16 * 1024  # an RSA-16384 public key line is about 2,800 characters
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 16384
MAX_COMMENT = 200  # KeyPair.comment
GENERATE_TIMEOUT = 20.0  # seconds; ssh-keygen makes an Ed25519 key in milliseconds

# The curves of ECDSA keys: (curve identifier, field prime p, coefficient b); a is p - 3.
_P256 = 2**256 - 2**224 + 2**192 + 2**96 - 1
_P384 = 2**384 - 2**128 - 2**96 + 2**32 - 1
_P521 = 2**521 - 1
_CURVES: dict[str, tuple[str, int, int, int]] = {
    "ecdsa-sha2-nistp256": (
        "nistp256",
        _P256,
        0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
        256,
    ),
    "ecdsa-sha2-nistp384": (
        "nistp384",
        _P384,
        0xB3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875AC656398D8A2ED19D2A85C8EDD3EC2AEF,
        384,
    ),
    "ecdsa-sha2-nistp521": (
        "nistp521",
        _P521,
        0x0051953EB9618E1C9A1F929A21A0B68540EEA2DA725B99B315F3B8B489918EF109E156193951EC7E937B1652C0BD3BB1BF073573DF883D2C34F1EF451FD46B503F00,
        521,
    ),
}
ACCEPTED_TYPES = ("ssh-ed25519", *_CURVES, "ssh-rsa")
# Types OpenSSH knows that a key pair may not have, and why.
_REFUSED_TYPES = {
    "ssh-dss": "DSA keys are refused (OpenSSH itself no longer accepts them); use ssh-ed25519",
    "sk-ssh-ed25519@openssh.com": "security-key (FIDO) keys are not supported; use ssh-ed25519",
    "sk-ecdsa-sha2-nistp256@openssh.com": "security-key (FIDO) keys are not supported; use ssh-ed25519",
}
_PRIVATE_MARKERS = ("PRIVATE KEY", "PuTTY-User-Key-File", "OPENSSH PRIVATE")


@dataclass(frozen=True)
class KeyInfo:
    """A public key as validated: its canonical line, type, bits, fingerprint and comment."""

    key_type: str
    public_key: str  # "<type> <base64>" (the comment apart)
    bits: int
    fingerprint: str
    comment: str


def _bad(message: str, rule: str = "format") -> ServiceError:
    return ServiceError("public_key", rule, message)


class _Reader:
    """The SSH wire format of a key blob: length-prefixed strings and mpints (RFC 4251)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def string(self, what: str) -> bytes:
        if self.at + 4 > len(self.data):
            raise _bad(f"the key data is truncated (no room for its {what})")
        size = int.from_bytes(self.data[self.at : self.at + 4], "big")
        start = self.at + 4
        if size > len(self.data) - start:
            raise _bad(f"the key data is truncated (its {what} runs past the end)")
        self.at = start + size
        return self.data[start : self.at]

    def mpint(self, what: str) -> int:
        raw = self.string(what)
        if raw and raw[0] & 0x80:
            raise _bad(f"the key's {what} is negative")
        return int.from_bytes(raw, "big")

    def end(self) -> None:
        if self.at != len(self.data):
            raise _bad(f"the key data has {len(self.data) - self.at} bytes after the key")


def _check_private_or_foreign(text: str) -> None:
    """Refuse, with the reason, what is not an OpenSSH public key line but is often pasted."""
    if any(marker in text for marker in _PRIVATE_MARKERS):
        raise _bad(
            "this is a PRIVATE key: never upload it. Give the public half instead (the .pub file "
            "next to it, or the output of `ssh-keygen -y -f KEYFILE`)",
            "private_key",
        )
    if "BEGIN SSH2 PUBLIC KEY" in text or "BEGIN PUBLIC KEY" in text or "BEGIN RSA PUBLIC KEY" in text:
        raise _bad(
            "this is a public key in PEM/RFC 4716 form; give it in OpenSSH form (one line, as "
            "`ssh-keygen -i -f KEYFILE` converts it)"
        )


def _split_line(text: str) -> tuple[str, str, str]:
    """The one key line's type, base64 and comment; refuses several keys and authorized_keys options."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise _bad("the public key is empty", "required")
    if len(lines) > 1:
        raise _bad(f"give exactly one key; this has {len(lines)} lines (one key pair holds one key)", "count")
    parts = lines[0].split(None, 2)
    if parts[0] not in ACCEPTED_TYPES and parts[0] not in _REFUSED_TYPES:
        known = [p for p in lines[0].split() if p in ACCEPTED_TYPES or p in _REFUSED_TYPES]
        if known:
            raise _bad(
                f"options before the key ({lines[0].split(known[0])[0].strip()[:60]!r}) are not accepted: "
                f"give the key alone, starting with its type ({known[0]})",
                "options",
            )
        raise _bad(
            f"unknown key type {parts[0][:40]!r}: an OpenSSH public key starts with one of "
            f"{', '.join(ACCEPTED_TYPES)}",
            "type",
        )
    if parts[0] in _REFUSED_TYPES:
        raise _bad(_REFUSED_TYPES[parts[0]], "type")
    if len(parts) < 2:
        raise _bad(f"the {parts[0]} key has no key data after its type")
    return parts[0], parts[1], parts[2].strip() if len(parts) > 2 else ""


def _decode(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("the key data is not valid base64") from None


def _bits(key_type: str, blob: bytes) -> int:
    """Check the key material the blob holds for its type; its size in bits as ssh-keygen shows it."""
    reader = _Reader(blob)
    embedded = reader.string("type").decode("ascii", "replace")
    if embedded != key_type:
        raise _bad(f"the key says it is {key_type} but its data holds a {embedded[:40]!r} key", "type")
    if key_type == "ssh-ed25519":
        if len(reader.string("public point")) != 32:
            raise _bad("an Ed25519 public key is 32 bytes; this one is not")
        bits = 256
    elif key_type in _CURVES:
        curve, p, b, bits = _CURVES[key_type]
        if reader.string("curve").decode("ascii", "replace") != curve:
            raise _bad(f"the {key_type} key names another curve than {curve}", "type")
        _check_point(reader.string("public point"), p, b, bits, curve)
    else:  # ssh-rsa
        e = reader.mpint("exponent")
        n = reader.mpint("modulus")
        bits = n.bit_length()
        if e < 3 or e % 2 == 0 or n % 2 == 0:
            raise _bad("this is not a valid RSA key (bad exponent or modulus)")
        if bits < MIN_RSA_BITS:
            raise _bad(f"RSA keys need at least {MIN_RSA_BITS} bits; this one has {bits}", "rsa_bits")
        if bits > MAX_RSA_BITS:
            raise _bad(f"RSA keys may have at most {MAX_RSA_BITS} bits; this one has {bits}", "rsa_bits")
    reader.end()
    return bits


def _check_point(point: bytes, p: int, b: int, bits: int, curve: str) -> None:
    """An uncompressed point (0x04 || x || y) that lies on the curve y² = x³ - 3x + b (mod p)."""
    size = (bits + 7) // 8
    if len(point) != 1 + 2 * size or point[0] != 4:
        raise _bad(f"the {curve} public point is not an uncompressed point of {1 + 2 * size} bytes")
    x = int.from_bytes(point[1 : 1 + size], "big")
    y = int.from_bytes(point[1 + size :], "big")
    if not (x < p and y < p and (y * y - (x * x * x - 3 * x + b)) % p == 0):
        raise _bad(f"the {curve} public point is not on the curve")


def fingerprint_of(blob: bytes) -> str:
    """SHA256:<base64 without padding>, as ``ssh-keygen -l`` prints it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def key_parse(text: str) -> KeyInfo:
    """A validated OpenSSH public key line, or a ServiceError on ``public_key`` saying what is wrong."""
    if not isinstance(text, str):
        raise _bad("the public key must be text", "type")
    if len(text) > MAX_KEY_CHARS:
        raise _bad(f"at most {MAX_KEY_CHARS} characters; this has {len(text)}", "length")
    _check_private_or_foreign(text)
    key_type, data, comment = _split_line(text)
    blob = _decode(data)
    bits = _bits(key_type, blob)
    if any(not c.isprintable() for c in comment):
        raise _bad("the key's comment holds control characters", "comment")
    if len(comment) > MAX_COMMENT:
        raise _bad(f"the key's comment has {len(comment)} characters; at most {MAX_COMMENT}", "comment")
    canonical = f"{key_type} {base64.b64encode(blob).decode()}"
    return KeyInfo(key_type, canonical, bits, fingerprint_of(blob), comment)


def _check_name(tenant: Tenant, name: str) -> None:
    if not isinstance(name, str) or not name_is_valid(name):
        raise ServiceError("name", "name", f"invalid name {name!r}: {NAME_RULE}")
    if KeyPair.objects.for_tenant(tenant).filter(name=name).exists():
        raise Conflict("name", "unique", f"a key pair named {name!r} already exists in {tenant.slug}")


def _save(actor: Actor, tenant: Tenant, name: str, info: KeyInfo, action: str) -> KeyPair:
    try:
        with transaction.atomic():
            keypair = KeyPair.objects.create(
                tenant=tenant,
                name=name,
                key_type=info.key_type,
                public_key=info.public_key + (f" {info.comment}" if info.comment else ""),
                fingerprint=info.fingerprint,
                bits=info.bits,
                comment=info.comment,
                created_by_id=actor.user_id,
            )
    except IntegrityError:  # a concurrent create of the same name
        raise Conflict(
            "name", "unique", f"a key pair named {name!r} already exists in {tenant.slug}"
        ) from None
    audit_log(
        actor=actor,
        action=action,
        target=keypair,
        detail={"key_type": info.key_type, "bits": info.bits, "fingerprint": info.fingerprint},
    )
    return keypair


@transaction.atomic
def keypair_import(*, actor: Actor, tenant: Tenant, name: str, public_key: str) -> KeyPair:
    """Store a tenant's public key (OpenSSH form) under ``name``, after validating it."""
    _check_name(tenant, name)
    return _save(actor, tenant, name, key_parse(public_key), "keypair.import")


def _ssh_keygen() -> str:
    path = shutil.which("ssh-keygen")
    if path is None:
        raise ServiceError(
            "public_key",
            "unavailable",
            "this portal cannot generate keys (ssh-keygen is not installed); import a public key instead",
        )
    return path


def _generate(comment: str) -> tuple[str, str]:
    """A new Ed25519 key pair from ssh-keygen: (private key in OpenSSH form, public key line)."""
    keygen = _ssh_keygen()
    with tempfile.TemporaryDirectory(prefix="nubis-keygen-") as tmp:  # mode 0700
        path = Path(tmp) / "key"
        try:
            subprocess.run(  # fixed arguments; the comment is one argv item
                [keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                check=True,
                capture_output=True,
                timeout=GENERATE_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            raise ServiceError("public_key", "generate", f"generating the key failed: {exc}") from None
        return path.read_text(), (path.parent / "key.pub").read_text()


@transaction.atomic
def keypair_generate(*, actor: Actor, tenant: Tenant, name: str) -> tuple[KeyPair, str]:
    """Generate an Ed25519 key pair: the stored public half, and the private half (returned once)."""
    _check_name(tenant, name)
    private, public = _generate(name)
    keypair = _save(actor, tenant, name, key_parse(public), "keypair.generate")
    return keypair, private


@transaction.atomic
def keypair_delete(*, actor: Actor, keypair: KeyPair) -> None:
    """Delete a key pair; the instances created with it keep their copy of the key."""
    audit_log(
        actor=actor, action="keypair.delete", target=keypair, detail={"fingerprint": keypair.fingerprint}
    )
    keypair.delete()


def keypairs_resolve(tenant: Tenant, refs: list[str | int] | None) -> list[KeyPair]:
    """The tenant's key pairs a create request names (by name or id), in order, without repeats.

    A name or id the tenant has no key pair of (another tenant's included) is unknown: a
    ServiceError on ``key_pairs`` naming it.
    """
    found: list[KeyPair] = []
    if refs is None:
        return found
    if not isinstance(refs, list):
        raise ServiceError("key_pairs", "type", "key_pairs must be a list of key pair names or ids")
    for ref in refs:
        text = str(ref).strip()
        # A name starts with a letter: digits are an id (too many of them, no row's).
        lookup: dict[str, object] = (
            {"pk": int(text)} if text.isdigit() and len(text) <= 18 else {"name": text}
        )
        keypair = KeyPair.objects.for_tenant(tenant).filter(**lookup).first()
        if keypair is None:
            raise ServiceError("key_pairs", "exists", f"unknown key pair {text!r}")
        if keypair not in found:
            found.append(keypair)
    return found


def ssh_keys_of(keypairs: list[KeyPair]) -> list[dict[str, str]]:
    """What an instance keeps of its key pairs (Instance.ssh_keys): a copy, not a reference."""
    return [{"name": k.name, "fingerprint": k.fingerprint, "public_key": k.public_key} for k in keypairs]


USER_DATA_MAX_BYTES = 16 * 1024
_TEXT_CONTROLS = {"\t", "\n", "\r"}


def user_data_check(user_data: str | None) -> str:
    """A create request's cloud-init user-data: UTF-8 text of at most 16 KiB, or a ServiceError.

    It is taken as plain text (a ``#cloud-config`` document or a script), not base64 as OpenStack's
    API takes it: the API speaks JSON, whose strings carry text as it is, and the guest's NoCloud seed
    holds it as a file. Binary data (gzip, NUL or other control characters) is refused.
    """
    if user_data is None or user_data == "":
        return ""
    if not isinstance(user_data, str):
        raise ServiceError("user_data", "type", "user_data must be text")
    size = len(user_data.encode("utf-8", "surrogatepass"))
    if size > USER_DATA_MAX_BYTES:
        raise ServiceError(
            "user_data", "length", f"user_data has {size} bytes (UTF-8); at most {USER_DATA_MAX_BYTES}"
        )
    bad = next((c for c in user_data if (ord(c) < 32 and c not in _TEXT_CONTROLS) or c == "\x7f"), None)
    if bad is not None or any(0xD800 <= ord(c) <= 0xDFFF for c in user_data):
        raise ServiceError(
            "user_data",
            "text",
            "user_data must be text (a #cloud-config document or a script); it holds binary data "
            f"({'character ' + hex(ord(bad)) if bad is not None else 'invalid UTF-8'})",
        )
    return user_data
