"""An HTTP server on a daemon thread of its own: the agent's API port and its peer port."""

from __future__ import annotations

import threading
from socketserver import TCPServer


class ServerThread:
    """Serves `server` in the background once started; `stop` closes its socket."""

    def __init__(self, server: TCPServer, name: str) -> None:
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=name, daemon=True
        )

    @property
    def host(self) -> str:
        """The bound address."""
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        """The bound port (useful after binding port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
