"""Structured logs: one JSON object per line, extra fields kept."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from server.files import FileStore
from server.logs import JsonFormatter
from server.store import Job
from server.store.sqlite import SQLiteJobStore
from server.worker.context import LOG_BUFFER_S, BatchContext


def test_json_formatter_keeps_message_level_and_extras() -> None:
    record = logging.LogRecord("fal_onprem.worker", logging.WARNING, __file__, 1, "batch of %d failed", (3,), None)
    record.request_id = "abc"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "batch of 3 failed"
    assert entry["level"] == "WARNING" and entry["logger"] == "fal_onprem.worker"
    assert entry["request_id"] == "abc"
    assert entry["ts"].endswith("+00:00")


def test_job_log_lines_reach_the_process_log_at_info_only_as_progress_of_long_work(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A fast batch's lines are mirrored at DEBUG (every request would otherwise write several INFO lines);
    once the batch has run LOG_BUFFER_S its lines are progress and show at INFO; warnings always do. The
    job's own log (what clients read) gets every line either way."""
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    job = Job(id="job-1", endpoint="a/b", input={}, created_at=1000.0)
    store.create(job)
    ctx = BatchContext(store, FileStore(tmp_path / "files"), [job])
    with caplog.at_level(logging.DEBUG, logger="fal_onprem.worker"):
        ctx.log("decoded the image", 0)
        ctx.log("no face found", 0, level="WARNING")
        ctx._created -= LOG_BUFFER_S  # the batch has now run that long
        ctx.log("Step 3/30", 0)
    levels = {r.getMessage().rsplit("] ", 1)[1]: r.levelno for r in caplog.records if "[job-1]" in r.getMessage()}
    assert levels == {"decoded the image": logging.DEBUG, "no face found": logging.WARNING, "Step 3/30": logging.INFO}
    ctx.flush()
    assert [e.message for e in store.logs(job.id)] == ["decoded the image", "no face found", "Step 3/30"]
    store.close()
