"""HTTP/1.1 framing of the agent's API on a kept-alive connection (real agent process)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.devhub import HubServer
from tests.integration.agentproc import DEMO, AgentProc


@pytest.fixture
def agent(tmp_path: Path, hub: HubServer) -> Iterator[AgentProc]:
    """A running agent with the demo model configured."""
    config = tmp_path / "c.yaml"
    config.write_text(f"models: [{DEMO}]\n")
    proc = AgentProc(tmp_path, hub.url, config, tmp_path / "cache").start()
    yield proc
    proc.stop()


def _exchange(agent: AgentProc, raw: bytes) -> bytes:
    """Send raw bytes on one connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", agent.port), timeout=5) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("method", ["POST", "PUT", "GET"])
def test_request_body_is_never_read_as_the_next_request(agent: AgentProc, method: str) -> None:
    """A body the API does not read ends the connection: it cannot smuggle a second request."""
    smuggled = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = (
        f"{method} /livez HTTP/1.1\r\nHost: x\r\nContent-Length: {len(smuggled)}\r\n\r\n".encode() + smuggled
    )
    reply = _exchange(agent, raw)
    assert reply.count(b"HTTP/1.1 ") == 1, reply[:500]
    assert b"Connection: close" in reply


def test_plain_requests_keep_the_connection_alive(agent: AgentProc) -> None:
    """Two bodiless GETs on one connection both get answers."""
    raw = b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\nGET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reply = _exchange(agent, raw)
    assert reply.count(b"HTTP/1.1 200") == 2, reply[:500]
