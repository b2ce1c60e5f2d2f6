"""Local servers for the egress tests (security review, issue 15, finding 1):

- ``Trap``: a TCP listener that records every connection and every byte it is sent, on an
  address the test's egress policy refuses (``127.0.0.2``: the policy allows only 127.0.0.1).
  It never answers; a test asserts it got nothing.
- ``Redirector``: an HTTP server that answers every request (any method, any path) with one
  redirect status and ``Location: <target>`` — the upstream a hostile route or webhook points
  at. It counts what it received.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REFUSED_HOST = "127.0.0.2"


class Trap:
    def __init__(self, host: str = REFUSED_HOST, port: int = 0) -> None:
        self.connections = 0
        self.data = b""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(16)
        self._sock.settimeout(0.05)
        self.host, self.port = host, self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True, name="trap")
        self._thread.start()

    def url(self, path: str = "/trap") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        conn.settimeout(1)
        with conn:
            try:
                while chunk := conn.recv(65536):
                    with self._lock:
                        self.data += chunk
            except OSError:
                pass

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=2)

    def __enter__(self) -> Trap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Redirector:
    def __init__(self, status: int, location: str) -> None:
        self.status, self.location = status, location
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _redirect(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                outer.requests.append((self.command, self.path))
                self.send_response(outer.status)
                self.send_header("Location", outer.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = _redirect  # noqa: N815

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=2)

    def __enter__(self) -> Redirector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
