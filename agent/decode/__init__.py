"""Decoding: CAN databases (dbc, kcd, arxml, sym via cantools) and per-frame-id decoders."""

from agent.decode.database import DatabaseError, cycle_time_ms, database_warnings, load_databases
from agent.decode.decoder import FrameDecoder, MessageDecoder, ShortFrameError

__all__ = ["DatabaseError", "cycle_time_ms", "database_warnings", "FrameDecoder", "MessageDecoder", "ShortFrameError", "load_databases"]
