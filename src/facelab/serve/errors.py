"""Every error of the service as `{"error": "<one line>"}` with its HTTP status.

A client sees one line saying what was wrong with its request, naming the field; never a
traceback, and never a path of the server's file system (the gallery folder, the model file):
FacelabError messages name files for the command line's user, who owns them, so they are
scrubbed here. Unexpected exceptions answer 500 with a fixed message and are logged with their
traceback on the server.
"""

import logging
import re
from collections.abc import Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from facelab.errors import FacelabError

log = logging.getLogger(__name__)
INTERNAL = "internal error (logged on the server)"
MAX_MESSAGE = 300  # characters of a message: one line, however long the cause
# an absolute POSIX path of two parts or more (/tmp/x; not /identify, not a URL's path, which
# follows "//host"); the server's own folders are hidden by name whatever their depth
_PATH = re.compile(r"(?<![\w.:/])(?:/[\w.\-~+]+){2,}")


class ApiError(Exception):
    """A refused request: the HTTP status, the one-line message the client reads and any
    headers the status calls for (401: WWW-Authenticate)."""

    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def one_line(message: str, hide: Iterable[str] = ()) -> str:
    """`message` on one line, at most MAX_MESSAGE characters, each string of `hide` (server paths)
    and any other absolute path replaced by a placeholder."""
    for secret in sorted((h for h in hide if h), key=len, reverse=True):
        message = message.replace(secret, "<server path>")
    message = _PATH.sub("<server path>", message)
    message = " ".join(message.split())
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def install_handlers(app: FastAPI, hide: Iterable[str]) -> None:
    """Answer every exception as an error object (module docstring); `hide`: server paths that
    must not appear in an answer."""
    hide = tuple(hide)

    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return error(e.status, one_line(e.message, hide), e.headers)

    async def facelab_error(_: Request, e: FacelabError) -> JSONResponse:
        # bad input reaching the library unanticipated: the client's mistake, told as is
        return error(400, one_line(str(e), hide))

    async def validation(_: Request, e: RequestValidationError) -> JSONResponse:
        return error(400, one_line(_validation_message(e), hide))

    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        detail = e.detail if isinstance(e.detail, str) else "request refused"
        return error(e.status_code, one_line(detail, hide), getattr(e, "headers", None))

    async def internal(request: Request, e: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=e)
        return error(500, INTERNAL)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(FacelabError, facelab_error)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, internal)


def _validation_message(e: RequestValidationError) -> str:
    """The first problem FastAPI found, as `query k: Input should be ...`."""
    problems = e.errors()
    if not problems:
        return "malformed request"
    first = problems[0]
    where = " ".join(str(part) for part in first.get("loc", ()))
    return f"{where}: {first.get('msg', 'invalid')}" if where else first.get("msg", "invalid")
