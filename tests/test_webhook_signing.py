"""Webhook signatures: fal's four-line Ed25519 scheme, the JWKS, and key persistence."""

from __future__ import annotations

import base64
import hashlib
import stat
import threading
from pathlib import Path

import pytest
from nacl.signing import VerifyKey

from server.webhook_signing import KEY_FILE_NAME, WebhookSigner, verify

BODY = b'{"request_id":"r-1","status":"OK","payload":{"images":[]},"error":null}'
TS = 1_763_700_000


@pytest.fixture(scope="module")
def signer() -> WebhookSigner:
    return WebhookSigner.generate()


def test_sign_then_verify(signer: WebhookSigner) -> None:
    headers = signer.sign_headers("r-1", "user-7", BODY, TS)
    assert headers["X-Fal-Webhook-Request-Id"] == "r-1"
    assert headers["X-Fal-Webhook-User-Id"] == "user-7"
    assert headers["X-Fal-Webhook-Timestamp"] == str(TS)
    assert len(bytes.fromhex(headers["X-Fal-Webhook-Signature"])) == 64
    assert verify(headers, BODY, signer.jwks(), now=TS + 10)
    # header names are case-insensitive, as on the wire
    assert verify({k.lower(): v for k, v in headers.items()}, BODY, signer.jwks(), now=TS)


def test_signature_covers_the_documented_message(signer: WebhookSigner) -> None:
    headers = signer.sign_headers("r-1", "user-7", BODY, TS)
    message = f"r-1\nuser-7\n{TS}\n{hashlib.sha256(BODY).hexdigest()}".encode()
    VerifyKey(signer.public_key).verify(message, bytes.fromhex(headers["X-Fal-Webhook-Signature"]))


def test_default_timestamp_is_now(signer: WebhookSigner) -> None:
    headers = signer.sign_headers("r-2", "u", b"{}")
    assert verify(headers, b"{}", signer.jwks())


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Fal-Webhook-Request-Id", "r-2"),
        ("X-Fal-Webhook-User-Id", "someone-else"),
        ("X-Fal-Webhook-Timestamp", str(TS + 1)),
        ("X-Fal-Webhook-Signature", "00" * 64),
        ("X-Fal-Webhook-Signature", "not hex"),
    ],
)
def test_tampered_headers_fail(signer: WebhookSigner, header: str, value: str) -> None:
    headers = {**signer.sign_headers("r-1", "user-7", BODY, TS), header: value}
    assert not verify(headers, BODY, signer.jwks(), now=TS)


def test_tampered_body_or_missing_header_fails(signer: WebhookSigner) -> None:
    headers = signer.sign_headers("r-1", "user-7", BODY, TS)
    assert not verify(headers, BODY.replace(b"OK", b"KO"), signer.jwks(), now=TS)
    assert not verify(headers, BODY + b" ", signer.jwks(), now=TS)
    partial = {k: v for k, v in headers.items() if k != "X-Fal-Webhook-User-Id"}
    assert not verify(partial, BODY, signer.jwks(), now=TS)


def test_timestamp_tolerance(signer: WebhookSigner) -> None:
    headers = signer.sign_headers("r-1", "user-7", BODY, TS)
    jwks = signer.jwks()
    assert verify(headers, BODY, jwks, now=TS + 300)
    assert verify(headers, BODY, jwks, now=TS - 300)
    assert not verify(headers, BODY, jwks, now=TS + 301)  # replay of an old delivery
    assert not verify(headers, BODY, jwks, now=TS - 301)
    assert verify(headers, BODY, jwks, now=TS + 3600, tolerance=3600)


def test_other_key_fails_and_key_rotation_lists_work(signer: WebhookSigner) -> None:
    other = WebhookSigner.generate()
    headers = signer.sign_headers("r-1", "user-7", BODY, TS)
    assert not verify(headers, BODY, other.jwks(), now=TS)
    both = {"keys": other.jwks()["keys"] + signer.jwks()["keys"]}
    assert verify(headers, BODY, both, now=TS)


def test_jwks_shape(signer: WebhookSigner) -> None:
    (jwk,) = signer.jwks()["keys"]
    assert {k: jwk[k] for k in ("kty", "crv", "use", "alg")} == {
        "kty": "OKP",
        "crv": "Ed25519",
        "use": "sig",
        "alg": "EdDSA",
    }
    assert "=" not in jwk["x"]
    assert base64.urlsafe_b64decode(jwk["x"] + "=") == signer.public_key
    assert jwk["kid"] == signer.kid and len(jwk["kid"]) == 43  # sha256 thumbprint, base64url


def test_key_persists_across_reload(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    first = WebhookSigner.load_or_create(directory)
    path = directory / KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = WebhookSigner.load_or_create(directory)
    assert (again.public_key, again.kid) == (first.public_key, first.kid)
    headers = first.sign_headers("r-1", "u", BODY, TS)
    assert verify(headers, BODY, again.jwks(), now=TS)
    assert sorted(p.name for p in directory.iterdir()) == [KEY_FILE_NAME]  # no temp files left
    assert WebhookSigner.load_or_create(tmp_path / "elsewhere").public_key != first.public_key


def test_concurrent_first_use_agrees_on_one_key(tmp_path: Path) -> None:
    keys: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: keys.append(WebhookSigner.load_or_create(tmp_path).public_key))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1
    assert WebhookSigner.load(tmp_path / KEY_FILE_NAME).public_key == keys[0]


def test_corrupt_key_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE_NAME).write_text("abcd\n")
    with pytest.raises(ValueError, match="32-byte"):
        WebhookSigner.load_or_create(tmp_path)
