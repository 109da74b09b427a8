"""Stored files in an S3-compatible bucket (AWS S3, MinIO, Ceph...), for API replicas on many hosts.

``FAL_ONPREM_FILES_URL=s3://bucket/prefix``; credentials and region come from boto3's usual sources
(environment, config files, instance roles); ``FAL_ONPREM_S3_ENDPOINT_URL`` points at a non-AWS
service. Objects live at ``<prefix>/<key>/<name>`` with their content type; URLs stay this server's own
``/files/<key>/<name>`` (any replica streams them), so clients never need bucket credentials.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from server.files import StoredFile, guess_content_type, parse_files_path, safe_file_name, valid_key_and_name


class S3FileStore:
    def __init__(self, bucket: str, prefix: str = "", *, client: Any = None, endpoint_url: str | None = None) -> None:
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url)

    @classmethod
    def from_url(cls, url: str, endpoint_url: str | None = None) -> S3FileStore:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"expected s3://bucket/prefix, got {url!r}")
        return cls(parts.netloc, parts.path, endpoint_url=endpoint_url)

    def _object(self, key: str, name: str) -> str:
        return f"{self.prefix}{key}/{name}"

    def _stored(self, key: str, name: str, content_type: str, size: int) -> StoredFile:
        def reader() -> BinaryIO:
            return self.client.get_object(Bucket=self.bucket, Key=self._object(key, name))["Body"]

        return StoredFile(key, name, None, content_type, size, reader=reader)

    def new_key(self) -> str:
        import secrets

        return secrets.token_urlsafe(16)

    def save(self, data: bytes, content_type: str | None, file_name: str | None) -> StoredFile:
        key, name = self.new_key(), safe_file_name(file_name)
        ctype = guess_content_type(name, content_type)
        self.client.put_object(Bucket=self.bucket, Key=self._object(key, name), Body=data, ContentType=ctype)
        return self._stored(key, name, ctype, len(data))

    def adopt(self, key: str, source: Path, content_type: str | None, file_name: str | None) -> StoredFile:
        """Upload a finished local file (e.g. an assembled multipart upload), then remove it."""
        name = safe_file_name(file_name)
        ctype = guess_content_type(name, content_type)
        size = source.stat().st_size
        self.client.upload_file(str(source), self.bucket, self._object(key, name), ExtraArgs={"ContentType": ctype})
        source.unlink(missing_ok=True)
        return self._stored(key, name, ctype, size)

    def open(self, key: str, name: str) -> StoredFile | None:
        stored_name = valid_key_and_name(key, name)
        if stored_name is None:
            return None
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._object(key, stored_name))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        ctype = head.get("ContentType") or "application/octet-stream"
        return self._stored(key, stored_name, ctype, int(head["ContentLength"]))

    def resolve_url(self, url: str) -> StoredFile | None:
        parsed = parse_files_path(url)
        return None if parsed is None else self.open(*parsed)

    def sweep(self, older_than_s: float, now: float | None = None) -> int:
        """Delete files (all objects of a key) older than ``older_than_s``; returns how many keys went."""
        cutoff = (time.time() if now is None else now) - older_than_s
        expired: dict[str, list[str]] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            for obj in page.get("Contents", []):
                if obj["LastModified"].timestamp() < cutoff:
                    key = obj["Key"][len(self.prefix) :].split("/", 1)[0]
                    expired.setdefault(key, []).append(obj["Key"])
        names = [name for names in expired.values() for name in names]
        for i in range(0, len(names), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": name} for name in names[i : i + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(expired)
