"""Reading and writing JSON bodies with msgspec, with the API's error answers."""

from __future__ import annotations

from typing import Any, TypeVar

import falcon
import msgspec

from web.errors import Problem, validation_problem

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


_DRAIN_LIMIT = 4 * 1024 * 1024


def _drain(req: falcon.Request) -> None:
    """Read and drop a refused body, so the client, still sending, gets the answer rather than a
    reset connection. Beyond a few MiB the connection is simply closed."""
    left = min(req.content_length or 0, _DRAIN_LIMIT)
    while left > 0:
        chunk = req.bounded_stream.read(min(left, 65536))
        if not chunk:
            break
        left -= len(chunk)


def read_raw(req: falcon.Request, max_bytes: int) -> bytes:
    # A chunked body has no Content-Length; gunicorn's input stream still ends at its end.
    stream = req.bounded_stream if req.content_length is not None else req.stream
    return stream.read(max_bytes + 1)


def read_body(req: falcon.Request, schema: type[T] | Any, max_bytes: int) -> T:
    content_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise Problem(falcon.HTTP_415, "unsupported-media-type", "Unsupported media type",
                      "send the body as application/json")
    if req.content_length is not None and req.content_length > max_bytes:
        _drain(req)
        raise Problem(falcon.HTTP_413, "payload-too-large", "Payload too large",
                      f"the body may be at most {max_bytes} bytes")
    raw = read_raw(req, max_bytes)
    if len(raw) > max_bytes:
        raise Problem(falcon.HTTP_413, "payload-too-large", "Payload too large",
                      f"the body may be at most {max_bytes} bytes")
    if not raw.strip():
        raise Problem(falcon.HTTP_400, "bad-request", "Bad request", "the request needs a JSON body")
    try:
        return msgspec.json.decode(raw, type=schema)
    except msgspec.ValidationError as exc:
        # A typed decode stops at the first wrong type, even in a body that is not JSON at all.
        try:
            msgspec.json.decode(raw)
        except msgspec.DecodeError as malformed:
            raise Problem(falcon.HTTP_400, "malformed-json", "Malformed JSON", str(malformed)) from None
        raise validation_problem(exc) from None
    except msgspec.DecodeError as exc:
        raise Problem(falcon.HTTP_400, "malformed-json", "Malformed JSON", str(exc)) from None


def write_json(resp: falcon.Response, body: Any, status: str = falcon.HTTP_200) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = _encoder.encode(body)
