"""HubServer: the loopback hub plus its CDN origin, with fault injection and a request log.

It puts the parts together: HubRoutes answers, FaultQueue decides which requests misbehave,
RequestLog records them, and one HubHTTPServer per origin does the I/O from its own thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from email.message import Message
from types import TracebackType

from agent.devhub.cdn import CdnOrigin
from agent.devhub.faults import Fault, FaultKind, FaultQueue
from agent.devhub.handler import HubHTTPServer
from agent.devhub.replies import Reply, Role
from agent.devhub.repo import HubRepo
from agent.devhub.requestlog import LiveRequest, RequestLog, RequestRecord
from agent.devhub.routes import HubRoutes

DEFAULT_TOKEN = "hf_test_token"  # noqa: S105 - a test hub's well-known token


class HubServer:
    """A loopback hub plus its CDN origin; a context manager that starts and stops both."""

    def __init__(
        self,
        repos: Iterable[HubRepo] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cdn_port: int = 0,
        cdn_url: str | None = None,
        tokens: Iterable[str] = (DEFAULT_TOKEN,),
        token_access: Mapping[str, Iterable[str]] | None = None,
        tree_page_size: int = 1000,
        cdn_rate_limit_bps: int | None = None,
        cdn_url_ttl: float = 3600.0,
        max_span: int | None = None,
    ) -> None:
        self.host = host
        self.cdn_rate_limit_bps = cdn_rate_limit_bps
        # Like the hub's CDN, which serves at most 50 GB per GET: a longer file body is a 400.
        self.max_span = max_span
        self._faults = FaultQueue()
        self._log = RequestLog()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._hub = HubHTTPServer((host, port), self, "hub")
        self._cdn = HubHTTPServer((host, cdn_port), self, "cdn") if cdn_url is None else None
        cdn = CdnOrigin(self._cdn.server_address[1] if self._cdn else None, cdn_url, cdn_url_ttl)
        self._routes = HubRoutes(
            cdn,
            default_host=self.url.removeprefix("http://"),
            tokens=tokens,
            token_access=token_access or {},
            tree_page_size=tree_page_size,
        )
        self._external_cdn = cdn_url.rstrip("/") if cdn_url is not None else None
        for repo in repos:
            self.add_repo(repo)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> HubServer:
        """Serve both origins from background threads."""
        for srv in (self._hub, self._cdn):
            if srv is not None:
                thread = threading.Thread(
                    target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
                )
                thread.start()
                self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving, wake stalled handlers and cut open connections."""
        self._stopping.set()
        for srv in (self._hub, self._cdn):
            if srv is not None:
                if self._threads:
                    srv.shutdown()
                srv.cut_connections()
                srv.server_close()
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The hub's base URL (what HF_ENDPOINT / endpoint= take)."""
        return self._origin(self._hub.server_address[1])

    @property
    def cdn_url(self) -> str:
        """The base URL LFS redirects point under (`<cdn_url>/<sha256>`)."""
        if self._external_cdn is not None:
            return self._external_cdn
        assert self._cdn is not None
        return self._origin(self._cdn.server_address[1]) + "/blobs"

    def _origin(self, port: int) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{port}"

    # -- repos, faults, log ----------------------------------------------------------------

    def add_repo(self, repo: HubRepo) -> None:
        """Serve another repo (replacing one with the same id)."""
        self._routes.add_repo(repo)

    def repo(self, repo_id: str) -> HubRepo:
        """A served repo by id."""
        return self._routes.repo(repo_id)

    def add_fault(self, fault: Fault) -> None:
        """Queue a fault; faults are tried in the order they were added."""
        self._faults.add(fault)

    def clear_faults(self) -> None:
        """Drop every pending fault."""
        self._faults.clear()

    def pending_faults(self) -> list[Fault]:
        """Faults that still have uses left."""
        return self._faults.pending()

    def requests(
        self, kind: FaultKind = "any", method: str | None = None, path: str | None = None
    ) -> list[RequestRecord]:
        """Logged requests, optionally filtered by kind, method and path substring."""
        return self._log.records(kind, method, path)

    def bytes_served(self, path: str | None = None) -> int:
        """Body bytes sent by both origins (requests in flight included) to paths containing `path`."""
        return self._log.bytes_served(path)

    def reset_log(self) -> None:
        """Forget logged requests."""
        self._log.clear()

    # -- the request handler's side (handler.Backend) --------------------------------------

    def answer(self, role: Role, target: str, headers: Message[str, str]) -> Reply:
        """The reply to a request, before any fault."""
        return self._routes.answer(role, target, headers)

    def take_fault(self, reply: Reply, method: str, path: str) -> Fault | None:
        """The queued fault this request triggers, if any, using one of its uses up."""
        has_body = method != "HEAD" and reply.length > 0 and reply.status < 300
        return self._faults.take(reply.kind, method, path, has_body)

    def begin_request(self, request: LiveRequest, path: str) -> None:
        """A request started: count its body bytes live."""
        self._log.begin(request, path)

    def finish_request(self, request: LiveRequest, record: RequestRecord) -> None:
        """A request finished: log it."""
        self._log.finish(request, record)

    def pause(self, seconds: float) -> None:
        """Sleep, but wake up at once when the server stops."""
        self._stopping.wait(seconds)
