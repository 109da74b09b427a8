"""Many hosts, simulated on loopback: two API processes and three workers on one PostgreSQL store and one
S3-compatible bucket, each process with its own data dir (as on separate hosts) and the shared secrets.

Clients spread 1000 jobs over both APIs; one worker is SIGKILLed mid-run and PostgreSQL restarts mid-run.
Every job completes with its result, none is lost, none runs twice except those the killed worker held
(at-least-once: they re-run elsewhere), and a result submitted on API A is fetchable, file included, on B.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image as PILImage

from pipelines import registry
from tests.support.live_server import ECHO_MODULE, REPO, LiveServer
from tests.support.postgres import PostgresServer
from tests.support.s3 import Bucket
from tests.support.server_fixtures import png_data_uri

N = 1000
APP = "test/echo"


def only_echo() -> str:
    """Per-pipeline settings that serve only the test pipeline (workers start fast and small)."""
    return json.dumps({e: {"enabled": False} for e in registry.endpoints() if e != APP} | {APP: {"max_wait_ms": 20}})


def worker(store_url: str, data_dir: Path, log: Path, host_env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **host_env,
        "PYTHONPATH": str(REPO),
        "FAL_ONPREM_PIPELINE_MODULES": ECHO_MODULE,
        "FAL_ONPREM_PIPELINES": only_echo(),
        "FAL_ONPREM_JOB_LEASE_S": "5",
    }
    cmd = [sys.executable, "-m", "server.cli", "worker", "--device", "cpu", "--tiny", "--store-url", store_url,
           "--data-dir", str(data_dir)]  # fmt: skip
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


@pytest.fixture
def cluster(
    postgres_server: PostgresServer, s3_bucket: Bucket, tmp_path: Path
) -> Iterator[tuple[list[LiveServer], list, str]]:
    url = postgres_server.create_database()
    host_env = {**s3_bucket.env(), "FAL_ONPREM_SECRETS_DIR": str(tmp_path / "secrets")}
    env = {**host_env, "FAL_ONPREM_PIPELINES": only_echo()}
    args = ["--no-worker", "--store-url", url]
    apis = []
    for i in range(2):
        (tmp_path / f"api-{i}").mkdir()
        apis.append(LiveServer(tmp_path / f"api-{i}", extra_args=args, wait_for=(), env=env))
    for api in apis:
        api.start()
    workers = [worker(url, tmp_path / f"worker-{i}", tmp_path / f"worker-{i}.log", host_env) for i in range(3)]
    try:
        yield apis, workers, url
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.terminate()
        for proc in workers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for api in apis:
            api.stop()


def submit(client: httpx.Client, base: str, seed: int) -> str:
    """Submit, retrying while the store restarts (a client may see retries, never a wrong answer)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            r = client.post(f"{base}/queue/{APP}", json={"image_url": png_data_uri(size=(8, 8)), "seed": seed})
            if r.status_code == 200:
                return r.json()["request_id"]
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"submit of seed {seed} kept failing"
        time.sleep(0.2)


def completed(url: str, ids: list[str]) -> dict[str, tuple[int, bool, int]]:
    """id -> (attempts, has result, 'tinted' log lines) for the completed jobs among ``ids``."""
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id, attempts, result IS NOT NULL AND error IS NULL, (SELECT COUNT(*) FROM logs "
            "WHERE logs.job_id = jobs.id AND message LIKE 'tinted item %%') FROM jobs "
            "WHERE status = 'COMPLETED' AND id = ANY(%s)",
            (ids,),
        ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def test_two_apis_three_workers_one_postgres(cluster, postgres_server: PostgresServer) -> None:
    apis, workers, url = cluster
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(lambda i: submit(client, apis[i % 2].url, i), range(N)))
        assert len(set(ids)) == N

        deadline = time.monotonic() + 300
        killed = restarted = False
        victim_jobs: set[str] = set()
        while time.monotonic() < deadline:
            done = completed(url, ids)
            if not killed and len(done) >= N // 5:
                import psycopg

                with psycopg.connect(url) as conn:  # what the victim holds when it dies
                    held = conn.execute("SELECT id FROM jobs WHERE status = 'IN_PROGRESS' AND worker_id LIKE %s",
                                        (f"%:{workers[0].pid}:%",)).fetchall()  # fmt: skip
                victim_jobs = {r[0] for r in held}
                workers[0].send_signal(signal.SIGKILL)
                killed = True
            if killed and not restarted and len(done) >= N // 2:
                postgres_server.restart()
                restarted = True
            if len(done) == N:
                break
            time.sleep(0.5)
        assert killed and restarted
        assert len(done) == N, f"only {len(done)}/{N} completed"
        assert all(ok for _, ok, _ in done.values()), "every job has its result"
        twice = {i for i, (attempts, _, ran) in done.items() if attempts > 1 or ran > 1}
        assert twice <= victim_jobs, f"ran twice without their worker dying: {sorted(twice - victim_jobs)[:5]}"

        # a result submitted on API A is fetchable, with its file, on API B
        for i in (0, 1, N - 1):
            other = apis[(i + 1) % 2].url
            result = client.get(f"{other}/queue/{APP}/requests/{ids[i]}").json()
            assert result["seed"] == i
            image = client.get(result["image"]["url"].replace(apis[i % 2].url, other))
            assert image.status_code == 200 and image.content.startswith(b"\x89PNG")


def test_an_upload_started_on_one_api_is_finished_and_used_as_input_on_the_other(cluster) -> None:
    """Both clients' one-body flows (JS: initiate, then PUT the signed URL; Python: token, then POST) may
    reach two replicas; the file lands in the shared bucket and is a job input on either."""
    apis, _, _ = cluster
    a, b = apis[0].url, apis[1].url
    png = base64.b64decode(png_data_uri(size=(8, 8)).split(",", 1)[1])
    with httpx.Client(timeout=30) as client:
        body = {"file_name": "in.png", "content_type": "image/png"}
        urls = client.post(f"{a}/rest/storage/upload/initiate?storage_type=fal-cdn-v3", json=body).json()
        r = client.put(urls["upload_url"].replace(a, b), content=png, headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        assert client.get(urls["file_url"]).content == png  # served by A, stored through B

        token = client.post(f"{a}/rest/storage/auth/token?storage_type=fal-cdn-v3", json={}).json()["token"]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/png", "X-Fal-File-Name": "b.png"}
        r = client.post(f"{b}/cdn/files/upload", content=png, headers=headers)
        assert r.status_code == 200, r.text
        assert client.get(r.json()["access_url"].replace(b, a)).content == png

        result = client.post(f"{b}/run/{APP}", json={"image_url": urls["file_url"], "seed": 7})
        assert result.status_code == 200, result.text
        assert result.json()["seed"] == 7
        image = client.get(result.json()["image"]["url"].replace(b, a))
        red, green, blue = PILImage.open(io.BytesIO(image.content)).convert("RGB").getpixel((0, 0))
        assert red >= 200 and 100 <= green < 164 and 50 <= blue < 114  # the uploaded colour, tinted by echo
