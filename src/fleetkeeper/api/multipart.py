"""multipart/form-data read as it streams in, one part at a time.

`request.form()` spools every file into a temporary file before the route runs: for an
artifact of gigabytes that is a second copy on the disk holding the temporary folder. Reading
the parts in order instead lets a file part flow straight into its destination:

    async for part in FormReader(request.headers["content-type"], request.stream()):
        if part.filename is not None:
            await consume(part)              # an async iterator of the part's bytes
        else:
            fields[part.name] = await part.text(limit=65_536)

A part not read to its end is skipped when the next one is asked for.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable
from typing import Self

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from fleetkeeper.errors import BadRequest, Invalid

MAX_PARTS = 64
_PART, _DATA, _END, _DONE = "part", "data", "end", "done"


def _malformed(detail: str) -> BadRequest:
    return BadRequest(f"malformed multipart body: {detail}", code="malformed")


class Part:
    """One part of the form: its name, its file name (None for a plain field), its bytes."""

    def __init__(
        self, reader: FormReader, name: str, filename: str | None, content_type: str | None
    ) -> None:
        self.name = name
        self.filename = filename
        self.content_type = content_type
        self._reader = reader
        self.finished = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._reader._data(self)
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def text(self, limit: int) -> str:
        """The part as UTF-8 text; Invalid when it is longer than `limit` bytes."""
        data = bytearray()
        async for chunk in self:
            data += chunk
            if len(data) > limit:
                raise Invalid(f"{self.name}: at most {limit} bytes", field=self.name)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise Invalid(f"{self.name}: not UTF-8 text", field=self.name) from None


class FormReader:
    """The parts of a multipart/form-data body, in the order the client sent them."""

    def __init__(
        self, content_type: str, stream: AsyncIterable[bytes], *, max_parts: int = MAX_PARTS
    ) -> None:
        kind, params = parse_options_header(content_type)
        if kind != b"multipart/form-data" or not params.get(b"boundary"):
            raise BadRequest(
                "send the upload as multipart/form-data (with a boundary)", code="malformed"
            )
        self._stream = aiter(stream)
        self._events: deque[tuple[str, object]] = deque()
        self._name = bytearray()
        self._value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._current: Part | None = None
        self._parts = 0
        self._max_parts = max_parts
        self._done = False
        try:
            self._parser = MultipartParser(
                params[b"boundary"],
                {
                    "on_part_begin": self._headers.clear,
                    "on_header_field": self._on_header_field,
                    "on_header_value": self._on_header_value,
                    "on_header_end": self._on_header_end,
                    "on_headers_finished": self._on_headers_finished,
                    "on_part_data": self._on_part_data,
                    "on_part_end": lambda: self._events.append((_END, None)),
                    "on_end": lambda: self._events.append((_DONE, None)),
                },
            )
        except FormParserError as exc:
            raise _malformed(str(exc)) from None

    # The parser's callbacks turn what it finds into events, read in order below.

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[bytes(self._name).lower()] = bytes(self._value)
        self._name.clear()
        self._value.clear()

    def _on_headers_finished(self) -> None:
        self._events.append((_PART, dict(self._headers)))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self._events.append((_DATA, data[start:end]))

    async def _next_event(self) -> tuple[str, object]:
        while not self._events:
            try:
                chunk = await anext(self._stream)
            except StopAsyncIteration:
                raise _malformed("the body ended before the closing boundary") from None
            try:
                self._parser.write(chunk)
            except FormParserError as exc:
                raise _malformed(str(exc)) from None
        return self._events.popleft()

    async def _data(self, part: Part) -> bytes | None:
        """The next chunk of `part`, None at its end."""
        if part.finished or part is not self._current:
            return None
        kind, value = await self._next_event()
        if kind == _DATA:
            assert isinstance(value, bytes)
            return value
        if kind != _END:
            raise _malformed(f"unexpected {kind} inside a part")
        part.finished = True
        return None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Part:
        if self._current is not None:
            while await self._data(self._current) is not None:
                pass  # skip what the caller did not read
        if self._done:
            raise StopAsyncIteration
        kind, value = await self._next_event()
        if kind == _DONE:
            self._done = True
            raise StopAsyncIteration
        if kind != _PART or not isinstance(value, dict):
            raise _malformed(f"unexpected {kind} between parts")
        self._parts += 1
        if self._parts > self._max_parts:
            raise _malformed(f"more than {self._max_parts} parts")
        _, options = parse_options_header(value.get(b"content-disposition", b""))
        if not options.get(b"name"):
            raise _malformed("a part without a name in its Content-Disposition")
        filename = options.get(b"filename")
        content_type = value.get(b"content-type")
        self._current = Part(
            self,
            options[b"name"].decode("utf-8", "replace"),
            filename.decode("utf-8", "replace") if filename is not None else None,
            content_type.decode("latin-1") if content_type is not None else None,
        )
        return self._current
