"""Local HTTP(S) servers for the download tests: real sockets on 127.0.0.1, each GET answered by a function."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LocalServer(ThreadingHTTPServer):
    """A threaded server on a free port of 127.0.0.1; ``url`` is its address, ``stop()`` ends it."""

    daemon_threads = True

    def __init__(self, get: Callable[[BaseHTTPRequestHandler], None], tls: ssl.SSLContext | None = None):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                get(self)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def handle_error(self, request, client_address):
        """A client hanging up early (the download's one-byte probe of a URL answered in full) is no error here;
        socketserver would print its traceback into the stderr the tests check."""

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
