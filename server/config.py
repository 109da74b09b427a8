"""One settings object for the API, the workers and the CLI.

Every field is read from ``FAL_ONPREM_<NAME>`` (e.g. ``FAL_ONPREM_DATA_DIR``) and from an optional
TOML file named by ``FAL_ONPREM_CONFIG``; environment variables win over the file. CLI flags
are turned into environment variables by the CLI, so child processes inherit the same settings.
"""

from __future__ import annotations

import os
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class PipelineSettings(BaseModel):
    """Per-endpoint overrides (TOML ``[pipelines."fal-ai/dwpose"]`` or env JSON)."""

    enabled: bool = True
    max_batch: int | None = None
    max_wait_ms: int | None = None
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    max_inference_steps: int | None = Field(default=None, description="Cap on num_inference_steps (422 above it).")
    max_image_area: int | None = Field(default=None, description="Cap on image_size width x height, in pixels.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FAL_ONPREM_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = Field(
        default=None, description="Base URL used in absolute URLs of responses (else the request's own)."
    )
    data_dir: Path = Path("data")
    store_url: str | None = Field(default=None, description="sqlite:///path (default: <data_dir>/jobs.sqlite)")
    secrets_dir: Path | None = Field(
        default=None,
        description="Folder of the HMAC and webhook signing keys (default: data_dir). API replicas on several "
        "hosts must share them: mount one folder (e.g. a Kubernetes Secret) on every replica.",
    )
    files_url: str | None = Field(
        default=None,
        description="Where outputs and uploads are stored: unset = <data_dir>/files on the local disk (or a "
        "filesystem shared by every host); s3://bucket/prefix = an S3-compatible bucket (API replicas on many hosts).",
    )
    s3_endpoint_url: str | None = Field(default=None, description="S3-compatible service URL (MinIO, Ceph...).")
    weights_dir: Path = Path("weights")
    weights_source: Literal["real", "tiny", "random_full"] = "real"
    seed: int = 0
    api_keys: str = Field(
        default="",
        description="Comma-separated API keys; empty disables auth. With keys, /metrics and the details of "
        "/readyz need a key too (/healthz and /readyz's status stay open for load balancers).",
    )
    insecure_no_auth: bool = False
    pipelines: dict[str, PipelineSettings] = Field(default_factory=dict)
    url_allow_list: str = Field(default="", description="Comma-separated hosts/CIDRs exempt from SSRF rules.")
    max_request_bytes: int = 16 * 1024 * 1024
    max_image_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_upload_bytes: int = 2 * 1024 * 1024 * 1024
    upload_ttl_s: float = Field(
        default=6 * 3600.0, description="Lifetime of upload URLs and tokens; unfinished uploads are removed after it."
    )
    fetch_timeout_s: float = 30.0
    job_lease_s: float = 30.0
    max_attempts: int = 2
    max_running_per_key: int | None = Field(
        default=None,
        description="Most jobs of one API key running at once (over all workers); the rest wait queued. None: no cap.",
    )
    max_batch_run_s: float = 3600.0
    max_inference_steps: int = Field(default=100, description="Default cap on num_inference_steps per request.")
    max_image_area: int = Field(default=2048 * 2048, description="Default cap on image_size width x height.")
    gpu_memory_budget: str | None = Field(
        default=None,
        description="Device memory a worker may use for pipelines and rows (e.g. 20GiB); default: the device's "
        "free memory minus a margin on CUDA, unlimited on CPU.",
    )
    max_prepared_bytes: int = Field(
        default=1024**3,
        description="Bytes of prepared inputs (decoded, preprocessed images) a worker holds for its running and "
        "prefetched batches together; a claimed job beyond it goes back to the queue unstarted.",
    )
    no_worker_grace_s: float = Field(
        default=120.0,
        description="Queued jobs of an endpoint that no live worker has reported for this long fail with 503 "
        "(as they do at once when every live worker reports it failed).",
    )
    file_ttl_s: float | None = None
    job_ttl_s: float = Field(
        default=7 * 24 * 3600.0,
        description="Finished jobs (result, logs, webhook record) are deleted this long after they finished; "
        "metrics keep counting them. 0 keeps them forever. Stored files follow file_ttl_s.",
    )
    webhook_max_attempts: int = Field(default=10, description="Delivery attempts before a webhook is given up.")
    webhook_backoff_base_s: float = Field(
        default=15.0, description="Wait after the first failed attempt; doubles each time (10 attempts ~ 2 h)."
    )
    webhook_backoff_max_s: float = 3600.0
    webhook_timeout_s: float = Field(default=15.0, description="Per-attempt limit for a webhook POST.")
    webhook_poll_s: float = Field(
        default=1.0, description="How often the API looks for due webhooks besides the wake-up at each completion."
    )
    notify_events: bool = Field(
        default=True, description="Wake workers and waiting requests by notification (else they only poll)."
    )
    poll_fallback_s: float = Field(
        default=1.0,
        description="How often idle workers, /run requests and status streams re-check the store when no "
        "notification arrives (lower it when notify_events is off).",
    )
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _TomlSource(settings_cls)

    @cached_property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{(self.data_dir / 'jobs.sqlite').resolve()}"

    @property
    def secrets_path(self) -> Path:
        return self.secrets_dir or self.data_dir

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    def pipeline(self, endpoint_id: str) -> PipelineSettings:
        return self.pipelines.get(endpoint_id, PipelineSettings())

    def caps(self, endpoint_id: str) -> tuple[int, int]:
        """(max num_inference_steps, max image area in pixels) for an endpoint."""
        cfg = self.pipeline(endpoint_id)
        steps = self.max_inference_steps if cfg.max_inference_steps is None else cfg.max_inference_steps
        area = self.max_image_area if cfg.max_image_area is None else cfg.max_image_area
        return steps, area


class _TomlSource(PydanticBaseSettingsSource):
    """Values from the TOML file named by FAL_ONPREM_CONFIG (flat keys, plus [pipelines.*] tables)."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = os.environ.get("FAL_ONPREM_CONFIG")
        self._data: dict[str, Any] = tomllib.loads(Path(path).read_text()) if path else {}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._data.items() if k in self.settings_cls.model_fields}


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)
