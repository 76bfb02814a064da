"""The OpenAI HTTP API (Starlette): thin routes over ``ClientService``.

Bodies are size-limited while they are read (413), validated against the OpenAI schema (400),
and errors from the network become OpenAI error objects with the matching status. A caller
that disconnects cancels its request all the way to the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from cocoon.client.service import Call, ClientService, UpstreamError
from cocoon.openai.errors import error_body, from_code
from cocoon.openai.schemas import InvalidRequest, Kind, parse_request
from cocoon.protocol.errors import ErrorCode

T = TypeVar("T")


class BodyTooLarge(Exception):
    pass


class EventStream(StreamingResponse):
    """A server-sent event stream whose status line and headers leave together with its first
    event. The first event is ready when the response starts (the first answer chunk has come),
    so the caller gets headers and first token in one read instead of waking twice.

    It runs in the request's own task, where Starlette would start a task group (a task for the
    events, one watching for a disconnect): the first event leaves without waiting for a turn of
    the event loop. ``watcher`` (the handler's, reused) ends when the caller leaves, which
    cancels the stream and gives ``call`` up."""

    def __init__(
        self,
        content: AsyncGenerator[bytes, None],
        *,
        watcher: asyncio.Task[None] | None = None,
        call: Call | None = None,
        media_type: str = "text/event-stream",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self.events = content
        self.watcher = watcher
        self.call = call

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = self.watcher or asyncio.create_task(_disconnected(receive))
        try:
            await _unless_disconnected(self.call, self.stream_response(send, scope.get(SERVER_SEND, send)), watcher)
        finally:
            watcher.cancel()

    async def stream_response(self, send: Send, body_send: Send | None = None) -> None:
        """The events, the first with the response's start through ``send``, the later ones
        through ``body_send`` (the server's own, past Starlette's middleware, which watches for
        the response's start only) or pushed by the call from its connection's read loop."""
        events = self.events
        body_send = body_send or send
        async with contextlib.aclosing(events):  # a stream cut short still cleans up at once
            first = await anext(events, None)
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if first is not None:
                await send({"type": "http.response.body", "body": first, "more_body": True})
                if self.call is not None:  # later chunks, written from the connection's read loop
                    self.call.push_events(
                        lambda body: body_send({"type": "http.response.body", "body": body, "more_body": True})
                    )
                async for chunk in events:
                    await body_send({"type": "http.response.body", "body": chunk, "more_body": True})
        await body_send({"type": "http.response.body", "body": b"", "more_body": False})


def error_response(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=status)


def upstream_error_response(exc: UpstreamError) -> JSONResponse:
    response = error_response(*from_code(exc.code, str(exc)))
    if response.status_code in (429, 503):
        response.headers["Retry-After"] = "1"  # busy or between workers: worth trying again soon
    return response


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def _disconnected(receive: Callable[[], Awaitable[MutableMapping[str, Any]]]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(call: Call | None, work: Awaitable[T], watcher: asyncio.Task[None]) -> T | None:
    """The result of ``work``, or None (with the request cancelled) if the caller left first.

    ``work`` runs in this task, not one of its own: on the way to the first token every hop
    between tasks costs a turn of the event loop. The watcher cancels this task if the caller
    leaves meanwhile, and ``work`` cleans up after itself as it is cancelled."""
    task = asyncio.current_task()
    assert task is not None
    waiting, left = True, False

    def caller_left(watched: asyncio.Task[None]) -> None:
        nonlocal left
        if waiting and not watched.cancelled():
            left = True
            task.cancel("caller disconnected")

    watcher.add_done_callback(caller_left)
    try:
        result = await work
    except asyncio.CancelledError:
        if not left or task.uncancel() > 0:
            raise  # cancelled from elsewhere too (the server is stopping)
    except BaseException:
        if left:
            task.uncancel()  # the work turned the caller's leaving into another error
        raise
    else:
        if not left:
            return result
        # the caller left, but the work swallowed the cancellation and finished
        if task.uncancel() > 0:
            raise asyncio.CancelledError
    finally:
        waiting = False
        watcher.remove_done_callback(caller_left)
    if call is not None:
        await call.abort("caller disconnected")
    return None


SERVER_SEND = "cocoon.server_send"
"""Where ``ClientApp`` keeps the server's own ``send`` in an HTTP request's scope."""


class ClientApp:
    """The client's ASGI application: Starlette's, with the server's own ``send`` kept in the
    scope (``SERVER_SEND``), through which a streamed answer's events go once the response has
    started: Starlette's two middleware wrappers around ``send`` only note the response's start,
    and cost two coroutines for every write. Not once a middleware is added to the app (one that
    may see or change bodies, as a ``BaseHTTPMiddleware`` does): the events then go through it."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not getattr(self.app, "user_middleware", None):
            scope[SERVER_SEND] = send
        await self.app(scope, receive, send)


def build_app(service: ClientService, *, max_body_bytes: int) -> ClientApp:
    async def completions(request: Request, kind: Kind) -> Response:
        try:
            body = await read_body(request, max_body_bytes)
        except BodyTooLarge:
            return error_response(
                413, error_body(f"Request body exceeds {max_body_bytes} bytes", "invalid_request_error")
            )
        except ClientDisconnect:  # the caller left while sending its body: nobody to answer
            return Response(status_code=499)
        try:
            parsed = parse_request(kind, body)
        except InvalidRequest as exc:
            return error_response(400, error_body(str(exc), "invalid_request_error", exc.param))
        # Watch for the caller going away while we wait: that cancels the request upstream.
        watcher = asyncio.create_task(_disconnected(request.receive))
        watching = True
        try:
            begun = await _unless_disconnected(None, service.begin(kind, parsed, body), watcher)
            if begun is None:
                return Response(status_code=499)
            call, first = begun
            if parsed.stream:
                headers = {"Cache-Control": "no-cache"}
                stream = EventStream(call.events(first), watcher=watcher, call=call, headers=headers)
                watching = False  # the stream watches for the caller leaving from here on
                return stream
            answer = await _unless_disconnected(call, call.response(first), watcher)
            if answer is None:
                return Response(status_code=499)
            return JSONResponse(answer)
        except UpstreamError as exc:
            return upstream_error_response(exc)
        finally:
            if watching:
                watcher.cancel()

    async def chat_completions(request: Request) -> Response:
        return await completions(request, "chat")

    async def text_completions(request: Request) -> Response:
        return await completions(request, "completion")

    async def list_models(request: Request) -> Response:
        try:
            models = await service.models()
        except UpstreamError as exc:
            return upstream_error_response(exc)
        return JSONResponse({"object": "list", "data": [_model_object(m.id, m.workers) for m in models]})

    async def get_model(request: Request) -> Response:
        name = request.path_params["model"]
        try:
            models = await service.models()
        except UpstreamError as exc:
            return upstream_error_response(exc)
        for m in models:
            if m.id == name:
                return JSONResponse(_model_object(m.id, m.workers))
        return error_response(*from_code(ErrorCode.UNKNOWN_MODEL, f"The model `{name}` does not exist", "model"))

    async def market(request: Request) -> Response:
        try:
            return JSONResponse(await service.market())
        except UpstreamError as exc:
            return upstream_error_response(exc)

    async def receipts(request: Request) -> Response:
        """The worker-signed usage records of recent requests, newest first."""
        limit = request.query_params.get("limit", "100")
        if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= 1000:
            return error_response(400, error_body("limit must be 1 to 1000", "invalid_request_error", "limit"))
        return JSONResponse({"object": "list", "data": service.receipts.recent(int(limit))})

    async def health(request: Request) -> Response:
        try:
            await service.pool.pick(timeout=0.5)
        except Exception:  # noqa: BLE001 - health reports, never raises
            return JSONResponse({"status": "no proxy"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(404, error_body(f"Unknown path {request.url.path}", "invalid_request_error"))

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        response = error_response(405, error_body(f"Method {request.method} not allowed", "invalid_request_error"))
        response.headers.update(getattr(exc, "headers", None) or {})  # (Allow: the methods it takes)
        return response

    async def server_error(request: Request, exc: Exception) -> Response:
        return error_response(500, error_body("Internal error in the cocoon client", "server_error"))

    return ClientApp(
        Starlette(
            routes=[
                Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                Route("/v1/completions", text_completions, methods=["POST"]),
                Route("/v1/models", list_models, methods=["GET"]),
                Route("/v1/models/{model:path}", get_model, methods=["GET"]),
                Route("/v1/cocoon/receipts", receipts, methods=["GET"]),
                Route("/v1/market", market, methods=["GET"]),
                Route("/healthz", health, methods=["GET"]),
            ],
            exception_handlers={404: not_found, 405: method_not_allowed, 500: server_error},
        )
    )


def _model_object(model: str, workers: int) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": int(time.time()), "owned_by": "cocoon", "workers": workers}
