"""The HTTP side of pyphi-serve: routes, the API key, body limits, the one-model queue and
server-sent events, on the standard library's ThreadingHTTPServer.

Why the standard library: a server of one model that generates one answer at a time needs no
async framework. A thread per connection is plenty, SSE is plain writes, and a write to (or a
peek at) the socket tells when the client has gone. No dependency to install, pin or audit.

One generation at a time (ModelQueue): a request waits its turn in arrival order; when `queue`
requests already wait beside the one being served, a new one is answered 503 at once. A client
that goes away (while waiting, or while its answer is generated or streamed) is noticed between
tokens: its generation is closed and the model passes to the next request.

Streaming responses are close-delimited (`Connection: close`, no chunked encoding); other
responses have a Content-Length and keep the connection alive. Errors are OpenAI's error object
with a matching status (pyphi.server_api.APIError).

Not here: what the requests mean (pyphi.server_api), the command line (pyphi.server).
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import json
import select
import socket
import threading
import traceback
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from . import server_api
from .server_api import APIError, ServedModel

DEFAULT_QUEUE = 16  # requests that may wait while one is served
DEFAULT_MAX_BODY = 8 * 1024 * 1024  # bytes of a request body
DRAIN_LIMIT = 64 * 1024 * 1024  # an oversized body is read (and dropped) up to this, so the client sees the 413
SOCKET_TIMEOUT = 120.0  # seconds a client may stall while sending or receiving
WAIT_POLL = 0.25  # seconds between checks that a queued client is still there


class ClientGone(Exception):
    """The client closed its connection; nothing more can be sent to it."""


class ModelQueue:
    """One holder at a time, the others wait in arrival order, at most `queue` of them."""

    def __init__(self, queue: int):
        self.queue = queue
        self._lines: collections.deque = collections.deque()  # the holder first
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def turn(self, gone: Callable[[], bool]) -> Iterator[None]:
        """Hold the model for a with-block. Raises APIError 503 when the queue is full, and
        ClientGone (leaving the queue) if gone() while waiting."""
        ticket = object()
        with self._changed:
            if len(self._lines) > self.queue:
                raise APIError(503, f"the server is busy: one request is being answered and {self.queue} are "
                                    "waiting; try again later", type="server_error", code="server_busy")
            self._lines.append(ticket)
            try:
                while self._lines[0] is not ticket:
                    if self._changed.wait(WAIT_POLL) is False and gone():
                        raise ClientGone()
            except BaseException:
                self._leave(ticket)
                raise
        try:
            yield
        finally:
            with self._changed:
                self._leave(ticket)

    def _leave(self, ticket) -> None:
        self._lines.remove(ticket)
        self._changed.notify_all()


class Server(ThreadingHTTPServer):
    """pyphi-serve's HTTP server: the served model and the request policy. (Its connection
    threads are daemons, as ThreadingHTTPServer makes them: a stalled client never blocks exit.)"""

    def __init__(self, served: ServedModel, address: tuple[str, int], *, api_key: str | None = None,
                 queue: int = DEFAULT_QUEUE, max_body: int = DEFAULT_MAX_BODY, log_requests: bool = True):
        self.served = served
        self.api_key = api_key.encode() if api_key else None
        self.model_queue = ModelQueue(queue)
        self.max_body = max_body
        self.log_requests = log_requests
        super().__init__(address, Handler)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pyphi-serve"
    timeout = SOCKET_TIMEOUT
    server: Server

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    # Other methods get OpenAI's 404 rather than http.server's HTML 501 page.
    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def log_message(self, format: str, *args) -> None:
        if self.server.log_requests:
            super().log_message(format, *args)

    def _handle(self, method: str) -> None:
        self._body_read = False
        try:
            try:
                self._route(method)
            except APIError as e:
                self._drain_body()
                self._send_json(e.status, e.body(), retry_after=e.status == 503)
            except Exception as e:  # noqa: BLE001 - a failed generation (or a bug): the client gets a 500
                self.log_error("%s", traceback.format_exc())
                self.close_connection = True
                self._send_json(500, _internal_error(e).body())
        except (ClientGone, ConnectionError, TimeoutError):
            self.close_connection = True

    def _route(self, method: str) -> None:
        self._check_key()
        path = urlsplit(self.path).path.rstrip("/")
        route = ROUTES.get((method, path))
        if route is None and method == "GET" and path.startswith("/v1/models/"):
            route = _model_card
        if route is None:
            raise APIError(404, f"{method} {path or '/'}: no such route", code="unknown_route")
        route(self, path)

    def _check_key(self) -> None:
        """Authorization: Bearer KEY on every request, compared in constant time."""
        if self.server.api_key is None:
            return
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.server.api_key):
            raise APIError(401, "invalid or missing API key (send Authorization: Bearer KEY)",
                           type="authentication_error", code="invalid_api_key")

    # ---- request bodies ----

    def _json_body(self) -> dict:
        length = self._content_length()
        if length > self.server.max_body:
            raise APIError(413, f"the request body has {length} bytes; the limit is {self.server.max_body}",
                           code="request_too_large")
        self._body_read = True
        try:
            body = json.loads(self.rfile.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from e
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object", code="invalid_json")
        return body

    def _content_length(self) -> int:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise APIError(411, "chunked request bodies are not supported: send a Content-Length")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise APIError(400, "bad Content-Length")
        return length

    def _drain_body(self) -> None:
        """Read and drop a body that will not be used, so the client gets to read the answer
        and the connection can carry its next request; past DRAIN_LIMIT it is closed instead."""
        if self._body_read:
            return
        self._body_read = True
        try:
            left = self._content_length()
        except APIError:
            return  # the connection is closing anyway
        if left > DRAIN_LIMIT:
            self.close_connection = True
            return
        while left > 0:
            got = self.rfile.read(min(left, 1 << 16))
            if not got:
                self.close_connection = True
                return
            left -= len(got)

    # ---- responses ----

    def _send_json(self, status: int, body: dict, retry_after: bool = False) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if retry_after:
            self.send_header("Retry-After", "1")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _send_events(self, events: Iterator[dict]) -> None:
        """Server-sent events, one `data: {json}` per chunk, then `data: [DONE]`. An error after
        the status was sent goes as an event holding OpenAI's error object."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for event in self._while_connected(events):
                self._write_event(json.dumps(event, ensure_ascii=False))
        except (ClientGone, ConnectionError, TimeoutError):
            raise
        except Exception as e:  # noqa: BLE001 - the client must learn that its answer broke off
            self.log_error("%s", traceback.format_exc())
            self._write_event(json.dumps(_internal_error(e).body()))
        self._write_event("[DONE]")

    def _write_event(self, data: str) -> None:
        self.wfile.write(f"data: {data}\n\n".encode())

    def _while_connected(self, items: Iterator) -> Iterator:
        for item in items:
            if self._client_gone():
                raise ClientGone()
            yield item

    def _client_gone(self) -> bool:
        """Whether the client has closed its end: the socket reads as end-of-file. (Data waiting
        there, such as a pipelined request, is left unread.)"""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    # ---- generation ----

    def _generate(self, make_request: Callable) -> None:
        served = self.server.served
        request = make_request(self._json_body(), served)
        with self.server.model_queue.turn(self._client_gone):
            chunks = server_api.start(served, request)
            try:
                if request.stream:
                    self._send_events(server_api.events(request, chunks))
                else:
                    self._send_json(200, server_api.join(request, self._while_connected(chunks)))
            finally:
                chunks.close()


def _internal_error(e: Exception) -> APIError:
    return APIError(500, f"the server failed: {type(e).__name__}: {e}", type="server_error")


# ----------------------------------------------------------------------------------------------
# Routes: (method, path) -> handler(request_handler, path)


def _health(h: Handler, path: str) -> None:
    h._send_json(200, {"status": "ok"})


def _models(h: Handler, path: str) -> None:
    h._send_json(200, {"object": "list", "data": [h.server.served.card()]})


def _model_card(h: Handler, path: str) -> None:
    served = h.server.served
    served.check_name(path.removeprefix("/v1/models/"))
    h._send_json(200, served.card())


def _chat(h: Handler, path: str) -> None:
    h._generate(server_api.chat_request)


def _completions(h: Handler, path: str) -> None:
    h._generate(server_api.completion_request)


ROUTES = {
    ("GET", "/health"): _health,
    ("GET", "/v1/models"): _models,
    ("POST", "/v1/chat/completions"): _chat,
    ("POST", "/v1/completions"): _completions,
}
