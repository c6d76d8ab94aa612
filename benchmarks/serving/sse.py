"""Incremental decoder for ``text/event-stream`` bodies, fed with network chunks as they arrive."""

from __future__ import annotations


class MalformedStream(ValueError):
    """The byte stream is not the server-sent-events stream we expect."""


_IGNORED_FIELDS = (b"event", b"id", b"retry")


class SSEDecoder:
    """Splits bytes into events and returns each event's ``data`` payload (bytes, lines joined by ``\\n``).

    Chunks may end anywhere (mid-line, between ``\\r`` and ``\\n``). Comment lines (``:``) and the
    ``event``/``id``/``retry`` fields are skipped; any other line is reported as malformed instead of
    being silently dropped, so a broken server shows up in the error counts.
    """

    def __init__(self, max_line_bytes: int = 64 << 20):
        self._buf = bytearray()
        self._data: list[bytes] = []
        self._max_line = max_line_bytes

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buf += chunk
        events: list[bytes] = []
        start = 0
        while True:
            nl = self._buf.find(b"\n", start)
            if nl < 0:
                break
            self._line(bytes(self._buf[start:nl]), events)
            start = nl + 1
        del self._buf[:start]
        if len(self._buf) > self._max_line:
            raise MalformedStream(f"line longer than {self._max_line} bytes")
        return events

    def close(self) -> list[bytes]:
        """End of body: a last line without newline and a last event without blank line still count."""
        events: list[bytes] = []
        if self._buf:
            self._line(bytes(self._buf), events)
            self._buf.clear()
        if self._data:
            events.append(b"\n".join(self._data))
            self._data = []
        return events

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if self._data:
                events.append(b"\n".join(self._data))
                self._data = []
            return
        if line.startswith(b":"):
            return
        name, colon, value = line.partition(b":")
        if not colon:
            raise MalformedStream(f"not an SSE line: {line[:80]!r}")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name not in _IGNORED_FIELDS:
            raise MalformedStream(f"unexpected SSE field: {line[:80]!r}")
