"""Discovers endpoints: every ``pipelines.<name>`` subpackage that exports ``ENDPOINT``.

Adding a pipeline touches ``pipelines/`` only. Extra modules (test-only pipelines, plugins) are
named in ``FAL_ONPREM_PIPELINE_MODULES`` (comma-separated); the variable is inherited by worker
processes so the API and its workers see the same registry.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from functools import cache

import pipelines
from pipelines.contract import EndpointSpec, Pipeline

EXTRA_MODULES_ENV = "FAL_ONPREM_PIPELINE_MODULES"


@cache
def endpoints() -> dict[str, EndpointSpec]:
    """All known endpoints by id (schema only; no model library is imported)."""
    found: dict[str, EndpointSpec] = {}
    names = [f"pipelines.{m.name}" for m in pkgutil.iter_modules(pipelines.__path__) if m.ispkg]
    names += [n.strip() for n in os.environ.get(EXTRA_MODULES_ENV, "").split(",") if n.strip()]
    for name in names:
        spec = getattr(importlib.import_module(name), "ENDPOINT", None)
        if isinstance(spec, EndpointSpec):
            found[spec.endpoint_id] = spec
    return found


def get(endpoint_id: str) -> EndpointSpec | None:
    return endpoints().get(endpoint_id)


def pipeline_class(spec: EndpointSpec) -> type[Pipeline]:
    """Import the pipeline class of an endpoint (workers only: this imports model libraries)."""
    if spec.pipeline is None:
        raise LookupError(spec.unavailable_reason or f"{spec.endpoint_id} has no pipeline")
    module, _, attr = spec.pipeline.partition(":")
    return getattr(importlib.import_module(module), attr)
