"""Portcullis stream-transform plugin in Python: ends a streamed model answer when it
says a configured phrase.

Built with componentize-py against the `stream-transform` world of wit/plugin.wit:

    componentize-py -d ../../../wit -w stream-transform componentize app -o stop-words.wasm

Route config (JSON text of the route's `config` table):

    {"phrases": ["internal use only", "BEGIN PRIVATE KEY"],
     "message": "the answer was stopped by policy"}

`phrases` (required) are matched without regard to case in the text of the answer: the
`choices[].delta.content` of OpenAI chat chunks, the `delta.text` of Anthropic
`content_block_delta` events. A phrase split across events is found too: the plugin keeps
the last (longest phrase - 1) characters of the text between events — its state for the
stream, reset by `open-stream`. The event in which a phrase completes is not sent; the
stream ends with a final error event in the API's shape (OpenAI: `data: {"error": …}`,
Anthropic: `event: error`), code `stop_word`, and the gateway's access log says
`stream_plugin=NAME:end`. Text of the phrase sent in earlier events has already gone out.
"""
import json
from typing import List, Optional

import wit_world
from componentize_py_types import Err
from wit_world.imports import events, types

ALLOWED_KEYS = {"phrases", "message"}

_phrases: List[str] = []
_message: str = "the answer was stopped by policy"
_keep: int = 0

# Per stream (one instance serves one stream at a time).
_window: str = ""
_api: Optional[events.Api] = None


def _parse(text: str) -> None:
    global _phrases, _message, _keep
    try:
        cfg = json.loads(text)
    except ValueError as e:
        raise ValueError(f"config is not JSON: {e}")
    if not isinstance(cfg, dict):
        raise ValueError("config must be a table")
    unknown = sorted(set(cfg) - ALLOWED_KEYS)
    if unknown:
        raise ValueError(f"unknown config key `{unknown[0]}` (expected: phrases, message)")
    phrases = cfg.get("phrases")
    if not isinstance(phrases, list) or not phrases:
        raise ValueError("`phrases` is required: a non-empty list of strings")
    for i, p in enumerate(phrases):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"`phrases[{i}]` must be a non-empty string")
    message = cfg.get("message", _message)
    if not isinstance(message, str):
        raise ValueError("`message` must be a string")
    _phrases = [p.casefold() for p in phrases]
    _message = message
    _keep = max(len(p) for p in _phrases) - 1


def _text(data: str) -> str:
    """The answer's text in one event's data ("" when it carries none)."""
    try:
        v = json.loads(data)
    except ValueError:
        return ""
    if not isinstance(v, dict):
        return ""
    out = []
    for choice in v.get("choices") or []:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            out.append(delta["content"])
    delta = v.get("delta")
    if v.get("type") == "content_block_delta" and isinstance(delta, dict):
        if isinstance(delta.get("text"), str):
            out.append(delta["text"])
    return "".join(out)


def _error_event() -> events.Event:
    if _api == events.Api.ANTHROPIC:
        body = {"type": "error", "error": {"type": "invalid_request_error", "message": _message}}
        return events.Event(name="error", data=json.dumps(body, separators=(",", ":")), id=None)
    body = {"error": {"message": _message, "type": "invalid_request_error",
                      "code": "stop_word", "param": None}}
    return events.Event(name=None, data=json.dumps(body, separators=(",", ":")), id=None)


class WitWorld(wit_world.WitWorld):
    def configure(self, config: str) -> None:
        try:
            _parse(config)
        except ValueError as e:
            raise Err(str(e))

    def declare_hooks(self) -> types.Hooks:
        return types.Hooks(0)

    def on_request(self, req: types.Request) -> types.RequestAction:
        return types.RequestAction_Proceed()

    def on_response(self, req: types.Request, resp: types.Response) -> None:
        pass

    def open_stream(self, info: events.StreamInfo) -> bool:
        global _window, _api
        _window = ""
        _api = info.api
        return info.framing == events.Framing.SSE

    def on_event(self, event: events.Event, usage: Optional[events.Usage]) -> events.EventAction:
        global _window
        text = _text(event.data)
        if not text:
            return events.EventAction_Pass()
        window = _window + text.casefold()
        for phrase in _phrases:
            if phrase in window:
                _window = ""
                return events.EventAction_End(_error_event())
        _window = window[-_keep:] if _keep else ""
        return events.EventAction_Pass()
