"""Batch encodings, chosen by name: `columnar` for the wire, `json` for reading with your eyes."""

from __future__ import annotations

from agent.codec.base import Codec, Columns, RawValues, Scaling, Unencodable, physical
from agent.codec.columnar import ColumnarCodec
from agent.codec.jsonl import JsonCodec, exact_json

__all__ = ["Codec", "ColumnarCodec", "Columns", "JsonCodec", "RawValues", "Scaling", "Unencodable", "codec_by_content",
           "codec_for", "physical", "exact_json"]


def codec_for(name: str, *, timestamp_resolution: str = "ms", level: int = 3) -> Codec:
    """The codec for an `encoding.format` value."""
    if name == "columnar":
        return ColumnarCodec(timestamp_resolution=timestamp_resolution, level=level)
    if name == "json":
        return JsonCodec()
    raise ValueError(f"unknown encoding {name!r} (columnar, json)")


def codec_by_content(content_type: str) -> Codec:
    """The codec that reads a batch of this content type (what a cloud consumer would do)."""
    for codec in (ColumnarCodec(), JsonCodec()):
        if content_type == codec.content_type:
            return codec
    raise ValueError(f"unknown batch content type {content_type!r}")
