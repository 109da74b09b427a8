"""Upload endpoints of both official clients (fal-protocol.md §5), backed by ``server.uploads``.

JS (any ``storage_type``; also Python's ``repository="fal"`` fallback):
  ``POST /rest/storage/upload/initiate`` -> ``{upload_url, file_url}``; ``PUT upload_url`` (signed, no auth).
  ``POST /rest/storage/upload/initiate-multipart`` -> ``{upload_url, file_url}``;
  ``PUT {upload_url path}/{n}?{sig}`` -> ``{partNumber, etag}`` + ``ETag``; ``POST .../complete?{sig}``.
Python ``fal_v3`` (CDN token as ``Authorization: Bearer``):
  ``POST /rest/storage/auth/token`` -> ``{token, token_type, base_url, expires_at}``;
  ``POST /cdn/files/upload`` -> ``{access_url}``;
  ``POST /cdn/files/upload/multipart`` -> ``{access_url, uploadId}``;
  ``PUT {access_url}/multipart/{uploadId}/{n}`` (``ETag``); ``POST {access_url}/multipart/{uploadId}/complete``.
Uploaded files are ordinary FileStore files (``/files/<key>/<name>``), usable as job inputs directly.
"""

import mimetypes
from datetime import UTC, datetime
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Body, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from server.auth import caller_key_id
from server.auth import key_id as key_id_of
from server.errors import FalError
from server.local_secrets import load_or_create_secret
from server.uploads import SECRET_FILE_NAME, UploadManager, UploadSession, checked_content_type
from server.urls import base_url

router = APIRouter(tags=["storage"])


class InitiateUpload(BaseModel):
    model_config = ConfigDict(extra="ignore")
    content_type: str | None = None
    file_name: str | None = None


class CompletedPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    partNumber: int  # the clients' spelling
    etag: str | None = None


class CompleteUpload(BaseModel):
    parts: list[CompletedPart]


def uploads(request: Request) -> UploadManager:
    """The app's UploadManager, made on first use (secret and folders live in the data dir)."""
    state = request.app.state
    manager = getattr(state, "uploads", None)
    if manager is None:
        settings = state.settings
        manager = UploadManager(
            settings.data_dir / "uploads",
            state.files,
            load_or_create_secret(settings.secrets_path, SECRET_FILE_NAME),
            ttl_s=settings.upload_ttl_s,
            max_bytes=settings.max_upload_bytes,
        )
        state.uploads = manager
    return manager


def _initiate(request: Request, body: InitiateUpload | None, key_id: str | None, kind: str) -> dict[str, str]:
    manager = uploads(request)
    body = body or InitiateUpload()
    content_type = checked_content_type(body.content_type, ["body", "content_type"])
    session = manager.create(kind, body.file_name, content_type, key_id)  # type: ignore[arg-type]
    base = base_url(request)
    upload_url = f"{base}/storage/uploads/{session.id}?{manager.signed_query(session)}"
    return {"upload_url": upload_url, "file_url": session.file_url(base)}


@router.post("/rest/storage/upload/initiate")
def initiate_upload(
    request: Request,
    body: Annotated[InitiateUpload | None, Body()] = None,
    storage_type: str | None = Query(default=None),
    key_id: str | None = Depends(caller_key_id),
) -> dict[str, str]:
    return _initiate(request, body, key_id, "single")


@router.post("/rest/storage/upload/initiate-multipart")
def initiate_multipart_upload(
    request: Request,
    body: Annotated[InitiateUpload | None, Body()] = None,
    storage_type: str | None = Query(default=None),
    key_id: str | None = Depends(caller_key_id),
) -> dict[str, str]:
    return _initiate(request, body, key_id, "multipart")


def _signed_session(
    request: Request, session_id: str, exp: str | None, sig: str | None, kind: str, carried: str | None = None
) -> UploadSession:
    manager = uploads(request)
    manager.check_signature(session_id, exp, sig, carried)
    if kind == "single" and carried:  # any replica can take it: the session is in the signed URL
        return manager.carried_session(session_id, carried)
    return manager.get(session_id, kind)  # type: ignore[arg-type]


@router.put("/storage/uploads/{session_id}")
async def put_upload(
    request: Request,
    session_id: str,
    exp: str | None = Query(default=None),
    sig: str | None = Query(default=None),
    s: str | None = Query(default=None),
) -> dict[str, Any]:
    session = _signed_session(request, session_id, exp, sig, "single", s)
    stored = await uploads(request).receive_whole(session, request.stream(), request.headers.get("content-length"))
    return {"file_url": stored.url(base_url(request)), "size": stored.size}


def _part_response(number: int, etag: str) -> JSONResponse:
    return JSONResponse({"partNumber": number, "etag": etag}, headers={"ETag": etag})


