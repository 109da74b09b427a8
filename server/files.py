"""Stored files (outputs and uploads) under ``<data_dir>/files/<key>/<name>``.

The key is unguessable (128 random bits): whoever holds the URL may read the file, as on fal's CDN.
The content type is kept next to the file so it is served as it was stored.
"""

from __future__ import annotations

import mimetypes
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import quote, unquote, urlsplit

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_KEY = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
FILES_PREFIX = "/files/"


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # RFC 9110 token
_MIME = re.compile(rf'{_TOKEN}/{_TOKEN}(\s*;\s*{_TOKEN}=({_TOKEN}|"[^"\\\x00-\x1f\x7f]*"))*')


def is_mime_type(value: str) -> bool:
    """``type/subtype`` with optional ``; name=value`` parameters (so never a CR/LF a header cannot carry)."""
    return len(value) <= 255 and _MIME.fullmatch(value) is not None


@dataclass(frozen=True)
class StoredFile:
    """A stored file: on the local disk (``path``) or in an object store (``reader`` opens its body)."""

    key: str
    name: str
    path: Path | None
    content_type: str
    size: int
    reader: Callable[[], BinaryIO] | None = None

    def url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}{FILES_PREFIX}{self.key}/{quote(self.name)}"

    def open(self) -> BinaryIO:
        if self.path is not None:
            return self.path.open("rb")
        assert self.reader is not None
        return self.reader()

    def read_bytes(self) -> bytes:
        with self.open() as fh:
            return fh.read()

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        with self.open() as fh:
            while chunk := fh.read(size):
                yield chunk


def safe_file_name(name: str | None, default: str = "file.bin") -> str:
    name = _SAFE_NAME.sub("_", Path(name or "").name).strip("._")
    return name[:128] or default


def guess_content_type(name: str, given: str | None) -> str:
    if given is not None and not is_mime_type(given):
        given = None  # callers validate; never store what a response header cannot carry
    return given or mimetypes.guess_type(name)[0] or "application/octet-stream"


def parse_files_path(url: str) -> tuple[str, str] | None:
    """``(key, name)`` of a URL with the path ``/files/<key>/<name>`` (any origin), else None."""
    path = urlsplit(url).path
    if not path.startswith(FILES_PREFIX):
        return None
    parts = path[len(FILES_PREFIX) :].split("/")
    return (parts[0], parts[1]) if len(parts) == 2 else None


def valid_key_and_name(key: str, name: str) -> str | None:
    """The stored name for a requested ``key``/``name`` pair, or None when either cannot be ours."""
    if not _KEY.match(key):
        return None
    return safe_file_name(unquote(name), default="") or None


class FileStore:
    """Files on the local disk (one host, or a filesystem shared by every host)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def new_key(self) -> str:
        return secrets.token_urlsafe(16)

    def save(self, data: bytes, content_type: str | None, file_name: str | None) -> StoredFile:
        key = self.new_key()
        return self.save_as(key, data, content_type, file_name)

    def save_as(self, key: str, data: bytes, content_type: str | None, file_name: str | None) -> StoredFile:
        folder, name = self._folder(key), safe_file_name(file_name)
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(data)
        return self._publish(key, tmp, name, content_type)

    def adopt(self, key: str, source: Path, content_type: str | None, file_name: str | None) -> StoredFile:
        """Move a finished file (e.g. an assembled upload on the same filesystem) into the store."""
        self._folder(key)
        return self._publish(key, source, safe_file_name(file_name), content_type)

    def _folder(self, key: str) -> Path:
        folder = self.root / key
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _publish(self, key: str, source: Path, name: str, content_type: str | None) -> StoredFile:
        path = self.root / key / name
        source.replace(path)  # atomic: readers see the whole file or none
        ctype = guess_content_type(name, content_type)
        (self.root / key / ".content-type").write_text(ctype)
        return StoredFile(key, name, path, ctype, path.stat().st_size)

    def open(self, key: str, name: str) -> StoredFile | None:
        stored_name = valid_key_and_name(key, name)
        if stored_name is None:
            return None
        name = stored_name
        path = self.root / key / name
        if not path.is_file():
            return None
        ctype_file = self.root / key / ".content-type"
        ctype = ctype_file.read_text() if ctype_file.exists() else ""
        if not is_mime_type(ctype):  # also a value stored before content types were checked
            ctype = "application/octet-stream"
        return StoredFile(key, name, path, ctype, path.stat().st_size)

    def resolve_url(self, url: str) -> StoredFile | None:
        """The stored file a URL of ours points at (any origin with ``/files/<key>/<name>``)."""
        parsed = parse_files_path(url)
        return None if parsed is None else self.open(*parsed)

    def sweep(self, older_than_s: float, now: float | None = None) -> int:
        """Delete stored files older than ``older_than_s`` (the ``file_ttl_s`` setting); returns how many."""
        cutoff = (time.time() if now is None else now) - older_than_s
        removed = 0
        for folder in self.root.iterdir():
            if folder.is_dir() and _KEY.match(folder.name) and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed


def open_file_store(files_url: str | None, files_dir: Path, s3_endpoint_url: str | None = None) -> Files:
    """The local store under ``files_dir``, or the S3-compatible bucket named by ``files_url`` (s3://bucket/prefix)."""
    if not files_url:
        return FileStore(files_dir)
    if files_url.startswith("s3://"):
        from server.files_s3 import S3FileStore  # boto3 only where an object store is used

        return S3FileStore.from_url(files_url, endpoint_url=s3_endpoint_url)
    raise ValueError(f"unsupported files URL {files_url!r}; use s3://bucket/prefix (or leave it unset for local files)")


class Files(Protocol):
    """What the API and the workers need of a file store (local disk or S3-compatible bucket)."""

    def new_key(self) -> str: ...
    def save(self, data: bytes, content_type: str | None, file_name: str | None) -> StoredFile: ...
    def adopt(self, key: str, source: Path, content_type: str | None, file_name: str | None) -> StoredFile: ...
    def open(self, key: str, name: str) -> StoredFile | None: ...
    def resolve_url(self, url: str) -> StoredFile | None: ...
    def sweep(self, older_than_s: float, now: float | None = None) -> int: ...
