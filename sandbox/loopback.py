"""An HTTP server of the sandbox's (REST stub, fault-injecting proxy) on 127.0.0.1, served from a daemon thread
for the length of a `with` block."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from typing import Self


class ServedInThread:
    def __init__(self, server: ThreadingHTTPServer, name: str) -> None:
        server.daemon_threads = True
        self._server = server
        # serve_forever looks for shutdown between polls; its default 0.5 s would be most of a fast test's time.
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, name=name,
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
