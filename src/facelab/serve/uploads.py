"""Multipart uploads read into memory, never more than the limit, never onto disk.

Starlette's own form parser spools file parts above 1 MB to temporary files; photos of people
should not land on the server's disk, so the body is parsed here, with python-multipart's
streaming parser, as it arrives. The declared Content-Length is checked before anything is read,
and the bytes are counted while reading (a chunked body declares none): past `limit` bytes the
request is refused with 413 and nothing more is read.
"""

from dataclasses import dataclass, field

from python_multipart.multipart import FormParserError, MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from facelab.serve.errors import ApiError

MAX_PARTS = 100  # form fields of one request: more is not a photo upload


@dataclass
class Upload:
    """One form field: its name, the file name the client gave (or None) and its bytes."""

    field: str
    filename: str | None
    data: bytearray = field(default_factory=bytearray)


async def read_form(request: Request, limit: int, fields: str) -> dict[str, list[Upload]]:
    """The multipart/form-data body of `request` as {field name: [Upload, ...]}, in order.

    `fields` names what the endpoint expects, for the messages. 413: the body is larger than
    `limit` bytes; 400: not multipart/form-data, or malformed."""
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise ApiError(400, f"{fields}: send the photo(s) as multipart/form-data")
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise ApiError(413, _too_large(limit))
    parts = _Parts(fields)
    parser = MultipartParser(boundary, parts.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise ApiError(413, _too_large(limit))
            parser.write(chunk)
        parser.finalize()
    except FormParserError:
        raise ApiError(400, f"{fields}: malformed multipart/form-data body") from None
    except ClientDisconnect:  # nobody reads the answer; no traceback in the log for it
        raise ApiError(400, f"{fields}: the client went away during the upload") from None
    if not parts.ended:
        raise ApiError(400, f"{fields}: the multipart/form-data body is cut short")
    form: dict[str, list[Upload]] = {}
    for part in parts.done:
        form.setdefault(part.field, []).append(part)
    return form


def _too_large(limit: int) -> str:
    return f"upload larger than the limit of {limit / 2**20:g} MB"


class _Parts:
    """python-multipart callbacks that collect the parts (headers, then data) in memory."""

    def __init__(self, fields: str) -> None:
        self.fields = fields
        self.done: list[Upload] = []
        self.ended = False
        self._part: Upload | None = None
        self._name, self._value = b"", b""
        self._disposition = b""

    def callbacks(self) -> dict:
        return {"on_part_begin": self._begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._data,
                "on_part_end": self._end, "on_end": self._all_done}

    def _begin(self) -> None:
        if len(self.done) >= MAX_PARTS:
            raise ApiError(400, f"{self.fields}: more than {MAX_PARTS} form fields")
        self._part, self._disposition = None, b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._name.lower() == b"content-disposition":
            self._disposition = self._value
        self._name, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise ApiError(400, f"{self.fields}: a form part without a name")
        filename = options.get(b"filename")
        self._part = Upload(_text(options[b"name"]),
                            None if filename is None else _text(filename))

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._part is not None:
            self._part.data += data[start:end]

    def _end(self) -> None:
        if self._part is not None:
            self.done.append(self._part)
        self._part = None

    def _all_done(self) -> None:
        self.ended = True


def _text(value: bytes) -> str:
    """A header parameter as text: UTF-8 (what browsers send), else Latin-1 (any bytes)."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")
