"""Portcullis auth plugin in Python: API keys with consumer names.

Built with componentize-py against the `auth` world of wit/plugin.wit:

    componentize-py -d ../../../wit -w auth componentize app -o api-key.wasm

Route config (JSON text of the route's `config` table):

    {"keys": [{"key": "k-123", "consumer": "alice"}, {"key": "k-456"}],
     "header": "x-api-key"}
"""
# Import every module the plugin uses here, at the top: componentize-py runs this module
# when it builds the component and keeps only the modules loaded by then. A module first
# imported later (inside a function, or lazily by the standard library: `hmac.new(key,
# msg, hashlib.sha256)` imports `warnings`) is missing at request time: ModuleNotFoundError,
# a 500. If you call `hmac.new` with a hash constructor, add `import warnings` here.
import hmac
import json
from typing import List, Optional, Tuple

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types

ALLOWED_KEYS = {"keys", "header"}

# Set by `configure`; one instance serves one route's configuration.
_keys: List[Tuple[bytes, Optional[str]]] = []
_header: str = "x-api-key"


def _parse(text: str) -> Tuple[List[Tuple[bytes, Optional[str]]], str]:
    try:
        cfg = json.loads(text)
    except ValueError as e:
        raise ValueError(f"config is not JSON: {e}")
    if not isinstance(cfg, dict):
        raise ValueError("config must be a table")
    unknown = sorted(set(cfg) - ALLOWED_KEYS)
    if unknown:
        raise ValueError(f"unknown config key `{unknown[0]}` (expected: keys, header)")
    header = cfg.get("header", "x-api-key")
    if not isinstance(header, str) or not header:
        raise ValueError("`header` must be a non-empty string")
    raw = cfg.get("keys")
    if not isinstance(raw, list) or not raw:
        raise ValueError("`keys` is required: a non-empty list of {key, consumer}")
    keys: List[Tuple[bytes, Optional[str]]] = []
    seen = set()
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise ValueError(f"`keys[{i}]` must be a table {{key, consumer}}")
        extra = sorted(set(entry) - {"key", "consumer"})
        if extra:
            raise ValueError(f"`keys[{i}]`: unknown key `{extra[0]}`")
        key = entry.get("key")
        if not isinstance(key, str) or not key:
            raise ValueError(f"`keys[{i}].key` must be a non-empty string")
        consumer = entry.get("consumer")
        if consumer is not None and (not isinstance(consumer, str) or not consumer):
            raise ValueError(f"`keys[{i}].consumer` must be a non-empty string")
        if key in seen:
            raise ValueError(f"`keys[{i}].key` is a duplicate")
        seen.add(key)
        keys.append((key.encode(), consumer))
    return keys, header.lower()


def _deny(message: str) -> types.AuthDecision:
    body = json.dumps({"error": {"code": "unauthorized", "message": message}},
                      separators=(",", ":")).encode()
    return types.AuthDecision_Deny(types.Reply(
        status=401,
        headers=[("content-type", "application/json"),
                 ("www-authenticate", f'ApiKey header="{_header}"')],
        body=body,
    ))


class WitWorld(wit_world.WitWorld):
    def configure(self, config: str) -> None:
        global _keys, _header
        try:
            _keys, _header = _parse(config)
        except ValueError as e:
            raise Err(str(e))

    def authenticate(self, req: types.Request) -> types.AuthDecision:
        presented = req.header(_header)
        if presented is None:
            return _deny("missing API key")
        given = presented.encode()
        found = None
        # Compare against every key, in constant time per key, without stopping early.
        for key, consumer in _keys:
            if hmac.compare_digest(given, key):
                found = (consumer,)
        if found is None:
            host.log(host.LogLevel.DEBUG, "invalid API key")
            return _deny("invalid API key")
        return types.AuthDecision_Allow(found[0])