@router.put("/storage/uploads/{session_id}/{part_number}")
async def put_upload_part(
    request: Request,
    session_id: str,
    part_number: int,
    exp: str | None = Query(default=None),
    sig: str | None = Query(default=None),
) -> JSONResponse:
    session = _signed_session(request, session_id, exp, sig, "multipart")
    length = request.headers.get("content-length")
    etag = await uploads(request).receive_part(session, part_number, request.stream(), length)
    return _part_response(part_number, etag)


async def _complete(request: Request, session: UploadSession, body: CompleteUpload) -> dict[str, Any]:
    parts = [part.model_dump() for part in body.parts]
    stored = await to_thread.run_sync(uploads(request).complete, session, parts)
    url = session.file_url(base_url(request))
    return {"file_url": url, "access_url": url, "size": stored.size if stored else None}


@router.post("/storage/uploads/{session_id}/complete")
async def complete_upload(
    request: Request,
    session_id: str,
    body: CompleteUpload,
    exp: str | None = Query(default=None),
    sig: str | None = Query(default=None),
) -> dict[str, Any]:
    session = _signed_session(request, session_id, exp, sig, "multipart")
    return await _complete(request, session, body)


# --- Python fal_v3: CDN token + CDN upload -----------------------------------------------------------


@router.post("/rest/storage/auth/token")
def storage_token(
    request: Request,
    storage_type: str | None = Query(default=None),
    key_id: str | None = Depends(caller_key_id),
) -> dict[str, str]:
    manager = uploads(request)
    manager.maybe_cleanup()
    token, expires = manager.issue_token(key_id)
    return {
        "token": token,
        "token_type": "Bearer",
        "base_url": f"{base_url(request)}/cdn",
        "expires_at": datetime.fromtimestamp(expires, UTC).isoformat(),  # "+00:00": Python < 3.11 safe
    }


def _token_key_id(request: Request, authorization: str | None) -> str | None:
    """Key id of a valid CDN token whose key is still configured (keys may be rotated after issue)."""
    token_key_id = uploads(request).check_token(authorization)
    keys = request.app.state.settings.key_list
    if keys and token_key_id not in {key_id_of(request, key) for key in keys}:
        raise FalError(403, "Upload token was issued for a key that is no longer accepted", "forbidden")
    return token_key_id


def _cdn_file_name(name: str | None, content_type: str | None) -> str:
    if name:
        return name
    ext = mimetypes.guess_extension((content_type or "").split(";")[0].strip()) or ".bin"
    return f"file{ext}"


@router.post("/cdn/files/upload")
async def cdn_upload(
    request: Request,
    authorization: str | None = Header(default=None),
    content_type: str | None = Header(default=None),
    x_fal_file_name: str | None = Header(default=None),
) -> dict[str, str]:
    manager = uploads(request)
    key_id = _token_key_id(request, authorization)
    content_type = checked_content_type(content_type, ["header", "content-type"])
    session = manager.create("single", _cdn_file_name(x_fal_file_name, content_type), content_type, key_id)
    stored = await manager.receive_whole(session, request.stream(), request.headers.get("content-length"))
    return {"access_url": stored.url(base_url(request))}


@router.post("/cdn/files/upload/multipart")
def cdn_multipart_create(
    request: Request,
    authorization: str | None = Header(default=None),
    content_type: str | None = Header(default=None),
    x_fal_file_name: str | None = Header(default=None),
) -> dict[str, str]:
    manager = uploads(request)
    key_id = _token_key_id(request, authorization)
    content_type = checked_content_type(content_type, ["header", "content-type"])
    session = manager.create("multipart", _cdn_file_name(x_fal_file_name, content_type), content_type, key_id)
    return {"access_url": session.file_url(base_url(request)), "uploadId": session.id}


def _cdn_session(request: Request, key: str, name: str, upload_id: str, authorization: str | None) -> UploadSession:
    _token_key_id(request, authorization)
    session = uploads(request).get(upload_id, "multipart")
    if (session.file_key, session.file_name) != (key, name):
        raise FalError(404, "Upload session not found for this file", "upload_not_found")
    return session


@router.put("/files/{key}/{name}/multipart/{upload_id}/{part_number}")
async def cdn_multipart_part(
    request: Request,
    key: str,
    name: str,
    upload_id: str,
    part_number: int,
    authorization: str | None = Header(default=None),
) -> JSONResponse:
    session = _cdn_session(request, key, name, upload_id, authorization)
    length = request.headers.get("content-length")
    etag = await uploads(request).receive_part(session, part_number, request.stream(), length)
    return _part_response(part_number, etag)


@router.post("/files/{key}/{name}/multipart/{upload_id}/complete")
async def cdn_multipart_complete(
    request: Request,
    key: str,
    name: str,
    upload_id: str,
    body: CompleteUpload,
    authorization: str | None = Header(default=None),
) -> dict[str, Any]:
    session = _cdn_session(request, key, name, upload_id, authorization)
    return await _complete(request, session, body)
