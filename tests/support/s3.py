"""A local S3-compatible server for tests (moto in server mode on a free loopback port), and one bucket."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.live_server import free_port

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass(frozen=True)
class Bucket:
    endpoint_url: str
    name: str

    def files_url(self, prefix: str = "fal") -> str:
        return f"s3://{self.name}/{prefix}"

    def env(self, prefix: str = "fal") -> dict[str, str]:
        """What a server process needs to use this bucket as its file store."""
        files = {"FAL_ONPREM_FILES_URL": self.files_url(prefix), "FAL_ONPREM_S3_ENDPOINT_URL": self.endpoint_url}
        return {**CREDENTIALS, **files}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, **_boto_credentials())


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    bucket = Bucket(s3_endpoint, f"b-{uuid.uuid4().hex[:12]}")
    bucket.client().create_bucket(Bucket=bucket.name)
    return bucket
