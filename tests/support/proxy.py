"""A loopback TCP proxy that tests can pause, point elsewhere and cut: between a Redis
primary and its replica it loses writes (paused, the replica falls behind; the primary then
dies with what it had not sent), and in front of Redis it moves clients to a promoted replica.

It runs its own event loop in a thread, so sync and async tests drive it alike.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

from support.redis_server import free_port


class Proxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target``.

    ``pause()`` stops forwarding either way (what arrives is held, and counted in ``held``);
    after ``resume()`` it goes on with the next data. ``retarget()`` sends new connections
    elsewhere and ``cut()`` closes the open ones.
    """

    def __init__(self, target: int) -> None:
        self.port = free_port()
        self.target = target
        self.held = 0
        """Bytes held back while paused."""
        self._open = threading.Event()
        self._open.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = self._run(asyncio.start_server(self._serve, "127.0.0.1", self.port))

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def pause(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    def retarget(self, target: int) -> None:
        self.target = target

    def cut(self) -> None:
        """Close every open connection (both ends see it at once)."""

        async def close() -> None:
            for writer in list(self._writers):
                writer.transport.abort()

        self._run(close())

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()

        self._run(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer),
                self._pipe(up_reader, writer),
            )
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held: list[bytes] = []
        try:
            while data := await reader.read(65536):
                if not self._open.is_set():
                    held.append(data)
                    self.held += len(data)
                    continue
                for chunk in held:
                    writer.write(chunk)
                held.clear()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()
