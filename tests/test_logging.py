"""JSON log lines carry the structured fields given with ``extra=``."""

from __future__ import annotations

import json
import logging
import sys

from admitd._logging import JsonFormatter


def test_json_lines_have_message_level_and_extra_fields() -> None:
    record = logging.makeLogRecord(
        {
            "name": "admitd",
            "levelname": "INFO",
            "levelno": logging.INFO,
            "msg": "lease %s expired",
            "args": ("ab12",),
            "lease_id": "ab12",
            "tenant": "search",
        }
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "lease ab12 expired"
    assert (entry["level"], entry["logger"]) == ("info", "admitd")
    assert (entry["lease_id"], entry["tenant"]) == ("ab12", "search")
    assert entry["time"].endswith("Z")


def test_exceptions_are_one_field() -> None:
    record = logging.LogRecord("admitd", logging.ERROR, __file__, 1, "failed", (), None)
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in entry["exception"]
