#!/usr/bin/env python3
"""gRPC test client for Portcullis end-to-end tests.

Usage: client.py HOST:PORT

Connects in plaintext (h2c) and calls demo.Models/Echo, Stream("3"), Fail and a
large Echo (256 KiB, larger than HTTP/2's default 64 KiB flow-control window),
then prints one JSON object on stdout, e.g.

  {"echo": "echo:hello", "initial_x_model": "demo", "trailer_x_model": "demo",
   "stream": ["tok-0", "tok-1", "tok-2"], "stream_code": "OK",
   "fail_code": "NOT_FOUND", "fail_details": "no such model",
   "echo_large_len": 262149, "echo_large_ok": true, "errors": {}}

Exit status: 0 if every call completed as an RPC (a gRPC status came back,
even the expected NOT_FOUND); 1 if any call hit a transport-level failure
(UNAVAILABLE, DEADLINE_EXCEEDED, or a non-gRPC exception). In every case the
JSON is printed; per-call problems are under "errors".
"""
import json
import sys

import grpc

TIMEOUT = 10.0
LARGE = 256 * 1024
TRANSPORT_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def _identity(b):
    return b


def _meta(md, key):
    for k, v in md or ():
        if k == key:
            return v.decode("latin-1") if isinstance(v, bytes) else v
    return None


def main():
    if len(sys.argv) != 2:
        print("usage: client.py HOST:PORT", file=sys.stderr)
        return 2
    address = sys.argv[1]
    out = {
        "echo": None,
        "initial_x_model": None,
        "trailer_x_model": None,
        "stream": None,
        "stream_code": None,
        "fail_code": None,
        "fail_details": None,
        "echo_large_len": None,
        "echo_large_ok": None,
        "errors": {},
    }
    transport_failure = False

    def record_error(name, exc):
        nonlocal transport_failure
        if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
            code = exc.code()
            out["errors"][name] = f"{code.name}: {exc.details()}"
            if code in TRANSPORT_CODES:
                transport_failure = True
        else:
            out["errors"][name] = f"{type(exc).__name__}: {exc}"
            transport_failure = True

    options = [
        ("grpc.enable_http_proxy", 0),  # never route via *_proxy env vars
        ("grpc.max_receive_message_length", 8 * 1024 * 1024),
        ("grpc.max_send_message_length", 8 * 1024 * 1024),
    ]
    with grpc.insecure_channel(address, options=options) as channel:
        kw = dict(request_serializer=_identity, response_deserializer=_identity)
        echo = channel.unary_unary("/demo.Models/Echo", **kw)
        stream = channel.unary_stream("/demo.Models/Stream", **kw)
        fail = channel.unary_unary("/demo.Models/Fail", **kw)

        # Echo, with initial and trailing metadata.
        try:
            resp, call = echo.with_call(b"hello", timeout=TIMEOUT)
            out["echo"] = resp.decode("utf-8", "replace")
            out["initial_x_model"] = _meta(call.initial_metadata(), "x-model-initial")
            out["trailer_x_model"] = _meta(call.trailing_metadata(), "x-model")
        except Exception as exc:  # noqa: BLE001
            record_error("echo", exc)

        # Server streaming.
        try:
            call = stream(b"3", timeout=TIMEOUT)
            out["stream"] = [m.decode("utf-8", "replace") for m in call]
            out["stream_code"] = call.code().name
        except Exception as exc:  # noqa: BLE001
            record_error("stream", exc)

        # Expected failure: NOT_FOUND "no such model".
        try:
            fail(b"x", timeout=TIMEOUT)
            out["errors"]["fail"] = "unexpectedly succeeded"
        except grpc.RpcError as exc:
            out["fail_code"] = exc.code().name
            out["fail_details"] = exc.details()
            if exc.code() in TRANSPORT_CODES:
                transport_failure = True
        except Exception as exc:  # noqa: BLE001
            record_error("fail", exc)

        # Large unary Echo: exercises HTTP/2 flow control in both directions.
        try:
            payload = bytes((i * 7 + 3) % 251 for i in range(LARGE))
            resp = echo(payload, timeout=TIMEOUT)
            out["echo_large_len"] = len(resp)
            out["echo_large_ok"] = resp == b"echo:" + payload
        except Exception as exc:  # noqa: BLE001
            record_error("echo_large", exc)

    print(json.dumps(out), flush=True)
    return 1 if transport_failure else 0


if __name__ == "__main__":
    sys.exit(main())
