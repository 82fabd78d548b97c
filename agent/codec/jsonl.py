"""The readable encoding: one JSON document, one object per sample. For debugging, not for the wire."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import orjson

from agent.codec.base import Codec, Columns, Scaling, Unencodable, carried, physical, time_ok
from agent.model import Sample

FORMAT_VERSION = 1


class JsonCodec(Codec):
    name = "json"
    content_type = "application/json"
    content_encoding = "utf-8"

    def encode(self, columns: Columns, *, vehicle: str, scaling: Scaling | None = None,
               simulated: bool = False, event: Mapping[str, Any] | None = None) -> bytes:
        try:
            samples = [
                {"t": t, "bus": key[0], "message": key[1], "signal": key[2], "value": v}
                for key, (ts, vs) in columns.items()
                for t, v in zip(ts, physical(key, vs, scaling), strict=True)
            ]
        except ValueError as exc:  # a column whose times and values differ in number
            raise Unencodable(str(exc)) from None
        # JSON has no NaN nor infinity (orjson writes null): such values are refused, not changed
        if not all(time_ok(s["t"]) and self.carries(s["value"]) for s in samples):
            raise Unencodable("a value JSON cannot carry exactly (NaN, infinity, an integer beyond 64 bits)")
        samples.sort(key=lambda s: s["t"])
        head = {"v": FORMAT_VERSION, "vehicle": vehicle, **({"sim": True} if simulated else {}),
                **({"event": dict(event)} if event else {})}
        return orjson.dumps({**head, "samples": samples})

    def carries(self, value: object) -> bool:
        if type(value) is float:
            return math.isfinite(value)
        return carried(value)

    def decode(self, payload: bytes) -> tuple[dict, list[Sample]]:
        doc = orjson.loads(payload)
        if not isinstance(doc, dict) or doc.get("v") != FORMAT_VERSION or not isinstance(doc.get("samples"), list):
            raise ValueError("not a vehicle-agent json batch (expected {'v': 1, 'samples': [...]})")
        header = {k: v for k, v in doc.items() if k != "samples"}
        return header, [Sample(s["t"], s["bus"], s["message"], s["signal"], s["value"]) for s in doc["samples"]]



def _finite(value: object) -> bool:
    if type(value) is float:
        return math.isfinite(value)
    if type(value) is dict:
        return all(_finite(v) for v in value.values())
    return True


def exact_json(doc: dict) -> bytes:
    """A JSON line exact for every value a frame or batch carries: orjson, except for NaN,
    infinities and integers beyond 64 bits, which the standard library writes (`NaN`, `Infinity`,
    all the digits) and Python's `json.loads` reads back as the same value and type."""
    if _finite(doc):
        try:
            return orjson.dumps(doc)
        except TypeError:  # an integer beyond 64 bits
            pass
    return json.dumps(doc, separators=(",", ":")).encode()
