"""Logging set-up with personal data masked.

Names, emails, phone numbers and addresses never reach a log line: `mask_pii` redacts
them in payloads before they are logged, and `PiiFilter` catches emails and phone
numbers that slip into a message anyway.

Two formats: text for people (the default) and JSON, one object per line, for a log
collector (`CLARUS_PIPELINES_LOG_FORMAT=json` or `clarus-pipelines --log-format json`).
The JSON formatter masks every field again (extras and tracebacks included).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any, Literal

from pythonjsonlogger.json import JsonFormatter

LOG_FORMAT_ENV = "CLARUS_PIPELINES_LOG_FORMAT"
LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

PII_KEYS = frozenset(
    {
        "name", "first_name", "last_name", "firstname", "lastname", "email", "contact_email",
        "phone", "address1", "address2", "street", "street1", "street2", "city", "zip", "postcode",
        "post_code", "postal_code", "company", "latitude", "longitude", "customer_name",
        "addressee", "addr1", "addr2", "attention", "browser_ip", "address_1", "address_2", "address_3",
        "address_4", "address_5", "email_address", "phone_number", "mobile", "contact_name", "full_name",
        "province", "customer_email",
    }
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
# Phone numbers as people write them: international (+44 ...) or with separators
# ("020 7946 0958", "(0161) 496-0000"). Bare digit runs are left alone: those are
# barcodes, tracking numbers and Shopify ids, which logs need.
_PHONE = re.compile(r"(?<![\w.])(?:\+\d[\d ()-]{7,}\d|\(?0\d{2,4}\)?[ -]\d{3,4}[ -]?\d{3,4})(?![\w.])")


def mask_value(value: Any) -> Any:
    if value is None or value == "":
        return value
    text = str(value)
    return text[:1] + "***" if len(text) > 1 else "***"


def mask_pii(obj: Any) -> Any:
    """A copy of a JSON-like structure with personal fields redacted."""
    if isinstance(obj, dict):
        return {k: (mask_value(v) if k.lower() in PII_KEYS and not isinstance(v, (dict, list)) else mask_pii(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [mask_pii(v) for v in obj]
    if isinstance(obj, str):
        return mask_text(obj)
    return obj


def mask_text(text: str) -> str:
    return _PHONE.sub("<phone>", _EMAIL.sub("<email>", text))


class PiiFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(mask_pii(a) if isinstance(a, (dict, list, str)) else a for a in (record.args if isinstance(record.args, tuple) else (record.args,)))
        if isinstance(record.msg, str):
            record.msg = mask_text(record.msg)
        return True


OUR_LOGGERS = "clarus_pipelines"  # every module's logger is a child (assets and sensors are packaged under it)


def mask_our_records() -> None:
    """Mask personal data in every record our loggers create, whichever handler takes it: the
    run event log of Dagster (`python_logs.managed_python_loggers`) has no `PiiFilter` of ours."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "masks_pii", False):
        return
    pii = PiiFilter()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        name = record.name or ""  # Dagster makes records without a logger name
        if name == OUR_LOGGERS or name.startswith(OUR_LOGGERS + "."):
            pii.filter(record)
        return record

    factory.masks_pii = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


class MaskedJsonFormatter(JsonFormatter):
    """One JSON object per line: time, level, logger, message, plus any `extra=` fields and
    the traceback, each passed through `mask_pii` (the logger's name is not personal data)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s",
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        logger = log_data.pop("logger", None)
        masked = mask_pii(log_data)
        return {"logger": logger, **masked} if logger is not None else masked


def log_format_from_env() -> LogFormat:
    """`CLARUS_PIPELINES_LOG_FORMAT` (text or json); anything else is refused, never guessed."""
    value = (os.environ.get(LOG_FORMAT_ENV) or "text").strip().lower()
    if value not in LOG_FORMATS:
        raise ValueError(f"{LOG_FORMAT_ENV}={value!r}: use one of {', '.join(LOG_FORMATS)}")
    return value  # type: ignore[return-value]


def make_formatter(log_format: LogFormat) -> logging.Formatter:
    if log_format == "json":
        return MaskedJsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def configure_logging(level: int = logging.INFO, log_format: LogFormat | None = None) -> None:
    """Log to stderr (stdout is kept for machine-readable output), as text or JSON lines.

    `log_format` defaults to `CLARUS_PIPELINES_LOG_FORMAT` (text when unset)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(log_format or log_format_from_env()))
    handler.addFilter(PiiFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # one line per HTTP call drowns the signal; connectors log their own retries and failures
    logging.getLogger("httpx").setLevel(logging.WARNING)
