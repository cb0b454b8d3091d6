"""Portcullis transform plugin in Python: a custom merge for a composite route.

A composite route (`[[routes.parts]]`) answers one JSON object with each part's answer under
its name. This plugin declares the `response-body` hook, so it receives that combined answer
as the response body, and reshapes it: the detections of one part are kept only when their
`score` reaches `min_score`, and a `summary` says how many were kept and dropped.

Built with componentize-py against the `transform` world of wit/plugin.wit:

    componentize-py -d ../../../wit -w transform componentize app -o vision-merge.wasm

Route config (JSON text of the route's `config` table):

    {"min_score": 0.5, "part": "detect"}

`part` (default "detect") names the part whose answer holds `detections`, a list of objects
with a numeric `score`. Answers other than a 200 JSON object (the gateway's own errors, a
failed required part) pass unchanged; so does a part that failed inside the answer (its
entry is an error object without `detections`).
"""
# Every module the plugin uses is imported here, at the top: componentize-py keeps only the
# modules loaded when it builds the component.
import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types

ALLOWED_KEYS = {"min_score", "part"}

# Set by `configure`; one instance serves one route's configuration.
_min_score: float = 0.5
_part: str = "detect"


def _parse(text: str):
    try:
        cfg = json.loads(text)
    except ValueError as e:
        raise ValueError(f"config is not JSON: {e}")
    if not isinstance(cfg, dict):
        raise ValueError("config must be a table")
    unknown = sorted(set(cfg) - ALLOWED_KEYS)
    if unknown:
        raise ValueError(f"unknown config key `{unknown[0]}` (expected: min_score, part)")
    score = cfg.get("min_score")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
        raise ValueError("`min_score` is required: a number from 0 to 1")
    part = cfg.get("part", "detect")
    if not isinstance(part, str) or not part:
        raise ValueError("`part` must be a non-empty string")
    return float(score), part


def _keep(d) -> bool:
    score = d.get("score") if isinstance(d, dict) else None
    return isinstance(score, (int, float)) and not isinstance(score, bool) and score >= _min_score


class WitWorld(wit_world.WitWorld):
    def configure(self, config: str) -> None:
        global _min_score, _part
        try:
            _min_score, _part = _parse(config)
        except ValueError as e:
            raise Err(str(e))

    def declare_hooks(self) -> types.Hooks:
        return types.Hooks.ON_RESPONSE | types.Hooks.RESPONSE_BODY

    def on_request(self, req: types.Request) -> types.RequestAction:
        return types.RequestAction_Proceed()

    def on_response(self, req: types.Request, resp: types.Response) -> None:
        if resp.status() != 200:
            return
        body = resp.body()
        if body is None:
            return
        try:
            answer = json.loads(body)
        except ValueError:
            host.log(host.LogLevel.WARN, "the combined answer is not JSON; left as it is")
            return
        part = answer.get(_part) if isinstance(answer, dict) else None
        found = part.get("detections") if isinstance(part, dict) else None
        if not isinstance(found, list):
            return
        kept = [d for d in found if _keep(d)]
        part["detections"] = kept
        answer["summary"] = {
            "min_score": _min_score,
            "kept": len(kept),
            "dropped": len(found) - len(kept),
        }
        resp.set_body(json.dumps(answer, separators=(",", ":")).encode())
