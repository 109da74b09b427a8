"""File uploads: the real Python ``fal-client`` and JS ``@fal-ai/client`` against a live server, plus the
upload routes' error cases and session sweep in process (fal-protocol.md §5)."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import fal_client
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.config import Settings
from tests.support.js import MISSING, js_client_available, ok, run_node_report
from tests.support.live_server import LiveServer
from tests.support.server_fixtures import png_data_uri, python_client

KEY = "upload-test-key"
APP = "test/echo"
MiB = 1024 * 1024
BIG = 101 * MiB  # above both clients' multipart thresholds (Python 100 MiB, JS 90 MiB)
LIVE_LIMIT = 110 * MiB


# --- helpers ---------------------------------------------------------------------------------------


def sha256_of_url(url: str, headers: dict[str, str] | None = None) -> tuple[str, int]:
    """Stream a served file and hash it (never holds a big file in memory)."""
    digest, size = hashlib.sha256(), 0
    with httpx.stream("GET", url, headers=headers, timeout=60) as r:
        r.raise_for_status()
        for chunk in r.iter_bytes(MiB):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def write_random_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for start in range(0, size, 8 * MiB):
            block = os.urandom(min(8 * MiB, size - start))
            digest.update(block)
            f.write(block)
    return digest.hexdigest()


def png_bytes() -> bytes:
    return base64.b64decode(png_data_uri().split(",", 1)[1])


def decoded(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(httpx.get(url, timeout=10).content)))


def leftover_parts(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "uploads").rglob("*") if p.name.startswith(("part-", "body.", "assembled."))]


# --- live server with API keys -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {"FAL_ONPREM_API_KEYS": KEY, "FAL_ONPREM_MAX_UPLOAD_BYTES": str(LIVE_LIMIT)}
    live = LiveServer(tmp_path_factory.mktemp("uploads"), env=env)
    live.start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[fal_client.SyncClient]:
    with python_client(server.url, KEY) as c:
        yield c


def test_python_small_uploads_round_trip(client: fal_client.SyncClient, tmp_path: Path) -> None:
    data = os.urandom(300 * 1024)
    url = client.upload(data, "application/octet-stream")
    assert urlsplit(url).path.startswith("/files/")
    assert httpx.get(url).content == data

    path = tmp_path / "hello.txt"
    path.write_text("hello from python\n")
    url = client.upload_file(path)
    assert url.endswith("/hello.txt")
    served = httpx.get(url)
    assert served.content == b"hello from python\n"
    assert served.headers["content-type"].startswith("text/plain")


def test_python_fallback_repository(client: fal_client.SyncClient) -> None:
    data = os.urandom(50 * 1024)
    url = client.upload(data, "text/plain", file_name="g.txt", repository="fal")
    assert url.endswith("/g.txt")
    assert httpx.get(url).content == data


def test_python_multipart_upload_file(client: fal_client.SyncClient, server: LiveServer, tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    digest = write_random_file(path, BIG)
    url = client.upload_file(path)  # > 100 MiB: token, multipart create, 11 parallel parts, complete
    path.unlink()
    assert url.endswith("/big.bin")
    assert sha256_of_url(url) == (digest, BIG)
    assert leftover_parts(server.data_dir) == []


def test_python_uploaded_image_is_job_input(client: fal_client.SyncClient) -> None:
    url = client.upload(png_bytes(), "image/png", file_name="person.png")
    from_upload = client.subscribe(APP, arguments={"image_url": url, "seed": 4})
    from_data_uri = client.subscribe(APP, arguments={"image_url": png_data_uri(), "seed": 4})
    np.testing.assert_array_equal(decoded(from_upload["image"]["url"]), decoded(from_data_uri["image"]["url"]))
    # The worker reads our own /files/ URLs from disk: an origin that cannot be reached still works.
    unreachable = urlunsplit(("http", "files.invalid:9", urlsplit(url).path, "", ""))
    offline = client.subscribe(APP, arguments={"image_url": unreachable, "seed": 4})
    np.testing.assert_array_equal(decoded(offline["image"]["url"]), decoded(from_data_uri["image"]["url"]))


def test_live_oversize_stream_is_refused_when_the_limit_is_crossed(server: LiveServer) -> None:
    r = httpx.post(f"{server.url}/rest/storage/upload/initiate", json={}, headers={"Authorization": f"Key {KEY}"})
    upload_url = r.json()["upload_url"]

    def chunked() -> Iterator[bytes]:  # no Content-Length; never more than one block in memory
        block = b"\0" * MiB
        for _ in range(LIVE_LIMIT // MiB + 8):
            yield block

    # (httpx sends the whole body before it reads the answer; the server stops writing at the limit.)
    r = httpx.put(upload_url, content=chunked(), timeout=60)
    assert r.status_code == 413 and r.json()["error_type"] == "request_too_large"
    assert leftover_parts(server.data_dir) == []
    assert httpx.put(upload_url, content=b"fits", timeout=10).status_code == 200  # the session is still usable


# --- JS client (node), recipes J1 and J2 ---------------------------------------------------------------


@pytest.fixture(scope="module", params=["middleware", "proxy"])
def js_report(request: pytest.FixtureRequest, server: LiveServer) -> dict:
    if not js_client_available():
        pytest.skip(MISSING)
    big = BIG if request.param == "proxy" else 0  # the big upload once per client (J2 also routes initiate-multipart)
    report = run_node_report(
        "uploads.mjs",
        [server.url, request.param, APP, str(big)],
        {"TEST_IMAGE_URI": png_data_uri(), "FAL_KEY": KEY},
        timeout=420,
    )
    report["mode"] = request.param
    return report


def test_js_small_uploads_round_trip(js_report: dict) -> None:
    blob = ok(js_report, "small_blob")
    assert sha256_of_url(blob["url"]) == (blob["sha256"], blob["size"])
    named = ok(js_report, "named_file")
    assert named["url"].endswith("/notes.txt")
    assert hashlib.sha256(httpx.get(named["url"]).content).hexdigest() == named["sha256"]


def test_js_blob_input_is_uploaded_and_job_completes(js_report: dict) -> None:
    data = ok(js_report, "blob_as_job_input")["data"]
    assert data["seed"] == 21
    assert (data["image"]["width"], data["image"]["height"]) == (64, 64)
    assert httpx.get(data["image"]["url"]).content.startswith(b"\x89PNG")


def test_js_multipart_upload(js_report: dict, server: LiveServer) -> None:
    if "big_blob" not in js_report:
        pytest.skip(f"the big upload runs in one mode only (not {js_report['mode']})")
    big = ok(js_report, "big_blob")
    assert sha256_of_url(big["url"]) == (big["sha256"], BIG)
    assert leftover_parts(server.data_dir) == []


# --- error cases and sweep, in process ---------------------------------------------------------------

LIMIT = 64 * 1024


def make_client(data_dir: Path, **settings: object) -> TestClient:
    options: dict = {"data_dir": data_dir, "api_keys": KEY, "max_upload_bytes": LIMIT, **settings}
    return TestClient(create_app(Settings(**options)))


def twin_client(data_dir: Path, **settings: object) -> TestClient:
    """A server over another data dir holding the same signing secret (its sweeps cannot touch ours)."""
    twin = data_dir / "twin"
    twin.mkdir(exist_ok=True)
    shutil.copy(data_dir / "upload_signing.key", twin / "upload_signing.key")
    return make_client(twin, **settings)


AUTH = {"Authorization": f"Key {KEY}"}


@pytest.fixture
def api(tmp_path: Path) -> TestClient:
    return make_client(tmp_path)


def initiate(api: TestClient, kind: str = "initiate", name: str = "a.bin") -> dict[str, str]:
    r = api.post(f"/rest/storage/upload/{kind}?storage_type=fal-cdn-v3", json={"file_name": name}, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


def cdn_token(api: TestClient) -> str:
    r = api.post("/rest/storage/auth/token?storage_type=fal-cdn-v3", json={}, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()["token"]


def test_initiate_and_token_need_a_key(api: TestClient) -> None:
    paths = ("/rest/storage/upload/initiate", "/rest/storage/upload/initiate-multipart", "/rest/storage/auth/token")
    for path in paths:
        r = api.post(path, json={}, headers={"Authorization": "Key wrong"})
        assert r.status_code == 401 and r.json()["error_type"] == "unauthorized"
        assert api.post(path, json={}).status_code == 401


def test_signed_upload_url_is_checked(api: TestClient, tmp_path: Path) -> None:
    urls = initiate(api)
    parts = urlsplit(urls["upload_url"])
    assert api.put(parts.path, content=b"x").status_code == 403  # no signature
    query = dict(p.split("=", 1) for p in parts.query.split("&"))
    forged = f"{parts.path}?exp={query['exp']}&sig={'A' * len(query['sig'])}"
    assert api.put(forged, content=b"x").status_code == 403
    later = f"{parts.path}?exp={int(query['exp']) + 1}&sig={query['sig']}"  # extending the expiry breaks the MAC
    assert api.put(later, content=b"x").status_code == 403
    stale = initiate(twin_client(tmp_path, upload_ttl_s=-60))["upload_url"]
    r = api.put(stale, content=b"x")
    assert r.status_code == 403 and "expired" in r.json()["detail"]
    assert api.get(urls["file_url"]).status_code == 404  # nothing was stored
    # The secret persists in the data dir: another process over it accepts the URL.
    assert make_client(tmp_path).put(urls["upload_url"], content=b"ok").status_code == 200
    assert api.get(urls["file_url"]).content == b"ok"


def test_a_one_body_upload_url_is_taken_by_any_replica_with_the_secret(api: TestClient, tmp_path: Path) -> None:
    """The session travels in the signed URL: the replica that receives the body never saw the initiate."""
    urls = initiate(api, name="photo.png")
    twin = twin_client(tmp_path)
    r = twin.put(urls["upload_url"], content=b"body")
    assert r.status_code == 200, r.text
    assert twin.get(urlsplit(urls["file_url"]).path).content == b"body"
    assert not any((tmp_path / "twin" / "uploads").iterdir())  # nothing left behind
    tampered = urls["upload_url"].replace("s=", "s=e30", 1)  # another session under the same MAC
    assert twin.put(tampered, content=b"x").status_code == 403


def test_cdn_token_is_checked(api: TestClient, tmp_path: Path) -> None:
    assert api.post("/cdn/files/upload", content=b"x").status_code == 401
    assert api.post("/cdn/files/upload", content=b"x", headers={"Authorization": f"Key {KEY}"}).status_code == 401
    token = cdn_token(api)
    exp, kid, mac = token.split(".")
    for bad in (f"{exp}.{kid}.{mac[:-2]}xx", f"{int(exp) + 10}.{kid}.{mac}", "garbage"):
        r = api.post("/cdn/files/upload", content=b"x", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 403, bad
    other = make_client(tmp_path / "other")  # another data dir: another secret
    r = api.post("/cdn/files/upload", content=b"x", headers={"Authorization": f"Bearer {cdn_token(other)}"})
    assert r.status_code == 403
    keyless = cdn_token(twin_client(tmp_path, api_keys=""))  # genuine, but for no key this server accepts
    r = api.post("/cdn/files/upload", content=b"x", headers={"Authorization": f"Bearer {keyless}"})
    assert r.status_code == 403 and "no longer accepted" in r.json()["detail"]
    stale = cdn_token(twin_client(tmp_path, upload_ttl_s=-60))
    r = api.post("/cdn/files/upload", content=b"x", headers={"Authorization": f"Bearer {stale}"})
    assert r.status_code == 403 and "expired" in r.json()["detail"]
    r = api.post("/cdn/files/upload", content=b"x", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200


def test_oversize_is_413(api: TestClient, tmp_path: Path) -> None:
    def chunked(total: int) -> Iterator[bytes]:  # no Content-Length: the limit must trip while streaming
        for _ in range(total // 4096):
            yield b"\0" * 4096

    urls = initiate(api)
    r = api.put(urls["upload_url"], content=b"\0" * (LIMIT + 1))
    assert r.status_code == 413 and r.json()["error_type"] == "request_too_large"
    assert api.put(urls["upload_url"], content=chunked(LIMIT + 4096)).status_code == 413
    bearer = {"Authorization": f"Bearer {cdn_token(api)}"}
    assert api.post("/cdn/files/upload", content=chunked(LIMIT + 4096), headers=bearer).status_code == 413
    # Multipart: the part that takes the total over the limit is refused.
    multi = urlsplit(initiate(api, "initiate-multipart")["upload_url"])
    assert api.put(f"{multi.path}/1?{multi.query}", content=b"\1" * (LIMIT - 100)).status_code == 200
    assert api.put(f"{multi.path}/2?{multi.query}", content=chunked(4096)).status_code == 413
    assert api.put(urls["upload_url"], content=b"\0" * LIMIT).status_code == 200  # exactly the limit is fine
    assert sorted(p.name for p in leftover_parts(tmp_path)) == ["part-00001", "part-00001.etag"]  # the open session


def test_js_style_multipart_complete_checks_parts(api: TestClient) -> None:
    urls = initiate(api, "initiate-multipart", "m.bin")
    u = urlsplit(urls["upload_url"])
    chunks = {1: b"a" * 1000, 2: b"b" * 1000, 3: b"c" * 10}
    etags = {}
    for n in (3, 1):
        r = api.put(f"{u.path}/{n}?{u.query}", content=chunks[n])
        assert r.status_code == 200
        assert r.json() == {"partNumber": n, "etag": r.headers["etag"]}
        assert r.headers["etag"] == f'"{hashlib.md5(chunks[n]).hexdigest()}"'
        etags[n] = r.headers["etag"]

    def complete(parts: list[dict]) -> httpx.Response:
        return api.post(f"{u.path}/complete?{u.query}", json={"parts": parts})

    assert complete([{"partNumber": 1, "etag": etags[1]}, {"partNumber": 3, "etag": etags[3]}]).status_code == 400
    r = complete([{"partNumber": n, "etag": "x"} for n in (1, 2, 3)])
    assert r.status_code == 400 and "Missing part" in r.json()["detail"]
    assert api.post(f"{u.path}/complete", json={"parts": []}).status_code == 403  # unsigned
    assert api.put(f"{u.path}/2?{u.query}", content=chunks[2]).status_code == 200
    assert complete([{"partNumber": 1, "etag": '"bad"'}, {"partNumber": 2}, {"partNumber": 3}]).status_code == 400
    listed = [{"partNumber": 3, "etag": etags[3]}, {"partNumber": 1, "etag": etags[1]}, {"partNumber": 2}]
    assert complete(listed).status_code == 200  # unsorted list, as Python sends it
    assert api.get(urls["file_url"]).content == chunks[1] + chunks[2] + chunks[3]
    assert complete(listed).status_code == 200  # a retried completion is harmless


def test_python_style_multipart_needs_token_and_matching_file(api: TestClient) -> None:
    bearer = {"Authorization": f"Bearer {cdn_token(api)}"}
    assert api.post("/cdn/files/upload/multipart", headers={"X-Fal-File-Name": "x.bin"}).status_code == 401
    created = api.post("/cdn/files/upload/multipart", headers={**bearer, "X-Fal-File-Name": "x.bin"}).json()
    access, upload_id = urlsplit(created["access_url"]).path, created["uploadId"]
    assert access.endswith("/x.bin")
    assert api.put(f"{access}/multipart/{upload_id}/1", content=b"p1").status_code == 401
    other_file = access.rsplit("/", 1)[0] + "/y.bin"
    assert api.put(f"{other_file}/multipart/{upload_id}/1", content=b"p1", headers=bearer).status_code == 404
    r = api.put(f"{access}/multipart/{upload_id}/1", content=b"p1", headers=bearer)
    assert r.status_code == 200 and r.headers["etag"]
    missing = [{"partNumber": 1, "etag": r.headers["etag"]}, {"partNumber": 2, "etag": '"x"'}]
    complete = f"{access}/multipart/{upload_id}/complete"
    assert api.post(complete, json={"parts": missing}, headers=bearer).status_code == 400
    assert api.post(complete, json={"parts": missing[:1]}, headers=bearer).status_code == 200
    assert api.get(access).content == b"p1"


def test_abandoned_sessions_are_swept(tmp_path: Path) -> None:
    api = make_client(tmp_path, upload_ttl_s=0.5)
    old = urlsplit(initiate(api, "initiate-multipart")["upload_url"])
    assert api.put(f"{old.path}/1?{old.query}", content=b"partial").status_code == 200
    old_dir = tmp_path / "uploads" / old.path.split("/")[-1]
    assert (old_dir / "part-00001").is_file()
    time.sleep(0.7)
    fresh = urlsplit(initiate(api, "initiate-multipart")["upload_url"])  # initiating sweeps opportunistically
    assert not old_dir.exists()
    assert (tmp_path / "uploads" / fresh.path.split("/")[-1]).is_dir()
    assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == [fresh.path.split("/")[-1]]
