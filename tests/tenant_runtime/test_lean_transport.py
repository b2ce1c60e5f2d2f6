"""The providers' lean async transport (tenant_runtime/outbound.py, ``LeanAsyncTransport``):
keep-alive, connections the server closed, answers in pieces, timeouts and bad answers, each
against a raw socket server that answers exactly as the test scripts it. (The egress checks and
the redirect refusal are tested with every provider's async client in
tests/tenant_runtime/gateway/test_async_providers.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import httpx2
import pytest

from tenant_runtime import outbound
from tenant_runtime.gateway.egress import EgressPolicy

POLICY = EgressPolicy.parse(ambient_identity=False, private_networks=("127.0.0.0/8",))
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"a\": true}"


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(65536)
        if not piece:
            return data
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(rest) < length:
        rest += conn.recv(65536)
    return head


@pytest.fixture
def server() -> Iterator[Callable[[Callable[[socket.socket], None]], str]]:
    """A server whose every connection ``handle`` serves, in a thread; yields a starter that
    returns the base URL, and counts connections in ``connections``."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    threads: list[threading.Thread] = []
    accepted: list[socket.socket] = []

    def start(handle: Callable[[socket.socket], None]) -> str:
        def accept() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                accepted.append(conn)
                worker = threading.Thread(target=handle, args=(conn,), daemon=True)
                threads.append(worker)
                worker.start()

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        threads.append(thread)
        return f"http://127.0.0.1:{listener.getsockname()[1]}"

    start.connections = accepted  # type: ignore[attr-defined]
    yield start
    for sock in [listener, *accepted]:  # shutdown wakes a thread blocked in accept or recv
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive()


def post(url: str, *, times: int = 1, read: float = 5.0) -> list[bytes]:
    async def main() -> list[bytes]:
        async with outbound.async_http_client(POLICY, timeout=httpx2.Timeout(5.0, read=read),
                                              lean=True) as client:
            out = []
            for _ in range(times):
                response = await client.post(f"{url}/v1/chat/completions", json={"n": 1})
                out.append(response.content)
            return out
    return asyncio.run(main())


def test_a_kept_alive_connection_serves_the_next_request(server) -> None:
    def handle(conn: socket.socket) -> None:
        while read_request(conn):
            conn.sendall(OK)

    url = server(handle)
    assert post(url, times=3) == [b'{"a": true}'] * 3
    assert len(server.connections) == 1


def test_a_connection_the_server_closes_is_not_reused(server) -> None:
    def handle(conn: socket.socket) -> None:
        if read_request(conn):
            conn.sendall(OK.replace(b"Content-Length", b"Connection: close\r\nContent-Length"))
        conn.close()

    url = server(handle)
    assert post(url, times=2) == [b'{"a": true}'] * 2
    assert len(server.connections) == 2


def test_an_answer_in_chunks_arrives_whole_and_in_pieces(server) -> None:
    pieces = [b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"]

    def handle(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        for piece in pieces:
            conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.sendall(b"0\r\n\r\n")

    url = server(handle)

    async def main() -> list[str]:
        async with outbound.async_http_client(POLICY, timeout=httpx2.Timeout(5.0),
                                              lean=True) as client, \
                client.stream("POST", f"{url}/v1/chat/completions", json={}) as response:
            return [line async for line in response.aiter_lines() if line]

    assert asyncio.run(main()) == ["data: one", "data: two", "data: [DONE]"]


def test_a_silent_server_is_a_read_timeout(server) -> None:
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        conn.recv(1)  # holds the connection until the client gives up

    url = server(handle)
    with pytest.raises(httpx2.ReadTimeout):
        post(url, read=0.3)


def test_an_answer_that_is_not_http_is_a_protocol_error(server) -> None:
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        conn.close()

    url = server(handle)
    with pytest.raises(httpx2.RemoteProtocolError):
        post(url)


def test_a_server_that_hangs_up_mid_answer_is_a_protocol_error(server) -> None:
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(OK[:-4])
        conn.close()

    url = server(handle)
    with pytest.raises(httpx2.RemoteProtocolError, match="before the end"):
        post(url)


def test_nothing_listening_is_a_connect_error() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(httpx2.ConnectError):
        post(f"http://127.0.0.1:{port}")
