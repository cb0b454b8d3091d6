"""Portcullis auth plugin in Python: requests signed with HMAC-SHA256.

The client sends `x-signature: sha256=<hex>`, the HMAC-SHA256 under the shared secret of
`METHOD PATH` (with `?QUERY` when the request has one), e.g. for `GET /v1/models`:

    hmac.new(secret, b"GET /v1/models", hashlib.sha256).hexdigest()

Built with componentize-py against the `auth` world of wit/plugin.wit:

    componentize-py -d ../../../wit -w auth componentize app -o hmac-signature.wasm

Route config (JSON text of the route's `config` table):

    {"secret": "s3cret", "consumer": "billing", "header": "x-signature"}
"""
# Every module the plugin uses is imported here, at the top: componentize-py runs this
# module when it builds the component and keeps only what is loaded by then. `hmac.new`
# with a hash constructor (hashlib.sha256) imports `warnings` on its first call, so
# without the line below that call fails at request time with ModuleNotFoundError (a 500).
import hashlib
import hmac
import json
import warnings  # noqa: F401  (needed by hmac.new, see above)
from typing import Optional

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

ALLOWED_KEYS = {"secret", "consumer", "header"}

_secret: bytes = b""
_consumer: Optional[str] = None
_header: str = "x-signature"


def _deny(message: str) -> types.AuthDecision:
    body = json.dumps({"error": {"code": "unauthorized", "message": message}},
                      separators=(",", ":")).encode()
    return types.AuthDecision_Deny(types.Reply(
        status=401,
        headers=[("content-type", "application/json")],
        body=body,
    ))


class WitWorld(wit_world.WitWorld):
    def configure(self, config: str) -> None:
        global _secret, _consumer, _header
        cfg = json.loads(config)
        if not isinstance(cfg, dict):
            raise Err("config must be a table")
        unknown = sorted(set(cfg) - ALLOWED_KEYS)
        if unknown:
            raise Err(f"unknown config key `{unknown[0]}` (expected: secret, consumer, header)")
        secret = cfg.get("secret")
        if not isinstance(secret, str) or not secret:
            raise Err("`secret` is required: a non-empty string")
        consumer = cfg.get("consumer")
        if consumer is not None and (not isinstance(consumer, str) or not consumer):
            raise Err("`consumer` must be a non-empty string")
        header = cfg.get("header", "x-signature")
        if not isinstance(header, str) or not header:
            raise Err("`header` must be a non-empty string")
        _secret, _consumer, _header = secret.encode(), consumer, header.lower()

    def authenticate(self, req: types.Request) -> types.AuthDecision:
        given = req.header(_header)
        if given is None:
            return _deny("missing signature")
        message = f"{req.method()} {req.path()}"
        query = req.query()
        if query is not None:
            message += f"?{query}"
        expected = "sha256=" + hmac.new(_secret, message.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return _deny("invalid signature")
        return types.AuthDecision_Allow(_consumer)
