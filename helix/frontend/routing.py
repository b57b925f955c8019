"""The route table and the request/response plumbing shared by all routes.

Each routes module exports ENDPOINTS; the server registers them and
/openapi.json is generated from the same table, so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from helix.frontend.errors import bad_request, from_decode_error
from helix.frontend.protocol import encode

T = TypeVar("T")


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    request: type | None = None  # msgspec type of the JSON body
    response: type | None = None  # msgspec type of the JSON answer
    streams: bool = False  # may answer with text/event-stream instead
    public: bool = False  # needs no API key


async def read_body(request: web.Request, body_type: type[T]) -> T:
    """Decode and type-check the JSON body; 413 (from aiohttp) when it is over the size limit."""
    raw = await request.read()
    try:
        return msgspec.json.decode(raw, type=body_type)
    except msgspec.MsgspecError as error:
        raise from_decode_error(error) from None
    except RecursionError:  # msgspec skips unknown fields recursively: absurd nesting ends here
        raise bad_request("invalid request body: JSON nested too deeply", None) from None
    except UnicodeDecodeError:  # raised as is for bytes inside a JSON string that are not UTF-8
        raise bad_request("invalid request body: a string is not valid UTF-8", None) from None


def json_response(value: msgspec.Struct, status: int = 200) -> web.Response:
    return web.Response(status=status, body=encode(value), content_type="application/json")
