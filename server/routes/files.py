"""``GET /files/{key}/{name}``: outputs and uploads, served to whoever holds the URL."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response, StreamingResponse

from server.errors import FalError
from server.files import Files

router = APIRouter(tags=["files"])


@router.get("/files/{key}/{name}")
def get_file(request: Request, key: str, name: str) -> Response:
    store: Files = request.app.state.files
    stored = store.open(key, name)
    if stored is None:
        raise FalError(404, "File not found", "file_not_found")
    # nosniff: a browser must not run an uploaded "image" as HTML or script
    if stored.path is not None:
        return FileResponse(
            stored.path,
            media_type=stored.content_type,
            filename=stored.name,
            headers={"X-Content-Type-Options": "nosniff"},
        )
    # an object store's file streams through this replica (clients never need bucket credentials)
    headers = {
        "content-length": str(stored.size),
        "content-disposition": f'attachment; filename="{stored.name}"',
        "X-Content-Type-Options": "nosniff",
    }
    return StreamingResponse(stored.chunks(), media_type=stored.content_type, headers=headers)
