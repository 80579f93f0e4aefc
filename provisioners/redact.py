"""Secret redaction for everything the deployer prints or writes.

Secrets (PVE token secret/password, vLLM API key, HF token...) are registered once, when
they are read (see :mod:`provisioners.secrets`), and every console line, log record and
report attachment passes through :func:`redact`.
"""
from __future__ import annotations

import logging
import threading

MASK = "***"
_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember ``value`` so that :func:`redact` masks it. Values under 4 characters are ignored
    (masking them would garble ordinary text); empty/None is a no-op."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """Return ``text`` with every registered secret replaced by ``***`` (longest first)."""
    if not text:
        return text
    with _lock:
        values = sorted(_secrets, key=len, reverse=True)
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text


def redact_bytes(data: bytes) -> bytes:
    """Like :func:`redact` for UTF-8 bytes (invalid sequences are kept as-is)."""
    return redact(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        return True


def _clear_for_tests() -> None:
    with _lock:
        _secrets.clear()
