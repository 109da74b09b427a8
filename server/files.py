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
from dataclasses import dataclass
from pathlib import Path
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
    key: str
    name: str
    path: Path
    content_type: str
    size: int

    def url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}{FILES_PREFIX}{self.key}/{quote(self.name)}"


def safe_file_name(name: str | None, default: str = "file.bin") -> str:
    name = _SAFE_NAME.sub("_", Path(name or "").name).strip("._")
    return name[:128] or default


class FileStore:
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
        if content_type is not None and not is_mime_type(content_type):
            content_type = None  # callers validate; never store what a response header cannot carry
        ctype = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
        (self.root / key / ".content-type").write_text(ctype)
        return StoredFile(key, name, path, ctype, path.stat().st_size)

    def open(self, key: str, name: str) -> StoredFile | None:
        if not _KEY.match(key):
            return None
        name = safe_file_name(unquote(name), default="")
        if not name:
            return None
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
        path = urlsplit(url).path
        if not path.startswith(FILES_PREFIX):
            return None
        parts = path[len(FILES_PREFIX) :].split("/")
        if len(parts) != 2:
            return None
        return self.open(parts[0], parts[1])

    def sweep(self, older_than_s: float) -> int:
        """Delete stored files older than ``older_than_s`` (the ``file_ttl_s`` setting); returns how many."""
        cutoff = time.time() - older_than_s
        removed = 0
        for folder in self.root.iterdir():
            if folder.is_dir() and _KEY.match(folder.name) and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed
