"""Structured logs: one JSON object per line, extra fields kept."""

from __future__ import annotations

import json
import logging

from server.logs import JsonFormatter


def test_json_formatter_keeps_message_level_and_extras() -> None:
    record = logging.LogRecord("fal_onprem.worker", logging.WARNING, __file__, 1, "batch of %d failed", (3,), None)
    record.request_id = "abc"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "batch of 3 failed"
    assert entry["level"] == "WARNING" and entry["logger"] == "fal_onprem.worker"
    assert entry["request_id"] == "abc"
    assert entry["ts"].endswith("+00:00")
