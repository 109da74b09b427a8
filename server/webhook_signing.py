"""Ed25519 webhook signatures in fal's scheme (fal-protocol.md §9) and the JWKS that publishes the key.

The signed message is four lines: request id, user id, unix timestamp, sha256 hex of the raw body.
The key pair is generated once and kept as a 0600 file in the data directory, so receivers can pin the
public key from our JWKS across restarts. `verify` is what a receiver writes; it is used by the tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

KEY_FILE_NAME = "webhook_ed25519.key"
HEADER_REQUEST_ID = "X-Fal-Webhook-Request-Id"
HEADER_USER_ID = "X-Fal-Webhook-User-Id"
HEADER_TIMESTAMP = "X-Fal-Webhook-Timestamp"
HEADER_SIGNATURE = "X-Fal-Webhook-Signature"
DEFAULT_TOLERANCE_S = 300


def signed_message(request_id: str, user_id: str, timestamp: int, body: bytes) -> bytes:
    return f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class WebhookSigner:
    """Holds the server's Ed25519 signing key."""

    def __init__(self, signing_key: SigningKey) -> None:
        self._key = signing_key
        self.public_key: bytes = bytes(signing_key.verify_key)
        # RFC 7638 JWK thumbprint: stable id derived from the public key alone.
        canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": _b64url(self.public_key)}, separators=(",", ":"))
        self.kid: str = _b64url(hashlib.sha256(canonical.encode()).digest())

    @classmethod
    def generate(cls) -> WebhookSigner:
        return cls(SigningKey.generate())

    @classmethod
    def load(cls, path: Path | str) -> WebhookSigner:
        seed = bytes.fromhex(Path(path).read_text().strip())
        if len(seed) != 32:
            raise ValueError(f"{path}: expected a 32-byte Ed25519 seed in hex")
        return cls(SigningKey(seed))

    @classmethod
    def load_or_create(cls, directory: Path | str) -> WebhookSigner:
        """Load `<directory>/webhook_ed25519.key`, creating it (mode 0600) on first use.

        Creation is atomic (write a temp file, hard-link it into place), so processes racing on a fresh
        data directory all end up with the one key that won.
        """
        directory = Path(directory)
        path = directory / KEY_FILE_NAME
        if path.exists():
            return cls.load(path)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        signer = cls.generate()
        tmp = directory / f".{KEY_FILE_NAME}.{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (bytes(signer._key).hex() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return cls.load(path)
        finally:
            tmp.unlink()
        return signer

    def sign_headers(self, request_id: str, user_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        """The four X-Fal-Webhook-* headers for a POST of `body` (timestamp defaults to now)."""
        ts = int(time.time()) if timestamp is None else int(timestamp)
        signature = self._key.sign(signed_message(request_id, user_id, ts, body)).signature
        return {
            HEADER_REQUEST_ID: request_id,
            HEADER_USER_ID: user_id,
            HEADER_TIMESTAMP: str(ts),
            HEADER_SIGNATURE: signature.hex(),
        }

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWKS document to serve (e.g. at /.well-known/jwks.json)."""
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(self.public_key), "kid": self.kid, "use": "sig"}
        return {"keys": [{**jwk, "alg": "EdDSA"}]}


def _ed25519_verifier(public_key: bytes) -> Any:
    """A `verify(signature, message)` callable; `cryptography` when installed, as an independent check."""
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:  # receivers without cryptography: PyNaCl
        from nacl.signing import VerifyKey

        key = VerifyKey(public_key)
        return lambda signature, message: key.verify(message, signature)
    return Ed25519PublicKey.from_public_bytes(public_key).verify


def verify(
    headers: Mapping[str, str],
    body: bytes,
    jwks: Mapping[str, Any],
    now: float | None = None,
    tolerance: int = DEFAULT_TOLERANCE_S,
) -> bool:
    """Receiver-side check: a key of `jwks` signed the request, and its timestamp is within ±tolerance."""
    lower = {key.lower(): value for key, value in headers.items()}
    try:
        request_id = lower[HEADER_REQUEST_ID.lower()]
        user_id = lower[HEADER_USER_ID.lower()]
        timestamp = int(lower[HEADER_TIMESTAMP.lower()])
        signature = bytes.fromhex(lower[HEADER_SIGNATURE.lower()])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    message = signed_message(request_id, user_id, timestamp, body)
    for jwk in jwks.get("keys", []):
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        try:
            _ed25519_verifier(_b64url_decode(jwk["x"]))(signature, message)
        except Exception:  # bad signature or malformed key: try the next key
            continue
        return True
    return False
