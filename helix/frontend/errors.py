"""Every error leaves the server in OpenAI's shape:
`{"error": {"message", "type", "param", "code"}}`.

Handlers raise `APIError`; `error_middleware` also reshapes aiohttp's own
HTTP errors (404, 405, 413, ...) and, as a last resort, turns an unexpected
exception into a logged 500.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from helix.engine import EngineDeadError, RequestFailedError
from helix.frontend.protocol import ErrorBody, ErrorResponse, encode

logger = logging.getLogger(__name__)

_FIELD_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*): ")
_MSGSPEC_PATH = re.compile(r" - at `\$\.?([^`]*)`$")


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    @property
    def type(self) -> str:
        if self.status < 500:
            return "invalid_request_error"
        return "service_unavailable" if self.status == 503 else "server_error"

    def body(self) -> ErrorResponse:
        return ErrorResponse(ErrorBody(self.message, self.type, self.param, self.code))

    def response(self) -> web.Response:
        return web.Response(status=self.status, body=encode(self.body()), content_type="application/json",
                            headers=self.headers)


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param)


def from_value_error(error: ValueError) -> APIError:
    """Engine and SamplingParams errors read "field: message"; the field becomes `param`."""
    message = str(error) or type(error).__name__
    match = _FIELD_PREFIX.match(message)
    return bad_request(message, match.group(1) if match else None)


def from_decode_error(error: msgspec.MsgspecError) -> APIError:
    """msgspec errors end with " - at `$.path`"; the path becomes `param`."""
    message = str(error)
    match = _MSGSPEC_PATH.search(message)
    return bad_request(f"invalid request body: {message}", (match.group(1) or None) if match else None)


def service_unavailable(message: str, retry_after_s: int | None = None) -> APIError:
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return APIError(503, message, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except APIError as error:
        return error.response()
    except web.HTTPException as error:
        if error.status < 400:
            raise
        headers = {k: v for k, v in error.headers.items() if k.lower() in ("allow", "retry-after")}
        return APIError(error.status, _http_error_message(error, request), headers=headers).response()
    except ConnectionError:
        # The client went away and will never read this; 499 only marks the access log.
        return web.Response(status=499)
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return APIError(500, "internal server error").response()


def _http_error_message(error: web.HTTPException, request: web.Request) -> str:
    if error.status == 404:
        return f"not found: {request.method} {request.path}"
    if error.status == 405:
        return f"method {request.method} is not allowed on {request.path}"
    default = f"{error.status}: {error.reason}"
    return error.text if error.text and error.text != default else error.reason


def engine_error(error: Exception) -> APIError | None:
    """The API error for an exception from the engine, or None if it is a bug."""
    if isinstance(error, (EngineDeadError, RequestFailedError)):
        return service_unavailable(str(error))
    if isinstance(error, ValueError):
        return from_value_error(error)
    return None
