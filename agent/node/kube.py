"""A small Kubernetes API client for the agent: in-cluster credentials, Node get/patch, Event create.

Three calls on httpx (already the hub's client) instead of the `kubernetes` package, which
would add about 20 MB and a dependency tree to the image for them (docs/kubernetes.md). The
token file is read on every request: the kubelet rotates a projected token in place, and a
client that kept the first one would be refused an hour later.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from agent import log
from agent.errors import PreloadError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH = "application/merge-patch+json"
TIMEOUT = 10.0


class ApiError(PreloadError):
    """A Kubernetes API call failed: `status` is the HTTP status, 0 when no answer came."""

    def __init__(self, operation: str, status: int, message: str) -> None:
        super().__init__(f"{operation}: {status or 'no answer'}: {message}")
        self.operation = operation
        self.status = status

    @property
    def permanent(self) -> bool:
        """A refusal that the same request will meet again (forbidden, invalid, not found)."""
        return 400 <= self.status < 500 and self.status not in (408, 409, 429)


class NodeApi(Protocol):
    """What the node sync needs from the API server."""

    def get_node(self, name: str) -> dict[str, Any]: ...

    def patch_node(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]: ...

    def create_event(self, namespace: str, event: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class InCluster:
    """Where the API server is and how to prove who we are, as a pod sees it."""

    server: str
    token_file: Path
    ca_file: Path | None

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, sa_dir: Path = SERVICE_ACCOUNT_DIR
    ) -> InCluster | None:
        """The pod's in-cluster config, or None outside a pod or without a mounted token."""
        env = os.environ if env is None else env
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        token = sa_dir / "token"
        if not host or not port or not token.is_file():
            return None
        if ":" in host:  # an IPv6 address
            host = f"[{host}]"
        ca = sa_dir / "ca.crt"
        return cls(f"https://{host}:{port}", token, ca if ca.is_file() else None)


class KubeClient:
    """The three calls, each one request (the caller owns retries and backoff)."""

    def __init__(self, config: InCluster, timeout: float = TIMEOUT) -> None:
        self._config = config
        verify: ssl.SSLContext | bool = True
        if config.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(config.ca_file))
        self._http = httpx.Client(base_url=config.server, verify=verify, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def get_node(self, name: str) -> dict[str, Any]:
        return self._call("get_node", "GET", f"/api/v1/nodes/{name}")

    def patch_node(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return self._call("patch_node", "PATCH", f"/api/v1/nodes/{name}", patch, MERGE_PATCH)

    def create_event(self, namespace: str, event: Mapping[str, Any]) -> None:
        self._call("create_event", "POST", f"/api/v1/namespaces/{namespace}/events", event)

    def _call(
        self,
        operation: str,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        try:
            token = self._config.token_file.read_text().strip()
        except OSError as exc:
            raise ApiError(operation, 0, f"service account token unreadable: {exc}") from exc
        log.register_secret(token)
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        content = None
        if body is not None:
            headers["Content-Type"] = content_type
            content = json.dumps(body).encode()
        try:
            reply = self._http.request(method, path, headers=headers, content=content)
        except httpx.HTTPError as exc:
            raise ApiError(operation, 0, f"{type(exc).__name__}: {exc}") from exc
        if reply.status_code >= 400:
            raise ApiError(operation, reply.status_code, _reason(reply))
        try:
            doc = reply.json()
        except ValueError as exc:
            raise ApiError(operation, reply.status_code, "the answer is not JSON") from exc
        return doc if isinstance(doc, dict) else {}


def _reason(reply: httpx.Response) -> str:
    """The API's Status message (what a refusing policy or RBAC says), else the start of the body."""
    try:
        doc = reply.json()
    except ValueError:
        return reply.text[:300]
    if isinstance(doc, dict) and doc.get("message"):
        return str(doc["message"])[:500]
    return reply.text[:300]
