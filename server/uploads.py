"""Upload sessions behind the storage routes (fal-protocol.md §5): signing, streaming, multipart.

A one-body upload carries its session in its signed URL (``s``: file key, name, content type, key id), so
any API replica holding the same secret receives it: the body streams to a temporary file, then into the
FileStore, where it is served from ``/files/<key>/<name>``. A multipart upload is a session folder
``<data_dir>/uploads/<id>/`` holding ``session.json`` and the parts received so far; on completion the
parts are assembled into the FileStore and the folder is kept (without its parts) as a ``completed`` marker,
so a retried completion still answers 200. Abandoned sessions are swept by ``cleanup_expired``.

Two credentials guard the byte-carrying calls, since the JS client sends no ``Authorization`` there:
* signed URLs: ``?exp=<unix>&sig=<HMAC(secret, id|exp[|s])>[&s=<session>]`` (JS PUTs, Python's ``fal``
  fallback; ``s`` on one-body uploads);
* CDN tokens (Python ``fal_v3``): ``<exp>.<key id>.<HMAC>``, sent as ``Authorization: Bearer``.
The HMAC secret is created once per data dir (``upload_signing.key``, mode 0600).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import math
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Literal
from urllib.parse import urlencode

from anyio import to_thread

from server.errors import FalError
from server.files import FILES_PREFIX, Files, StoredFile, is_mime_type, safe_file_name

SECRET_FILE_NAME = "upload_signing.key"
MAX_PART_NUMBER = 10_000
FLUSH_BYTES = 1024 * 1024  # received chunks are written to disk in blocks of about this size
CLEANUP_EVERY_S = 60.0
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")

Kind = Literal["single", "multipart"]


def too_large(limit: int) -> FalError:
    return FalError(413, f"Upload exceeds the maximum size of {limit} bytes", "request_too_large")


def checked_content_type(value: str | None, loc: list[str]) -> str | None:
    """An upload's declared content type: None (guessed later) or a valid MIME type, else a 422 at ``loc``."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if not is_mime_type(value):
        msg = "must be a MIME type such as image/png"
        raise FalError(422, [{"loc": loc, "msg": msg, "type": "value_error"}], "validation_error")
    return value


def forbidden(detail: str) -> FalError:
    return FalError(403, detail, "forbidden")


@dataclass
class UploadSession:
    id: str
    kind: Kind
    file_key: str
    file_name: str
    content_type: str
    created: float
    key_id: str | None = None
    state: Literal["open", "completed"] = "open"

    def file_url(self, base: str) -> str:
        return f"{base.rstrip('/')}{FILES_PREFIX}{self.file_key}/{self.file_name}"


