"""The agent's read-only HTTP API: /livez, /readyz, /v1/models[/ORG/NAME], /metrics.

JSON everywhere except /metrics (Prometheus text). Probes and scrapes are not logged.
Errors are JSON bodies with a 4xx status; an unexpected bug is a 500 without a traceback.
"""

from __future__ import annotations

import contextlib
import json
import socket
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from agent import log
from agent.errors import UsageError
from agent.modelview import ConfigView, ModelView
from agent.node import metrics
from agent.node.serverthread import ServerThread
from agent.spec import validate_repo_id

QUIET_PATHS = frozenset({"/livez", "/readyz", "/metrics"})
MODELS_PREFIX = "/v1/models"


class Status(Protocol):
    """What the API reads; the Daemon provides it (agent.node.daemon)."""

    def alive(self) -> bool:
        """True while the reconcile loop turns."""
        ...

    def loop_age(self) -> float:
        """Seconds since the reconcile loop last turned."""
        ...

    def readiness(self) -> list[str]:
        """Required models not ready yet."""
        ...

    def views(self) -> list[ModelView]:
        """Every configured model."""
        ...

    def view(self, repo: str) -> ModelView | None:
        """One configured model, or None."""
        ...

    def config_view(self) -> ConfigView:
        """Config source and reload status."""
        ...

    def record_use(self, repo: str) -> None:
        """A client asked for this model by id (`preload wait --agent`): it is in use."""
        ...


class _Reply(Exception):
    """Raised by a route to answer with an error status."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # A request line too broken to name a version still gets a status line, not a bare body.
    default_request_version = "HTTP/1.0"
    server_version = "model-cache-agent"
    timeout = 30  # a client that stops sending mid-request is dropped, not served a thread forever
    sys_version = ""

    def do_GET(self) -> None:
        self._dispatch(body=True)

    def do_HEAD(self) -> None:
        self._dispatch(body=False)

    def _not_allowed(self) -> None:
        # The request's body is never read: left on a kept-alive connection it would be
        # parsed as the next request.
        self.close_connection = True
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "read-only API: use GET"}, {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def _dispatch(self, body: bool) -> None:
        path = urlsplit(self.path).path
        if self.headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in self.headers:
            self.close_connection = True  # a GET with a body we do not read: see _not_allowed
        try:
            try:
                status, payload, ctype = self._route(path)
                self._send(status, payload, {"Content-Type": ctype} if ctype else {}, body=body)
            except _Reply as reply:
                self._send(reply.status, {"error": str(reply)}, body=body)
            except ConnectionError:
                raise
            except Exception:  # the client gets a plain 500, the log the details
                log.get().exception("api_error", path=path[:200])
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"}, body=body)
        except ConnectionError:  # the client left before the answer: not our error, nothing to say
            self.close_connection = True

    def _route(self, path: str) -> tuple[HTTPStatus, Any, str | None]:
        status = self.server.status
        if path == "/livez":
            ok = status.alive()
            body = {"alive": ok, "loop_age_seconds": round(status.loop_age(), 1)}
            return (HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE), body, None
        if path == "/readyz":
            missing = status.readiness()
            code = HTTPStatus.SERVICE_UNAVAILABLE if missing else HTTPStatus.OK
            return code, {"ready": not missing, "missing": missing}, None
        if path == "/metrics":
            text, ctype = metrics.exposition()
            return HTTPStatus.OK, text, ctype
        if path in (MODELS_PREFIX, MODELS_PREFIX + "/"):
            listing = {
                "models": [v.to_dict() for v in status.views()],
                "config": status.config_view().to_dict(),
            }
            return HTTPStatus.OK, listing, None
        if path.startswith(MODELS_PREFIX + "/"):
            repo = unquote(path[len(MODELS_PREFIX) + 1 :]).rstrip("/")
            try:
                validate_repo_id(repo)
            except UsageError as exc:
                raise _Reply(HTTPStatus.BAD_REQUEST, str(exc)) from None
            view = status.view(repo)
            if view is None:
                raise _Reply(HTTPStatus.NOT_FOUND, f"model {repo} is not configured on this agent")
            status.record_use(repo)
            return HTTPStatus.OK, view.to_dict(), None
        raise _Reply(HTTPStatus.NOT_FOUND, f"no such endpoint {path[:200]!r}")

    def _send(
        self, status: HTTPStatus, payload: Any, headers: dict[str, str] | None = None, body: bool = True
    ) -> None:
        data = payload if isinstance(payload, bytes) else (json.dumps(payload, indent=1) + "\n").encode()
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def parse_request(self) -> bool:
        self._answered = False
        if super().parse_request():
            return True
        if not self._answered:  # a blank request line: the stdlib hangs up without a word
            self.send_error(HTTPStatus.BAD_REQUEST, "empty request line")
        return False

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests get the same JSON error shape, never the stdlib's HTML page."""
        self.close_connection = self._answered = True
        if code == HTTPStatus.NOT_IMPLEMENTED:  # an unknown method: the same 405 as POST gets
            self._not_allowed()
        elif code == HTTPStatus.HTTP_VERSION_NOT_SUPPORTED:  # HTTP/2+ on a plain HTTP/1.1 port
            self._send(
                HTTPStatus.BAD_REQUEST, {"error": f"unsupported protocol in {self.requestline[:100]!r}"}
            )
        else:
            self._send(HTTPStatus(code), {"error": message or HTTPStatus(code).phrase})
        # Closing with unread input (the rest of a too-long line) resets the connection, and the
        # reset can discard the answer before the client reads it: drain briefly first.
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(1.0)
            for _ in range(64):  # at most 4 MiB
                if not self.connection.recv(1 << 16):
                    break

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = urlsplit(self.path).path if hasattr(self, "path") else ""
        if path not in QUIET_PATHS:
            log.get().info("api_request", method=self.command, path=path[:200], status=int(code))

    def log_message(self, format: str, *args: Any) -> None:
        """Everything worth logging goes through log_request."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default listen backlog is 5: a burst of probes and status scrapes from many
    # pods on the node overflowed it, and the kernel dropped connections.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], status: Status) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.status = status


class ApiServer(ServerThread):
    """The API on its own thread."""

    def __init__(self, listen: tuple[str, int], status: Status) -> None:
        super().__init__(_Server(listen, status), "api-server")


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT or [IPV6]:PORT into a bind address."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"invalid listen address {text!r}: use HOST:PORT, e.g. 0.0.0.0:8080")
    host = host.strip("[]")
    return host, int(port)
