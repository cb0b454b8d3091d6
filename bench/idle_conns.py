#!/usr/bin/env python3
"""bench/idle_conns.py — holds N idle keep-alive HTTP/1.1 connections to 127.0.0.1:PORT.

Each connection sends one `GET / HTTP/1.1` request, reads the whole response (status 200,
Content-Length body) and then stays open, idle. At most CONCURRENCY connections are being
opened and answered at a time, so a proxy needs no more upstream connections than a
wrk run with that many connections would.

Protocol on stdin/stdout (bench/suite.sh drives it through two FIFOs):
  prints  `open N SECONDS`     once every connection has had its answer;
  reads   one line (any),      then prints `closed K`: how many of the N the server has
                               closed meanwhile (0 means all were idle and open while the
                               caller measured), closes them all and exits.
Exit status 1 (message on stderr) when a connection fails or is not answered 200.

Usage: python3 bench/idle_conns.py PORT N [CONCURRENCY=64]
"""

import asyncio
import resource
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def raise_fd_limit(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 64
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            sys.exit(f"idle_conns.py: open-file hard limit {hard} is below {want} (ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def one(port, sem):
    async with sem:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or status[1] != "200":
            raise RuntimeError(f"answered {lines[0]!r}")
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
            if name.strip().lower() == "connection" and value.strip().lower() == "close":
                raise RuntimeError("the server closes the connection after one request")
        if length is None:
            raise RuntimeError("answer without Content-Length")
        await reader.readexactly(length)
        return reader, writer


async def main():
    port = int(sys.argv[1])
    n = int(sys.argv[2])
    concurrency = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    raise_fd_limit(n)
    sem = asyncio.Semaphore(concurrency)
    start = time.monotonic()
    try:
        conns = await asyncio.gather(*(one(port, sem) for _ in range(n)))
    except Exception as e:  # noqa: BLE001 — any failure ends the run with its reason
        sys.exit(f"idle_conns.py: connection to 127.0.0.1:{port} failed: {e!r}")
    print(f"open {n} {time.monotonic() - start:.2f}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    # Let the loop take in any close that arrived with the line.
    await asyncio.sleep(0.05)
    closed = sum(1 for reader, _ in conns if reader.at_eof())
    print(f"closed {closed}", flush=True)
    for _, writer in conns:
        writer.close()


if __name__ == "__main__":
    asyncio.run(main())