class UploadManager:
    def __init__(self, root: Path, files: Files, secret: bytes, *, ttl_s: float, max_bytes: int) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.files = files
        self._secret = secret
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._last_cleanup = 0.0
        self._cleanup_every = min(CLEANUP_EVERY_S, max(ttl_s, 0.0) / 2)

    # --- credentials -------------------------------------------------------------------------------

    def _mac(self, message: str) -> str:
        digest = hmac.new(self._secret, message.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    @staticmethod
    def _signed_message(session_id: str, exp: str | int, carried: str) -> str:
        return f"upload|{session_id}|{exp}" + (f"|{carried}" if carried else "")

    def signed_query(self, session: UploadSession) -> str:
        """``exp``, ``sig`` and, for a one-body upload, the session itself (``s``), all under the MAC."""
        exp = math.ceil(time.time() + self.ttl_s)
        carried = _carry(session) if session.kind == "single" else ""
        query: dict[str, str | int] = {"exp": exp, "sig": self._mac(self._signed_message(session.id, exp, carried))}
        return urlencode(query | ({"s": carried} if carried else {}))

    def check_signature(self, session_id: str, exp: str | None, sig: str | None, carried: str | None = None) -> None:
        if not exp or not sig or not exp.isdigit():
            raise forbidden("Upload URL is not signed")
        if not hmac.compare_digest(sig, self._mac(self._signed_message(session_id, exp, carried or ""))):
            raise forbidden("Invalid upload URL signature")
        if int(exp) < time.time():
            raise forbidden("Upload URL has expired")

    def carried_session(self, session_id: str, carried: str) -> UploadSession:
        """The one-body session a signed URL carries (call ``check_signature`` first)."""
        fields = json.loads(base64.urlsafe_b64decode(carried + "=" * (-len(carried) % 4)))
        return UploadSession(id=session_id, kind="single", created=time.time(), **fields)

    def issue_token(self, key_id: str | None) -> tuple[str, float]:
        exp = math.ceil(time.time() + self.ttl_s)
        payload = f"{exp}.{key_id or '-'}"
        return f"{payload}.{self._mac(f'cdn-token|{payload}')}", float(exp)

    def check_token(self, authorization: str | None) -> str | None:
        """Key id of a valid ``Bearer`` CDN token; 401 when missing, 403 when forged or expired."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise FalError(401, "Missing upload token (expected 'Authorization: Bearer <token>')", "unauthorized")
        payload, _, mac = token.rpartition(".")
        exp, _, key_id = payload.partition(".")
        if not payload or not hmac.compare_digest(mac, self._mac(f"cdn-token|{payload}")):
            raise forbidden("Invalid upload token")
        if not exp.isdigit() or int(exp) < time.time():
            raise forbidden("Upload token has expired")
        return None if key_id == "-" else key_id

    # --- sessions ----------------------------------------------------------------------------------

    def _dir(self, session_id: str) -> Path:
        return self.root / session_id

    def create(self, kind: Kind, file_name: str | None, content_type: str | None, key_id: str | None) -> UploadSession:
        """A new session; only a multipart one is written down (a one-body session travels in its URL)."""
        self.maybe_cleanup()
        session = UploadSession(
            id=secrets.token_urlsafe(24),
            kind=kind,
            file_key=self.files.new_key(),
            file_name=safe_file_name(file_name, default="upload.bin"),
            content_type=(content_type or "application/octet-stream").strip() or "application/octet-stream",
            created=time.time(),
            key_id=key_id,
        )
        if kind == "multipart":
            self._dir(session.id).mkdir(parents=True)
            self._save(session)
        return session

    def _save(self, session: UploadSession) -> None:
        tmp = self._dir(session.id) / "session.json.tmp"
        tmp.write_text(json.dumps(asdict(session)))
        tmp.replace(self._dir(session.id) / "session.json")

    def get(self, session_id: str, kind: Kind) -> UploadSession:
        path = self._dir(session_id) / "session.json"
        if not _SESSION_ID.match(session_id) or not path.is_file():
            raise FalError(404, "Upload session not found (unknown or expired)", "upload_not_found")
        session = UploadSession(**json.loads(path.read_text()))
        if session.kind != kind:
            raise FalError(400, f"This upload session is a {session.kind} upload", "invalid_upload")
        return session

    def maybe_cleanup(self) -> None:
        now = time.monotonic()
        if now - self._last_cleanup >= self._cleanup_every:
            self._last_cleanup = now
            self.cleanup_expired()

    def cleanup_expired(self, now: float | None = None) -> list[str]:
        """Remove session folders (finished or not) created more than ``ttl_s`` ago, and bodies left behind
        by a crash; returns their names."""
        now = time.time() if now is None else now
        removed = []
        for folder in self.root.iterdir():
            if not folder.is_dir():
                with contextlib.suppress(OSError):
                    if now - folder.stat().st_mtime > self.ttl_s:
                        folder.unlink()
                        removed.append(folder.name)
                continue
            meta = folder / "session.json"
            try:
                created = json.loads(meta.read_text())["created"] if meta.is_file() else folder.stat().st_mtime
            except (OSError, ValueError, KeyError):
                created = folder.stat().st_mtime
            if now - created > self.ttl_s:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder.name)
        return removed

    # --- receiving bytes ---------------------------------------------------------------------------

    async def receive(
        self, chunks: AsyncIterator[bytes], dest: Path, limit: int, declared_length: str | None
    ) -> tuple[int, str]:
        """Stream a request body to ``dest`` (size, md5 hex); 413 as soon as ``limit`` is crossed."""
        if declared_length and declared_length.isdigit() and int(declared_length) > limit:
            raise too_large(self.max_bytes)
        md5 = hashlib.md5()
        size = 0
        buf = bytearray()

        def flush(f: BinaryIO, data: bytes) -> None:
            f.write(data)
            md5.update(data)

        with dest.open("wb") as f:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise too_large(self.max_bytes)
                buf += chunk
                if len(buf) >= FLUSH_BYTES:
                    await to_thread.run_sync(flush, f, bytes(buf))
                    buf.clear()
            if buf:
                await to_thread.run_sync(flush, f, bytes(buf))
        return size, md5.hexdigest()

    async def receive_whole(
        self, session: UploadSession, chunks: AsyncIterator[bytes], declared_length: str | None
    ) -> StoredFile:
        """A one-body upload: received into a temporary file, then moved into the FileStore."""
        tmp = self.root / f"{session.id}.{secrets.token_hex(4)}.body.tmp"
        try:
            await self.receive(chunks, tmp, self.max_bytes, declared_length)
            return await to_thread.run_sync(self._publish, session, tmp)
        finally:
            tmp.unlink(missing_ok=True)

    async def receive_part(
        self, session: UploadSession, number: int, chunks: AsyncIterator[bytes], declared_length: str | None
    ) -> str:
        """One multipart part; returns its ETag (quoted md5, as S3 does)."""
        if not 1 <= number <= MAX_PART_NUMBER:
            raise FalError(400, f"Part number must be within 1..{MAX_PART_NUMBER}", "invalid_upload")
        folder = self._dir(session.id)
        others = sum(p.stat().st_size for p in folder.glob("part-?????") if p.name != _part_name(number))
        tmp = folder / f"{_part_name(number)}.{secrets.token_hex(4)}.tmp"
        try:
            _, md5 = await self.receive(chunks, tmp, self.max_bytes - others, declared_length)
            etag = f'"{md5}"'
            (folder / f"{_part_name(number)}.etag").write_text(etag)
            tmp.replace(folder / _part_name(number))
        finally:
            tmp.unlink(missing_ok=True)
        return etag

    def complete(self, session: UploadSession, parts: list[dict[str, object]]) -> StoredFile | None:
        """Assemble the listed parts (any order; must be exactly 1..N) into the stored file.

        Returns None when the session was already completed (a retried completion).
        """
        if session.state == "completed":
            return None
        folder = self._dir(session.id)
        numbers: dict[int, str | None] = {}
        for part in parts:
            number = part.get("partNumber", part.get("part_number"))
            if not isinstance(number, int) or number in numbers:
                raise FalError(400, f"Invalid or duplicate part number: {number!r}", "invalid_upload")
            etag = part.get("etag")
            numbers[number] = etag if isinstance(etag, str) else None
        if not numbers:
            raise FalError(400, "No parts listed", "invalid_upload")
        missing = [n for n in range(1, max(numbers) + 1) if n not in numbers or not (folder / _part_name(n)).is_file()]
        if missing:
            raise FalError(400, f"Missing part(s): {missing[:20]}", "invalid_upload")
        for number, etag in numbers.items():
            stored_etag = (folder / f"{_part_name(number)}.etag").read_text()
            if etag is not None and etag.strip('"') != stored_etag.strip('"'):
                raise FalError(400, f"ETag mismatch for part {number}", "invalid_upload")
        total = sum((folder / _part_name(n)).stat().st_size for n in numbers)
        if total > self.max_bytes:
            raise too_large(self.max_bytes)
        assembled = folder / f"assembled.{secrets.token_hex(4)}.tmp"
        try:
            with assembled.open("wb") as out:
                for number in sorted(numbers):
                    with (folder / _part_name(number)).open("rb") as src:
                        shutil.copyfileobj(src, out, FLUSH_BYTES)
            stored = self._publish(session, assembled)
        finally:
            assembled.unlink(missing_ok=True)
        for path in folder.glob("part-*"):
            path.unlink(missing_ok=True)
        session.state = "completed"
        self._save(session)  # kept (without its parts) until the sweep, so a retried completion is a 200
        return stored

    def _publish(self, session: UploadSession, path: Path) -> StoredFile:
        return self.files.adopt(session.file_key, path, session.content_type, session.file_name)


def _carry(session: UploadSession) -> str:
    fields = {k: getattr(session, k) for k in ("file_key", "file_name", "content_type", "key_id")}
    return base64.urlsafe_b64encode(json.dumps(fields, separators=(",", ":")).encode()).rstrip(b"=").decode()


def _part_name(number: int) -> str:
    return f"part-{number:05d}"
