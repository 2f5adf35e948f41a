"""JSON-lines logging with a request id that follows the call across services.

json.dumps escapes CR/LF and other control characters, so user input cannot forge log lines.
Never pass secrets, tokens or PII to a logger: there is no scrubbing that could be trusted to
catch every form of them, so the rule is not to log them at all.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "palisade_request_id", default=None
)

_MAX_REQUEST_ID_LENGTH = 128


def safe_request_id(value: str | None) -> str:
    """A client-chosen request id if it is short printable ASCII (it lands in logs), else new."""
    if value and len(value) <= _MAX_REQUEST_ID_LENGTH and value.isascii() and value.isprintable():
        return value
    return uuid.uuid4().hex


# Attributes every LogRecord has; anything else was passed with `extra=` and is logged as a field.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, service, logger, msg, request_id and extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=True)


def configure_logging(service: str, level: str = "INFO") -> None:
    """Sends every log record of this process to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
