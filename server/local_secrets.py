"""Per-data-dir secrets (HMAC keys), created once, atomically, mode 0600, shared by every process."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def load_or_create_secret(directory: Path, file_name: str) -> bytes:
    """The 32-byte secret stored as ``directory/file_name``, created on first use."""
    path = directory / file_name
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    directory.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    tmp = directory / f".{file_name}.{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (secret.hex() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:  # another process won the race: use its secret
        return bytes.fromhex(path.read_text().strip())
    finally:
        tmp.unlink()
    return secret
