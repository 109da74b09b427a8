"""The API process: ``create_app(settings)`` builds the FastAPI app (no model library imported)."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines import registry
from server import docs, webhooks
from server.auth import KEY_ID_SECRET_FILE
from server.config import Settings
from server.errors import (
    FalError,
    on_fal_error,
    on_http_error,
    on_store_unavailable,
    on_unexpected_error,
    on_validation_error,
)
from server.files import open_file_store
from server.group_commit import GroupCommit
from server.janitor import janitor
from server.limits import BodyLimitMiddleware
from server.local_secrets import load_or_create_secret
from server.proxy import FalProxyMiddleware
from server.routes import files, ops, playground, queue, run, storage
from server.store import open_store
from server.waiting import JobEvents

log = logging.getLogger("fal_onprem.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    endpoints = registry.endpoints()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        app.state.job_events.start()
        async with janitor(app), webhooks.delivery(app):
            yield
        app.state.job_events.stop()
        app.state.store.close()

    app = FastAPI(
        title="fal-onprem",
        version="0.1.0",
        description="Self-hosted, fal.ai-compatible queue API for five human-image pipelines.",
        lifespan=lifespan,
        docs_url=None,  # server.docs serves both pages with local assets (works without internet)
        redoc_url=None,
    )
    docs.install(app)
    app.state.settings = settings
    app.state.endpoints = endpoints
    app.state.store = open_store(settings.resolved_store_url)
    app.state.job_events = JobEvents(app.state.store, settings)  # wakes /run, status streams, webhooks
    app.state.job_writes = GroupCommit(app.state.store)  # the submits of one event-loop turn, one transaction
    app.state.files = open_file_store(settings.files_url, settings.files_dir, settings.s3_endpoint_url)
    app.state.key_id_secret = load_or_create_secret(settings.secrets_path, KEY_ID_SECRET_FILE)
    webhooks.install(app, settings)  # signing key, submit-time URL check, JWKS routes

    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(FalError, on_fal_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    for transient in app.state.store.transient_errors:
        app.add_exception_handler(transient, on_store_unavailable)
    app.add_exception_handler(Exception, on_unexpected_error)

    # /run first: routes are matched in order, and a sync run is the request whose overhead shows most
    app.include_router(run.build_router(endpoints))
    app.include_router(queue.build_router(endpoints))
    app.include_router(files.router)
    app.include_router(storage.router)
    app.include_router(ops.router)
    app.include_router(playground.router)

    # Added last = outermost: CORS wraps everything (proxy errors and 413s included), then the proxy
    # rewrites the path before the body caps and the routes see it.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(FalProxyMiddleware)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["x-fal-request-id", "x-fal-error-type"],
    )
    return app
