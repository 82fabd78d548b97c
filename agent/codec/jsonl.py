"""The readable encoding: one JSON document, one object per sample. For debugging, not for the wire."""

from __future__ import annotations

import orjson

from agent.codec.base import Codec, Columns, Scaling, physical
from agent.model import Sample

FORMAT_VERSION = 1


class JsonCodec(Codec):
    name = "json"
    content_type = "application/json"
    content_encoding = "utf-8"

    def encode(self, columns: Columns, *, vehicle: str, scaling: Scaling | None = None,
               simulated: bool = False) -> bytes:
        samples = [
            {"t": t, "bus": key[0], "message": key[1], "signal": key[2], "value": v}
            for key, (ts, vs) in columns.items()
            for t, v in zip(ts, physical(key, vs, scaling), strict=True)
        ]
        samples.sort(key=lambda s: s["t"])
        head = {"v": FORMAT_VERSION, "vehicle": vehicle, **({"sim": True} if simulated else {})}
        return orjson.dumps({**head, "samples": samples})

    def decode(self, payload: bytes) -> tuple[dict, list[Sample]]:
        doc = orjson.loads(payload)
        if not isinstance(doc, dict) or doc.get("v") != FORMAT_VERSION or not isinstance(doc.get("samples"), list):
            raise ValueError("not a vehicle-agent json batch (expected {'v': 1, 'samples': [...]})")
        header = {k: v for k, v in doc.items() if k != "samples"}
        return header, [Sample(s["t"], s["bus"], s["message"], s["signal"], s["value"]) for s in doc["samples"]]
