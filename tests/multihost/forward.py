"""A TCP forwarder for the multi-host test: makes services of this host that listen on loopback only
(PostgreSQL, Redis, the S3 server, the Docker engine's socket) reachable from ONE Docker bridge, as
a second host would reach them over its network, without binding any of them to another address.

Each listener is bound to the bridge's gateway address only, on a port the kernel picks, and accepts
a connection only from an address inside that bridge's subnet: a container on any other bridge (a
scoring replica, a run, a build) that reaches the gateway address by routing is refused, so the
isolation of MLPortal's containers from the host (iptables chain MLPORTAL-ISOLATE) is untouched.
It lives in a thread of the test process and goes away with it.
"""
from __future__ import annotations

import asyncio
import ipaddress
import threading


class Forwarder:
    def __init__(self, *, bind: str, allowed: str) -> None:
        self.bind = bind
        self.allowed = ipaddress.ip_network(allowed)
        self.refused = 0
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.AbstractServer] = []
        self._thread = threading.Thread(target=self._loop.run_forever, name="multihost-forwarder", daemon=True)
        self._thread.start()

    def add(self, target: tuple[str, int] | str) -> int:
        """Listens on a new port of the bind address for ``target`` ((host, port) or a unix socket
        path); returns the port."""
        return asyncio.run_coroutine_threadsafe(self._listen(target), self._loop).result(timeout=10)

    async def _listen(self, target) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peername")[0]
            if ipaddress.ip_address(peer) not in self.allowed:
                self.refused += 1
                writer.close()
                return
            try:
                if isinstance(target, str):
                    up_reader, up_writer = await asyncio.open_unix_connection(target)
                else:
                    up_reader, up_writer = await asyncio.open_connection(*target)
            except OSError:
                writer.close()
                return
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            for end in (writer, up_writer):
                end.close()

        server = await asyncio.start_server(handle, self.bind, 0)
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            if writer.can_write_eof():
                writer.write_eof()  # half-close: the other direction may still be talking
        except (ConnectionError, OSError):
            writer.close()
