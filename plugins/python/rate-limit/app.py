"""Portcullis auth plugin in Python: a sliding-window rate limit kept in the key-value store.

Built with componentize-py against the `auth-with-capabilities` world of wit/:

    componentize-py -d ../../../wit -w auth-with-capabilities componentize app -o rate-limit.wasm

The gateway must grant it a key-value namespace (`keyvalue = { namespace = "rate-limit" }`
on its `[[plugins]]` entry; `backend = "redis"` shares the counts between gateways).

Route config (JSON text of the route's `config` table):

    {"limit": 100, "window_seconds": 60, "header": "x-api-key", "namespace": "rate-limit"}

Requests are counted per value of `header` (default `x-portcullis-consumer`; requests
without it are counted per client address). The window slides: the estimate is the
current fixed window's count plus the previous window's, weighted by how much of it still
overlaps the sliding window (the two-counter approximation). Over `limit`, the request is
answered 429 with `Retry-After` (and not counted). Each window's counter expires by itself
two windows later (`increment-with-ttl`). When the store fails the request is let through
and the failure logged: a limiter that is down must not take the API down with it.
"""
import json
import math
import time
from typing import Optional

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, keyvalue_ext, store
from wit_world.imports import portcullis_plugin_types as types

ALLOWED_KEYS = {"limit", "window_seconds", "header", "namespace"}

# Set by `configure`; one instance serves one route's configuration.
_limit = 0
_window_ms = 0
_header = "x-portcullis-consumer"
_namespace = "rate-limit"
_bucket: Optional[store.Bucket] = None


def _parse(text: str):
    try:
        cfg = json.loads(text)
    except ValueError as e:
        raise ValueError(f"config is not JSON: {e}")
    if not isinstance(cfg, dict):
        raise ValueError("config must be a table")
    unknown = sorted(set(cfg) - ALLOWED_KEYS)
    if unknown:
        raise ValueError(f"unknown config key `{unknown[0]}` (expected: limit, window_seconds, header, namespace)")
    limit = cfg.get("limit")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError("`limit` is required: a whole number of requests, at least 1")
    window = cfg.get("window_seconds", 60)
    if not isinstance(window, (int, float)) or isinstance(window, bool) or window <= 0:
        raise ValueError("`window_seconds` must be a positive number")
    header = cfg.get("header", "x-portcullis-consumer")
    if not isinstance(header, str) or not header:
        raise ValueError("`header` must be a non-empty string")
    namespace = cfg.get("namespace", "rate-limit")
    if not isinstance(namespace, str) or not namespace:
        raise ValueError("`namespace` must be a non-empty string")
    return limit, int(window * 1000), header.lower(), namespace


def _open() -> Optional[store.Bucket]:
    global _bucket
    if _bucket is None:
        try:
            _bucket = store.open(_namespace)
        except Err as e:
            host.log(host.LogLevel.ERROR, f"key-value namespace `{_namespace}` not available: {e.value}")
            return None
    return _bucket


def _too_many(retry_after: int) -> types.AuthDecision:
    body = json.dumps({"error": {"code": "rate_limited",
                                 "message": f"rate limit of {_limit} requests per {_window_ms // 1000}s reached"}},
                      separators=(",", ":")).encode()
    return types.AuthDecision_Deny(types.Reply(
        status=429,
        headers=[("content-type", "application/json"), ("retry-after", str(retry_after))],
        body=body,
    ))


class WitWorld(wit_world.WitWorld):
    def configure(self, config: str) -> None:
        global _limit, _window_ms, _header, _namespace, _bucket
        try:
            _limit, _window_ms, _header, _namespace = _parse(config)
        except ValueError as e:
            raise Err(str(e))
        _bucket = None

    def authenticate(self, req: types.Request) -> types.AuthDecision:
        who = req.header(_header)
        subject = f"h:{who}" if who else f"ip:{req.client_addr()}"
        bucket = _open()
        if bucket is None:
            return types.AuthDecision_Allow(None)
        now = int(time.time() * 1000)
        window = now // _window_ms
        into = (now % _window_ms) / _window_ms
        current = f"{subject}:{window}"
        try:
            count = keyvalue_ext.increment_with_ttl(bucket, current, 1, 2 * _window_ms + 1000)
            raw = bucket.get(f"{subject}:{window - 1}")
            previous = int(raw) if raw else 0
        except Err as e:
            host.log(host.LogLevel.WARN, f"rate limit store failed, letting the request through: {e.value}")
            return types.AuthDecision_Allow(None)
        estimate = previous * (1.0 - into) + count
        if estimate <= _limit:
            return types.AuthDecision_Allow(None)
        # Not counted: take it back.
        try:
            keyvalue_ext.increment_with_ttl(bucket, current, -1, 2 * _window_ms + 1000)
        except Err:
            pass
        count -= 1
        left_in_window = _window_ms - now % _window_ms
        if count >= _limit or previous == 0:
            wait_ms = left_in_window
        else:
            # The previous window's weight must fall until previous * (1 - f) + count + 1 <= limit.
            f = 1.0 - (_limit - count - 1) / previous
            wait_ms = max(0.0, f - into) * _window_ms
        return _too_many(max(1, math.ceil(wait_ms / 1000)))
