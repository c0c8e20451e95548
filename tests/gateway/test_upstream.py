"""The gateway's HTTP/1.1 client against a loopback server that answers in every framing.

The server is real (asyncio, on a port); each test gives it the exact bytes to send,
so the framings the backends use (Content-Length, chunked, close-delimited) and the
failures (a keep-alive connection closed while idle, a body cut short) are exercised.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from gemma_gateway.upstream import Upstream, UpstreamError, UpstreamTimeout


class Server:
    """Answers each request with the next scripted reply; counts connections."""

    def __init__(self, replies: list[bytes], close_after: bool = False) -> None:
        self.replies = list(replies)
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader, writer) -> None:
        self.connections += 1
        try:
            while self.replies:
                head = await reader.readuntil(b"\r\n\r\n")
                body = b""
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        body = await reader.readexactly(int(line.split(b":")[1]))
                if b"transfer-encoding: chunked" in head.lower():
                    while (size := int((await reader.readuntil(b"\r\n")).strip(), 16)):
                        body += (await reader.readexactly(size + 2))[:-2]
                    await reader.readuntil(b"\r\n")
                self.requests.append(head + body)
                writer.write(self.replies.pop(0))
                await writer.drain()
                if self.close_after:
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()


def run(coro):
    return asyncio.run(coro)


def test_content_length_and_chunked_bodies_on_one_kept_alive_connection():
    async def scenario():
        server = Server([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                         b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"3\r\n{\"a\r\n4;ext=1\r\n\":1}\r\n0\r\nX-Trailer: t\r\n\r\n",
                         b"HTTP/1.1 204 No Content\r\n\r\n"])
        async with server as url:
            upstream = Upstream(url)
            first = await upstream.request("GET", "/one")
            assert (first.status, await first.read()) == (200, b"hello")
            second = await upstream.request("POST", "/two", [("content-type", "x/y")], b"abc")
            assert [chunk async for chunk in second.chunks()] == [b'{"a', b'":1}']
            third = await upstream.request("DELETE", "/three")
            assert (third.status, await third.read()) == (204, b"")
            await upstream.close()
        assert server.connections == 1
        assert server.requests[1].endswith(b"Content-Length: 3\r\n\r\nabc")
        assert b"content-type: x/y\r\n" in server.requests[1]
    run(scenario())


def test_a_connection_the_server_closed_while_idle_is_replaced_without_an_error():
    async def scenario():
        server = Server([b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
                         b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"], close_after=True)
        async with server as url:
            upstream = Upstream(url)
            assert await (await upstream.request("GET", "/")).read() == b"a"
            await asyncio.sleep(0.05)  # the server has closed the kept connection
            assert await (await upstream.request("GET", "/")).read() == b"b"
        assert server.connections == 2
    run(scenario())


def test_a_body_delimited_by_close_is_read_to_the_end_and_not_reused():
    async def scenario():
        server = Server([b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it"],
                        close_after=True)
        async with server as url:
            upstream = Upstream(url)
            answer = await upstream.request("GET", "/")
            assert await answer.read() == b"all of it"
            assert upstream._idle == []
    run(scenario())


def test_a_body_cut_short_is_an_error_not_a_short_answer():
    async def scenario():
        server = Server([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nonly5"], close_after=True)
        async with server as url:
            answer = await Upstream(url).request("GET", "/")
            with pytest.raises(UpstreamError, match="closed the connection before the end"):
                await answer.read()
        server = Server([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"],
                        close_after=True)
        async with server as url:
            answer = await Upstream(url).request("GET", "/")
            with pytest.raises(UpstreamError, match="closed the connection before the end"):
                await answer.read()
    run(scenario())


def test_streamed_request_bodies_go_out_chunked():
    async def pieces():
        for piece in (b"abc", b"", b"defg"):
            yield piece

    async def scenario():
        server = Server([b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"])
        async with server as url:
            answer = await Upstream(url).request("POST", "/api/blobs/x", [], pieces())
            assert answer.status == 201
        assert server.requests[0].endswith(b"abcdefg")
        assert b"Transfer-Encoding: chunked" in server.requests[0]
    run(scenario())


def test_unreachable_and_non_http_backends_are_refused():
    async def scenario():
        with pytest.raises(UpstreamError, match=re.escape("cannot connect: [Errno 111]")):
            await Upstream("http://127.0.0.1:9").request("GET", "/")
        server = Server([b"SSH-2.0-OpenSSH\r\n\r\n"])
        async with server as url:
            with pytest.raises(UpstreamError, match="broke HTTP framing"):
                await Upstream(url).request("GET", "/")
    run(scenario())
    with pytest.raises(ValueError, match="only http://host"):
        Upstream("https://ollama:11434")


# --- framing by httptools: what a hand-written parser got wrong -------------------------


def test_an_interim_100_continue_is_skipped_and_the_real_answer_read():
    async def scenario():
        server = Server([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"
                         b"Content-Length: 4\r\n\r\nreal",
                         b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"])
        async with server as url:
            upstream = Upstream(url)
            first = await upstream.request("POST", "/a", [], b"x")
            assert (first.status, await first.read()) == (200, b"real")
            second = await upstream.request("POST", "/b", [], b"y")
            assert (second.status, await second.read()) == (200, b"next")
        assert server.connections == 1
    run(scenario())


def test_bytes_after_an_answer_keep_the_connection_out_of_the_pool():
    async def scenario():
        server = Server([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n"
                         b"Content-Length: 5\r\n\r\nstray", b"unused"])
        async with server as url:
            upstream = Upstream(url)
            answer = await upstream.request("GET", "/")
            assert await answer.read() == b"ok"
            await asyncio.sleep(0.05)
            assert upstream._idle == []  # another client would have read "stray"
    run(scenario())


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
])
def test_ambiguous_framing_from_the_backend_is_an_error(reply):
    async def scenario():
        async with Server([reply]) as url:
            with pytest.raises(UpstreamError, match="broke HTTP framing"):
                await Upstream(url).request("GET", "/")
    run(scenario())


def test_a_bad_chunk_size_mid_answer_is_an_error_not_an_end():
    async def scenario():
        server = Server([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"3\r\nabc\r\nzz\r\n"])
        async with server as url:
            answer = await Upstream(url).request("GET", "/")
            with pytest.raises(UpstreamError, match="broke HTTP framing"):
                await answer.read()
    run(scenario())


def test_only_idempotent_requests_are_sent_again_on_a_closed_pooled_connection():
    """A kept-alive connection the server drops as the next request arrives (its idle
    timeout racing the request): GET is sent again on a new connection, POST is not,
    since the server may have acted on it."""
    seen: list[bytes] = []

    async def drops_the_second(reader, writer):
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
        await writer.drain()
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()

    async def scenario():
        server = await asyncio.start_server(drops_the_second, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        upstream = Upstream(url)
        assert await (await upstream.request("GET", "/")).read() == b"a"
        with pytest.raises(UpstreamError, match="kept-alive connection before answering"):
            await upstream.request("POST", "/api/generate", [], b"{}")
        assert await (await upstream.request("GET", "/")).read() == b"a"  # on a new one
        await upstream.request("GET", "/again")  # reused, dropped, sent again: answered
        server.close()
        return [request.split(b" ")[:2] for request in seen]

    requests = run(scenario())
    assert requests.count([b"POST", b"/api/generate"]) == 1
    assert requests.count([b"GET", b"/again"]) == 2


def test_a_backend_too_slow_to_answer_or_to_go_on_times_out():
    async def silent(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(5)

    async def stalls(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async def scenario():
        for handler, waits in ((silent, "did not answer within 0.3 s"),
                               (stalls, "sent nothing for 0.3 s")):
            server = await asyncio.start_server(handler, "127.0.0.1", 0)
            url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            with pytest.raises(UpstreamTimeout, match=waits):
                answer = await Upstream(url).request("GET", "/", timeout=0.3, idle_timeout=0.3)
                await answer.read()
            server.close()
    run(scenario())
