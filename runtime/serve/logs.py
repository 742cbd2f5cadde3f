"""Server log lines: plain, or one JSON object per line (``--log-format json``) for a log collector."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

LOGGER = "bcaudio.serve"
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_TOKEN = re.compile(r"(token=)[^&\s\"']+")


class RedactTokens(logging.Filter):
    """uvicorn logs each WebSocket's path with its query, and a browser sends the token there: never log it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message:
            record.msg, record.args = _TOKEN.sub(r"\1***", message), ()
        return True


class JsonLines(logging.Formatter):
    """``{"time", "level", "logger", "message", ...extra fields}``; fields passed with ``extra=`` are kept."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(fmt: str = "plain", stream=sys.stderr) -> logging.Logger:
    """The server's and uvicorn's loggers to ``stream`` in ``fmt`` (``plain`` or ``json``)."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactTokens())
    handler.setFormatter(JsonLines() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    for name in (LOGGER, "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logging.getLogger(LOGGER)
