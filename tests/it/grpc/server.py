#!/usr/bin/env python3
"""Plaintext (h2c) gRPC test server for Portcullis end-to-end tests.

Service `demo.Models`, raw bytes on the wire (no protobuf, no codegen):
  Echo   unary             -> b"echo:" + request; initial metadata
                              x-model-initial: demo, trailing metadata x-model: demo
  Stream server-streaming  request is an ASCII integer N -> b"tok-0" .. b"tok-{N-1}"
  Fail   unary             -> aborts with NOT_FOUND, details "no such model"

Listens on 127.0.0.1, port 0 (or argv[1]), prints exactly one line `PORT <n>`
to stdout once listening, then serves until killed or stdin is closed.
"""
import os
import signal
import stat
import sys
import threading
from concurrent import futures

import grpc

SERVICE = "demo.Models"


def _identity(b):
    return b


def echo(request, context):
    context.send_initial_metadata((("x-model-initial", "demo"),))
    context.set_trailing_metadata((("x-model", "demo"),))
    return b"echo:" + request


def stream(request, context):
    try:
        n = int(request.decode("ascii").strip() or "0")
    except (UnicodeDecodeError, ValueError):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request must be an ASCII integer")
    for i in range(n):
        yield f"tok-{i}".encode("ascii")


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such model")


def main():
    port_arg = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(
            echo, request_deserializer=_identity, response_serializer=_identity
        ),
        "Stream": grpc.unary_stream_rpc_method_handler(
            stream, request_deserializer=_identity, response_serializer=_identity
        ),
        "Fail": grpc.unary_unary_rpc_method_handler(
            fail, request_deserializer=_identity, response_serializer=_identity
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, handlers),)
    )
    port = server.add_insecure_port(f"127.0.0.1:{port_arg}")
    if port == 0:
        print("failed to bind 127.0.0.1", file=sys.stderr, flush=True)
        sys.exit(1)
    server.start()
    print(f"PORT {port}", flush=True)

    done = threading.Event()

    def _stop(*_args):
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    def _watch_stdin():
        # Returns when stdin reaches EOF (parent closed it or went away).
        try:
            # Raw os.read, not sys.stdin: a daemon thread blocked in the
            # buffered reader aborts interpreter shutdown.
            while os.read(fd, 4096):
                pass
        except Exception:
            pass
        done.set()

    # Only a pipe or socket on stdin means "a parent is holding us"; /dev/null
    # (e.g. `server.py &`) would hit EOF at once.
    try:
        fd = sys.stdin.fileno()
        mode = os.fstat(fd).st_mode
        watch = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
    except (AttributeError, OSError, ValueError):
        watch = False
    if watch:
        threading.Thread(target=_watch_stdin, daemon=True).start()

    done.wait()
    server.stop(grace=0.5).wait()


if __name__ == "__main__":
    main()
