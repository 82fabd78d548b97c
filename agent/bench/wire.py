"""Bytes a sample on the wire, per encoding, for one simulated drive with every sample kept.

Besides our encodings, two baselines built with well-kept libraries: named JSON (one object per
sample, what most gateways send) compressed with zlib, and a protobuf + Snappy encoding shaped like
AWS IoT FleetWise's `VehicleData` message (signal ids, relative ms timestamps, double values).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from typing import Any

from agent.bench.trace import Trace
from agent.codec import Codec, Columns, JsonCodec, Scaling, physical
from agent.codec.columnar import ColumnarCodec
from agent.config import AgentConfig, CollectionConfig
from agent.model import Sample
from agent.pipeline import build

Encode = Callable[[Columns], bytes]


def _protobuf_snappy(scaling: Scaling) -> tuple[str, Encode] | None:
    """FleetWise-style protobuf + raw Snappy, or None without the `bench` extra (protobuf, cramjam)."""
    try:
        import cramjam
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError:
        return None
    fd = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="bench_vehicle_data.proto", package="bench", syntax="proto3")
    sig = proto.message_type.add(name="CapturedSignal")
    sig.field.add(name="relative_time_ms", number=1, type=fd.TYPE_SINT64, label=fd.LABEL_OPTIONAL)
    sig.field.add(name="signal_id", number=2, type=fd.TYPE_UINT32, label=fd.LABEL_OPTIONAL)
    sig.field.add(name="double_value", number=3, type=fd.TYPE_DOUBLE, label=fd.LABEL_OPTIONAL)
    data = proto.message_type.add(name="VehicleData")
    data.field.add(name="vehicle_name", number=1, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL)
    data.field.add(name="collection_event_time_ms_epoch", number=2, type=fd.TYPE_UINT64, label=fd.LABEL_OPTIONAL)
    data.field.add(name="captured_signals", number=3, type=fd.TYPE_MESSAGE, label=fd.LABEL_REPEATED,
                   type_name=".bench.CapturedSignal")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    vehicle_data = message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.VehicleData"))
    ids: dict[tuple[str, str, str], int] = {}  # the decoder manifest: signal ids agreed with the cloud

    def encode(columns: Columns) -> bytes:
        rows = sorted((t, ids.setdefault(key, len(ids)), float(v))
                      for key, (ts, vs) in columns.items() for t, v in zip(ts, physical(key, vs, scaling), strict=True))
        t0 = int(rows[0][0] * 1000) if rows else 0
        msg = vehicle_data(vehicle_name="bench", collection_event_time_ms_epoch=t0)
        for t, sid, v in rows:
            msg.captured_signals.add(relative_time_ms=int(t * 1000) - t0, signal_id=sid, double_value=v)
        return bytes(cramjam.snappy.compress_raw(msg.SerializeToString()))

    return "protobuf+snappy (FleetWise-style)", encode


def _named_json_zlib(json: Codec, scaling: Scaling) -> Encode:
    return lambda columns: zlib.compress(json.encode(columns, vehicle="bench", scaling=scaling), 6)


def wire(trace: Trace) -> dict[str, dict[str, float]]:
    """{encoding: {bytes_per_sample, batches}} over the trace, every decoded signal kept (policy `all`)."""
    cfg: AgentConfig = trace.config.model_copy(update={"collection": CollectionConfig.model_validate(
        {"default": {"policy": "all"}}), "campaigns": []})  # continuous collection only
    columns_per_batch: list[dict] = []
    pipeline = build(cfg, on_batch=lambda b: None, codec=_Capture(columns_per_batch))
    for bus, frames in trace.chunks():
        pipeline.collectors[bus].process(frames)
    pipeline.batcher.flush()
    samples = pipeline.samples
    json = JsonCodec()
    encoders: dict[str, Encode] = {
        "columnar": lambda c: ColumnarCodec("ms").encode(c, vehicle="bench", scaling=pipeline.scaling),
        "columnar_us": lambda c: ColumnarCodec("us").encode(c, vehicle="bench", scaling=pipeline.scaling),
        "json": lambda c: json.encode(c, vehicle="bench", scaling=pipeline.scaling),
        "named_json+zlib": _named_json_zlib(json, pipeline.scaling),
    }
    extra = _protobuf_snappy(pipeline.scaling)
    if extra is not None:
        encoders["protobuf+snappy"] = extra[1]
    out = {}
    for name, encode in encoders.items():
        total = sum(len(encode(cols)) for cols in columns_per_batch)
        out[name] = {"bytes_per_sample": round(total / max(samples, 1), 3), "batches": len(columns_per_batch),
                     "samples": samples}
    return out


class _Capture(Codec):
    """Keeps each batch's columns so every encoding sees the same batches."""

    name, content_type, content_encoding = "capture", "application/octet-stream", "identity"

    def __init__(self, sink: list[dict]) -> None:
        self.sink = sink

    def encode(self, columns: Columns, *, vehicle: str, scaling: Scaling | None = None,
               simulated: bool = False, event: Mapping[str, Any] | None = None) -> bytes:
        self.sink.append({k: (list(ts), type(vs)(vs)) for k, (ts, vs) in columns.items()})
        return b""

    def decode(self, payload: bytes) -> tuple[dict, list[Sample]]:
        raise NotImplementedError

