"""A TCP proxy on loopback, in a thread of the test process, between a relay and its
PostgreSQL server: it can be down (nothing listens), come up, and cut every connection
going through it (a database link lost mid-transaction), or stop (a database gone)."""

from __future__ import annotations

import asyncio
import threading
from contextlib import suppress

from tillsync.tools.ports import free_port


class Proxy:
    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    def _call(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    def start(self) -> None:
        async def start() -> None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port,
                                                      reuse_address=True)
        self._call(start())

    def stop(self) -> None:
        """Stop listening and cut every connection: the database is out of reach until
        ``start`` again."""
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
        self._call(stop())
        self.cut()

    def cut(self) -> int:
        """Close every connection going through; returns how many there were."""
        async def cut() -> int:
            writers = list(self._writers)
            for w in writers:
                with suppress(Exception):
                    w.transport.abort()
            return len(writers) // 2
        count = self._call(cut())
        assert isinstance(count, int)
        return count

    def close(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            for w in list(self._writers):
                with suppress(Exception):
                    w.transport.abort()
        with suppress(Exception):
            self._call(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}
