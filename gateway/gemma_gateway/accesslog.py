"""The access log: one JSON line per request, written in batches.

Who (the key's name), what (method, endpoint, model), the status, how long, and the
token counts — never a prompt, an answer or an image. Through Python's logging module
each line cost a quarter of the gateway's throughput (a record object, a formatter, a
write and a flush per request); here the lines are joined and written at most every
`every` seconds or `batch` lines, one write each time.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TextIO


class AccessLog:
    def __init__(self, stream: TextIO | None = None, every: float = 0.2,
                 batch: int = 512) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self.batch = batch
        self.lines: list[str] = []
        self.scheduled = False

    def write(self, entry: dict) -> None:
        self.lines.append(json.dumps(entry, separators=(",", ":")))
        if len(self.lines) >= self.batch:
            self.flush()
        elif not self.scheduled:
            try:
                asyncio.get_running_loop().call_later(self.every, self.flush)
                self.scheduled = True
            except RuntimeError:  # no event loop (a unit test, a shutdown): write now
                self.flush()

    def flush(self) -> None:
        self.scheduled = False
        if self.lines:
            lines, self.lines = self.lines, []
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
