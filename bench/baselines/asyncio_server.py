"""
Baseline: a bare asyncio server (low-level Protocol API, default event loop)
doing what the benchmarked rawsvc flow does; modes as in twisted_server.py.

  python asyncio_server.py PORT eof|line|count
"""

import asyncio
import sys


class Eof(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.chunks = []

    def data_received(self, data):
        self.chunks.append(data)

    def eof_received(self):
        b"".join(self.chunks)
        self.transport.write(b"OK\n")
        self.transport.close()
        return True


class Line(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""

    def data_received(self, data):
        buf = self.buf + data
        lines = buf.split(b"\n")
        self.buf = lines.pop()
        if lines:
            self.transport.write(b"OK\n" * len(lines))


class Count(Line):
    def connection_made(self, transport):
        super().connection_made(transport)
        self.count = 0

    def data_received(self, data):
        buf = self.buf + data
        lines = buf.split(b"\n")
        self.buf = lines.pop()
        self.count += len(lines)

    def eof_received(self):
        self.transport.write(b"%d\n" % self.count)
        self.transport.close()
        return True


async def main():
    port, mode = int(sys.argv[1]), sys.argv[2]
    proto = {"eof": Eof, "line": Line, "count": Count}[mode]
    server = await asyncio.get_running_loop().create_server(proto, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
