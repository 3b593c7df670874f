"""Log lines as JSON (log_format = "json"): one object a line, for a log collector.

Each line: time (UTC, ISO 8601 with milliseconds), level, logger, message, and for the access
log (server/app.py log_request) method, path, status, ms and group (the route group of
server/metrics.py). The message is the same text as in a text line, so what server/logmask.py
masks (tokens, patient IDs, accession numbers in paths; query strings) stays masked; a
traceback goes in "exc"."""
from __future__ import annotations

import datetime as dt
import json
import logging

ACCESS_FIELDS = ("method", "path", "status", "ms", "group")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ACCESS_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def use_json_lines(root: logging.Logger | None = None) -> None:
    """Give every handler of the root logger the JSON formatter."""
    root = root or logging.getLogger()
    for handler in root.handlers:
        handler.setFormatter(JsonFormatter())
