"""deploy/kubernetes: every manifest is valid against the Kubernetes schemas, the pieces refer to each other,
and the KEDA scaler's SQL query runs on a real store."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from server.store import Job, open_store

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
K8S_VERSION = "1.30"


def documents() -> list[dict]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind: str) -> list[dict]:
    return [d for d in documents() if d["kind"] == kind]


@pytest.mark.parametrize("doc", [d for d in documents() if d["apiVersion"] != "keda.sh/v1alpha1"],
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")  # fmt: skip
def test_manifest_is_valid_kubernetes(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_worker_asks_for_a_gpu_and_the_api_for_none() -> None:
    deployments = {d["metadata"]["name"]: d for d in by_kind("Deployment")}
    worker = deployments["fal-onprem-worker"]["spec"]["template"]["spec"]["containers"][0]
    api = deployments["fal-onprem-api"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["args"][:2] == ["fal-onprem", "worker"] and "--no-worker" in api["args"]
    for container in (worker, api):  # both reach the same store and file bucket
        names = {e["name"] for e in container["env"]}
        assert {"FAL_ONPREM_STORE_URL", "FAL_ONPREM_FILES_URL"} <= names


def test_keda_scales_the_worker_deployment_on_a_query_the_store_answers(postgres_url: str) -> None:
    (scaled,) = by_kind("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "fal-onprem-worker"
    trigger = next(t for t in scaled["spec"]["triggers"] if t["type"] == "postgresql")
    store = open_store(postgres_url)
    for i in range(3):
        store.create(Job(id=f"j{i}", endpoint="a/b", input={}))
    store.claim_batch("a/b", "w", lambda inp: 0, 1, 30)
    store.close()
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        (count,) = conn.execute(trigger["metadata"]["query"]).fetchone()
    assert count == 3  # two queued + one running


def test_api_replicas_share_every_key_the_server_would_otherwise_make_per_replica() -> None:
    """Jobs are scoped to key ids (HMAC), uploads to signed URLs and tokens, webhooks to one Ed25519 key:
    replicas with keys of their own would 404 each other's jobs and 403 each other's uploads."""
    from server.auth import KEY_ID_SECRET_FILE
    from server.uploads import SECRET_FILE_NAME
    from server.webhook_signing import KEY_FILE_NAME

    (api,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "fal-onprem-api"]
    pod = api["spec"]["template"]["spec"]
    container = pod["containers"][0]
    secrets_dir = next(e["value"] for e in container["env"] if e["name"] == "FAL_ONPREM_SECRETS_DIR")
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == secrets_dir]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    files = {item["path"] for item in volume["secret"]["items"]}
    assert files == {KEY_ID_SECRET_FILE, SECRET_FILE_NAME, KEY_FILE_NAME}
    readme = (DEPLOY / "README.md").read_text()
    assert all(f"--from-literal={name}=" in readme for name in files)  # the command that creates them


def test_the_api_service_keeps_a_client_on_one_replica_for_its_multipart_parts() -> None:
    (service,) = [d for d in by_kind("Service") if d["metadata"]["name"] == "fal-onprem"]
    assert service["spec"]["sessionAffinity"] == "ClientIP"
