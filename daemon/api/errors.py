"""Every error the daemon's HTTP servers answer is JSON: ``{"error": "<what and what to do>", ...}``.

Two layers, because aiohttp produces errors in two places:

- ``json_errors``, a middleware on every application the daemon serves, turns what
  the router and aiohttp's helpers raise (404 unknown path, 405 with ``Allow``, 413
  body over ``client_max_size``, any other ``HTTPException``) and any error
  response a handler returns as text into the documented ``Error`` body, and any
  exception a handler lets escape into a 500 carrying a request id. The exception
  is logged with its traceback under that id; the client never sees the traceback.
- ``JsonErrorRequestHandler``: aiohttp's protocol handler answers a request it
  cannot parse (request line over ``max_line_size``, a header over
  ``max_field_size``, too many headers, a bad method or bad characters) itself,
  before any application or middleware exists for it, through
  ``RequestHandler.handle_error``, as ``text/plain``. This subclass overrides that
  method. aiohttp offers no option for it (aio-libs/aiohttp#3287), so
  ``JsonErrorAppRunner`` builds the connection handlers from ``JsonErrorServer``:
  the one place that depends on aiohttp internals (``AppRunner._make_server``),
  pinned by tests/integration/test_http_errors.py.

The parser's limits stay in force; only the request line's is raised
(``MAX_REQUEST_LINE_BYTES``) so that every query the OpenAPI document allows fits.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.web_request import BaseRequest

from daemon.telemetry import get_logger

log = get_logger("api.errors")

# The longest request line (method, path and query string) the parser reads. The query
# API's parameters allow about 86 kB in the worst case (12 filters and q of 512 characters,
# each up to 12 bytes percent-encoded, plus the cursor): tests/unit/test_api_params.py checks
# this covers the document. Anything longer is 414 before a handler runs.
MAX_REQUEST_LINE_BYTES = 128 * 1024
# aiohttp's own defaults: one header (name and value) and the number of headers.
MAX_HEADER_FIELD_BYTES = 8190
MAX_HEADERS = 128

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_REASONS = {
    400: "the request is not valid HTTP",
    404: "no such path",
    405: "method not allowed",
    413: "the request body is too large",
    414: "the request line is too long",
    431: "the request's headers are too large",
}


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    """The documented Error body (``#/components/schemas/Error``) with ``status``."""
    return web.Response(
        body=orjson.dumps({"error": message, **extra}),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def request_id(request: BaseRequest) -> str:
    """The caller's ``X-Request-Id`` when it is a plain token, else a new random one."""
    given = request.headers.get("X-Request-Id", "")
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex


def internal_error(request: BaseRequest, exc: BaseException | None) -> web.Response:
    """500 with a request id; the exception and its traceback go to the log only."""
    rid = request_id(request)
    log.error(
        "api.unhandled_error",
        request_id=rid,
        method=request.method,
        path=request.path,
        error=repr(exc) if exc is not None else None,
        exc_info=exc,
    )
    return error_response(
        500,
        f"internal error; the daemon's log has the details under request id {rid}",
        {"X-Request-Id": rid},
        request_id=rid,
    )


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> web.Response:
    """The JSON form of an HTTPException (raised or returned), keeping headers such as Allow."""
    status = exc.status
    headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = sorted(exc.allowed_methods)
        message = f"method {request.method} is not allowed on {request.path}; allowed: {', '.join(allowed)}"
        return error_response(status, message, headers, allowed_methods=allowed)
    if isinstance(exc, web.HTTPNotFound):
        return error_response(
            status, f"no such path {request.path}; the API is described at /openapi.json", headers
        )
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        # aiohttp's text names the limit: "Maximum request body size 1048576 exceeded."
        return error_response(status, f"the request body is too large: {exc.text}", headers)
    if exc.content_type == "application/json" and exc.body:
        return web.Response(body=exc.body, status=status, headers=headers, content_type="application/json")
    text = exc.text if exc.text and exc.content_type == "text/plain" else ""
    return error_response(status, text or exc.reason or _REASONS.get(status, "request failed"), headers)


def _is_json(content_type: str) -> bool:
    """JSON, including the AWS JSON protocol's own type (the CloudTrail-compatible API's errors)."""
    return content_type == "application/json" or content_type.startswith("application/x-amz-json-")


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Answer every error as JSON; see the module docstring.

    A handler's own JSON errors and any non-error response pass through untouched. A
    response already being streamed cannot be replaced and is left as it is.
    """
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(request, exc)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return internal_error(request, exc)
    if response.status < 400 or response.prepared or _is_json(response.content_type):
        return response
    if isinstance(response, web.HTTPException):
        return _from_http_exception(request, response)
    reason = response.reason or _REASONS.get(response.status, "request failed")
    headers = {
        k: v
        for k, v in response.headers.items()
        if k.lower() not in ("content-type", "content-length", "content-encoding")
    }
    return error_response(response.status, reason, headers)


def _parser_error(
    handler: web.RequestHandler, exc: BaseException | None, message: str | None
) -> tuple[int, str]:
    """Status and message for a request aiohttp's parser refused."""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == handler.max_line_size and limit != handler.max_field_size:
            return 414, f"the request line is longer than {limit} bytes; send fewer or shorter parameters"
        return 431, f"a request header is longer than {limit} bytes"
    detail = (getattr(exc, "message", None) or message or "").strip().splitlines()
    first = detail[0].rstrip(":").strip()[:200] if detail else ""
    if isinstance(exc, BadHttpMessage) and first.lower().startswith("too many headers"):
        return 431, f"the request has more than {handler.max_headers} headers"
    status = exc.code if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500 else 400
    text = _REASONS.get(status, "the request is not valid HTTP")
    return status, f"{text}: {first}" if first else text


class JsonErrorRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, answering what it refuses itself with the JSON Error body."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Like aiohttp's: called for a request the parser refused (4xx), an exception
        that escaped every middleware (500) or a handler timeout (504). Closes the
        connection, as aiohttp does: after a parse error its framing is unknown."""
        if request.writer.output_size > 0:
            # Part of a response is already on the wire: only closing is left (as aiohttp does).
            raise ConnectionError("a response was partly sent; cannot send the error response")
        if status == 500:
            response = internal_error(request, exc)
        elif status == 504:
            response = error_response(504, "the request took too long to handle; retry later")
        else:
            status, text = _parser_error(self, exc, message)
            # A port scanner or TLS on the plain port is routine: a warning without traceback.
            log.warning("api.bad_request", status=status, remote=request.remote, reason=text[:200])
            response = error_response(status, text)
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    """aiohttp's low-level server, building ``JsonErrorRequestHandler`` connection handlers."""

    def __init__(
        self,
        handler: Any,
        *,
        request_factory: Any,
        handler_cancellation: bool,
        loop: asyncio.AbstractEventLoop,
        **handler_kwargs: Any,
    ) -> None:
        super().__init__(
            handler,
            request_factory=request_factory,
            handler_cancellation=handler_cancellation,
            loop=loop,
            **handler_kwargs,
        )
        self._tk_loop = loop
        self._tk_handler_kwargs = handler_kwargs

    def __call__(self) -> web.RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._tk_loop, **self._tk_handler_kwargs)


class JsonErrorAppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer parser errors as JSON, with the limits above.

    ``handler_kwargs`` are aiohttp's RequestHandler options (``access_log``,
    ``keepalive_timeout``, ...); the parser limits default to this module's.
    """

    def __init__(
        self,
        app: web.Application,
        *,
        handle_signals: bool = False,
        shutdown_timeout: float = 60.0,
        **handler_kwargs: Any,
    ) -> None:
        handler_kwargs.setdefault("max_line_size", MAX_REQUEST_LINE_BYTES)
        handler_kwargs.setdefault("max_field_size", MAX_HEADER_FIELD_BYTES)
        handler_kwargs.setdefault("max_headers", MAX_HEADERS)
        super().__init__(
            app, handle_signals=handle_signals, shutdown_timeout=shutdown_timeout, **handler_kwargs
        )
        self._tk_handler_kwargs = handler_kwargs

    async def _make_server(self) -> web.Server:
        # The application's own server runs the startup signals and freezes the app; its
        # handler and request factory are reused, only the connection handler class changes.
        base = await super()._make_server()
        return JsonErrorServer(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **self._tk_handler_kwargs,
        )


def json_app(**kwargs: Any) -> web.Application:
    """A ``web.Application`` with ``json_errors`` first among its middlewares."""
    middlewares = [json_errors, *kwargs.pop("middlewares", ())]
    return web.Application(middlewares=middlewares, **kwargs)
