"""The two file stores (local folder, S3-compatible bucket) keep the same contract."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from server.files import Files, FileStore, open_file_store
from tests.support.s3 import Bucket


@pytest.fixture(params=["local", "s3"])
def files(request: pytest.FixtureRequest, tmp_path: Path) -> Files:
    if request.param == "local":
        return open_file_store(None, tmp_path / "files")
    bucket: Bucket = request.getfixturevalue("s3_bucket")
    return open_file_store(bucket.files_url(), tmp_path / "unused", bucket.endpoint_url)


def test_saved_file_opens_by_key_and_by_url(files: Files) -> None:
    stored = files.save(b"\x89PNG-bytes", "image/png", "../out put.png")
    assert stored.name == "out_put.png" and stored.size == 10
    again = files.open(stored.key, stored.name)
    assert again is not None and again.read_bytes() == b"\x89PNG-bytes" and again.content_type == "image/png"
    by_url = files.resolve_url(stored.url("http://any-replica:8000"))
    assert by_url is not None and b"".join(by_url.chunks(4)) == b"\x89PNG-bytes"


def test_unknown_or_malformed_keys_are_not_found(files: Files) -> None:
    stored = files.save(b"x", None, "a.txt")
    assert stored.content_type == "text/plain"
    assert files.open(stored.key, "other.txt") is None
    assert files.open("short", "a.txt") is None
    assert files.open("A" * 22, "a.txt") is None
    assert files.resolve_url("http://h/not-files/x/y") is None


def test_adopt_moves_a_finished_local_file_in(files: Files, tmp_path: Path) -> None:
    source = tmp_path / "assembled.tmp"
    source.write_bytes(b"0123456789" * 1000)
    key = files.new_key()
    stored = files.adopt(key, source, "application/octet-stream", "big.bin")
    assert not source.exists()
    assert files.open(key, "big.bin").read_bytes() == b"0123456789" * 1000 and stored.size == 10_000


def test_sweep_removes_only_expired_files(files: Files) -> None:
    old = files.save(b"old", "text/plain", "old.txt")
    new = files.save(b"new", "text/plain", "new.txt")
    assert files.sweep(older_than_s=600) == 0
    if isinstance(files, FileStore):  # a local file's age is its folder's mtime
        past = time.time() - 3600
        os.utime(old.path.parent, (past, past))
        assert files.sweep(older_than_s=600) == 1
        assert files.open(new.key, new.name) is not None
    else:  # an object's age is its LastModified, set by the service: look from an hour later
        assert files.sweep(older_than_s=600, now=time.time() + 3600) == 2
    assert files.open(old.key, old.name) is None
