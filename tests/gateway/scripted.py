"""A scripted backend for the gateway's hostile tests: equipment that misbehaves on purpose.

It answers each request with `reply` (bytes, or a coroutine that gets the writer) and
keeps every request it received, so a test can read what the gateway forwarded. Runs an
asyncio server on its own thread, on a free loopback port.
"""

from __future__ import annotations

import asyncio
import re
import threading

OK = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
      b"Connection: close\r\n\r\n{}")


class Scripted:
    def __init__(self, reply=OK) -> None:
        self.reply = reply
        self.requests: list[bytes] = []

    async def _handle(self, reader, writer) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            body = await reader.readexactly(int(length.group(1))) if length else b""
            self.requests.append(head + body)
            if callable(self.reply):
                await self.reply(writer)
            else:
                writer.write(self.reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def bodies(self, path: str) -> list[bytes]:
        """The bodies of the POSTs to `path` it received."""
        return [request.split(b"\r\n\r\n", 1)[1] for request in self.requests
                if request.startswith(f"POST {path} ".encode())]

    def __enter__(self) -> str:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve():
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0))
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=serve, daemon=True).start()
        ready.wait(5)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def __exit__(self, *exc) -> None:
        if getattr(self, "closed", False):  # a test may close it early, then its cleanup
            return
        self.closed = True

        async def shut() -> None:
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
